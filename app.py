"""lossland dashboard: `streamlit run app.py` (add `-- --read-only` to serve to collaborators)."""

import streamlit as st

import ui

st.set_page_config(page_title="lossland", page_icon="⛰️", layout="wide")

store = ui.get_store()
ui.sidebar(store)

pages = [
    st.Page("pages/overview.py", title="Overview", icon="⚖️", url_path="overview", default=True),
    st.Page("pages/spectrum.py", title="Spectrum", icon="📈", url_path="spectrum"),
    st.Page("pages/runs.py", title="Runs", icon="🗂️", url_path="runs"),
]
if not ui.read_only():
    pages.insert(1, st.Page("pages/new_experiment.py", title="New experiment", icon="🧪", url_path="new"))
st.navigation(pages).run()
