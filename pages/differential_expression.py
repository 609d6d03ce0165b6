"""Differential expression page: Bayesian DE between two groups with an interactive volcano."""

import streamlit as st

from dashboard import de as dede
from dashboard import explore, imported, workspace
from dashboard.active_run import require_active_run
from dashboard.de_figures import (
    WILCOXON_Y,
    Y_TITLES,
    clicked_gene,
    concordance_scatter,
    gene_embedding,
    gene_violins,
    volcano,
)
from dashboard.state import get_state
from engine.analysis.de import FEW_CELLS, MIN_CELLS, explain_calls, why_few_calls
from engine.analysis.wilcoxon import concordance

MODE_HELP = {
    "change": "Change (Boyeau et al. 2019): probability that the log2 fold change exceeds delta.",
    "vanilla": "Vanilla (Lopez et al. 2018): probability that expression is higher in one group.",
}
TABLE_COLUMNS = ["gene", "lfc_mean", "proba_de", "bayes_factor", "is_de_fdr", "mean_norm_1",
                 "mean_norm_2", "frac_expr_1", "frac_expr_2", "lfc_low", "lfc_high", "var_name"]


def table_config(group1: str, group2: str) -> dict:
    """Headers a biologist reads, with what each number means on hover."""
    number = st.column_config.NumberColumn
    return {
        "gene": st.column_config.TextColumn("Gene", pinned=True),
        "lfc_mean": number("log2 FC", format="%.2f",
                           help=f"Posterior mean log2 fold change, {group1} over {group2}."),
        "proba_de": number("P(DE)", format="%.3f", help="Posterior probability that the gene is DE."),
        "bayes_factor": number("log BF", format="%.2f", help="log Bayes factor of DE against not DE."),
        "is_de_fdr": st.column_config.CheckboxColumn("DE", help="Called DE at the FDR target."),
        "mean_norm_1": number(f"Expr. {group1}", format="%.3g",
                              help=f"Mean denoised expression in {group1} (counts per 10,000)."),
        "mean_norm_2": number(f"Expr. {group2}", format="%.3g",
                              help=f"Mean denoised expression in {group2} (counts per 10,000)."),
        "frac_expr_1": number(f"% cells {group1}", format="percent",
                              help=f"Share of {group1} cells with at least one count."),
        "frac_expr_2": number(f"% cells {group2}", format="percent",
                              help=f"Share of {group2} cells with at least one count."),
        "lfc_low": number("FC low", format="%.2f", help="Lower end of the 90% credible interval of log2 FC."),
        "lfc_high": number("FC high", format="%.2f", help="Upper end of the 90% credible interval of log2 FC."),
        "var_name": st.column_config.TextColumn("Gene id"),
    }


WILCOXON_COLUMNS = ["gene", "lfc_mean", "score", "pvalue", "pvalue_adj", "is_de_fdr", "var_name"]


def wilcoxon_config(group1: str, group2: str) -> dict:
    """Headers of the Wilcoxon table (a run without a model), with what each number means on hover."""
    number = st.column_config.NumberColumn
    return {
        "gene": st.column_config.TextColumn("Gene", pinned=True),
        "lfc_mean": number("log2 FC", format="%.2f",
                           help=f"log2 ratio of mean normalised expression, {group1} over {group2}."),
        "score": number("z", format="%.2f", help=f"Wilcoxon z-score, positive when higher in {group1}."),
        "pvalue": number("p", format="%.2e", help="Two-sided p-value of the rank-sum test."),
        "pvalue_adj": number("adj. p", format="%.2e", help="Benjamini-Hochberg adjusted p-value."),
        "is_de_fdr": st.column_config.CheckboxColumn(
            "DE", help="Adjusted p-value under the FDR target and |log2 FC| at least the threshold."),
        "var_name": st.column_config.TextColumn("Gene id"),
    }


