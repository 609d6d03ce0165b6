"""Explore page glue: cached embeddings and clusters of the active run, colourings, cell groups.

Everything slow is cached with ``st.cache_data`` keyed on the run id and ``state.filtered_key``, so a
change of colour, point size or group recomputes nothing but the colour vector:

- the kNN graph of the latent (:func:`engine.analysis.neighbors.neighbors`), then UMAP and Leiden from it;
- t-SNE, only when the user asks for it;
- Leiden per resolution; observed and denoised expression per gene;
- the batch-correction comparison (uncorrected PCA + UMAP, batch-mixing metrics), on demand.

The graph with the UMAP, the t-SNE and the batch panel are long jobs: they run on the Dask
cluster's workers when it is up (:mod:`dashboard.long_jobs`); the results are cached here. The
UMAP, the t-SNE, the graph and the Leiden labels of each resolution are also kept in the run's
folder (:mod:`engine.runs.views`): at 1M cells a restarted server shows them in seconds, where
computing them again takes minutes.

The Export and Differential expression pages use :func:`cluster_labels`, :func:`explored_adata`
and ``state.cell_groups`` (name -> obs_names), which the functions here keep.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Literal, get_args

import anndata as ad
import numpy as np
import pandas as pd
import plotly.graph_objects as go
import scipy.sparse as sp
import streamlit as st

from dashboard import workspace
from dashboard.active_run import active_run
from dashboard.explore_figures import Colouring, embedding_scatter
from dashboard.imported import saved_resolution
from dashboard.long_jobs import batch_metrics_job, first_view_job, graph_job, run_long, tsne_job, uncorrected_job
from dashboard.progress import progress_bar
from dashboard.state import AppState
from engine.analysis import batch_metrics as ebm
from engine.analysis import clustering as eclust
from engine.analysis import embedding as eemb
from engine.preprocessing.normalize import TARGET_SUM, log_normalized
from engine.runs import views as eviews

Embedding = Literal["UMAP", "t-SNE"]
ColourSource = Literal["Cluster", "Annotation", "QC metric", "Gene"]
Expression = Literal["observed", "denoised"]
OWN_EMBEDDINGS = MappingProxyType({"UMAP": "X_umap", "t-SNE": "X_tsne"})
# Decoding every cell for denoised colours takes ~0.06 s per 1,000 cells on 2 cores: done ahead
# of time up to this size, on demand above it.
PREPARE_DENOISED_MAX_CELLS = 30_000
DENOISED_NEEDS_MODEL = ("Denoised values need a trained model, and this run was opened from a file "
                        "without one: show the observed expression, or train a model on the Train page.")

QC_METRICS = {
    "total_counts": "Total counts",
    "n_genes_by_counts": "Genes detected",
    "pct_counts_mt": "% mitochondrial counts",
}
SEED = 0
# Numeric annotations with more distinct values than this are drawn with a colour scale.
MAX_CATEGORIES = 20


def _check(value: str, allowed: type, what: str) -> None:
    options = get_args(allowed)
    if value not in options:
        raise ValueError(f"{what} must be one of {', '.join(map(repr, options))}; got {value!r}")


def _latent_adata(latent: np.ndarray, n_obs: int) -> ad.AnnData:
    adata = ad.AnnData(obs=pd.DataFrame(index=pd.RangeIndex(n_obs).astype(str)))
    adata.obsm["X_scVI"] = np.asarray(latent, dtype=np.float32)
    return adata


@dataclass(frozen=True)
class Graph:
    """The kNN graph of a representation, as :func:`engine.analysis.neighbors.neighbors` writes it."""

    distances: sp.csr_matrix
    connectivities: sp.csr_matrix
    params: dict

    def write(self, adata: ad.AnnData) -> None:
        """Store the graph in ``adata`` (``obsp`` and ``uns["neighbors"]``), as the engine's neighbours step does."""
        adata.obsp["distances"] = self.distances
        adata.obsp["connectivities"] = self.connectivities
        adata.uns["neighbors"] = {"connectivities_key": "connectivities",
                                  "distances_key": "distances", "params": dict(self.params)}


