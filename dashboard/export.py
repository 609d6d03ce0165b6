"""Downloadable files, built as bytes by pure functions (no Streamlit): the page only offers them.

- :func:`export_anndata` / :func:`h5ad_bytes`: the annotated dataset, readable by scanpy and
  cellxgene. cellxgene displays ``X``, so ``X`` holds log1p(counts per 10,000) and the raw counts
  stay in ``layers["counts"]``.
- :func:`de_csv_bytes`: a DE table with ``# key: value`` provenance lines (``engine.analysis.de.write_de_csv``).
- :func:`figure_image` (PNG/SVG through kaleido and the local Chromium) and :func:`figure_html`
  (self-contained: plotly.js embedded, works offline).
- :func:`run_bundle`: the run folder as a zip; unzip it into a folder and
  ``engine.runs.storage.load_run(folder, run_id)`` loads the model again.
"""

from __future__ import annotations

import io
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal, get_args

import anndata as ad
import numpy as np
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
import scipy.sparse as sp

from engine.analysis import de as ede
from engine.preprocessing.normalize import TARGET_SUM, log_normalized
from engine.runs.fit import write_to_adata

ImageFormat = Literal["png", "svg"]
GeneSet = Literal["run", "all"]
# Normalised total per cell of X in the export (scanpy's normalize_total target_sum).
# Static image sizes in CSS pixels at 100 px per inch (journal column widths: 89 and 183 mm);
# PNG is rendered at PNG_SCALE, i.e. 300 dpi at these sizes.
FIGURE_SIZES: Mapping[str, tuple[int, int]] = MappingProxyType({
    "double column (183 mm)": (720, 540),
    "single column (89 mm)": (350, 330),
    "slide (16:9)": (1000, 562),
})
IMAGE_WIDTH, IMAGE_HEIGHT = FIGURE_SIZES["double column (183 mm)"]
PNG_SCALE = 3


def export_anndata(
    filtered: ad.AnnData,
    run,
    *,
    clusters: pd.Series | None = None,
    embeddings: dict[str, np.ndarray] | None = None,
    leiden: dict[str, Any] | None = None,
    genes: GeneSet = "run",
) -> ad.AnnData:
    """The filtered cells with everything the dashboard learned about them, scanpy conventions.

    Parameters
    ----------
    filtered
        The filtered data (``layers["counts"]`` raw counts), one row per cell of the run.
    run
        The trained run (:class:`engine.runs.records.Run`): ``obsm["X_scVI"]`` is its latent mean,
        ``uns["atlas_run"]`` its provenance (:func:`engine.runs.fit.write_to_adata`).
    clusters
        Leiden labels (renamed by the user), indexed by obs_names: written to ``obs["leiden"]``.
    embeddings
        ``{"X_umap": (n_cells, 2), "X_tsne": ...}`` rows in ``filtered``'s order.
    leiden
        Written to ``uns["leiden"]`` (scanpy's: ``{"params": {"resolution": ...}}``).
    genes
        ``"run"``: only the genes the model was trained on (what ``python -m engine de`` expects);
        ``"all"``: every gene after QC, with ``var["used_by_run"]`` flagging the run's.
    """
    if genes not in get_args(GeneSet):
        raise ValueError(f"genes must be one of {', '.join(map(repr, get_args(GeneSet)))}, got {genes!r}")
    if filtered.n_obs != run.latent.shape[0]:
        raise ValueError(
            f"the run has a latent for {run.latent.shape[0]} cells but the data has {filtered.n_obs}: "
            "export the data the run was trained on (same QC thresholds)")
    if "counts" not in filtered.layers:
        raise ValueError("the data has no layers['counts']: load it on the Data page again")
    run_genes = pd.Index(run.var_names)
    keep = run_genes if genes == "run" else filtered.var_names
    counts = sp.csr_matrix(filtered[:, keep].layers["counts"], dtype=np.float32)

    var = filtered.var.loc[keep].copy()
    if genes == "all":
        var["used_by_run"] = var.index.isin(run_genes)
    out = ad.AnnData(
        X=log_normalized(counts, library=np.asarray(filtered.layers["counts"].sum(axis=1)).ravel()).astype(np.float32),
        obs=filtered.obs.copy(),
        var=var,
        layers={"counts": counts},
    )
    write_to_adata(out, run)  # obsm["X_scVI"] and uns["atlas_run"] (id, params, metrics, history)
    out.uns["atlas_run"]["X"] = f"log1p(counts per {TARGET_SUM:,.0f}); raw counts in layers['counts']"
    for key, coords in (embeddings or {}).items():
        coords = np.asarray(coords, dtype=np.float32)
        if not key.startswith("X_") or coords.shape != (out.n_obs, 2):
            raise ValueError(f"embedding {key!r} must be named X_<name> and be (n_cells, 2), got {coords.shape}")
        out.obsm[key] = coords
    if clusters is not None:
        labels = clusters.reindex(out.obs_names).astype(str)
        out.obs["leiden"] = pd.Categorical(labels, categories=sorted(set(labels), key=_natural))
    if leiden is not None:
        out.uns["leiden"] = leiden
    out.uns["log1p"] = {}  # scanpy: X is log1p-transformed (no "base": natural log)
    _make_cellxgene_safe(out)
    return out


