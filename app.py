"""Atlas Explorer: the one entry script. ``streamlit run app.py``.

Sets up the page, initialises this session's state (loading the bundled sample on first visit) and
routes to the pages with ``st.navigation``.
"""

import streamlit as st

from dashboard.loading import read_sample, use_dataset
from dashboard.startup import start_warm_up
from dashboard.state import get_state

st.set_page_config(page_title="Atlas Explorer", page_icon=":material/scatter_plot:", layout="wide")

start_warm_up()
state = get_state()

pages = [
    st.Page("pages/data.py", title="Data", icon=":material/upload_file:", default=True),
    st.Page("pages/train.py", title="Train", icon=":material/model_training:"),
    st.Page("pages/explore.py", title="Explore", icon=":material/scatter_plot:"),
    st.Page("pages/differential_expression.py", title="Differential expression",
            icon=":material/compare_arrows:"),
    st.Page("pages/export.py", title="Export", icon=":material/download:"),
]
# Navigation first, so the page list is in the sidebar while the sample loads on a first visit.
page = st.navigation(pages)

if state.dataset is None and state.load_error is None:
    with st.spinner("Loading the sample dataset (Kang et al. 2018 PBMC)..."):
        try:
            use_dataset(state, read_sample())
        except (ValueError, OSError) as err:
            state.load_error = f"The bundled sample could not be loaded: {err}"

# A training job survives a browser refresh: its run id is in the URL (?run=...).
if state.watched_job is None and "run" in st.query_params:
    state.watched_job = st.query_params["run"]

with st.sidebar:
    if state.filtered is not None and state.dataset is not None:
        st.caption(f"**{state.dataset.name}**  \n{state.filtered.n_obs:,} cells x "
                   f"{state.filtered.n_vars:,} genes after QC")

page.run()