@st.cache_data(show_spinner=False, max_entries=8)
def _first_view(run_id: str, key: str, _latent: np.ndarray, _run_path: Path | None) -> tuple[Graph, np.ndarray]:
    """The latent's kNN graph (kept here for Leiden at any resolution) and its UMAP, from one long job.

    Both are kept in the run's folder (:mod:`engine.runs.views`), so no server computes them twice.
    """
    with progress_bar(f"UMAP of {len(_latent):,} cells (first time only)") as show:
        distances, connectivities, params, coords = run_long(first_view_job, _latent, seed=SEED, show=show)
    if _run_path is not None:
        eviews.save_view(_run_path, "X_umap", coords)
        eviews.save_graph(_run_path, distances, connectivities, params)
    return Graph(distances, connectivities, params), coords


@st.cache_data(show_spinner=False, max_entries=8)
def _graph(run_id: str, key: str, _latent: np.ndarray, _run_path: Path | None) -> Graph:
    """The kNN graph alone, when the UMAP is already there (a file's own, or kept in the run's folder)."""
    kept = eviews.load_graph(_run_path, n_cells=len(_latent))
    if kept is not None:
        return Graph(*kept)
    with progress_bar(f"Neighbour graph of {len(_latent):,} cells, to cluster them again (first time only)") as show:
        graph = Graph(*run_long(graph_job, _latent, seed=SEED, show=show))
    if _run_path is not None:
        eviews.save_graph(_run_path, graph.distances, graph.connectivities, graph.params)
    return graph


def _graph_only(run) -> bool:
    """Whether Leiden needs only the graph: the UMAP is the file's own or kept, so no first view is computed."""
    return "X_umap" in run.embeddings or (run.path is not None and (run.path / "views" / "graph").is_dir())


def _latent_graph(run, key: str) -> Graph:
    if _graph_only(run):
        return _graph(run.run_id, key, run.latent, run.path)
    return _first_view(run.run_id, key, run.latent, run.path)[0]


def _adata_with_graph(run, key: str) -> ad.AnnData:
    adata = _latent_adata(run.latent, len(run.latent))
    _latent_graph(run, key).write(adata)
    return adata


@st.cache_data(show_spinner=False, max_entries=8)
def _tsne(run_id: str, key: str, _latent: np.ndarray) -> np.ndarray:
    subsample = tsne_subsample(len(_latent))
    what = f"{len(_latent):,} cells" if subsample is None else f"a random {subsample:,} of {len(_latent):,} cells"
    with progress_bar(f"t-SNE of {what} (first time only)") as show:
        return run_long(tsne_job, _latent, seed=SEED, subsample=subsample, show=show)


def tsne_subsample(n_cells: int) -> int | None:
    """How many cells the dashboard's t-SNE embeds: all (None) up to the engine's cap, else the cap."""
    return eemb.TSNE_MAX_CELLS if n_cells > eemb.TSNE_MAX_CELLS else None


def tsne_offer(state: AppState, run) -> str | None:
    """What to say before a t-SNE that would only be of a subsample (None: nothing to ask)."""
    n = len(run.latent)
    subsample = tsne_subsample(n)
    if subsample is None or tsne_computed(state, run):
        return None
    return (f"A t-SNE of all {n:,} cells would take about {eemb.tsne_minutes(n):.0f} minutes. It can be "
            f"computed on a random subsample of {subsample:,} cells (about "
            f"{eemb.tsne_minutes(subsample):.0f} minutes); every other cell is then placed beside its "
            f"nearest subsampled neighbours in the latent space. The UMAP shows every cell.")


@st.cache_data(show_spinner=False, max_entries=32)
def _leiden(run_id: str, key: str, resolution: float, _run) -> tuple[np.ndarray, dict]:
    kept = eviews.load_view(_run.path, eviews.leiden_view(resolution), n_cells=len(_run.latent))
    if kept is not None:
        # what engine's leiden() writes to uns["leiden"], for the kept labels
        return kept.astype(str), {"resolution": float(resolution), "n_clusters": len(set(kept)),
                                  "seed": SEED, "flavor": "igraph"}
    adata = _adata_with_graph(_run, key)
    eclust.leiden(adata, resolution=resolution, seed=SEED)
    # fixed-width text, not objects: st.cache_data hands out a copy on every call, and 1M label
    # objects took 0.18 s to unpickle on every rerun (fixed-width: a copy of 12 MB, 2 ms)
    labels = adata.obs["leiden"].to_numpy().astype(str)
    if _run.path is not None:
        eviews.save_view(_run.path, eviews.leiden_view(resolution), labels)
    return labels, dict(adata.uns.get("leiden", {}))