def h5ad_bytes(adata: ad.AnnData) -> bytes:
    """``adata`` as the bytes of a gzip-compressed .h5ad file."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "export.h5ad"
        adata.write_h5ad(path, compression="gzip")
        return path.read_bytes()


def de_csv_bytes(table: pd.DataFrame, *, provenance: dict[str, object]) -> bytes:
    """A DE table as CSV bytes, headed by ``# key: value`` provenance lines (date and versions added).

    Read back with ``pd.read_csv(file, comment="#", index_col=0)``.
    """
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "de.csv"
        ede.write_de_csv(table, path, provenance=provenance)
        return path.read_bytes()


def figure_image(fig: go.Figure, *, fmt: ImageFormat = "png", size: str = "double column (183 mm)") -> bytes:
    """A static PNG (300 dpi) or SVG of a figure at a publication ``size`` (:data:`FIGURE_SIZES`).

    kaleido drives the local Chromium (a few seconds). The figure is laid out for print: white
    background, no fixed on-screen height, margins that grow to fit titles and tick labels.
    """
    if fmt not in get_args(ImageFormat):
        raise ValueError(f"fmt must be one of {', '.join(map(repr, get_args(ImageFormat)))}, got {fmt!r}")
    if size not in FIGURE_SIZES:
        raise ValueError(f"size must be one of {', '.join(map(repr, FIGURE_SIZES))}, got {size!r}")
    width, height = FIGURE_SIZES[size]
    printable = go.Figure(fig)
    printable.update_layout(width=width, height=height, paper_bgcolor="white", template="plotly_white",
                            font=dict(size=11 if width < 500 else 12))
    printable.update_xaxes(automargin=True)
    printable.update_yaxes(automargin=True)
    scale = PNG_SCALE if fmt == "png" else 1
    return pio.to_image(printable, format=fmt, width=width, height=height, scale=scale)


def figure_html(fig: go.Figure) -> bytes:
    """An interactive, self-contained HTML page of a figure (plotly.js embedded: works offline)."""
    return pio.to_html(fig, include_plotlyjs=True, full_html=True).encode("utf-8")


def run_bundle(run) -> bytes:
    """The run's cache folder as a zip holding ``<run_id>/model.pt, run.json, history.csv, latent.npy``.

    Unzip it into any folder ``F`` and ``engine.runs.storage.load_run(F, run_id)`` loads the run.
    """
    if run.path is None or not Path(run.path).is_dir():
        raise ValueError(f"run {run.run_id} has no cache folder to bundle: train it with a cache_dir")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for file in sorted(Path(run.path).iterdir()):
            if file.is_file():
                archive.write(file, arcname=f"{run.run_id}/{file.name}")
    return buffer.getvalue()


def _natural(label: str) -> tuple[int, int | str]:
    """Sort key putting numeric labels in numeric order ("2" before "10"), then names."""
    return (0, int(label)) if label.isdigit() else (1, label)


def _make_cellxgene_safe(adata: ad.AnnData) -> None:
    """Unique names; obs/var text columns as categoricals of strings (no mixed-type objects)."""
    if not adata.obs_names.is_unique or not adata.var_names.is_unique:
        raise ValueError("cell and gene names must be unique for cellxgene: reload the data (the "
                         "Data page makes gene names unique)")
    for frame in (adata.obs, adata.var):
        for name in frame.columns:
            column = frame[name]
            if column.dtype == object:
                frame[name] = pd.Categorical(column.astype(str).where(column.notna(), "nan"))
