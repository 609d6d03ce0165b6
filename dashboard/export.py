"""Downloadable files, built as bytes by pure functions (no Streamlit): the page only offers them.

- :func:`export_anndata` / :func:`h5ad_bytes`: the annotated dataset, readable by scanpy and
  cellxgene. cellxgene displays ``X``, so ``X`` holds log1p(counts per 10,000) and the raw counts
  stay in ``layers["counts"]``. Gene symbols name the genes (ids in ``var["gene_ids"]``, as
  scanpy's ``read_10x_*``), saved cell groups are ``obs`` columns (:func:`group_columns`), and the
  DE and marker results are in ``uns`` with their parameters (:func:`uns_result`).
- :func:`de_csv_bytes`: a DE table with ``# key: value`` provenance lines (``engine.analysis.de.write_de_csv``).
- :func:`figure_image` (PNG/SVG through kaleido and the local Chromium) and :func:`figure_html`
  (self-contained: plotly.js embedded, works offline).
- :func:`run_bundle`: the run folder as a zip; unzip it into a folder and
  ``engine.runs.storage.load_run(folder, run_id)`` loads the model again.
"""

from __future__ import annotations

import io
import logging
import re
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
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
from engine.reading.genes import make_unique
from engine.runs.fit import write_to_adata

ImageFormat = Literal["png", "svg"]
GeneSet = Literal["run", "all"]
GeneNames = Literal["symbols", "ids"]
# The values of a cell group's obs column (categories in this order).
IN_GROUP, OUT_OF_GROUP = "in", "out"
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

logger = logging.getLogger(__name__)