def embedding(state: AppState, run, kind: Embedding = "UMAP") -> np.ndarray:
    """``(n_cells, 2)`` float32 UMAP or t-SNE of the run's latent (cached per run and data).

    A run imported from a file shows the file's own ``X_umap``/``X_tsne`` when it has them. A
    t-SNE being computed shows a progress bar where it is called.
    """
    _check(kind, Embedding, "kind")
    name = OWN_EMBEDDINGS[kind]
    own = run.embeddings.get(name)
    if own is not None:
        return own
    if kind == "t-SNE":
        state.tsne_requested.add((run.run_id, state.filtered_key))
    kept = _kept_view(run.run_id, name, run.path, len(run.latent), eviews.view_stamp(run.path, name))
    if kept is not None:
        return kept
    if kind == "UMAP":
        return _first_view(run.run_id, state.filtered_key, run.latent, run.path)[1]
    tsne = _tsne(run.run_id, state.filtered_key, run.latent)
    if run.path is not None:
        eviews.save_view(run.path, name, tsne)
    return tsne


@st.cache_data(show_spinner=False, max_entries=16)
def _kept_view(run_id: str, name: str, _run_path: Path | None, n_cells: int, stamp: float | None) -> np.ndarray | None:
    # `stamp` (the file's mtime) is in the key: a None cached before the first view wrote the file
    # sent every later rerun to _first_view, whose cached value (graph and UMAP, hundreds of MB at
    # 1M cells) was unpickled each time: 0.2-0.5 s per colour change.
    return eviews.load_view(_run_path, name, n_cells=n_cells)


def tsne_computed(state: AppState, run) -> bool:
    """Whether this session asked for the t-SNE of ``run``, or the run brings its own (then it is exported)."""
    return ("X_tsne" in run.embeddings or (run.run_id, state.filtered_key) in state.tsne_requested
            or (run.path is not None and (run.path / "views" / "X_tsne.npy").is_file()))


def own_clusters(state: AppState, run) -> bool:
    """Whether the clusters shown are the run's own (an imported file's ``obs["leiden"]`` at its resolution)."""
    return run.clusters is not None and float(state.leiden_resolution) == saved_resolution(run)


def _leiden_of(state: AppState, run) -> tuple[np.ndarray, dict]:
    if own_clusters(state, run):
        return run.clusters, {"resolution": float(state.leiden_resolution), "source": "obs['leiden'] of the file"}
    # A run with its own (or kept) UMAP needs only the graph to cluster again, not a UMAP too.
    return _leiden(run.run_id, state.filtered_key, float(state.leiden_resolution), run)


def leiden_clusters(state: AppState, run) -> pd.Categorical:
    """Leiden cluster ids ("0", "1", ... largest first) at ``state.leiden_resolution`` (cached).

    An imported run at the resolution of its file's clusters shows those (:func:`own_clusters`).
    """
    labels, _ = _leiden_of(state, run)
    return _numeric_order(run.run_id, state.filtered_key, float(state.leiden_resolution),
                          own_clusters(state, run), labels)


@st.cache_data(show_spinner=False, max_entries=16)
def _numeric_order(run_id: str, key: str, resolution: float, own: bool, _labels: np.ndarray) -> pd.Categorical:
    # Numeric order ("2" before "10"), whatever the labels look like. Cached: from 1M label strings
    # this took 0.4 s, on every rerun of every page that shows clusters.
    return pd.Categorical(_labels, categories=sorted(set(_labels), key=lambda c: (len(c), c)))


# ---- Cluster names -----------------------------------------------------------------------------
def _clustering(state: AppState) -> tuple:
    return workspace.clustering(state)


def sync_cluster_names(state: AppState) -> bool:
    """Forget cluster names given to another clustering (other run, data or resolution).

    Names belong to cluster ids of one clustering; applied to another they would mislabel cells.
    Returns True when names were dropped, so the page can say so.
    """
    current = _clustering(state)
    previous = state.cluster_names_for
    if previous is not None and previous != current and state.workspace is not None:
        workspace.sync(state)  # names of the run at this resolution, kept on the server
        return False
    state.cluster_names_for = current
    if previous is not None and previous != current and state.cluster_names:
        state.cluster_names = {}
        return True
    return False


