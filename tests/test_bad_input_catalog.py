"""Catalog of bad input, through the pages where a user meets it.

Every case must end in a clear message (what is wrong, what to do), no traceback on the page, and
the dataset and runs the user already had still in use. Uploads go through the Data page's file
uploader (Streamlit's AppTest); QC settings through the Data page; training options through the
Train page and its checks; DE groups and the run cache through the functions the pages call.
Engine-level reader cases with exact messages are in tests/test_bad_input_io.py.
"""

from __future__ import annotations

import gzip
import io
import re
import tarfile
import tempfile
import zipfile
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
import pytest
from scipy import sparse
from scipy.io import mmwrite
from streamlit.testing.v1 import AppTest

from dashboard import training
from dashboard.summary import batch_columns
from dashboard.train_form import TrainForm
from engine.analysis import de as ede
from engine.model.params import RunParams
from engine.reading.load import read_counts
from engine.runs.records import list_runs

from .conftest import REPO, app_with_active_run

pytestmark = pytest.mark.slow

GENES = ["CD3E", "MS4A1", "LYZ", "NKG7", "GNLY", "CD14", "FCGR3A", "PPBP"]


# ------------------------------------------------------------------------------------- payloads
def counts_frame(n_cells: int = 8, n_genes: int = 6, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    barcodes = ["".join(rng.choice(list("ACGT"), 16)) + "-1" for _ in range(n_cells)]
    return pd.DataFrame(rng.poisson(3.0, (n_cells, n_genes)) + 1, index=barcodes, columns=GENES[:n_genes])


def h5ad_bytes(x, *, var_names=None, obs: pd.DataFrame | None = None) -> bytes:
    n_cells, n_genes = x.shape
    adata = ad.AnnData(
        X=x, obs=obs if obs is not None else pd.DataFrame(index=[f"c{i}" for i in range(n_cells)]),
        var=pd.DataFrame(index=var_names or [f"G{i}" for i in range(n_genes)]))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "x.h5ad"
        adata.write_h5ad(path)
        return path.read_bytes()


def h5ad_obs_shorter_than_x() -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "x.h5ad"
        path.write_bytes(h5ad_bytes(counts_frame().to_numpy(np.float32)))
        with h5py.File(path, "r+") as f:
            index = f["obs"]["_index"][:5]
            del f["obs"]["_index"]
            f["obs"].create_dataset("_index", data=index).attrs.update(
                {"encoding-type": "string-array", "encoding-version": "0.2.0"})
        return path.read_bytes()


def tenx_members(frame: pd.DataFrame, *, n_barcodes: int | None = None) -> dict[str, bytes]:
    matrix = io.BytesIO()
    mmwrite(matrix, sparse.coo_matrix(frame.to_numpy().T.astype(float)))
    genes = "".join(f"{g}\t{g}\tGene Expression\n" for g in frame.columns).encode()
    barcodes = "".join(f"{b}\n" for b in list(frame.index)[: n_barcodes or len(frame)]).encode()
    return {"matrix.mtx": matrix.getvalue(), "features.tsv": genes, "barcodes.tsv": barcodes}


def zip_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def tar_gz_bytes(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def csv_bytes(frame: pd.DataFrame, sep: str = ",") -> bytes:
    return frame.to_csv(sep=sep).encode()


def with_text_cell() -> bytes:
    frame = counts_frame().astype(object)
    frame.iloc[2, 3] = "n/a?"
    return csv_bytes(frame)


def with_value(value: float) -> bytes:
    frame = counts_frame().astype(float)
    frame.iloc[1, 1] = value
    return csv_bytes(frame)


def log_transformed() -> bytes:
    return h5ad_bytes(np.log1p(counts_frame().to_numpy(np.float32)))


def normalised() -> bytes:
    x = counts_frame(seed=3).to_numpy(np.float64)
    return h5ad_bytes((x / x.sum(axis=1, keepdims=True) * 1e4).astype(np.float32))


def members_only(*names: str) -> dict[str, bytes]:
    members = tenx_members(counts_frame())
    return {f"filtered_feature_bc_matrix/{n}": members[n] for n in names}


# (case id, uploaded file name, bytes, what the error must say)
UPLOAD_CASES = [
    ("empty h5ad", "counts.h5ad", lambda: b"", r"is empty \(0 bytes\)"),
    ("empty csv", "counts.csv", lambda: b"", r"is empty \(0 bytes\)"),
    ("truncated h5ad", "kang.h5ad", None, r"truncated or corrupt.*again"),
    ("garbage h5ad", "counts.h5ad", lambda: b"not hdf5 at all " * 64, r"truncated or corrupt"),
    ("hdf5 magic, no content", "counts.h5", lambda: b"\x89HDF\r\n\x1a\n" + b"\0" * 200, r"10x Genomics HDF5.*corrupt"),
    ("garbage loom", "counts.loom", lambda: b"\0\1\2\3" * 100, r"Loom file.*corrupt"),
    ("unsupported type", "counts.xlsx", lambda: b"PK\x03\x04 xl", r"Unsupported file type '\.xlsx'.*Supported"),
    ("no extension", "counts", lambda: b"1,2,3", r"Unsupported file type.*no extension"),
    ("pickle upload", "model.pkl", lambda: b"\x80\x04\x95", r"Unsupported file type '\.pkl'"),
    ("text in numeric cells", "counts.csv", with_text_cell, r"text where a count should be.*'n/a\?'"),
    ("ragged csv", "counts.csv", lambda: b",A,B,C\nc1,1,2\nc2,1,2,3,4,5\n", r"ragged|truncated or corrupt"),
    ("header only csv", "counts.csv", lambda: b",CD3E,LYZ\n", r"no rows|empty table"),
    ("negative values", "counts.csv", lambda: with_value(-2.5), r"negative values.*raw UMI"),
    ("NaN value", "counts.tsv", lambda: with_value(np.nan).replace(b",", b"\t"), r"NaN or infinite.*should be 0"),
    ("infinite value", "counts.csv", lambda: with_value(np.inf), r"NaN or infinite"),
    ("log-transformed", "log.h5ad", log_transformed, r"log-transformed.*raw counts"),
    ("normalised", "norm.h5ad", normalised, r"normalised.*raw counts"),
    ("obs and X disagree", "bad.h5ad", h5ad_obs_shorter_than_x, r"obs describes 5 cells but X has 8 rows"),
    ("one gene", "one_gene.h5ad", lambda: h5ad_bytes(counts_frame(n_genes=1).to_numpy(np.float32), var_names=["CD3E"]),
     r"only 1 gene\(s\) with any counts"),
    ("one cell", "one_cell.h5ad", lambda: h5ad_bytes(counts_frame(n_cells=1).to_numpy(np.float32)),
     r"only 1 cell\(s\)"),
    ("all zeros", "zeros.h5ad", lambda: h5ad_bytes(sparse.csr_matrix((20, 10), dtype=np.float32)),
     r"only zeros|only 0 cell"),
    ("no cells", "none.h5ad", lambda: h5ad_bytes(sparse.csr_matrix((0, 10), dtype=np.float32)), r"empty \(0 cells"),
    ("zip without matrix.mtx", "10x.zip", lambda: zip_bytes(members_only("features.tsv", "barcodes.tsv")),
     r"holds no 10x matrix\.mtx"),
    ("10x zip without barcodes", "10x.zip", lambda: zip_bytes(members_only("matrix.mtx", "features.tsv")),
     r"no barcodes\.tsv.*all three files"),
    ("10x tar.gz, barcodes short", "10x.tar.gz",
     lambda: tar_gz_bytes({f"run/{k}": v for k, v in tenx_members(counts_frame(), n_barcodes=5).items()}),
     r"inconsistent.*lists 5 barcodes"),
    ("zip members escaping the folder", "evil.zip",
     lambda: zip_bytes({f"../../{k}": v for k, v in tenx_members(counts_frame()).items()}), r"holds no 10x matrix"),
    ("corrupt zip", "10x.zip", lambda: b"PK\x03\x04" + b"\xff" * 300, r"archive.*corrupt"),
    ("corrupt gzip csv", "counts.csv.gz", lambda: b"\x1f\x8b\x08\x00" + b"\0" * 40, r"text table.*corrupt"),
    ("gzip of garbage text", "counts.csv.gz", lambda: gzip.compress(b"\xff\xfe\x00binary\x00" * 50),
     r"corrupt|no rows|empty|text where a count"),
    ("matrix.mtx alone", "matrix.mtx", lambda: tenx_members(counts_frame())["matrix.mtx"],
     r"'matrix.mtx' alone cannot be read.*Upload the whole folder as a \.zip"),
]


@pytest.fixture(scope="module")
def session(run_cache, kang_small_path):
    """One user's session: the small Kang fixture uploaded, a trained run active."""
    at, state, run = app_with_active_run(run_cache, kang_small_path, batch_key="donor")
    at.run()
    assert not at.exception, at.exception
    return at, state, run


def page_text(at: AppTest) -> str:
    parts = [e.value for e in [*at.error, *at.warning, *at.info, *at.success, *at.markdown, *at.caption]]
    return "\n".join(map(str, parts))


def assert_still_usable(at: AppTest, state, run) -> None:
    """No traceback anywhere on the page; the same dataset and run as before, and they still work."""
    assert not at.exception, at.exception
    assert "Traceback" not in page_text(at)
    assert state.dataset.name == "kang_small.h5ad"
    assert state.filtered.n_obs == run.latent.shape[0]
    assert state.active_run_id == run.run_id
    loaded = training.load_run(run.run_id)
    assert loaded is not None and loaded.latent.shape == run.latent.shape
    assert next(m.value for m in at.metric if m.label == "Cells") == f"{state.dataset.adata.n_obs:,}"


@pytest.mark.parametrize("case, name, make, expected", UPLOAD_CASES, ids=[c[0] for c in UPLOAD_CASES])
def test_bad_upload(session, kang_small_path, case, name, make, expected):
    at, state, run = session
    data = kang_small_path.read_bytes()[: kang_small_path.stat().st_size // 2] if make is None else make()
    at.file_uploader[0].set_value((name, data, "application/octet-stream")).run()
    errors = [e.value for e in at.error]
    assert errors and re.search(expected, errors[0], re.S), (case, errors)
    # messages name the user's file, never the temporary copy the server read
    assert "'upload." not in errors[0] and "atlas-upload-" not in errors[0], errors[0]
    assert "Still using **kang_small.h5ad**" in page_text(at)
    assert_still_usable(at, state, run)


# -------------------------------------------------------------------------------------------- QC
def qc_input(at: AppTest, label: str):
    return next(w for w in at.number_input if w.label == label)


def apply_filters(at: AppTest) -> None:
    next(b for b in at.button if b.label == "Apply filters and gene selection").click().run()


@pytest.mark.parametrize("label, value, expected", [
    ("Min genes per cell", 100_000, r"Keeps \*\*0 of"),
    ("Min counts per cell", 1e9, r"Keeps \*\*0 of"),
    ("Min cells per gene", 100_000, r"0 of 1,287 genes"),
], ids=["no cell has that many genes", "no cell has that many counts", "no gene in that many cells"])
def test_qc_thresholds_that_remove_everything(session, label, value, expected):
    at, state, run = session
    filtered = state.filtered
    qc_input(at, label).set_value(value).run()
    assert any(re.search(expected, w.value) for w in at.warning), [w.value for w in at.warning]
    apply_filters(at)
    errors = [e.value for e in at.error]
    assert any(re.search(r"no cells|no genes|remove|relax|lower", e, re.I) for e in errors), errors
    assert state.filtered is filtered  # the filtered data in use did not change
    qc_input(at, label).set_value(0).run()
    assert_still_usable(at, state, run)


def test_qc_max_counts_below_min_counts(session):
    at, state, run = session
    qc_input(at, "Min counts per cell").set_value(500.0).run()
    qc_input(at, "Max counts per cell (0 = none)").set_value(100.0).run()
    assert any("must be at least min_counts" in e.value for e in at.error), [e.value for e in at.error]
    qc_input(at, "Max counts per cell (0 = none)").set_value(0.0).run()
    qc_input(at, "Min counts per cell").set_value(0.0).run()
    assert_still_usable(at, state, run)


# ---------------------------------------------------------------------------------- training options
def test_latent_larger_than_the_genes_on_the_train_page(session):
    at, state, run = session
    at.switch_page("../pages/train.py").run()
    next(s for s in at.slider if s.label == "Latent size").set_value(64)
    next(n for n in at.number_input if n.label.startswith("Highly variable genes")).set_value(50)
    next(b for b in at.button if b.label == "Train").click().run()
    kind, text = state.training_message
    assert kind == "error" and "larger than the number of genes (50)" in text
    # shown on the page, although an earlier upload in this session failed
    assert any("larger than the number of genes (50)" in e.value for e in at.error), state.load_error
    assert state.watched_job is None and state.active_run_id == run.run_id
    assert not at.exception
    at.switch_page("../pages/data.py").run()
    assert_still_usable(at, state, run)


@pytest.mark.parametrize("form, expected", [
    (TrainForm(options={"likelihood": "gamma"}), r"likelihood.*choose one of.*zinb"),
    (TrainForm(options={"dispersion": "gene-planet"}), r"dispersion.*choose one of"),
    (TrainForm(options={"lr": -1.0}), r"lr must be > 0"),
    (TrainForm(options={"dropout": 1.5}), r"dropout must be in \[0, 1\)"),
    (TrainForm(options={"n_latent": 0}), r"n_latent must be a positive integer"),
], ids=["unknown likelihood", "unknown dispersion", "negative learning rate", "dropout above 1", "latent 0"])
def test_training_options_refused_with_allowed_values(form, expected):
    with pytest.raises(ValueError, match=expected):
        form.params()


def float_batch_data(kang_small_path) -> ad.AnnData:
    adata = read_counts(kang_small_path)
    adata.obs["dose"] = np.round(np.random.default_rng(0).uniform(0, 1, adata.n_obs), 2)
    return adata


def test_batch_column_of_floats_is_not_offered_and_missing_labels_refused(kang_small_path):
    adata = float_batch_data(kang_small_path)
    assert "dose" not in batch_columns(adata)  # 100s of float values: not a batch
    assert "donor" in batch_columns(adata)
    adata.obs.loc[adata.obs_names[:4], "dose"] = np.nan
    check = training.check_training(adata, params=RunParams(), batch_key="dose")
    assert check.errors and "'dose' has 4 cells with no value" in check.errors[0]


def test_single_cell_left_cannot_train(kang_small_path):
    adata = read_counts(kang_small_path)[:1].copy()
    check = training.check_training(adata, params=RunParams(), batch_key=None)
    assert any("at least 2 cells" in e for e in check.errors)


# ------------------------------------------------------------------------------------- DE groups
@pytest.fixture(scope="module")
def labelled(kang_small_path) -> ad.AnnData:
    return read_counts(kang_small_path)


@pytest.mark.parametrize("kwargs, expected", [
    (dict(groupby="tissue", group1="a", group2="rest"),
     r"'tissue' is not a column of adata.obs; available: .*cell_type"),
    (dict(groupby="cell_type", group1="Martians", group2="rest"), r"no value 'Martians'; values present: .*B cells"),
    (dict(groupby="cell_type", group1="B cells", group2="B cells"), r"both 'B cells': pick two different"),
    (dict(groupby="cell_type", group1="B cells", group2="NK cells", within=("donor", "nobody")),
     r"donor has no value 'nobody'"),
], ids=["unknown column", "unknown value", "same group twice", "within an unknown value"])
def test_de_groups_from_annotations(labelled, kwargs, expected):
    with pytest.raises(ValueError, match=expected):
        ede.groups_from_obs(labelled, **kwargs)


def test_de_group_empty_inside_restriction(labelled):
    adata = labelled.copy()
    adata.obs["part"] = np.where(adata.obs["cell_type"].astype(str) == "B cells", "only B", "others")
    with pytest.raises(ValueError, match=r"group1 \(cell_type == 'NK cells'\) has no cells inside part == 'only B'"):
        ede.groups_from_obs(adata, groupby="cell_type", group1="NK cells", group2="rest", within=("part", "only B"))


@pytest.mark.parametrize("make, expected", [
    (lambda n: (np.arange(n) < 2, np.arange(n) >= 2), r"group1 has 2 cells.*at least 3"),
    (lambda n: (np.arange(n) < 50, np.arange(n) < 80), r"share 50 cells"),
    (lambda n: (np.arange(n) < 50, np.arange(n - 1) >= 50), r"boolean mask with one entry per cell"),
    (lambda n: (np.arange(10), np.arange(10, 20)), r"boolean mask.*np\.isin"),
], ids=["group of 2 cells", "overlapping groups", "mask of the wrong length", "indices instead of a mask"])
def test_de_group_masks(labelled, make, expected):
    group1, group2 = make(labelled.n_obs)
    with pytest.raises(ValueError, match=expected):
        ede.check_groups(labelled, group1=group1, group2=group2)


# ------------------------------------------------------------------------------------- run cache
@pytest.mark.parametrize("damage", ["truncated weights", "broken run.json", "missing history"])
def test_damaged_cached_run_is_not_listed_and_the_page_survives(session, run_cache, damage):
    at, state, run = session
    from engine.runs.fit import fit

    damaged = fit(state.filtered.copy(), params=RunParams(max_epochs=1, seed=100 + len(damage)),
                  batch_key=None, cache_dir=run_cache)
    folder = run_cache / damaged.run_id
    if damage == "truncated weights":
        data = (folder / "model.pt").read_bytes()
        (folder / "model.pt").write_bytes(data[: len(data) // 2])
    elif damage == "broken run.json":
        (folder / "run.json").write_text('{"run_id": "')
    else:
        (folder / "history.csv").unlink()
    assert damaged.run_id not in {r.run_id for r in list_runs(run_cache)}
    at.switch_page("../pages/train.py").run()
    assert not at.exception, at.exception
    listed = [df.value for df in at.dataframe if "run" in df.value.columns]
    assert listed and damaged.run_id[:10] not in set(listed[0]["run"])
    assert run.run_id[:10] in set(listed[0]["run"])
    at.switch_page("../pages/data.py").run()
    assert_still_usable(at, state, run)


# ------------------------------------------------------------------- odd but valid input is loaded
def test_unicode_and_very_long_gene_names_load(tmp_path):
    frame = counts_frame(n_cells=30, n_genes=6)
    long_name = "GENE_" + "X" * 500
    frame.columns = ["Ifnγ", "αβTCR", long_name, "NKG7", "GNLY", "基因"]
    at = AppTest.from_file(str(REPO / "dashboard" / "app.py"), default_timeout=120)
    at.run()
    at.file_uploader[0].set_value(("ünïcødé.csv", csv_bytes(frame), "text/csv")).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    state = at.session_state["atlas_state"]
    assert state.dataset.name == "ünïcødé.csv"
    assert list(state.dataset.adata.var["display_name"]) == list(frame.columns)


def test_100k_all_zero_columns_load_sparse_and_are_reported(tmp_path):
    n_cells, n_genes = 60, 100_000
    rng = np.random.default_rng(1)
    rows = np.repeat(np.arange(n_cells), 20)
    cols = rng.integers(0, 40, size=rows.size)
    x = sparse.csr_matrix((np.ones(rows.size, np.float32), (rows, cols)), shape=(n_cells, n_genes))
    at = AppTest.from_file(str(REPO / "dashboard" / "app.py"), default_timeout=120)
    at.run()
    at.file_uploader[0].set_value(("wide.h5ad", h5ad_bytes(x), "application/octet-stream")).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    state = at.session_state["atlas_state"]
    n_detected = np.unique(cols).size
    assert state.dataset.adata.shape == (n_cells, n_detected)
    assert sparse.issparse(state.dataset.adata.X)
    assert any(f"{n_genes - n_detected:,} genes with no counts in any cell were dropped" in i.value for i in at.info)


def test_pressing_train_on_a_corrupt_cached_run_trains_it_again(session, run_cache):
    at, state, run = session
    at.switch_page("../pages/train.py").run()
    next(c for c in at.checkbox if c.label == "Epochs: automatic").uncheck()
    next(n for n in at.number_input if n.label == "Epochs (if not automatic)").set_value(2)
    next(s for s in at.selectbox if s.label == "Likelihood").set_value("poisson")
    next(b for b in at.button if b.label == "Train").click().run()
    rid = state.watched_job
    assert rid is not None, state.training_message
    assert training.job_board().get(rid).wait(timeout=120)
    at.run()
    assert state.active_run_id == rid
    model = run_cache / rid / "model.pt"
    model.write_bytes(model.read_bytes()[:100])  # damaged on disk, e.g. by a full disk
    training.load_run.clear()  # as after a server restart
    next(b for b in at.button if b.label == "Train").click().run()
    assert not at.exception, at.exception
    job = training.job_board().get(state.watched_job or "")
    assert job is not None and job.run_id == rid, state.training_message
    assert job.wait(timeout=120) and job.status == "finished", job.error
    at.run()
    assert state.active_run_id == rid and training.load_run(rid) is not None
    state.active_run_id = run.run_id  # back to the session's run for the other cases
    at.switch_page("../pages/data.py").run()
    assert_still_usable(at, state, run)
