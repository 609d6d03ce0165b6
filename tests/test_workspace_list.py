"""The workspace list (issue 17 part 3): every run with its counts, last used first; rename; delete.

The engine tests use run folders written by hand (no training); the page test uses the fixture's
quickly trained run and a copy of it under another id, which it opens, renames and deletes.
"""

from __future__ import annotations

import json
import shutil
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from engine.model.params import RunParams
from engine.runs import records
from engine.runs import workspaces as ews
from engine.runs.annotations import AnnotationStore

from .conftest import app_with_active_run


def fake_run(cache: Path, rid: str, *, created: str, n_cells: int = 100, batch_key: str | None = None) -> None:
    """A finished run folder as ``records.list_runs`` reads it (the weights are an empty zip)."""
    path = cache / rid
    path.mkdir(parents=True)
    with zipfile.ZipFile(path / "model.pt", "w"):
        pass
    (path / "history.csv").write_text("epoch\n0\n")
    np.save(path / "latent.npy", np.zeros((n_cells, 2), dtype=np.float32))
    (path / "run.json").write_text(json.dumps({
        "run_id": rid, "params": RunParams().to_dict(), "batch_key": batch_key, "batch_categories": None,
        "var_names": ["g1"], "data_hash": "d" * 32,
        "metrics": {"created": created, "n_cells": n_cells, "n_genes": 1287}}))


def test_list_counts_last_used_rename_and_delete(tmp_path):
    a, b, c = "aa" * 10, "bb" * 10, "cc" * 10
    fake_run(tmp_path, a, created="2026-12-01T09:00:00+00:00", n_cells=1145, batch_key="donor")
    fake_run(tmp_path, b, created="2026-12-01T10:00:00+00:00")
    fake_run(tmp_path, c, created="2026-12-01T11:00:00+00:00")
    store = AnnotationStore(tmp_path)
    store.put(a, "dataset", "", {"source": "sample", "name": "Sample: Kang 2018 PBMC"})
    store.put_many(a, "cluster_names", {"1|0": "B cells", "1|1": "NK", "0.5|0": "T cells"})
    store.put_many(a, "group", {"lasso": {"cells": ["x"], "order": 0}, "tail": {"cells": ["y"], "order": 1}})
    store.put(a, "de", "B vs rest", {"params": {}, "table": []})
    store.put_many(a, "markers", {"m1": {}, "m2": {}})
    store.put("gone" * 5, "group", "orphan", {"cells": [], "order": 0})  # a run no longer in the cache

    listed = ews.list_workspaces(tmp_path, store)
    # a was trained first but used last (its items were written now): it comes first; then c, b
    assert [w.run_id for w in listed] == [a, c, b]
    first = listed[0]
    assert (first.n_names, first.n_groups, first.n_de, first.n_markers) == (3, 2, 1, 2)
    assert first.dataset == "Sample: Kang 2018 PBMC" and first.can_reopen
    assert first.name == f"Sample: Kang 2018 PBMC · {a[:10]}" and not first.named
    assert first.description == "1,145 cells x 1,287 genes, batches from donor"
    assert first.created == "2026-12-01T09:00:00+00:00" and first.last_used > time.time() - 60
    rest = listed[1]
    assert (rest.n_names, rest.n_groups, rest.n_de, rest.n_markers) == (0, 0, 0, 0)
    assert rest.dataset == "" and not rest.can_reopen and rest.name == f"Unknown data · {c[:10]}"

    # Opening b makes it the most recently used.
    time.sleep(0.01)
    store.touch(b)
    assert [w.run_id for w in ews.list_workspaces(tmp_path, store)] == [b, a, c]

    # Rename: spaces tidied; bad names are refused and change nothing.
    assert ews.rename_workspace(tmp_path, c, "  Lasso   study ", store) == "Lasso study"
    for bad, why in (("   ", "empty"), ("x" * 81, "81 characters"), ("lasso STUDY", "already called")):
        target = a if why == "already called" else c
        with pytest.raises(ValueError, match=why):
            ews.rename_workspace(tmp_path, target, bad, store)
    with pytest.raises(ValueError, match="not in the run cache"):
        ews.rename_workspace(tmp_path, "ee" * 10, "New", store)
    named = {w.run_id: w for w in ews.list_workspaces(tmp_path, store)}
    assert named[c].name == "Lasso study" and named[c].named
    assert named[a].name.startswith("Sample: Kang 2018 PBMC")
    assert [w.run_id for w in ews.list_workspaces(tmp_path, store)][0] == c  # renaming is using it

    # Delete: the run folder and every item of it go; the others stay.
    ews.delete_workspace(tmp_path, a, store)
    assert not (tmp_path / a).exists() and not records.has_run(tmp_path, a)
    assert store.summary().get(a) is None
    assert [w.run_id for w in ews.list_workspaces(tmp_path, store)] == [c, b]
    ews.delete_workspace(tmp_path, a, store)  # again: no error


