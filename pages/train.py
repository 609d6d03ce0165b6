"""Train page: launch a cached scVI training run, watch it, cancel it, compare runs."""

import streamlit as st

from dashboard import run_comparison, training, workspace
from dashboard.figures import elbo_curve, preview_scatter
from dashboard.startup import start_warm_up
from dashboard.state import get_state
from dashboard.summary import batch_columns, default_batch_key
from dashboard.train_form import TrainForm, expected_duration, history_frame, option_inputs, runs_table

state = get_state()
st.title("Train")
st.caption("Train the scVI model on the filtered data from the Data page. Runs are cached: "
           "the same data and settings load at once instead of training again.")

if state.filtered is None or state.dataset is None:
    st.info("Load a dataset on the Data page first.")
    st.stop()
filtered = state.filtered
board = training.job_board()

# ---- Settings ---------------------------------------------------------------------------------
# Not an st.form: the expected duration below follows every change of the settings.
with st.container(border=True):
    st.subheader("Settings")
    c1, c2, c3 = st.columns(3)
    chosen = option_inputs([c1, c2], "main")
    batch_options = ["(none)"] + batch_columns(filtered)
    suggested = default_batch_key(batch_options[1:])
    batch = c3.selectbox("Batch key", batch_options,
                         index=batch_options.index(suggested) if suggested else 0,
                         help="Cells from different batches (samples, donors, technologies) are "
                              "aligned in the latent space. Preselected: a column named like a "
                              "batch (donor, sample, batch, library, tech); choose (none) to keep "
                              "batch differences.")
    with st.expander("Advanced"):
        st.caption("Model")
        chosen |= option_inputs(st.columns(4), "model", chosen)
        st.caption("Training")
        chosen |= option_inputs(st.columns(4), "training", chosen)
        default_hvg = 0 if filtered.n_vars <= 4000 else 2000
        n_top_genes = st.number_input("Highly variable genes (0 = all genes)", 0, filtered.n_vars,
                                      default_hvg, step=100)
        device = "auto"
        if board.gpu_slots():  # the cluster has workers started with a GPU resource
            device = st.selectbox("Device", ["auto", "cuda", "cpu"],
                                  help="cuda waits for a worker with a GPU; auto uses one where the job lands.")
    form = TrainForm(batch_key=None if batch == "(none)" else batch, n_top_genes=n_top_genes, options=chosen)
    b1, b2 = st.columns([1, 5], vertical_alignment="center")
    submitted = b1.button("Train", type="primary")
    b2.caption(expected_duration(form, filtered, start_warm_up().calibration))

if submitted:
    training.submit(state, form, board, device=device)

# ---- Progress of the job this session follows ---------------------------------------------------
if state.training_message:
    kind, text = state.training_message
    getattr(st, kind)(text)

# The curve stays after training ends (and for a run made active from the table).
try:
    active = training.load_run(state.active_run_id) if state.active_run_id is not None else None
except (OSError, ValueError):  # a damaged run folder: the history table below says what to do
    active = None
if state.watched_job is None and active is not None and len(active.history):
    just_trained = bool(state.training_message and state.training_message[0] == "success")
    with st.expander(f"Training curve of the active run ({active.run_id[:10]})", expanded=just_trained):
        st.plotly_chart(elbo_curve(active.history), width="stretch", key="active_run_curve")


@st.fragment(run_every=2.0)  # the issue asks for at least every 2 s; each refresh costs CPU
def progress_panel() -> None:
    job = board.get(state.watched_job) if state.watched_job else None
    if job is None:
        return
    with st.container(border=True):
        st.subheader(f"Training run {job.run_id[:10]}")
        done = job.epochs_done
        eta = job.eta_seconds
        if job.queue_position:  # every worker is busy: say how many jobs must end first
            ahead = job.queue_position
            st.progress(0.0, text=f"Waiting for a free worker: {ahead} job{'s' if ahead != 1 else ''} ahead")
        else:
            st.progress(done / max(job.n_epochs, 1),
                        text=f"Epoch {done} of {job.n_epochs} · elapsed {job.elapsed:.0f} s"
                             + (f" · about {eta:.0f} s left" if eta is not None and job.status == "running" else ""))
        curve, preview = st.columns(2)
        if job.history:
            curve.plotly_chart(elbo_curve(history_frame(job.history)), width="stretch")
        if job.preview is not None:
            epoch, layout = job.preview
            preview.plotly_chart(preview_scatter(layout, job.preview_labels, epoch=epoch, n_epochs=job.n_epochs,
                                                 label_name=job.preview_label_name), width="stretch",
                                 key="training_preview")
        elif job.status == "running":
            preview.caption("A picture of the latent space appears here after the first few epochs.")
        if job.status == "running":
            if st.button("Cancel training", icon=":material/stop:"):
                job.cancel()
                job.wait(timeout=5)
        else:
            training.finish_job(state, job)
            st.rerun(scope="app")


progress_panel()

for lost in board.interrupted():
    if lost.n_cells == filtered.n_obs:
        st.warning(f"Training of run {lost.run_id[:10]} ({lost.params['likelihood'].upper()}, started "
                   f"{lost.started}) was cut off when the server stopped. Nothing was saved: press "
                   "Train with the same settings to train it again.")

# ---- Run history --------------------------------------------------------------------------------
runs = training.runs_for(filtered)
with st.container(border=True):
    st.subheader("Runs on this data")
    if not runs:
        st.caption("No runs yet: choose settings above and press Train.")
    else:
        table = runs_table(runs, active=state.active_run_id)
        picked = st.dataframe(table, hide_index=True, width="stretch", on_select="rerun",
                              selection_mode="single-row", key="runs_table")
        rows = picked.selection.rows if picked else []
        chosen = runs[rows[0]] if rows else None
        b1, b2, _ = st.columns([1, 1, 4])
        if b1.button("Make active", disabled=chosen is None,
                     help="Explore and Differential expression use the active run."):
            training.make_active(state, chosen)
            workspace.store().touch(chosen.run_id)  # the workspace's "last used"
            st.rerun()
        if b2.button("Delete", disabled=chosen is None):
            workspace.delete(state, chosen.run_id)  # its names, groups and results too
            st.rerun()
        if state.active_run_id:
            st.caption(f"Active run: {state.active_run_id[:10]}")

# ---- Diagnostics ------------------------------------------------------------------------------
if runs:
    run_comparison.panel(state, runs, filtered)
