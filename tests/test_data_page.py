"""The Data page through Streamlit's AppTest: sample at start, live QC counts, uploads, bad input."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from dashboard.state import AppState
from engine.preprocessing import qc as eqc
from engine.reading.load import read_counts

from .conftest import REPO

TIMEOUT = 120


def start() -> AppTest:
    at = AppTest.from_file(str(REPO / "dashboard" / "app.py"), default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, at.exception
    return at


def state_of(at: AppTest) -> AppState:
    return at.session_state["atlas_state"]


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def h5ad_bytes(adata: ad.AnnData, tmp_path) -> bytes:
    path = tmp_path / "upload.h5ad"
    adata.write_h5ad(path)
    return path.read_bytes()


@pytest.fixture(scope="module")
def app() -> AppTest:
    return start()


def test_app_starts_with_the_sample_loaded(app):
    assert metric(app, "Cells") == "12,261"
    assert metric(app, "Genes") == "1,287"
    annotations = next(d.value for d in app.dataframe if list(d.value.columns) == ["column", "type", "categories"])
    assert metric(app, "Cell annotations") == str(len(annotations))
    assert {"donor", "cell_type"} <= set(annotations["column"])
    # where the counts and the names came from (AnnData words) is told only in the scanpy detail
    detail = next(e for e in app.expander if e.label.startswith("For scanpy users"))
    assert "Raw counts: `X`" in detail.markdown[0].value and "var['gene_symbol']" in detail.markdown[0].value
    assert not any("var['" in i.value or "taken from X" in i.value for i in app.info)
    state = state_of(app)
    assert state.filtered.n_obs == 12_261
    # Ensembl ids in var_names; the page shows symbols from var["gene_symbol"]
    assert "CD79A" in set(state.filtered.var["display_name"])
    assert any("12,261 of 12,261 cells" in s.value for s in app.success)


def test_threshold_shows_live_count_and_apply_filters(app):
    min_genes = next(w for w in app.number_input if w.label == "Min genes per cell")
    min_genes.set_value(300).run()
    assert not app.exception
    expected_cells, expected_genes = eqc.filter_masks(
        state_of(app).dataset.adata, eqc.QCThresholds(min_genes=300))
    n = int(expected_cells.sum())
    assert 0 < n < 12_261
    assert any(f"Keeps **{n:,} of 12,261 cells**" in s.value for s in app.success)
    # nothing changes for the other pages until the user applies
    assert state_of(app).filtered.n_obs == 12_261
    next(b for b in app.button if b.label == "Apply filters and gene selection").click().run()
    assert not app.exception
    assert state_of(app).filtered.n_obs == n
    assert state_of(app).filtered.n_vars == int(expected_genes.sum())


def test_upload_replaces_dataset_and_shows_summary(kang_small_path):
    at = start()
    data = kang_small_path.read_bytes()
    at.file_uploader[0].set_value(("kang_small.h5ad", data, "application/octet-stream")).run()
    assert not at.exception
    assert metric(at, "Cells") == "1,145"
    assert state_of(at).dataset.name == "kang_small.h5ad"
    assert not at.error


@pytest.mark.parametrize(
    "name, payload, expected",
    [
        ("counts.xlsx", b"PK\x03\x04 not really", "Unsupported file type"),
        ("counts.h5ad", b"", "0 bytes"),
        ("counts.h5ad", b"\x89HDF\r\n\x1a\n" + b"\x00" * 64, "corrupt"),
    ],
)
def test_bad_upload_keeps_the_loaded_dataset(name, payload, expected):
    at = start()
    before = state_of(at).dataset
    at.file_uploader[0].set_value((name, payload, "application/octet-stream")).run()
    assert not at.exception
    assert any(expected.lower() in e.value.lower() for e in at.error), [e.value for e in at.error]
    assert state_of(at).dataset is before
    assert metric(at, "Cells") == "12,261"


def test_normalised_upload_is_refused_with_a_reason(kang_small_path, tmp_path):
    at = start()
    adata = read_counts(kang_small_path)
    adata.X = adata.X.copy()
    adata.X.data = np.log1p(adata.X.data / 7.0)
    del adata.layers["counts"]
    at.file_uploader[0].set_value(("normalised.h5ad", h5ad_bytes(adata, tmp_path), "application/octet-stream")).run()
    assert not at.exception
    errors = " ".join(e.value for e in at.error)
    assert "not raw counts" in errors or "normalised" in errors or "log" in errors
    assert metric(at, "Cells") == "12,261"


@pytest.mark.parametrize("page", ["../pages/train.py", "../pages/explore.py",
                                  "../pages/differential_expression.py", "../pages/export.py"])
def test_every_page_renders_without_error(page):
    at = start()
    at.switch_page(page).run()
    assert not at.exception
    assert at.title[0].value


def test_mito_prefixes_are_configurable(app):
    # the Kang panel has no MT- genes: the page says so, and another prefix recomputes the metric
    assert any("No gene name starts with MT- or mt-" in i.value for i in app.info)
    next(t for t in app.text_input if t.label == "Mitochondrial gene prefixes").set_value("RPS").run()
    assert not app.exception
    state = state_of(app)
    assert state.mito_prefixes == ("RPS",)
    pct = state.dataset.adata.obs["pct_counts_mt"]
    assert pct.max() > 1.0
    assert any("mitochondrial genes." in c.value for c in app.caption)
