"""Explore page: UMAP/t-SNE of the latent space, Leiden clusters, colouring, lasso groups, batches."""

import time

import numpy as np
import streamlit as st

from dashboard import explore as ex
from dashboard import imported, workspace
from dashboard.active_run import require_active_run
from dashboard.cell_scatter import cell_scatter, drawing_cap, selection_caption
from dashboard.explore_figures import cluster_sizes, embedding_scatter
from dashboard.state import get_state

state = get_state()

st.title("Explore")
st.caption("The cells in the trained model's latent space: clusters, annotations and genes, and "
           "groups of cells drawn with the lasso for the Differential expression page.")

run = require_active_run(state)
if not run.has_model:
    st.info(f"Opened from the file without training: {imported.source_text(run)}. Everything here "
            "works from it, except the model's denoised expression.", icon=":material/info:")

filtered = state.filtered
if ex.sync_cluster_names(state):
    st.info("The clustering changed (other run, data or resolution): cluster names were reset.",
            icon=":material/info:")

# ---- Embedding, colours and groups ------------------------------------------------------------
# A fragment: changing the colour, point size or a group reruns only this panel, and inside it
# only the colour vector is computed (embeddings and clusters come from the cache).
@st.fragment
def scatter_panel() -> None:
    controls, chart = st.columns([1, 3])
    with controls:
        kind = st.radio("Embedding", ["UMAP", "t-SNE"], horizontal=True, key="explore_embedding",
                        help="Both are computed from the model's latent space. t-SNE is computed "
                             "the first time you choose it.")
        source = st.selectbox("Colour by", ["Cluster", "Annotation", "QC metric", "Gene"],
                              key="explore_source")
        name, expression = "", "observed"
        if source == "Annotation":
            name = st.selectbox("Annotation", ex.annotation_columns(filtered),
                                key="explore_annotation")
        elif source == "QC metric":
            name = st.selectbox("QC metric", ex.qc_metrics(filtered), key="explore_qc",
                                format_func=lambda m: ex.QC_METRICS.get(m, m))
        elif source == "Gene":
            name = st.selectbox("Gene (type to search)", ex.gene_names(filtered),
                                key="explore_gene")
            expression = st.radio(
                "Expression", ["observed", "denoised"], horizontal=True, key="explore_expression",
                disabled=not run.has_model,
                help="observed: log1p of the counts per 10,000 in each cell. denoised: the "
                     "model's estimate of the same quantity at each cell's position in the latent "
                     "space, without the sampling noise of the counts.")
            if not run.has_model:
                expression = "observed"
                imported.needs_model("Denoised values")
        on_data = st.checkbox("Names on the plot", value=True, key="explore_labels_on_data",
                              disabled=source not in ("Cluster", "Annotation"),
                              help="Write each cluster's (or category's) name over its cells.")
        point_size = st.slider("Point size", 1.0, 10.0, 3.0, step=0.5, key="explore_point_size")
        opacity = st.slider("Opacity", 0.1, 1.0, 0.8, step=0.05, key="explore_opacity")
        # The URL restores this view in any browser (run, embedding, colouring, resolution).
        workspace.set_url(workspace.view_params(state, embedding=kind, source=source, name=name))

    with chart:
        started = time.perf_counter()
        offer = ex.tsne_offer(state, run) if kind == "t-SNE" else None
        if offer is not None and not st.session_state.get(f"explore_tsne_subsample_{run.run_id}"):
            st.info(offer, icon=":material/schedule:")
            st.button("Compute the t-SNE of the subsample", key=f"explore_tsne_subsample_{run.run_id}",
                      type="primary")
            return
        coords = ex.embedding(state, run, kind)  # a progress bar the first time
        with st.spinner("Clustering the cells (first time only)..."):
            clusters = ex.cluster_labels(state, run, filtered)
        try:
            with st.spinner(ex.colouring_wait(state, run, source=source, expression=expression)):
                colour = ex.colouring(state, run, source=source, name=name, expression=expression)
        except ValueError as err:
            st.warning(str(err), icon=":material/warning:")
            colour = ex.colouring(state, run, source="Cluster")
        scatter = cell_scatter(coords, colouring=colour, clusters=clusters.array, labels_on_data=on_data,
                               title=f"{kind} of the latent space", point_size=point_size, opacity=opacity,
                               key="explore_scatter")
        st.caption(f"{selection_caption(scatter)} Select cells with the lasso or a box (buttons on the "
                   f"plot): every cell inside is selected, drawn or not. The wheel zooms, double-click "
                   f"shows all. Above {drawing_cap():,} cells a random subsample is drawn. "
                   f"Drawn in {time.perf_counter() - started:.2f} s.")
    group_panel(np.asarray(filtered.obs_names[scatter.selected]))