def renamed(labels: pd.Categorical, names: Mapping[str, str]) -> pd.Categorical:
    """Cluster labels with the user's names; clusters given the same name are merged."""
    categories = [str(c) for c in labels.categories]
    shown = [names.get(c, "").strip() or c for c in categories]
    unique = list(dict.fromkeys(shown))
    codes = np.asarray(labels.codes)
    lookup = np.array([unique.index(s) for s in shown], dtype=np.int64)
    new_codes = np.where(codes >= 0, lookup[np.maximum(codes, 0)], -1)
    return pd.Categorical.from_codes(new_codes, categories=unique)


def cluster_labels(state: AppState, run, filtered: ad.AnnData) -> pd.Series:
    """Leiden clusters of ``run`` at the current resolution with the user's names.

    A categorical Series indexed by ``filtered.obs_names``.
    """
    named_for = state.cluster_names_for
    # Names given on the Explore page to another clustering (the run changed since) do not apply.
    names = state.cluster_names if named_for in (None, _clustering(state)) else {}
    labels = renamed(leiden_clusters(state, run), names)
    return pd.Series(labels, index=filtered.obs_names, name="leiden")


def cluster_table(state: AppState, run) -> pd.DataFrame:
    """One row per Leiden cluster: its id, its number of cells and the user's name for it."""
    labels = leiden_clusters(state, run)
    sizes = pd.Series(labels).value_counts(sort=False).reindex(labels.categories, fill_value=0)
    return pd.DataFrame({"cluster": [str(c) for c in labels.categories],
                         "cells": sizes.to_numpy(),
                         "name": [state.cluster_names.get(str(c), "") for c in labels.categories]})


def apply_cluster_edits(state: AppState, clusters: Sequence[str], edited_rows: Mapping) -> None:
    """Apply ``st.data_editor`` edits of the "name" column (row position -> {"name": text})."""
    names = dict(state.cluster_names)
    for row, change in edited_rows.items():
        if "name" not in change:
            continue
        cluster = clusters[int(row)]
        text = (change["name"] or "").strip()
        if text and text != cluster:
            names[cluster] = text
        else:
            names.pop(cluster, None)
    state.cluster_names = names
    workspace.sync(state)  # kept with the run on the server


# ---- Colouring ---------------------------------------------------------------------------------
def annotation_columns(filtered: ad.AnnData) -> list[str]:
    """Obs columns offered for colouring, QC metrics excluded (they have their own choice)."""
    return [str(c) for c in filtered.obs.columns if c not in QC_METRICS and c != "leiden"]


def qc_metrics(filtered: ad.AnnData) -> list[str]:
    """The QC metric columns of ``filtered.obs`` that can colour the scatter, in :data:`QC_METRICS` order."""
    return [m for m in QC_METRICS if m in filtered.obs]


def gene_names(filtered: ad.AnnData) -> pd.Index:
    """The genes' display names (unique), in var order."""
    if "display_name" in filtered.var:
        return pd.Index(filtered.var["display_name"].astype(str))
    return filtered.var_names


def _counts(filtered: ad.AnnData) -> sp.csr_matrix:
    counts = filtered.layers["counts"] if "counts" in filtered.layers else filtered.X
    return sp.csr_matrix(counts)


@st.cache_data(show_spinner=False, max_entries=8)
def _library_sizes(key: str, _filtered: ad.AnnData) -> np.ndarray:
    return np.asarray(_counts(_filtered).sum(axis=1), dtype=np.float64).ravel()


@st.cache_data(show_spinner=False, max_entries=64)
def _observed(key: str, gene: int, _filtered: ad.AnnData) -> np.ndarray:
    column = _counts(_filtered)[:, [gene]]
    return log_normalized(column, library=_library_sizes(key, _filtered)).toarray().ravel().astype(np.float32)


@st.cache_resource(show_spinner=False, max_entries=4)
def _gene_decoder(run_id: str, key: str, _run, _filtered: ad.AnnData):
    """The run's decoder split at its output layer (read only, shared by sessions)."""
    from engine.model.inference import gene_decoder  # torch only when the model is used

    return gene_decoder(_run, _filtered[:, list(_run.var_names)])


