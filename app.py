"""lossland dashboard: `streamlit run app.py` (add `-- --read-only` to serve to collaborators)."""

import streamlit as st

import ui

st.set_page_config(page_title="lossland", page_icon="⛰️", layout="wide")

store = ui.get_store()
ui.sidebar(store)

pages = [
    st.Page("pages/overview.py", title="Overview", icon=":material/balance:", url_path="overview", default=True),
    st.Page("pages/spectrum.py", title="Spectrum", icon=":material/show_chart:", url_path="spectrum"),
    st.Page("pages/runs.py", title="Runs", icon=":material/table_view:", url_path="runs"),
]
if not ui.read_only():
    pages.insert(1, st.Page("pages/new_experiment.py", title="New experiment", icon=":material/science:",
                            url_path="new"))
st.navigation(pages).run()