def group_panel(selected) -> None:
    with st.container(border=True):
        st.subheader("Cell groups")
        st.caption("Groups are used on the Differential expression page. They are kept with the run "
                   "on the server: this page's address opens them in any browser.")
        left, right = st.columns([2, 1], vertical_alignment="bottom")
        group_name = left.text_input("Group name", key="explore_group_name",
                                     placeholder="e.g. activated monocytes")
        if right.button(f"Save selection as group ({len(selected):,} cells)",
                        disabled=len(selected) == 0, key="explore_save_group"):
            try:
                saved = ex.save_group(state, group_name, selected)
                st.success(f"Saved group '{saved}' with {len(selected):,} cells.")
            except ValueError as err:
                st.error(str(err))
        if not state.cell_groups:
            st.caption("No groups yet: select cells on the plot, name the group, then save it.")
            return
        st.table(ex.groups_table(state).set_index("group"))
        with st.expander("Rename, delete or combine groups"):
            names = list(state.cell_groups)
            c1, c2, c3 = st.columns(3)
            with c1:
                old = st.selectbox("Group", names, key="explore_rename_from")
                new = st.text_input("New name", key="explore_rename_to")
                if st.button("Rename", key="explore_rename"):
                    ex.edit_groups(ex.rename_group, state, old, new)
            with c2:
                doomed = st.selectbox("Group", names, key="explore_delete_which")
                if st.button("Delete", key="explore_delete"):
                    ex.edit_groups(ex.delete_group, state, doomed)
            with c3:
                parts = st.multiselect("Groups", names, key="explore_combine_which")
                union = st.text_input("Name of the union", key="explore_combine_name")
                if st.button("Combine", key="explore_combine"):
                    ex.edit_groups(ex.combine_groups, state, parts, union)


scatter_panel()

# ---- Clusters ---------------------------------------------------------------------------------
with st.container(border=True):
    if "explore_resolution" not in st.session_state:
        st.session_state["explore_resolution"] = float(state.leiden_resolution)
    with st.spinner("Computing the neighbour graph of the representation, then clustering at this "
                    "resolution (first time only)..."):
        table = ex.cluster_table(state, run)
    st.subheader(f"Leiden clusters: {len(table)} at resolution {state.leiden_resolution:g}")
    left, right = st.columns([1, 1])
    with left:
        st.slider("Leiden resolution", 0.1, 3.0, step=0.1, key="explore_resolution",
                  on_change=lambda: setattr(state, "leiden_resolution",
                                            float(st.session_state["explore_resolution"])),
                  help="Higher resolution gives more, smaller clusters.")
        if run.clusters is not None:
            st.caption(f"At resolution {imported.saved_resolution(run):g}: the file's own clusters "
                       "(`obs['leiden']`). Another resolution clusters the representation's neighbour "
                       "graph here (computed once: seconds, minutes at a million cells).")
        st.caption("Name clusters by typing in the 'name' column (e.g. 3 -> B cells). Names are "
                   "shown on every plot and exported; clusters given the same name are merged.")
        editor_key = f"explore_names_{run.run_id}_{state.leiden_resolution:g}"
        st.data_editor(
            table, key=editor_key, hide_index=True, width="stretch", disabled=["cluster", "cells"],
            on_change=lambda: ex.apply_cluster_edits(state, list(table["cluster"]),
                                                     st.session_state[editor_key]["edited_rows"]))
    with right:
        st.plotly_chart(cluster_sizes(ex.cluster_labels(state, run, filtered).array),
                        width="stretch", key="explore_sizes")

# ---- Batch correction -------------------------------------------------------------------------
if run.batch_key is not None:
    with st.container(border=True):
        st.subheader(f"Batch correction ({run.batch_key})")
        st.caption("The uncorrected data (PCA of log-normalised counts, then UMAP) beside the "
                   "model's latent space, coloured by batch and by cluster, with batch-mixing "
                   "scores for both.")
        panel_key = f"explore_batch_{run.run_id}"
        if st.button("Compare with the uncorrected data", key="explore_batch_button"):
            st.session_state[panel_key] = True
        if st.session_state.get(panel_key):
            with st.spinner("Computing PCA and UMAP of the uncorrected data and batch-mixing "
                            "scores..."):
                comparison = ex.batch_comparison(state, run)
            batches = ex.colouring(state, run, source="Annotation", name=run.batch_key)
            cluster_colour = ex.colouring(state, run, source="Cluster")
            clusters = ex.cluster_labels(state, run, filtered)
            for label, coords_b in (("Uncorrected (PCA)", comparison.uncorrected_umap),
                                    ("scVI latent", comparison.latent_umap)):
                cols = st.columns(2)
                for col, col_colour in zip(cols, (batches, cluster_colour), strict=True):
                    col.plotly_chart(
                        embedding_scatter(coords_b, colouring=col_colour, clusters=clusters.array,
                                          point_size=2, opacity=0.8,
                                          title=f"{label}: by {col_colour.label}", height=380),
                        width="stretch", key=f"explore_batch_{label}_{col_colour.label}")
            st.dataframe(ex.metrics_table(comparison), hide_index=True, width="stretch",
                         column_config={"uncorrected (PCA)": st.column_config.NumberColumn(format="%.3f"),
                                        "scVI latent": st.column_config.NumberColumn(format="%.3f")})

# Last, once the page is drawn: the one decode of every cell that denoised gene colours need.
ex.prepare_denoised(state, run)