def prepare_denoised(state: AppState, run) -> None:
    """Decode every cell once for the run's denoised colours (0.7 s at 12k cells), if not done yet.

    The Explore page calls it after everything is drawn, so that choosing "denoised" later costs
    one column like any other colour change instead of the whole decode. Not above
    :data:`PREPARE_DENOISED_MAX_CELLS` cells: the next click would wait for it (6 s at 100k cells),
    so there the first denoised colour decodes, once, when someone asks for it.
    """
    if run.has_model and state.filtered.n_obs <= PREPARE_DENOISED_MAX_CELLS:
        _gene_decoder(run.run_id, state.filtered_key, run, state.filtered)


@st.cache_data(show_spinner=False, max_entries=64)
def _denoised(run_id: str, key: str, gene: str, _run, _filtered: ad.AnnData) -> np.ndarray:
    decoder = _gene_decoder(run_id, key, _run, _filtered)
    return np.log1p(decoder.expression(gene, library_size=TARGET_SUM)).astype(np.float32)


def gene_expression(state: AppState, run, gene: str, *, expression: Expression = "observed") -> np.ndarray:
    """log1p expression per 10,000 counts of one gene (display name) in every cell.

    ``observed``: the counts normalised by each cell's library size. ``denoised``: the model's
    normalised expression at each cell's posterior mean (:class:`engine.model.inference.GeneDecoder`:
    the first gene decodes every cell once, each later gene costs one column), only for genes the run
    was trained on.
    """
    _check(expression, Expression, "expression")
    filtered = state.filtered
    names = gene_names(filtered)
    if gene not in names:
        raise ValueError(f"No gene named '{gene}' in the filtered data: pick one from the list.")
    position = int(names.get_loc(gene))
    if expression == "observed":
        return _observed(state.filtered_key, position, filtered)
    var_name = str(filtered.var_names[position])
    if not run.has_model:
        raise ValueError(DENOISED_NEEDS_MODEL)
    if var_name not in set(map(str, run.var_names)):
        raise ValueError(f"The model was not trained on {gene} (it used {len(run.var_names):,} "
                         f"highly variable genes): show its observed expression, or train on more "
                         f"genes on the Train page.")
    return _denoised(run.run_id, state.filtered_key, var_name, run, filtered)


def colouring_wait(state: AppState, run, *, source: ColourSource, expression: Expression = "observed") -> str:
    """What the page says while :func:`colouring` works.

    The one slow case, the first denoised colour of a large dataset (it decodes every cell), gets its own words.
    """
    if source == "Gene" and expression == "denoised" and state.filtered.n_obs > PREPARE_DENOISED_MAX_CELLS:
        return (f"Computing the colours (the first denoised gene decodes all {state.filtered.n_obs:,} cells "
                f"once, about {max(1, round(state.filtered.n_obs * 6e-5))} s; later genes are quick)...")
    return "Computing the colours..."


def colouring(state: AppState, run, *, source: ColourSource, name: str = "",
              expression: Expression = "observed") -> Colouring:
    """The colour vector for the scatter: the (renamed) clusters, an obs column, a QC metric or a gene's expression.

    Only this is recomputed when the user changes the colour.
    """
    _check(source, ColourSource, "source")
    filtered = state.filtered
    if source == "Cluster":
        return Colouring("cluster", cluster_labels(state, run, filtered).array)
    if source == "Gene":
        values = gene_expression(state, run, name, expression=expression)
        return Colouring(f"{name} ({expression})", values)
    if name not in filtered.obs:
        raise ValueError(f"No cell annotation '{name}' in the data: pick one from the list.")
    column = filtered.obs[name]
    if source == "QC metric":
        return Colouring(QC_METRICS.get(name, name), column.to_numpy(dtype=np.float32))
    if isinstance(column.dtype, pd.CategoricalDtype):
        values = column.array
        # unused categories out of the legend; a count, not remove_unused_categories' sort (0.1 s at 1M)
        codes = np.asarray(values.codes)
        used = np.bincount(codes[codes >= 0], minlength=len(values.categories)) > 0
        return Colouring(name, values if used.all() else values.remove_categories(values.categories[~used]))
    if (pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column)
            and column.nunique() > MAX_CATEGORIES):
        return Colouring(name, column.to_numpy(dtype=np.float32))
    return Colouring(name, pd.Categorical(column.astype(object).where(column.notna(), None)))


# ---- Cell groups -------------------------------------------------------------------------------
def _check_name(state: AppState, name: str) -> str:
    name = name.strip()
    if not name:
        raise ValueError("Give the group a name.")
    if name in state.cell_groups:
        raise ValueError(f"A group named '{name}' exists already: choose another name or delete "
                         f"that group first.")
    return name


