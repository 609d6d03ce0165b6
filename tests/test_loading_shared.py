"""Loaded datasets are shared between sessions (st.cache_resource), so nothing may change them in place.

A 1M-cell atlas is 2+ GB of counts: st.cache_data would keep a pickled copy and give each session
another. These tests hold the promise that makes sharing safe: every change copies first.
"""

from __future__ import annotations

import pandas as pd

from dashboard import loading
from dashboard.state import AppState
from dashboard.training import training_data
from engine.preprocessing.qc import QCThresholds


def _fingerprint(adata) -> tuple:
    return (adata.shape, tuple(adata.obs.columns), tuple(adata.var.columns),
            int(pd.util.hash_pandas_object(adata.obs, index=True).sum()),
            int(pd.util.hash_pandas_object(adata.var, index=True).sum()),
            float(adata.X.sum()), tuple(adata.obsm.keys()), tuple(adata.layers.keys()))


def test_two_sessions_share_one_dataset_and_changes_copy_it():
    first, second = AppState(), AppState()
    loading.use_dataset(first, loading.read_sample())
    loading.use_dataset(second, loading.read_sample())
    assert first.dataset.adata is second.dataset.adata  # one copy in the server, not one per session
    assert first.filtered is second.filtered
    shared, shared_filtered = first.dataset.adata, first.filtered
    before, before_filtered = _fingerprint(shared), _fingerprint(shared_filtered)

    loading.use_mito_prefixes(first, ("RPL",))  # another session's changes...
    # (they take: ribosomal genes counted as "mitochondrial" in this session only)
    assert first.dataset.adata.obs["pct_counts_mt"].max() > 0 == shared.obs["pct_counts_mt"].max()
    loading.use_display_names(first, None)
    loading.apply_settings(first, QCThresholds(min_genes=300), 500, None)
    data = training_data(first.filtered, first.filtered_key, n_top_genes=200)
    assert data.n_vars == 200

    assert _fingerprint(shared) == before  # ...leave the shared objects as they were
    assert _fingerprint(shared_filtered) == before_filtered
    assert second.dataset.adata is shared and second.filtered is shared_filtered


def test_training_on_every_gene_uses_the_filtered_data_itself():
    state = AppState()
    loading.use_dataset(state, loading.read_sample())
    assert training_data(state.filtered, state.filtered_key, n_top_genes=0) is state.filtered


def test_de_reads_the_filtered_data_itself_when_the_run_used_every_gene():
    from types import SimpleNamespace

    from dashboard.de import run_data

    state = AppState()
    loading.use_dataset(state, loading.read_sample())
    genes = list(state.filtered.var_names)
    assert run_data(state.filtered, SimpleNamespace(var_names=genes)) is state.filtered
    some = run_data(state.filtered, SimpleNamespace(var_names=genes[::-1][:100]))
    assert some.is_view and list(some.var_names) == genes[::-1][:100]
