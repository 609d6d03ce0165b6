"""Atlas Explorer: the one entry script. ``streamlit run dashboard/app.py`` from the repository root.

Sets up the page, initialises this session's state (loading the bundled sample on first visit) and
routes to the pages in the top-level ``pages/`` folder with ``st.navigation``. It sits here, not
beside ``pages/``, so that Streamlit's older multipage mode (which runs any ``pages/`` folder next
to the entry script on its own, without this script) can never apply.
"""

from pathlib import Path

import streamlit as st

from dashboard import workspace
from dashboard.loading import read_sample, use_dataset
from dashboard.startup import configure_logging, start_warm_up
from dashboard.state import get_state
from dashboard.training import cache_dir
from engine.runs import records as ecache

st.set_page_config(page_title="Atlas Explorer", page_icon=":material/scatter_plot:", layout="wide")

configure_logging()
start_warm_up()
state = get_state()

PAGES = Path(__file__).resolve().parents[1] / "pages"
pages = [
    st.Page(PAGES / "data.py", title="Data", icon=":material/upload_file:", default=True),
    st.Page(PAGES / "train.py", title="Train", icon=":material/model_training:"),
    st.Page(PAGES / "explore.py", title="Explore", icon=":material/scatter_plot:"),
    st.Page(PAGES / "markers.py", title="Markers", icon=":material/format_list_numbered:"),
    st.Page(PAGES / "differential_expression.py", title="Differential expression",
            icon=":material/compare_arrows:"),
    st.Page(PAGES / "export.py", title="Export", icon=":material/download:"),
]
# Navigation first, so the page list is in the sidebar while the sample loads on a first visit.
page = st.navigation(pages)

# A link (?run=<id>, issue 17): on the session's first script run, a run in the cache is opened with
# its data, QC settings, names and groups; an id not in the cache is a training job being followed
# (a refresh during training finds it) or a run that is gone.
if not state.link_checked:
    state.link_checked = True
    link = st.query_params.get("run")
    if link and not workspace.is_run_id(link):
        link = None  # not a run id (a run id is hex): never used as a path or shown
    if link and ecache.has_run(cache_dir(), link):
        if link != state.active_run_id:
            with st.spinner(f"Opening run {link[:10]} from the link: reading its data..."):
                try:
                    workspace.open_link(state, link, st.query_params.to_dict())
                except (ValueError, OSError) as err:
                    state.link_error = (link, f"The link's run could not be opened. {err}")
    elif link:
        state.watched_job = link
        if not workspace.job_in_progress(link):
            state.missing_run = link

if state.dataset is None and state.load_error is None:
    with st.spinner("Loading the sample dataset (Kang et al. 2018 PBMC)..."):
        try:
            use_dataset(state, read_sample())
        except (ValueError, OSError) as err:
            state.load_error = f"The bundled sample could not be loaded: {err}"

if state.missing_run is not None and st.query_params.get("run") == state.missing_run:
    workspace.missing_run_notice(state.missing_run)
if state.link_error is not None and st.query_params.get("run") == state.link_error[0]:
    st.warning(state.link_error[1], icon=":material/link_off:")

def dataset_line(slot) -> None:
    """The dataset's name and size in the sidebar."""
    if state.filtered is not None and state.dataset is not None:
        slot.caption(f"**{state.dataset.name}**  \n{state.filtered.n_obs:,} cells x "
                     f"{state.filtered.n_vars:,} genes after QC")


summary = st.sidebar.empty()
dataset_line(summary)
page.run()
dataset_line(summary)  # again: the page may have just applied new QC thresholds