def save_group(state: AppState, name: str, cells: np.ndarray) -> str:
    """Keep ``cells`` (obs_names) as a group called ``name``; returns the name saved."""
    name = _check_name(state, name)
    if len(cells) == 0:
        raise ValueError("No cells are selected: draw a lasso or box around cells on the plot "
                         "(choose the tool in the plot's toolbar), then save.")
    state.cell_groups = {**state.cell_groups, name: np.asarray(cells, dtype=object)}
    workspace.sync(state)  # kept with the run on the server
    return name


def edit_groups(edit: Callable[..., None], state: AppState, *args: object) -> None:
    """Apply a group edit (rename, delete, combine) and redraw the groups panel, or show why not."""
    try:
        edit(state, *args)
    except ValueError as err:
        st.error(str(err))
        return
    st.rerun(scope="fragment")


def rename_group(state: AppState, old: str, new: str) -> None:
    """Rename the cell group ``old`` to ``new``, keeping its place among the groups."""
    if old not in state.cell_groups:
        raise ValueError(f"There is no group named '{old}'.")
    new = _check_name(state, new)
    state.cell_groups = {(new if k == old else k): v for k, v in state.cell_groups.items()}
    workspace.sync(state)


def delete_group(state: AppState, name: str) -> None:
    """Forget the cell group ``name``."""
    if name not in state.cell_groups:
        raise ValueError(f"There is no group named '{name}'.")
    state.cell_groups = {k: v for k, v in state.cell_groups.items() if k != name}
    workspace.sync(state)


def combine_groups(state: AppState, names: Sequence[str], new: str) -> None:
    """Save the union of the cells of ``names`` as a new group ``new``."""
    if len(names) < 2:
        raise ValueError("Choose at least two groups to combine.")
    missing = [n for n in names if n not in state.cell_groups]
    if missing:
        raise ValueError(f"There is no group named {', '.join(map(repr, missing))}.")
    cells = np.unique(np.concatenate([np.asarray(state.cell_groups[n], dtype=str) for n in names]))
    save_group(state, new, cells.astype(object))


def groups_table(state: AppState) -> pd.DataFrame:
    """One row per group: its name, its number of cells and how many are in the filtered data."""
    present = set(state.filtered.obs_names) if state.filtered is not None else set()
    return pd.DataFrame({
        "group": list(state.cell_groups),
        "cells": [len(v) for v in state.cell_groups.values()],
        "in current data": [int(sum(c in present for c in v)) for v in state.cell_groups.values()],
    })


# ---- Export ------------------------------------------------------------------------------------
def explored_adata(state: AppState) -> ad.AnnData | None:
    """A copy of ``state.filtered`` with what the Explore page computed for the active run.

    ``obsm["X_scVI"]`` (latent mean), ``obsm["X_umap"]``, ``obsm["X_tsne"]`` (when the user computed
    it), ``obs["leiden"]`` (clusters with the user's names, categorical), ``uns["leiden"]``
    (parameters and the names given) and one ``obs["group_<name>"]`` column per saved cell group
    ("in"/"out", see :func:`dashboard.export.group_columns`). None without an active run that
    matches the data.
    """
    from dashboard.export import group_columns  # here: the export module is not needed to explore

    try:
        run = active_run(state)
    except ValueError:
        return None
    if run is None:
        return None
    filtered = state.filtered
    adata = filtered.copy()
    representation = (run.imported or {}).get("representation", "X_scVI")
    adata.obsm[representation] = np.asarray(run.latent, dtype=np.float32)
    adata.obsm["X_umap"] = embedding(state, run, "UMAP")
    if tsne_computed(state, run):
        adata.obsm["X_tsne"] = embedding(state, run, "t-SNE")
    adata.obs["leiden"] = cluster_labels(state, run, filtered)
    _, params = _leiden_of(state, run)
    adata.uns["leiden"] = {**params, "cluster_names": dict(state.cluster_names)}
    if state.cell_groups:
        adata.obs = pd.concat([adata.obs, group_columns(state.cell_groups, adata.obs_names,
                                                        taken=adata.obs.columns)], axis=1)
    return adata