def test_no_runs_no_workspaces(tmp_path):
    assert ews.list_workspaces(tmp_path / "nothing-here") == []


# ---- The Data page's list ---------------------------------------------------------------------------
def _table(at: AppTest) -> pd.DataFrame:
    return next(d.value for d in at.dataframe if "Last used" in d.value.columns)


def _button(at: AppTest, label: str):
    return next(b for b in at.button if b.label == label)


@pytest.mark.slow
def test_the_data_page_lists_opens_renames_and_deletes_workspaces(run_cache, kang_small_path):
    from dashboard import explore as ex
    from dashboard import workspace as ws

    at, state, run = app_with_active_run(run_cache, kang_small_path)
    rid = run.run_id
    db = ws.store()
    db.delete_run(rid)  # what other tests of the session made on the shared run
    # A second workspace: a copy of the run under another id, trained earlier, on the same cells.
    other = "0f" * 10
    shutil.rmtree(run_cache / other, ignore_errors=True)
    shutil.copytree(run_cache / rid, run_cache / other)
    info = json.loads((run_cache / other / "run.json").read_text())
    info["run_id"] = other
    info["metrics"]["created"] = "2026-01-02T03:04:05+00:00"
    (run_cache / other / "run.json").write_text(json.dumps(info))
    db.delete_run(other)

    ws.sync(state)  # records how to open the data, as the Explore page does
    db.put(other, "dataset", "", db.get(rid, "dataset", ""))
    db.put(rid, "cluster_names", "1|0", "B cells")
    ex.save_group(state, "my lasso", state.filtered.obs_names[:20].to_numpy())
    table = pd.DataFrame({"gene": ["CD79A"], "lfc_mean": [3.5]})
    ws.keep_result(state, "de", "B vs rest", table, {"delta": 0.25})
    ws.keep_result(state, "markers", "leiden 1", table, {"resolution": 1.0})

    at.run()
    assert not at.exception, at.exception
    shown = _table(at).set_index("Run")
    assert shown.loc[rid[:10], "Name"] == f"kang_small.h5ad · {rid[:10]} (open)"
    assert shown.loc[rid[:10], "Dataset"] == "kang_small.h5ad"
    assert shown.loc[rid[:10], ["Names", "Groups", "DE", "Markers"]].tolist() == [1, 1, 1, 1]
    assert shown.loc[other[:10], ["Names", "Groups", "DE", "Markers"]].tolist() == [0, 0, 0, 0]
    assert shown.loc[other[:10], "Trained"] == "2 Jan 2026"
    assert list(shown.index[:2]) == [rid[:10], other[:10]]  # last used first

    # Open the other one: its data is loaded, its run active, and it moves to the top.
    at.selectbox(key="workspace_pick").set_value(other).run()
    _button(at, "Open").click().run()
    assert not at.exception, at.exception
    assert state.active_run_id == other
    assert any("Opened kang_small.h5ad" in s.value for s in at.success)
    assert list(_table(at)["Run"][:1]) == [other[:10]]

    # Rename: an empty name is refused with a message and the name stays.
    at.selectbox(key="workspace_pick").set_value(other).run()
    at.text_input(key=f"workspace_new_name_{other}").set_value("   ").run()
    _button(at, "Rename").click().run()
    assert any("it is empty" in e.value for e in at.error)
    assert _table(at).set_index("Run").loc[other[:10], "Name"].startswith("kang_small.h5ad")
    at.text_input(key=f"workspace_new_name_{other}").set_value("Control PBMC, second try").run()
    _button(at, "Rename").click().run()
    assert not at.exception, at.exception
    assert _table(at).set_index("Run").loc[other[:10], "Name"] == "Control PBMC, second try (open)"

    # Delete asks first; "Keep it" keeps it; "Delete for good" removes the run and its items.
    _button(at, "Delete...").click().run()
    assert any("Delete Control PBMC, second try?" in w.value for w in at.warning)
    _button(at, "Keep it").click().run()
    assert other[:10] in list(_table(at)["Run"]) and (run_cache / other).exists()
    _button(at, "Delete...").click().run()
    _button(at, "Delete for good").click().run()
    assert not at.exception, at.exception
    assert other[:10] not in list(_table(at)["Run"]) and rid[:10] in list(_table(at)["Run"])
    assert not (run_cache / other).exists() and db.summary().get(other) is None
    assert state.active_run_id is None  # it was the open one
    assert any("Deleted Control PBMC, second try" in s.value for s in at.success)
    assert db.stamp(rid, "group")[0] == 1  # the other workspace keeps its work
