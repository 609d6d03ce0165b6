"""Markers page: the marker genes of every cluster (or cell type) at once, as a table, dot plot and heatmap."""

import streamlit as st

from dashboard import de as dede
from dashboard import export as dexport
from dashboard import imported, workspace
from dashboard import markers as dmark
from dashboard.active_run import require_active_run
from dashboard.marker_figures import dotplot, heatmap
from dashboard.progress import progress_bar
from dashboard.state import get_state
from engine.analysis.annotation import read_reference, reference_markers

TABLE_CONFIG = {
    "rank": st.column_config.NumberColumn("#", width="small"),
    "gene": st.column_config.TextColumn("Gene", pinned=True),
    "lfc_mean": st.column_config.NumberColumn("log2 FC", format="%.2f",
                                              help="Posterior mean log2 fold change, group over the rest."),
    "proba_de": st.column_config.NumberColumn("P(DE)", format="%.3f"),
    "bayes_factor": st.column_config.NumberColumn("log BF", format="%.2f"),
    "is_de_fdr": st.column_config.CheckboxColumn("DE", help="Called DE at FDR 0.05."),
    "frac_expr_group": st.column_config.NumberColumn("% cells in group", format="percent"),
    "frac_expr_rest": st.column_config.NumberColumn("% cells in rest", format="percent"),
    "wilcoxon_pvalue_adj": st.column_config.NumberColumn("Wilcoxon adj. p", format="%.2g",
                                                         help="Benjamini-Hochberg adjusted p-value."),
}

state = get_state()
st.title("Markers")
st.caption("The genes that set each group of cells apart: every cluster (or cell type) against all "
           "other cells with the model's Bayesian differential expression, a Wilcoxon test beside it.")

run = require_active_run(state)
if not run.has_model:
    imported.needs_model("Marker genes of every group (scVI's Bayesian DE of each group against the rest)")
    st.caption("Without a model, the Differential expression page compares any group with the rest "
               "(choose 'rest' as group 2) by a Wilcoxon rank-sum test.")
    st.stop()

with st.spinner("Clustering the cells (once per run and resolution)..."):
    labels = dede.label_columns(state, run)

with st.container(border=True):
    c1, c2 = st.columns([2, 1], vertical_alignment="bottom")
    groupby = c1.selectbox("Markers of", list(labels), key="markers_groupby",
                           help="Leiden clusters (named on the Explore page) or an annotation of the cells.")
    n_groups = labels[groupby].nunique()
    pressed = c2.button(f"Find markers of {n_groups} groups", type="primary", key="markers_run")
    st.caption("About one second per group at 12,000 cells. A marker is up in its group, expressed in "
               "at least 10% of its cells, and ranked by P(DE), then by fold change.")

status = st.empty()
if pressed:
    request = dmark.MarkersRequest(run_id=run.run_id, groupby=groupby)
    try:
        with status.container():
            dmark.markers(state, run, request)
        dmark.remember(request)
    except ValueError as err:
        status.error(str(err))

request = dmark.last_request()
if request is None or request.run_id != run.run_id or request.groupby not in labels:
    if not pressed:
        status.info("Choose the groups and press **Find markers**.")
    st.stop()
try:
    result = dmark.markers(state, run, request)
except ValueError as err:
    st.error(f"These markers cannot be shown any more: {err}")
    st.stop()
if pressed:  # kept with the run on the server, with how it was made
    workspace.keep_result(state, "markers", request.groupby, result.table,
                          dmark.provenance(result, run_id=run.run_id, groupby=request.groupby,
                                           dataset=state.dataset.name))
for group, reason in result.skipped.items():
    st.warning(f"{group}: {reason}")

