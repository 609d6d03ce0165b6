"""The Train page's "Compare runs" panel: held-out fit, latent activity and predictive checks side by side.

Each run is checked on its own genes (runs trained on different highly variable gene sets have
different genes), so each run's predictive-check points pair its own observed and sampled values.
"""

from __future__ import annotations

import anndata as ad
import pandas as pd
import streamlit as st

from dashboard import training
from dashboard.figures import latent_activity, ppc_scatter
from dashboard.state import AppState
from dashboard.train_form import run_label


def panel(state: AppState, runs: list, filtered: ad.AnnData) -> None:
    """Pick runs, compute their diagnostics on demand, show them side by side."""
    with st.container(border=True):
        st.subheader("Compare runs")
        st.caption("Held-out fit, use of the latent space, and posterior predictive checks: data "
                   "sampled from each model against the observed counts, gene by gene.")
        runs = [r for r in runs if r.has_model]  # an imported run has no model to sample from
        labels = {r.run_id: run_label(r) for r in runs}
        default = [r.run_id for r in runs[:2]]
        selected = st.multiselect("Runs", list(labels), default=default, format_func=labels.get)
        if selected and st.button("Compute diagnostics"):
            with st.spinner("Sampling from each model..."):
                state.diagnostics = {rid: training.diagnostics(rid, filtered, state.filtered_key)
                                     for rid in selected}
        diag = {rid: d for rid, d in (state.diagnostics or {}).items() if rid in labels}
        if not diag:
            return
        st.dataframe(pd.DataFrame([
            {"run": labels[rid], "genes": len(d.check.genes) if d.check else None,
             "held-out ELBO": d.elbo, "reconstruction": d.reconstruction, "KL": d.kl,
             "active dims (var > 0.01)": int((d.activity > 0.01).sum())}
            for rid, d in diag.items()]), hide_index=True, width="stretch")
        st.plotly_chart(latent_activity({labels[r]: d.activity for r, d in diag.items()}), width="stretch")
        checks = {labels[rid]: d.check for rid, d in diag.items() if d.check is not None}
        if not checks:
            return
        p1, p2 = st.columns(2)
        p1.plotly_chart(ppc_scatter(
            {label: (c.observed_zero_fraction, c.sampled_zero_fraction, c.genes) for label, c in checks.items()},
            title="Fraction of zeros per gene", axis="fraction of zeros"), width="stretch")
        p2.plotly_chart(ppc_scatter(
            {label: (c.observed_variance / c.observed_mean.clip(1e-8),
                     c.sampled_variance / c.sampled_mean.clip(1e-8), c.genes) for label, c in checks.items()},
            title="Variance / mean per gene", axis="variance / mean", log=True), width="stretch")
