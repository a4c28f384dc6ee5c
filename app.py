"""lossland dashboard: `streamlit run app.py` (add `-- --read-only` to serve to collaborators)."""

import streamlit as st

import ui
from lossland.config import ConfigError
from lossland.store import StoreError

st.set_page_config(page_title="lossland", page_icon="⛰️", layout="wide")

try:  # an operator's bad setting (a cap, the read-only switch) stops the app: no page runs on a guess
    ui.check_settings()
except ConfigError as e:
    st.error(f"lossland does not start: {ui.text(e)}. Fix the setting and restart.", icon="⛔")
    st.stop()
try:
    store = ui.get_store()
except StoreError as e:  # e.g. a read-only dashboard with no store to read
    ui.show_error(e)
    st.stop()
ui.sidebar(store)

pages = [
    st.Page("views/overview.py", title="Overview", icon=":material/balance:", url_path="overview", default=True),
    st.Page("views/spectrum.py", title="Spectrum", icon=":material/show_chart:", url_path="spectrum"),
    st.Page("views/landscape.py", title="Landscape", icon=":material/landscape:", url_path="landscape"),
    st.Page("views/basins.py", title="Basins", icon=":material/water:", url_path="basins"),
    st.Page("views/theory.py", title="Theory", icon=":material/functions:", url_path="theory"),
    st.Page("views/reproduce.py", title="Reproduce", icon=":material/fact_check:", url_path="reproduce"),
    st.Page("views/runs.py", title="Runs", icon=":material/table_view:", url_path="runs"),
]
if not ui.read_only():
    pages.insert(1, st.Page("views/new_experiment.py", title="New experiment", icon=":material/science:",
                            url_path="new"))
try:
    st.navigation(pages).run()
except ui.LIBRARY_ERRORS as e:  # a damaged store, a bad link or setting: said in the page, never a traceback
    ui.show_error(e)