def export_anndata(
    filtered: ad.AnnData,
    run,
    *,
    clusters: pd.Series | None = None,
    embeddings: dict[str, np.ndarray] | None = None,
    leiden: dict[str, Any] | None = None,
    genes: GeneSet = "run",
    gene_names: GeneNames = "symbols",
    cell_groups: Mapping[str, Sequence[str]] | None = None,
    de: tuple[pd.DataFrame, Mapping[str, Any]] | None = None,
    markers: tuple[pd.DataFrame, Mapping[str, Any]] | None = None,
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
    gene_names
        ``"symbols"`` (scanpy's ``read_10x_*`` convention): ``var_names`` are the gene symbols of
        ``var["display_name"]``, made unique the anndata way (``X``, ``X-1``, ``X-2``), and the ids
        the data came with are kept in ``var["gene_ids"]``. ``"ids"``: ``var_names`` stay the ids
        (symbols in ``var["display_name"]``). Without symbols (no ``display_name``, or the same as
        the ids) the names stay as they are and no ``gene_ids`` column is added.
        ``python -m engine de``/``markers`` read either (the run's genes are matched by id).
    cell_groups
        Saved groups, name -> obs_names of its cells: one ``obs`` column each
        (:func:`group_columns`), and ``uns["atlas_groups"]`` (a table: name, column, cells).
    de, markers
        ``(table, params)`` of the session's DE comparison and marker search: written to
        ``uns["atlas_de"]`` and ``uns["atlas_markers"]`` (:func:`uns_result`).
    """
    if genes not in get_args(GeneSet):
        raise ValueError(f"genes must be one of {', '.join(map(repr, get_args(GeneSet)))}, got {genes!r}")
    if gene_names not in get_args(GeneNames):
        raise ValueError(f"gene_names must be one of {', '.join(map(repr, get_args(GeneNames)))}, "
                         f"got {gene_names!r}")
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
    if gene_names == "symbols":
        var = _symbols_as_var_names(var)
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
    if cell_groups:
        columns = group_columns(cell_groups, out.obs_names, taken=out.obs.columns)
        out.obs = pd.concat([out.obs, columns], axis=1)
        out.uns["atlas_groups"] = pd.DataFrame({
            "name": list(cell_groups),
            "obs_column": list(columns.columns),
            "n_cells": [int((columns[c] == IN_GROUP).sum()) for c in columns.columns],
        })
    for key, result in (("atlas_de", de), ("atlas_markers", markers)):
        if result is not None:
            out.uns[key] = uns_result(*result)
    out.uns["log1p"] = {}  # scanpy: X is log1p-transformed (no "base": natural log)
    _make_cellxgene_safe(out)
    return out


def group_columns(cell_groups: Mapping[str, Sequence[str]], obs_names: pd.Index, *,
                  taken: Sequence[str] = ()) -> pd.DataFrame:
    """One ``obs`` column per saved cell group: categorical ``"in"``/``"out"``, indexed by ``obs_names``.

    One column per group, not one column for all, because groups may overlap (a lasso inside
    another). The column is named ``group_<name>`` with every run of characters other than letters,
    digits and ``_`` turned into ``_`` ("my T cells" -> ``group_my_T_cells``): a name that works in
    ``sc.pl.umap(adata, color="group_my_T_cells")``, as an R column after conversion, and as an
    h5ad key (no ``/``). Names that would clash (with ``taken`` or each other) get ``_2``, ``_3``.
    Values are a categorical (``"in"`` first) rather than booleans so scanpy and cellxgene colour
    them as two categories. Cells of a group that are not in ``obs_names`` (filtered out since it
    was drawn) are left out.
    """
    used = {str(c) for c in taken}
    columns: dict[str, pd.Categorical] = {}
    for name, cells in cell_groups.items():
        stem = "group_" + (re.sub(r"\W+", "_", str(name)).strip("_") or "unnamed")
        column, n = stem, 1
        while column in used:
            n += 1
            column = f"{stem}_{n}"
        used.add(column)
        inside = obs_names.isin(np.asarray(cells, dtype=str))
        columns[column] = pd.Categorical(np.where(inside, IN_GROUP, OUT_OF_GROUP),
                                         categories=[IN_GROUP, OUT_OF_GROUP])
    return pd.DataFrame(columns, index=obs_names)


def uns_result(table: pd.DataFrame, params: Mapping[str, Any]) -> dict[str, Any]:
    """A DE or marker result as ``write_h5ad`` stores it: ``{"params": {...}, "table": DataFrame}``.

    Parameters that h5ad cannot hold are made storable: None is left out, a mapping with a key
    h5ad refuses (a group name holding ``/``) becomes a ``key``/``value`` table, sequences become
    arrays of text, other objects text.
    Columns of the table that hold text become strings (h5ad refuses mixed objects).
    """
    table = table.copy()
    for name in table.columns:
        if table[name].dtype == object:
            table[name] = table[name].astype(str)
    return {"params": {str(k): _storable(v) for k, v in params.items() if v is not None}, "table": table}


def _storable(value: Any) -> Any:
    if isinstance(value, (bool, int, float, str, np.integer, np.floating, np.bool_, pd.DataFrame)):
        return value
    if isinstance(value, Mapping):
        if all(isinstance(k, str) and "/" not in k for k in value):
            return {k: _storable(v) for k, v in value.items() if v is not None}
        values = pd.Series(list(value.values()))
        return pd.DataFrame({"key": [str(k) for k in value],
                             "value": values.astype(str) if values.dtype == object else values})
    if isinstance(value, (list, tuple, np.ndarray)):
        return np.asarray([str(v) for v in value], dtype=object)
    return str(value)


def _symbols_as_var_names(var: pd.DataFrame) -> pd.DataFrame:
    """``var`` named by its unique display names, the ids kept in ``var["gene_ids"]`` (scanpy's 10x layout)."""
    if "display_name" not in var.columns:
        return var
    symbols, _, _ = make_unique(var["display_name"].astype(str))
    ids = pd.Index(var.index.astype(str))
    if (symbols == ids).all():
        return var
    var = var.copy()
    var["gene_ids"] = ids.to_numpy(dtype=object)
    var.index = pd.Index(symbols.to_numpy(dtype=object))
    return var


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
    try:
        return pio.to_image(printable, format=fmt, width=width, height=height, scale=scale)
    except Exception as err:  # noqa: BLE001 - only kaleido's own start-up race is retried (below)
        # On a loaded machine kaleido can send its render call before its page has defined the
        # render functions ("ReferenceError: kaleido_scopes is not defined", seen once in a CI run
        # at load average 5). A second try opens a fresh tab; anything else is raised as it was.
        if not type(err).__module__.startswith("kaleido") or "is not defined" not in str(err):
            raise
        logger.warning("kaleido was not ready to render (%s): trying once more", type(err).__name__)
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
