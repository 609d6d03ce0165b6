"""Links restore the view, and names and groups are kept with the run on the server (issue 17 parts 1, 2).

Session A opens an upload, filters it, trains, names a cluster and saves a group; a new session
opening the link (``?run=<id>&...``) gets the data, the QC thresholds, the run, the names and the
groups, and the view the URL names, without a trip to the Train page.
"""

from __future__ import annotations

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from dashboard import de as dede
from dashboard import explore as ex
from dashboard import loading
from dashboard import workspace as ws
from engine.preprocessing.qc import QCThresholds

from .conftest import REPO

pytestmark = pytest.mark.slow
EXPLORE = "../pages/explore.py"


def _session() -> AppTest:
    return AppTest.from_file(str(REPO / "dashboard" / "app.py"), default_timeout=180)


def test_a_link_opens_the_run_with_its_names_and_groups_in_a_new_session(run_cache, kang_small_path):
    from engine.model.params import RunParams
    from engine.runs.fit import fit

    a = _session()
    a.run()
    a.file_uploader[0].set_value(("kang_small.h5ad", kang_small_path.read_bytes(),
                                  "application/octet-stream")).run()
    state_a = a.session_state["atlas_state"]
    # QC thresholds that drop cells: the link must restore them for the run to match its data
    loading.apply_settings(state_a, QCThresholds(min_genes=300), 2000, None)
    assert state_a.filtered.n_obs < state_a.dataset.adata.n_obs
    run = fit(state_a.filtered.copy(), params=RunParams(max_epochs=2, lr=1e-3, seed=0),
              batch_key=None, cache_dir=run_cache)
    state_a.active_run_id = run.run_id
    a.switch_page(EXPLORE).run()
    assert not a.exception, a.exception
    clusters = list(ex.cluster_table(state_a, run)["cluster"])
    ex.apply_cluster_edits(state_a, clusters, {0: {"name": "B cells"}})
    cells = state_a.filtered.obs_names[:30].to_numpy()
    ex.save_group(state_a, "my lasso", cells)
    a.radio(key="explore_embedding").set_value("UMAP").run()
    assert a.query_params["run"] in (run.run_id, [run.run_id])

    b = _session()
    b.query_params.update({"run": run.run_id, "embedding": "UMAP", "colour": "Cluster", "res": "1"})
    b.switch_page(EXPLORE).run()
    assert not b.exception, b.exception
    state_b = b.session_state["atlas_state"]
    assert state_b.active_run_id == run.run_id
    assert state_b.dataset.name == "kang_small.h5ad"
    assert state_b.thresholds.min_genes == 300
    assert list(state_b.filtered.obs_names) == list(state_a.filtered.obs_names)
    assert state_b.cluster_names == {clusters[0]: "B cells"}
    assert list(state_b.cell_groups) == ["my lasso"]
    assert set(state_b.cell_groups["my lasso"]) == set(cells)
    assert not [i.value for i in b.info if "Train a model" in i.value]

    # A DE link names the groups compared: a new session opens the DE page with them chosen.
    c = _session()
    c.query_params.update({"run": run.run_id, "groupby": dede.LASSO, "group1": "my lasso"})
    c.switch_page("../pages/differential_expression.py").run()
    assert not c.exception, c.exception
    assert c.session_state["de_groupby"] == dede.LASSO and c.session_state["de_group1"] == "my lasso"

    # Changes by one session reach the other on its next rerun; a deletion too.
    ex.delete_group(state_b, "my lasso")
    ex.apply_cluster_edits(state_b, clusters, {1: {"name": "NK"}})
    a.run()
    assert state_a.cell_groups == {}
    assert state_a.cluster_names == {clusters[0]: "B cells", clusters[1]: "NK"}
    # Names belong to a resolution: another has none, and coming back finds them again.
    state_a.leiden_resolution = 0.5
    a.run()
    assert state_a.cluster_names == {}
    state_a.leiden_resolution = 1.0
    a.run()
    assert state_a.cluster_names[clusters[1]] == "NK"


def test_a_link_to_a_run_that_is_gone_says_so_and_lists_the_runs(run_cache, monkeypatch):
    monkeypatch.setattr(ws, "job_in_progress", lambda rid: False)
    at = _session()
    at.query_params["run"] = "0123456789abcdef0123"
    at.run()
    assert not at.exception, at.exception
    warning = next(w.value for w in at.warning if "not in the run cache" in w.value)
    assert "0123456789" in warning