# ---- Dot plot and heatmap -----------------------------------------------------------------------
with st.container(border=True):
    st.subheader(f"Top markers of each group ({request.groupby})")
    p1, p2 = st.columns([1, 2])
    per_group = p1.slider("Genes per group", 1, 10, 3, key="markers_per_group")
    kind = p2.radio("Plot", ["Dot plot", "Heatmap"], horizontal=True, key="markers_plot",
                    help="Dot plot: dot size = share of the group's cells expressing the gene, colour = "
                         "mean expression scaled per gene. Heatmap: mean expression per group, "
                         "z-scored per gene.")
    genes = dmark.plot_genes(result, per_group)
    stats = dmark.expression_by_group(state, run, request, genes)
    title = f"Markers of {request.groupby}"
    # dots sized for the page's width (about 900 px for the plot at a 1400 px window)
    fig = dotplot(stats, title=title, width=900) if kind == "Dot plot" else heatmap(stats, title=title)
    st.plotly_chart(fig, width="stretch", key="markers_figure")
    d1, d2, d3 = st.columns(3)
    stem = f"atlas_{run.run_id[:10]}_markers_{'dotplot' if kind == 'Dot plot' else 'heatmap'}"
    d1.download_button("Download as HTML", dexport.figure_html(fig), file_name=f"{stem}.html",
                       mime="text/html", key="markers_html", on_click="ignore")
    fmt = d2.radio("Image", ["png", "svg"], horizontal=True, key="markers_format")
    if d3.button("Render image", key="markers_render"):
        try:
            with progress_bar(f"Rendering the {kind.lower()} as {fmt.upper()}") as show:
                show(0.1, "drawing with the local Chromium")
                image = dexport.figure_image(fig, fmt=fmt)
            d3.download_button("Download image", image, file_name=f"{stem}.{fmt}",
                               mime="image/png" if fmt == "png" else "image/svg+xml",
                               key="markers_image", on_click="ignore")
        except Exception as err:  # noqa: BLE001 - kaleido/Chromium fail in many ways; HTML still works
            st.error(f"Image export failed ({err}). Download the HTML version instead.")

# ---- Ranked table per group ---------------------------------------------------------------------
with st.container(border=True):
    st.subheader("Ranked markers per group")
    t1, t2 = st.columns([1, 2])
    group = t1.selectbox("Group", list(result.groups), key="markers_group",
                         format_func=lambda g: f"{g} ({result.n_cells[g]:,} cells)")
    shown = result.table[result.table["group"] == group]
    columns = [c for c in TABLE_CONFIG if c in shown.columns]
    st.dataframe(shown[columns], hide_index=True, width="stretch", height=360, column_config=TABLE_CONFIG)
    t2.caption(f"{len(shown):,} genes up in {group}. Top 5: {', '.join(shown['gene'].head(5))}.")
    st.download_button("Download every group's markers (.csv)",
                       dmark.csv_bytes(result, run_id=run.run_id, groupby=request.groupby,
                                       dataset=state.dataset.name),
                       file_name=f"atlas_{run.run_id[:10]}_markers.csv", mime="text/csv",
                       key="markers_csv", on_click="ignore")

# ---- Suggested names ----------------------------------------------------------------------------
with st.container(border=True):
    st.subheader("Suggested cell-type names")
    st.caption("Each group's top 25 markers are compared with known markers of blood and pancreas cell "
               "types (or your own list): a known marker counts more the higher it ranks. The evidence "
               "column says which genes support the suggestion: check it before you accept a name.")
    s1, s2 = st.columns([1, 2])
    source = s1.radio("Known markers", ["blood", "pancreas", "my own list"], key="markers_reference",
                      horizontal=True)
    reference = None
    if source == "my own list":
        upload = s2.file_uploader("CSV with columns cell_type and gene, one marker per row",
                                  type=["csv", "txt"], key="markers_reference_file")
        if upload is not None:
            try:
                reference = read_reference(upload.getvalue())
            except ValueError as err:
                st.error(str(err))
    else:
        reference = reference_markers(source)
    if reference is None:
        st.info("Upload a marker list to get suggestions from it.")
    else:
        suggested = dmark.suggestions(result, reference).rename(columns={"suggestion": "name"})
        edited = st.data_editor(
            suggested, hide_index=True, width="stretch", key=f"markers_names_{request.groupby}_{source}",
            disabled=["group", "score", "evidence", "runner_up", "runner_up_score"],
            column_config={
                "group": st.column_config.TextColumn("Group"),
                "name": st.column_config.TextColumn("Name (edit to change)"),
                "score": st.column_config.NumberColumn("Score", format="%.2f"),
                "evidence": st.column_config.TextColumn("Evidence (marker and its rank)", width="large"),
                "runner_up": st.column_config.TextColumn("Runner-up"),
                "runner_up_score": st.column_config.NumberColumn("Its score", format="%.2f"),
            })
        if request.groupby == dede.CLUSTERS:
            if st.button("Use these names for the clusters", type="primary", key="markers_apply_names"):
                named = dmark.name_clusters(state, run, dict(zip(edited["group"], edited["name"], strict=True)))
                st.success(f"Named {named} cluster{'s' if named != 1 else ''}: the names show on every page "
                           "and in the export. Edit them on the Explore page's cluster table.")
        else:
            st.caption("Names can be applied to Leiden clusters: choose 'Leiden clusters' above.")
