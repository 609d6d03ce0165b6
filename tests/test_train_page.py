"""The Train page: form, checks, background training, cache hits, cancel, history, diagnostics."""

from __future__ import annotations

import re
import time

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from streamlit.testing.v1 import AppTest

from dashboard import training
from dashboard.jobs import JobBoard
from dashboard.train_form import TrainForm
from engine.model.params import RunParams
from engine.runs.records import list_runs

from .conftest import REPO

pytestmark = pytest.mark.slow


def uploaded_app(kang_small_path) -> AppTest:
    at = AppTest.from_file(str(REPO / "dashboard" / "app.py"), default_timeout=180)
    at.run()
    at.file_uploader[0].set_value(("kang_small.h5ad", kang_small_path.read_bytes(),
                                   "application/octet-stream")).run()
    at.switch_page("../pages/train.py").run()
    assert not at.exception, at.exception
    return at


def set_epochs(at: AppTest, epochs: int) -> None:
    next(c for c in at.checkbox if c.label == "Epochs: automatic").uncheck()
    next(n for n in at.number_input if n.label == "Epochs (if not automatic)").set_value(epochs)


def press_train(at: AppTest) -> None:
    next(b for b in at.button if b.label == "Train").click().run()
    assert not at.exception, at.exception


def messages(at: AppTest) -> str:
    return " ".join(e.value for e in [*at.success, *at.warning, *at.error, *at.info])


def test_train_in_background_then_load_from_cache(run_cache, kang_small_path):
    at = uploaded_app(kang_small_path)
    set_epochs(at, 3)
    press_train(at)
    state = at.session_state["atlas_state"]
    job = training.job_board().get(state.watched_job)
    assert job is not None, messages(at)
    assert at.query_params["run"] == [job.run_id] or at.query_params["run"] == job.run_id
    assert job.wait(timeout=120), "training did not finish"
    assert job.status == "finished", job.error
    assert len(job.history) == 3 and job.history[-1].validation_elbo < 0
    at.run()  # the progress panel sees the end and makes the run active
    assert state.active_run_id == job.run_id
    assert "It is now the active run" in messages(at)
    assert any(df.value["run"].iloc[0] == job.run_id[:10] for df in at.dataframe)

    assert re.search(r"Trained 3 epochs in \d+ s", messages(at))  # trained now, in this session

    # the same settings again: loaded from the cache, no new job, said to be trained earlier
    press_train(at)
    text = messages(at)
    created = training.load_run(job.run_id).metrics["created"]  # e.g. 2026-12-02T14:05:33+00:00
    day = f"{int(created[8:10])} {time.strftime('%b', time.strptime(created[5:7], '%m'))} {created[:4]}"
    assert re.search(rf"Loaded run trained on {day} at {created[11:16]} UTC, 3 epochs in \d+ s "
                     rf"\(run {job.run_id[:10]}, read from the cache in \d+\.\d\d s\)\. "
                     "It is now the active run.", text), text
    assert "Trained 3 epochs" not in text


def test_a_loaded_run_says_when_it_was_trained_and_how_long_it_took():
    metrics = {"created": "2026-12-02T14:05:33+00:00", "n_epochs_trained": 40, "train_seconds": 47.4}
    assert training.loaded_run_message("3f2a9c1d0e77aa", metrics, load_seconds=0.0213) == (
        "Loaded run trained on 2 Dec 2026 at 14:05 UTC, 40 epochs in 47 s (run 3f2a9c1d0e, read from "
        "the cache in 0.02 s). It is now the active run.")
    # another time zone is shown in UTC; long trainings in minutes, then hours
    metrics = {"created": "2026-03-01T00:30:00+02:00", "n_epochs_trained": 258, "train_seconds": 2700.0}
    assert training.loaded_run_message("abc", metrics).startswith(
        "Loaded run trained on 28 Feb 2026 at 22:30 UTC, 258 epochs in 45 min (run abc).")
    assert training.loaded_run_message("abc", {"n_epochs_trained": 1}) == (
        "Loaded a cached run, 1 epoch (run abc). It is now the active run.")


def test_make_active_from_the_history_does_not_say_it_just_trained(tmp_path):
    from dashboard.state import AppState
    from engine.runs.records import RunInfo

    state = AppState(training_message=("success", "Trained 8 epochs in 30 s (run other). It is now the active run."))
    info = RunInfo(run_id="feedbeef0123", params=RunParams(), batch_key=None, data_hash="h", path=tmp_path,
                   created="2026-12-01T09:00:00+00:00",
                   metrics={"created": "2026-12-01T09:00:00+00:00", "n_epochs_trained": 12, "train_seconds": 20.0})
    training.make_active(state, info)
    assert state.active_run_id == "feedbeef0123"
    assert state.training_message == (
        "success", "Loaded run trained on 1 Dec 2026 at 09:00 UTC, 12 epochs in 20 s (run feedbeef01). "
        "It is now the active run.")