# ---- Batch correction --------------------------------------------------------------------------
@dataclass(frozen=True)
class BatchComparison:
    """Embeddings and batch-mixing metrics of the uncorrected data and of the run's latent."""

    batch_key: str
    uncorrected_umap: np.ndarray
    latent_umap: np.ndarray
    uncorrected: ebm.BatchMetrics
    latent: ebm.BatchMetrics


@st.cache_data(show_spinner=False, max_entries=4)
def _uncorrected(key: str, _filtered: ad.AnnData) -> tuple[np.ndarray, np.ndarray]:
    """PCA of the log-normalised counts and the UMAP of its kNN graph."""
    adata = ad.AnnData(obs=pd.DataFrame(index=_filtered.obs_names),
                       var=pd.DataFrame(index=_filtered.var_names))
    adata.layers["counts"] = _counts(_filtered)
    with progress_bar(f"Uncorrected view of {adata.n_obs:,} cells") as show:
        return run_long(uncorrected_job, adata, seed=SEED, show=show)


@st.cache_data(show_spinner=False, max_entries=8)
def _metrics(rep: str, run_id: str, key: str, batch_key: str, resolution: float, _rep: np.ndarray,
             _batch: np.ndarray, _labels: np.ndarray) -> ebm.BatchMetrics:
    where = "the uncorrected data" if rep == "X_pca" else "the scVI latent"
    with progress_bar(f"Batch-mixing scores of {where}") as show:
        return run_long(batch_metrics_job, _rep, _batch, _labels, show=show)


def batch_comparison(state: AppState, run) -> BatchComparison:
    """Uncorrected (PCA of log-normalised counts) vs corrected (latent) embeddings and metrics.

    The run's batch key gives the batches and the Leiden clusters of the latent give the labels.
    """
    if run.batch_key is None:
        raise ValueError("This run was trained without a batch key: there is no batch correction "
                         "to compare. Train with a batch key on the Train page.")
    filtered = state.filtered
    batch = filtered.obs[run.batch_key].astype(str).to_numpy()
    labels = np.asarray(leiden_clusters(state, run)).astype(str)
    pca, uncorrected_umap = _uncorrected(state.filtered_key, filtered)
    resolution = float(state.leiden_resolution)
    return BatchComparison(
        batch_key=run.batch_key,
        uncorrected_umap=uncorrected_umap,
        latent_umap=embedding(state, run, "UMAP"),
        # Both scored against the latent's clusters, hence keyed on the run and resolution.
        uncorrected=_metrics("X_pca", run.run_id, state.filtered_key, run.batch_key, resolution,
                             pca, batch, labels),
        latent=_metrics("X_scVI", run.run_id, state.filtered_key, run.batch_key, resolution,
                        run.latent, batch, labels),
    )


METRIC_HELP = {
    "batch_silhouette": "Batch silhouette: 1 - |silhouette of batches|; higher = batches better mixed.",
    "batch_entropy": "Batch entropy: how evenly the batches share each cell's neighbourhood (0-1); "
                     "higher = better mixed.",
    "ilisi": "iLISI, scaled 0-1: the effective number of batches among a cell's neighbours, "
             "0 = all from one batch, 1 = every batch equally; higher = better mixed.",
    "label_silhouette": "Cluster silhouette: how well the clusters stay apart; higher = biology "
                        "better kept.",
}


def metrics_table(comparison: BatchComparison) -> pd.DataFrame:
    """The metrics side by side: one row per metric, columns uncorrected and scVI latent."""
    rows = []
    for field_name, text in METRIC_HELP.items():
        rows.append({"metric": text.split(":")[0],
                     "uncorrected (PCA)": float(getattr(comparison.uncorrected, field_name)),
                     "scVI latent": float(getattr(comparison.latent, field_name)),
                     "meaning": text.split(": ", 1)[1]})
    return pd.DataFrame(rows)


def umap_figure(state: AppState, run, *, point_size: float = 2.0) -> go.Figure:
    """The UMAP coloured by the (named) clusters, each name written over its cells: the figure to export."""
    clusters = cluster_labels(state, run, state.filtered)
    title = "UMAP of the scVI latent space" if run.has_model else "UMAP"
    return embedding_scatter(embedding(state, run, "UMAP"), colouring=colouring(state, run, source="Cluster"),
                             clusters=clusters.array, title=title,
                             point_size=point_size, opacity=0.9, labels_on_data=True, show_legend=False)