state = get_state()
session = dede.de_session()
st.title("Differential expression")
st.caption("Compare two groups of cells with the model's Bayesian differential expression: "
           "posterior fold changes, a volcano plot and a gene table.")

run = require_active_run(state)
if not run.has_model:
    imported.needs_model("scVI's Bayesian differential expression and its denoised expression")
    st.caption("This run was opened from a file without a model, so this page compares the two groups "
               "with a Wilcoxon rank-sum test on the observed counts (log1p per 10,000), as scanpy's "
               "rank_genes_groups does.")

with st.spinner("Clustering the cells (once per run and resolution)..."):
    labels = dede.label_columns(state, run)

# ---- The two groups -----------------------------------------------------------------------------
with st.container(border=True):
    st.subheader("Groups")
    sources = list(labels) + ([dede.LASSO] if state.cell_groups else [])
    workspace.link_choice("de_groupby", "groupby", sources)
    groupby = st.selectbox("Compare groups of", sources, key="de_groupby",
                           help="Leiden clusters (named on the Explore page), an annotation of the "
                                "cells, or groups drawn with the lasso on the Explore page.")
    values = dede.group_values(labels, groupby, state.cell_groups)
    c1, c2 = st.columns(2)
    workspace.link_choice("de_group1", "group1", values)
    group1 = c1.selectbox("Group 1", values, key="de_group1")
    workspace.link_choice("de_group2", "group2", [dede.REST] + [v for v in values if v != group1])
    group2 = c2.selectbox("Group 2", [dede.REST] + [v for v in values if v != group1], key="de_group2",
                          help="'rest' is every other cell.")
    within = None
    if st.checkbox("Only inside one group of another annotation (e.g. stimulated vs control inside "
                   "one cluster)", key="de_restrict"):
        w1, w2 = st.columns(2)
        within_column = w1.selectbox("Restrict to cells where", [c for c in labels if c != groupby],
                                     key="de_within_column")
        within_value = w2.selectbox("equals", dede.group_values(labels, within_column, {}),
                                    key="de_within_value")
        within = (within_column, within_value)
    comparison = dede.Comparison(groupby=groupby, group1=group1, group2=group2, within=within)

    o1, o2 = st.columns(2)
    no_batch = run.batch_key is None
    if run.has_model:
        mode = o1.radio("Mode", list(MODE_HELP), format_func=str.capitalize, key="de_mode",
                        help="\n\n".join(MODE_HELP.values()))
        o1.caption(MODE_HELP[mode])
        batch_correction = o2.checkbox(
            "Batch correction", value=not no_batch, disabled=no_batch, key="de_batch_correction",
            help="Decode both groups in every batch and compare like with like."
                 if not no_batch else "The active run was trained without a batch key.")
    else:
        mode, batch_correction = dede.WILCOXON, False
        o1.markdown("**Test**: Wilcoxon rank-sum (no model)")

    try:
        mask1, mask2 = dede.group_masks(comparison, labels=labels, cell_groups=state.cell_groups,
                                        obs_names=state.filtered.obs_names)
        sizes = (int(mask1.sum()), int(mask2.sum()))
        o2.write(f"**{comparison.names()[0]}**: {sizes[0]:,} cells · "
                 f"**{comparison.names()[1]}**: {sizes[1]:,} cells")
        if min(sizes) < MIN_CELLS:
            st.error(f"A group has fewer than {MIN_CELLS} cells: differential expression needs at "
                     f"least {MIN_CELLS} per group. Pick larger groups.")
        elif min(sizes) < FEW_CELLS:
            st.warning(f"A group has fewer than {FEW_CELLS} cells: its estimates will be uncertain.")
    except ValueError as err:
        st.error(str(err))
        mask1 = mask2 = None
    pressed = st.button("Run differential expression", type="primary", disabled=mask1 is None)