def test_single_category_batch_trains_without_it(kang_small_path):
    adata = ad.read_h5ad(kang_small_path)
    adata.obs["one"] = pd.Categorical(["x"] * adata.n_obs)
    check = training.check_training(adata, params=RunParams(), batch_key="one")
    assert check.batch_key is None and not check.errors
    assert "single value" in check.warnings[0]


def test_missing_batch_values_are_refused_with_column_and_count(kang_small_path):
    adata = ad.read_h5ad(kang_small_path)
    donor = adata.obs["donor"].astype(object)
    donor.iloc[:7] = np.nan
    adata.obs["donor"] = donor
    check = training.check_training(adata, params=RunParams(), batch_key="donor")
    assert check.errors and "'donor'" in check.errors[0] and "7 cells" in check.errors[0]


def test_many_batches_warn_and_few_cells_warn():
    rng = np.random.default_rng(0)
    adata = ad.AnnData(sp.csr_matrix(rng.poisson(1.0, (40, 30)).astype(np.float32)))
    adata.obs["cell"] = pd.Categorical([f"c{i}" for i in range(40)])
    check = training.check_training(adata, params=RunParams(), batch_key="cell")
    assert not check.errors
    joined = " ".join(check.warnings)
    assert "40 values" not in joined  # 40 is not "many"
    assert "Only 40 cells" in joined
    many = ad.AnnData(sp.csr_matrix(rng.poisson(1.0, (300, 30)).astype(np.float32)))
    many.obs["cell"] = pd.Categorical([f"c{i}" for i in range(300)])
    assert "300 values" in " ".join(training.check_training(many, params=RunParams(), batch_key="cell").warnings)


def test_latent_larger_than_genes_is_refused():
    adata = ad.AnnData(sp.csr_matrix(np.ones((60, 5), np.float32)))
    check = training.check_training(adata, params=RunParams(n_latent=8), batch_key=None)
    assert "larger than the number of genes (5)" in check.errors[0]


def test_bad_batch_in_page_shows_error_and_page_stays_usable(kang_small_path):
    at = uploaded_app(kang_small_path)
    next(s for s in at.slider if s.label == "Latent size").set_value(64)
    next(n for n in at.number_input if n.label.startswith("Highly variable genes")).set_value(50)
    press_train(at)
    assert any("larger than the number of genes (50)" in e.value for e in at.error)
    assert at.session_state["atlas_state"].watched_job is None
    assert next(b for b in at.button if b.label == "Train")  # the form is still there


def test_cancel_stops_and_saves_nothing(tmp_path, kang_small_path):
    from engine.reading.load import read_counts

    adata = read_counts(kang_small_path)
    board = JobBoard(tmp_path)
    job = board.start(adata, params=RunParams(max_epochs=400, early_stopping=False), batch_key=None)
    while not job.history:  # let it get going
        time.sleep(0.05)
    job.cancel()
    assert job.wait(timeout=10)
    assert job.status == "cancelled"
    assert list_runs(tmp_path) == []
    assert not [p for p in tmp_path.iterdir() if p.is_dir()]


def test_two_sessions_share_one_job(tmp_path, kang_small_path):
    from engine.reading.load import read_counts

    adata = read_counts(kang_small_path)
    board = JobBoard(tmp_path)
    params = RunParams(max_epochs=2)
    first = board.start(adata, params=params, batch_key="donor")
    second = board.start(adata.copy(), params=params, batch_key="donor")
    assert first is second
    assert first.wait(timeout=120) and first.status == "finished"
    assert len(list_runs(tmp_path)) == 1


