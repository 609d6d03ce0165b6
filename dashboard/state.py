"""Per-session state, initialised once by the entry script (``app.py``).

Everything a user makes (their dataset, thresholds, groups, the active run) lives in one
:class:`AppState` in ``st.session_state``: never in module globals, which every user would share.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import anndata as ad
import numpy as np
import streamlit as st

from engine.preprocessing.qc import QCThresholds

_KEY = "atlas_state"


@dataclass
class Dataset:
    """A loaded dataset as read from its source, QC metrics computed. Never mutated after loading."""

    name: str  # what the user sees ("Sample: Kang 2018 PBMC", "pbmc.h5ad")
    key: str  # content digest plus read options: identifies the cached load
    adata: ad.AnnData
    # Where it came from, so it can be read again with other options (orientation).
    source: str = "path"  # "path" or "upload"
    path: str | None = None
    transpose: bool | None = None  # the orientation asked for when reading (None: detected)
    # The file name under the run cache's uploads/ folder where an upload is kept, so links to its
    # runs can read it again (see dashboard.workspace).
    kept_upload: str | None = None


@dataclass
class AppState:
    """One browser session's state: the loaded and filtered data, the active run and the choices made on the pages."""

    dataset: Dataset | None = None
    thresholds: QCThresholds = field(default_factory=QCThresholds)
    mito_prefixes: tuple[str, ...] = ("MT-", "mt-")
    n_top_genes: int = 2000
    hvg_batch_key: str | None = None
    # The filtered dataset (thresholds applied, highly variable genes flagged): what later pages use.
    filtered: ad.AnnData | None = None
    # Identifies `filtered` (dataset, thresholds, gene selection) for caches keyed on it.
    filtered_key: str = ""
    # A message from the last failed load, shown once on the Data page.
    load_error: str | None = None
    # The uploader's file id last loaded, so a rerun does not load the same upload again.
    last_upload_id: str | None = None
    active_run_id: str | None = None
    # The training job this session follows (run id), and the last message about training.
    watched_job: str | None = None
    training_message: tuple[str, str] | None = None  # (kind: "success"/"warning"/"error", text)
    # Diagnostics computed on the Train page, by run id.
    diagnostics: dict | None = None
    # Cell groups drawn on the Explore page: name -> obs_names of its cells.
    cell_groups: dict[str, np.ndarray] = field(default_factory=dict)
    # Leiden resolution chosen on the Explore page, and the user's names for clusters ("3" -> "B cells").
    leiden_resolution: float = 1.0
    cluster_names: dict[str, str] = field(default_factory=dict)
    # The clustering (run id, filtered_key, resolution) that `cluster_names` were given to.
    cluster_names_for: tuple | None = None
    # What this session last read from the run's annotation store (dashboard.workspace.Snapshot):
    # compared with the fields above to write the session's changes there.
    workspace: object | None = None
    # Whether the URL's ?run= link was looked at (once, on the session's first script run), and the
    # run id of a link whose run is not in the cache (the page says so).
    link_checked: bool = False
    missing_run: str | None = None
    link_error: tuple[str, str] | None = None  # (run id, why the link's run could not be opened)
    # (run id, filtered_key) pairs whose t-SNE this session asked for (then cached and exported).
    tsne_requested: set[tuple[str, str]] = field(default_factory=set)


def get_state() -> AppState:
    """The session's state, created on first use (the entry script calls it before any page runs)."""
    if _KEY not in st.session_state:
        st.session_state[_KEY] = AppState()
    return st.session_state[_KEY]