# One slot for the hint and the progress: while a comparison runs, its progress bar takes the
# hint's place instead of the hint lingering below it.
status = st.empty()
if pressed and mask1 is not None:
    request = dede.DERequest(run_id=run.run_id, comparison=comparison, mode=mode,
                             batch_correction=batch_correction and not no_batch)
    try:
        with status.container():
            dede.differential_expression(state, request, mask1, mask2, run)
        session.request = request
        session.selected_gene = None
    except ValueError as err:
        status.error(str(err))

if session.request is None or session.request.run_id != run.run_id:
    if not (pressed and mask1 is not None):
        status.info("Pick two groups and press **Run differential expression**.")
    st.stop()

request = session.request
try:
    mask1, mask2 = dede.request_masks(state, run, request)
    result = dede.differential_expression(state, request, mask1, mask2, run)
except ValueError as err:
    st.error(f"The last comparison cannot be shown any more: {err}")
    st.stop()
names = request.comparison.names()
st.subheader(f"{request.comparison.describe()}")
wilcoxon_only = result.mode == dede.WILCOXON
if wilcoxon_only:
    st.caption(f"{result.n_cells_1:,} vs {result.n_cells_2:,} cells · Wilcoxon rank-sum test, "
               "Benjamini-Hochberg adjusted (no model: scVI's Bayesian DE needs a trained one)")
else:
    st.caption(f"{result.n_cells_1:,} vs {result.n_cells_2:,} cells ({result.n_sampled_1:,} and "
               f"{result.n_sampled_2:,} sampled) · mode {result.mode} · batch correction "
               f"{'on' if result.batch_correction else 'off'} · {result.n_pairs:,} posterior pairs")
for note in result.warnings:
    st.warning(note)
# The page's URL opens this comparison's groups in any browser; the result is kept with the run.
workspace.set_url({"run": run.run_id, "groupby": request.comparison.groupby,
                   "group1": request.comparison.group1, "group2": request.comparison.group2})
if pressed:
    workspace.keep_result(state, "de", f"{request.comparison.describe()} ({result.mode})",
                          result.table(delta=session.delta, fdr=session.fdr),
                          dede.provenance(request, result, delta=session.delta, fdr=session.fdr,
                                          dataset=state.dataset.name))