def test_training_error_is_shown_and_page_survives(tmp_path, caplog):
    # non-integer "counts" make count likelihoods refuse: the job fails with the engine's message
    rng = np.random.default_rng(0)
    adata = ad.AnnData(sp.csr_matrix(rng.random((80, 20)).astype(np.float32)))
    board = JobBoard(tmp_path)
    with caplog.at_level("INFO", logger="dashboard.jobs"):
        job = board.start(adata, params=RunParams(max_epochs=2), batch_key=None)
        assert job.wait(timeout=60)
        job._worker.join(10)  # the last log line is written after the job is marked done
    assert job.status == "failed" and job.error and "Traceback" not in job.error
    # the traceback is kept, and the server log has the start, the failure with its traceback, the end
    assert job.traceback.startswith("Traceback") and "ValueError" in job.traceback
    messages = [r.getMessage() for r in caplog.records if r.name == "dashboard.jobs"]
    assert any("started: 80 cells x 20 genes" in m for m in messages), messages
    failure = next(r for r in caplog.records if r.name == "dashboard.jobs" and "failed" in r.getMessage())
    assert failure.exc_info is not None and failure.levelname == "ERROR"
    assert any(m.endswith("failed after " + m.split("failed after ")[-1]) and "epochs" in m for m in messages)


def test_form_params_validation_lists_allowed_values():
    with pytest.raises(ValueError, match="choose one of"):
        TrainForm(options={"likelihood": "gamma"}).params()


def test_diagnostics_for_two_runs_side_by_side(run_cache, kang_small_path):
    at = uploaded_app(kang_small_path)
    state = at.session_state["atlas_state"]
    from engine.runs.fit import fit

    for likelihood in ("zinb", "poisson"):
        fit(state.filtered.copy(), params=RunParams(likelihood=likelihood, max_epochs=3),
            batch_key=None, cache_dir=run_cache)
    at.run()
    picker = next(m for m in at.multiselect if m.label == "Runs")
    assert len(picker.value) == 2
    next(b for b in at.button if b.label == "Compute diagnostics").click().run()
    assert not at.exception, at.exception
    table = next(df.value for df in at.dataframe if "held-out ELBO" in df.value.columns)
    assert len(table) == 2 and (table["held-out ELBO"] < 0).all()
    diag = list(state.diagnostics.values())
    # a Poisson model underestimates overdispersion relative to ZINB; both produce per-gene checks
    assert all(d.check is not None and len(d.check.genes) == state.filtered.n_vars for d in diag)


def test_the_page_says_how_long_the_chosen_settings_will_train(kang_small_path):
    from dashboard.train_form import duration_text, expected_duration
    from engine.model.calibration import SpeedCalibration
    from engine.reading.load import read_counts

    adata = read_counts(kang_small_path)
    cal = SpeedCalibration(fixed=0.0, per_gene=1e-6, threads=2, measured_in=1.0)  # 1 us per cell-gene-epoch
    line = expected_duration(TrainForm(options={"max_epochs": 100}), adata, cal)
    seconds = 100 * adata.n_obs * adata.n_vars * 1e-6
    assert line.startswith(f"Expected on this server: about {duration_text(seconds)} (100 epochs of 1,145 cells")
    assert "early stopping may end it sooner" in line
    fewer_genes = expected_duration(TrainForm(n_top_genes=500, options={"early_stopping": False}), adata, cal)
    assert "x 500 genes)" in fewer_genes and "early stopping" not in fewer_genes
    assert expected_duration(TrainForm(), adata, None).startswith("Measuring this server's training speed")
    assert expected_duration(TrainForm(options={"lr": -1.0}), adata, cal) == ""  # refused on Train, with why
    assert [duration_text(s) for s in (0.2, 42, 250, 4800, 7200)] == ["1 s", "42 s", "4 min", "1 h 20 min", "2 h"]


def test_form_asks_only_what_matters_and_offers_the_thorough_schedule(kang_small_path):
    at = uploaded_app(kang_small_path)
    labels = {w.label for w in [*at.number_input, *at.selectbox, *at.checkbox, *at.slider]}
    assert "Mixture components K" not in labels  # the normal prior has no components
    assert {"Patience", "Early-stopping tolerance", "Dispersion"} <= labels
    batch = next(s for s in at.selectbox if s.label == "Batch key")
    assert batch.value == "donor"  # preselected: a column named like a batch
    schedule = next(s for s in at.selectbox if s.label == "Training")
    assert schedule.value == "fast" and list(schedule.options) == ["Fast (default)",
                                                                   "Thorough (scvi-tools' schedule, ~10x longer)"]
    next(s for s in at.selectbox if s.label == "Prior on z").set_value("mixture").run()
    next(s for s in at.selectbox if s.label == "Likelihood").set_value("poisson").run()
    next(c for c in at.checkbox if c.label == "Early stopping").uncheck().run()
    labels = {w.label for w in [*at.number_input, *at.selectbox, *at.checkbox, *at.slider]}
    assert "Mixture components K" in labels
    assert not {"Patience", "Early-stopping tolerance", "Dispersion"} & labels
    assert not at.exception