def test_a_link_to_a_run_whose_data_is_unknown_says_what_to_do(run_cache):
    rid = "feedfacefeedfacefeed"
    (run_cache / rid).mkdir()
    (run_cache / rid / "run.json").write_text("{}")
    try:
        at = _session()
        at.query_params["run"] = rid
        at.run()
        assert not at.exception, at.exception
        assert any("how its data was opened is not known" in w.value for w in at.warning)
        assert at.session_state["atlas_state"].dataset is not None  # the sample, as on any first visit
    finally:
        (run_cache / rid / "run.json").unlink()
        (run_cache / rid).rmdir()


def test_a_server_file_is_recorded_by_its_name_in_the_folder_and_read_again(kang_small_path, monkeypatch):
    from dashboard.state import AppState

    monkeypatch.setenv("ATLAS_DATA_DIR", str(kang_small_path.parent))
    state = AppState()
    loading.use_dataset(state, loading.read_server_file(loading.resolve_server_file(kang_small_path.name)))
    loading.apply_settings(state, QCThresholds(min_genes=250), 1000, None)
    record = ws.dataset_record(state)
    assert record["source"] == "server" and record["file"] == kang_small_path.name
    assert record["thresholds"]["min_genes"] == 250 and record["n_top_genes"] == 1000
    again = ws._read(record)
    assert again.adata.n_obs == state.dataset.adata.n_obs
    monkeypatch.delenv("ATLAS_DATA_DIR")
    assert ws.dataset_record(state) is None  # outside any allowed folder: not recorded
    with pytest.raises(ValueError, match="switched off"):
        ws._read(record)


def test_sessions_saving_groups_at_once_lose_none(tmp_path, monkeypatch):
    import threading

    import anndata as ad
    import pandas as pd

    from dashboard.state import AppState

    monkeypatch.setenv("ATLAS_CACHE_DIR", str(tmp_path))
    cells = [f"c{i}" for i in range(100)]

    def session(n: int) -> None:
        state = AppState(active_run_id="abcdef0123", filtered=ad.AnnData(obs=pd.DataFrame(index=cells)))
        for i in range(10):
            ex.save_group(state, f"s{n}-{i}", np.asarray(cells[i:i + 5], dtype=object))
        ex.delete_group(state, f"s{n}-0")

    threads = [threading.Thread(target=session, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    fresh = AppState(active_run_id="abcdef0123", filtered=ad.AnnData(obs=pd.DataFrame(index=cells)))
    ws.sync(fresh)
    assert set(fresh.cell_groups) == {f"s{n}-{i}" for n in range(4) for i in range(1, 10)}


def test_only_hex_run_ids_are_taken_from_links():
    assert ws.is_run_id("0123456789abcdef0123")
    assert not ws.is_run_id("../../etc") and not ws.is_run_id("") and not ws.is_run_id("ABC[x](y)")


def test_kept_uploads_expire(tmp_path, monkeypatch):
    import os
    import time

    monkeypatch.setenv("ATLAS_UPLOAD_DAYS", "2")
    old, new = tmp_path / "a.h5ad", tmp_path / "b.h5ad"
    old.write_bytes(b"x")
    new.write_bytes(b"y")
    os.utime(old, (time.time() - 3 * 86400,) * 2)
    assert loading.remove_old_uploads(tmp_path) == ["a.h5ad"]
    assert new.exists() and not old.exists()
    assert np.isclose(loading.upload_days(), 2)


def test_de_and_marker_results_are_kept_with_their_parameters(tmp_path, monkeypatch):
    import pandas as pd

    from dashboard.state import AppState

    monkeypatch.setenv("ATLAS_CACHE_DIR", str(tmp_path))
    state = AppState()
    table = pd.DataFrame({"gene": ["CD79A", "MS4A1"], "lfc_mean": [3.5, np.float32(2.25)]})
    params = {"run_id": "r1", "delta": 0.25, "groups": ("B", "T"),
              "n_cells": pd.DataFrame({"group": ["B"], "n_cells": [np.int64(140)]})}
    ws.keep_result(state, "de", "B vs rest (change)", table, params)  # no active run: nothing kept
    assert ws.kept_results("r1", "de") == {}
    state.active_run_id = "r1"
    ws.keep_result(state, "de", "B vs rest (change)", table, params)
    kept = ws.kept_results("r1", "de")["B vs rest (change)"]
    assert kept["params"] == {"run_id": "r1", "delta": 0.25, "groups": ["B", "T"],
                              "n_cells": [{"group": "B", "n_cells": 140}]}
    pd.testing.assert_frame_equal(pd.DataFrame(kept["table"]), table, check_dtype=False)