@st.fragment
def results_panel() -> None:
    """Thresholds, volcano, gene views and table: re-thresholded here without recomputing."""
    s1, s2, s3 = st.columns(3)
    delta = s1.slider("delta: smallest |LFC| that counts (log2)", 0.0, 2.0, session.delta, 0.05,
                      key="de_delta", disabled=result.mode == "vanilla",
                      help="The smallest |log2 fold change| of a gene called DE." if wilcoxon_only
                      else "Only used in change mode.")
    fdr = s2.slider("FDR target", 0.01, 0.5, session.fdr, 0.01, key="de_fdr",
                    help="Benjamini-Hochberg: genes with an adjusted p-value under it are called DE."
                    if wilcoxon_only else "Posterior expected false discovery rate of the genes called DE.")
    if wilcoxon_only:
        y_axis = WILCOXON_Y
        s3.caption("Volcano: -log10 adjusted p-value against log2 fold change.")
    else:
        y_axis = s3.radio("Volcano y axis", list(Y_TITLES), format_func=Y_TITLES.get, key="de_y")
    session.delta, session.fdr = delta, fdr
    table = result.table(delta=delta, fdr=fdr)
    n_de = int(table["is_de_fdr"].sum())
    up = int((table["is_de_fdr"] & (table["lfc_mean"] > 0)).sum())
    m1, m2, m3 = st.columns(3)
    m1.metric("Genes called DE", f"{n_de:,}")
    m2.metric(f"Up in {names[0]}", f"{up:,}")
    m3.metric(f"Up in {names[1]}", f"{n_de - up:,}")
    if wilcoxon_only:
        st.caption(f"A gene is called DE when its Benjamini-Hochberg adjusted p-value is under {fdr:g} "
                   f"and its |log2 fold change| is at least {delta:g} ({2 ** delta:.2f}-fold).")
        reasons = []
    else:
        st.caption(explain_calls(result.mode, delta=delta, fdr=fdr))
        reasons = why_few_calls(result, table, delta=delta, fdr=fdr,
                                n_epochs_trained=run.metrics.get("n_epochs_trained"))
    if reasons:
        passing = "No gene passes." if n_de == 0 else f"Only {n_de} gene{'s pass' if n_de > 1 else ' passes'}."
        st.info(f"{passing} " + " ".join(reasons), icon=":material/lightbulb:")

    # The table is drawn before the volcano and the volcano's click is read from the session state,
    # so the gene just picked is ringed on the volcano in this same run.
    left, right = st.columns([1, 1])
    with right:
        query = st.text_input("Filter genes", key="de_query", placeholder="e.g. CD14 or ENSG...")
        only_de = st.checkbox("Only genes called DE", key="de_only_de")
        shown = dede.gene_options(table[table["is_de_fdr"]] if only_de else table, query)
        rows = st.dataframe(shown.reset_index()[WILCOXON_COLUMNS if wilcoxon_only else TABLE_COLUMNS],
                            height=420, key="de_table", on_select="rerun", selection_mode="single-row",
                            hide_index=True,
                            column_config=(wilcoxon_config if wilcoxon_only else table_config)(*names))
        st.caption(f"{len(shown):,} of {len(table):,} genes. Click a row or a column header.")
    picked_rows = rows.selection.rows
    clicked = st.session_state.get("de_volcano") or {}
    session.pick(volcano=clicked_gene(clicked.get("selection", {}).get("points", [])),
                 table=str(shown.index[picked_rows[0]]) if picked_rows else None)
    with left:
        fig = volcano(table, y=y_axis, delta=delta if result.mode in ("change", dede.WILCOXON) else None,
                      group_names=names, selected=session.selected_gene)
        st.plotly_chart(fig, width="stretch", on_select="rerun", selection_mode="points",
                        key="de_volcano")
        st.caption("Click a gene (or a row of the table) to see it on the UMAP and per group.")

    if session.selected_gene is not None and session.selected_gene in table.index:
        gene, values = dede.gene_values(state, run, session.selected_gene)
        row = table.loc[session.selected_gene]
        st.subheader(gene)
        if wilcoxon_only:
            st.caption(f"log2 FC {row['lfc_mean']:.2f} · adjusted p {row['pvalue_adj']:.2e} · "
                       f"Wilcoxon z {row['score']:.2f}")
        else:
            st.caption(f"LFC mean {row['lfc_mean']:.2f} · P(DE) {row['proba_de']:.3f} · "
                       f"log Bayes factor {row['bayes_factor']:.2f}")
        g1, g2 = st.columns(2)
        with g1, st.spinner("Computing the UMAP (once per run)..."):
            coords = explore.embedding(state, run, "UMAP")
            st.plotly_chart(gene_embedding(coords, values, gene=gene), width="stretch",
                            key="de_gene_umap")
        g2.plotly_chart(gene_violins({names[0]: values[mask1], names[1]: values[mask2]}, gene=gene),
                        width="stretch", key="de_gene_violins")

    if wilcoxon_only:
        return
    with st.expander("Agreement with a Wilcoxon rank-sum test"):
        with st.spinner("Running the Wilcoxon test..."):
            wilcoxon_table = dede.wilcoxon(state, mask1, mask2, run)
        agreement = concordance(table, wilcoxon_table, top_n=50)
        c1, c2 = st.columns(2)
        c1.metric("Rank correlation (Spearman)", f"{agreement.spearman:.2f}")
        c2.metric(f"Shared genes in both top {agreement.top_n}",
                  f"{agreement.overlap} ({agreement.overlap_fraction:.0%})")
        st.plotly_chart(concordance_scatter(table, wilcoxon_table, top_n=agreement.top_n),
                        width="stretch", key="de_concordance")


results_panel()
st.caption("Download the table with its provenance on the Export page.")
