"""Data page: load a count matrix, read its summary, check its quality, choose filters."""

import streamlit as st

from dashboard import imported, loading, workspace_list
from dashboard.figures import (
    MAX_SCATTER_POINTS,
    MAX_VIOLIN_POINTS,
    gene_detection_histogram,
    qc_violin,
    totals_vs_genes,
)
from dashboard.state import get_state
from dashboard.summary import dataset_summary, grouping_columns, obs_columns_table, split_load_messages
from engine.preprocessing import qc as eqc
from engine.reading import load as eio

state = get_state()

st.title("Data")
st.caption("Load a count matrix, check its quality and choose filters. "
           "The Train, Explore and Differential expression pages use the filtered data.")


def load(read, *args, **kwargs) -> None:
    if loading.try_load(state, read, *args, **kwargs):
        st.rerun()  # so the sidebar and every panel show the new dataset


# ---- Load -------------------------------------------------------------------------------------
with st.container(border=True):
    st.subheader("Load data")
    upload_tab, sample_tab, server_tab = st.tabs(["Upload a file", "Sample data", "Server folder"])
    with upload_tab:
        cap = loading.upload_limit_text()
        st.caption("Formats: " + "; ".join(eio.SUPPORTED_FORMATS) + f". Files up to {cap}.")
        upload = st.file_uploader("Count matrix (cells x genes or genes x cells)", key="upload",
                                  help=loading.too_large_text(cap))
        st.caption(loading.too_large_text(cap))
        if upload is not None and upload.file_id != state.last_upload_id:
            state.last_upload_id = upload.file_id
            load(loading.read_upload, upload.name, upload.getvalue())
    with sample_tab:
        st.write("Kang et al. 2018 (GEO GSE96583): 12,261 peripheral blood mononuclear cells "
                 "from 8 donors, 1,287 genes, 8 annotated cell types.")
        if st.button("Load the sample"):
            load(loading.read_sample)
    with server_tab:
        root = loading.server_data_dir()
        if root is None:
            st.info(f"Loading files from the server's disk is switched off. An administrator can "
                    f"allow it by starting the app with {loading.DATA_DIR_ENV}=/some/folder; files "
                    f"larger than the upload limit of {loading.upload_limit_text()} are opened this way.")
        else:
            files = loading.server_files()
            if not files:
                st.info(f"No readable data files in {root}.")
            else:
                choice = st.selectbox("File in the server folder", [f.name for f in files])
                if st.button("Load this file"):
                    load(lambda name: loading.read_server_file(loading.resolve_server_file(name)),
                         choice)

if state.load_error:
    st.error(state.load_error, icon=":material/error:")
    if state.dataset is not None:
        st.caption(f"Still using **{state.dataset.name}**.")

# ---- Workspaces: every trained run with its names, groups and results, on any dataset ------------
with st.container(border=True):
    workspace_list.panel(state)

dataset = state.dataset
if dataset is None:
    st.stop()

# ---- Summary ----------------------------------------------------------------------------------
summary = dataset_summary(dataset)
report = dataset.adata.uns.get("atlas_load", {})
with st.container(border=True):
    st.subheader(f"Summary: {dataset.name}")
    c1, c2, c3, c4 = st.columns(4)
    c1.metric("Cells", f"{summary.n_cells:,}")
    c2.metric("Genes", f"{summary.n_genes:,}")
    c3.metric("Sparsity", f"{summary.sparsity:.1%} zeros")
    c4.metric("Cell annotations", f"{len(summary.obs_columns):,}")
    for_everyone, for_scanpy_users = split_load_messages(list(report.get("messages", [])))
    for message in for_everyone:
        st.info(message, icon=":material/info:")
    with st.expander("For scanpy users: where in the file things were found"):
        st.markdown(f"Raw counts: `{summary.counts_source}`.  \n" + "  \n".join(for_scanpy_users))

    left, right = st.columns(2)
    with left:
        st.markdown("**Cell annotations**")
        st.dataframe(obs_columns_table(summary), hide_index=True, width="stretch")
    with right:
        candidates = list(report.get("symbol_candidates", []))
        options = ["(gene ids)"] + candidates
        current = report.get("symbol_column")
        chosen = st.selectbox("Gene names shown from", options,
                              index=options.index(current) if current in options else 0,
                              help="Pick the var column holding gene symbols. Names are made unique.")
        column = None if chosen == "(gene ids)" else chosen
        if column != current:
            loading.use_display_names(state, column)
            st.rerun()
        if report.get("format") == "csv":
            st.markdown(f"Orientation: read as **{report.get('orientation')}**.")
            if st.button("Flip rows and columns", help="Use this if genes and cells were swapped."):
                upload = st.session_state.get("upload")
                flipped = not report.get("transposed", False)
                if dataset.source == "upload" and upload is not None:
                    load(loading.read_upload, upload.name, upload.getvalue(), transpose=flipped)
                elif dataset.path:
                    load(loading.read_server_file, dataset.path, transpose=flipped)
                st.rerun()


# ---- An analysis saved in the file (X_scVI or X_pca, X_umap, leiden): explore it without training --
saved = imported.saved_in(state)
if saved is not None:
    with st.container(border=True):
        st.subheader("Analysis saved in this file")
        st.markdown(f"This file holds {saved.describe()}: you can explore it without training.")
        st.caption("It describes every cell of the file, so opening it keeps all cells: the QC "
                   "thresholds below go back to keeping everything. Leiden at other resolutions, "
                   "Wilcoxon differential expression and the export work from it; the model's denoised "
                   "expression and scVI's Bayesian differential expression need a trained model "
                   "(Train page).")
        if st.button("Open the embedding saved in this file (no training)", type="primary",
                     key="data_open_saved"):
            try:
                with st.spinner("Reading the saved representation, embedding and clusters..."):
                    imported.open_saved(state)
            except ValueError as err:
                st.error(str(err), icon=":material/error:")
        active = imported.active_imported(state)
        if active is not None:
            st.success(f"The saved analysis is the active run ({active.run_id[:10]}, "
                       f"{active.latent.shape[0]:,} cells).", icon=":material/check_circle:")
            st.page_link(imported.EXPLORE_PAGE, label="Explore it", icon=":material/scatter_plot:")


# ---- Quality control --------------------------------------------------------------------------
@st.fragment
def quality_control() -> None:
    adata = dataset.adata
    obs = adata.obs
    st.subheader("Quality control")
    groups = grouping_columns(adata)
    groupby = st.selectbox("Split the plots by", ["(all cells)"] + groups,
                           index=1 if groups else 0)
    groupby = None if groupby == "(all cells)" else groupby

    t = state.thresholds
    c1, c2, c3, c4, c5 = st.columns(5)
    min_genes = c1.number_input("Min genes per cell", 0, value=t.min_genes, step=50)
    min_cells = c2.number_input("Min cells per gene", 0, value=t.min_cells, step=1)
    max_pct_mt = c3.number_input("Max % mitochondrial", 0.0, 100.0, value=float(t.max_pct_mt), step=1.0)
    min_counts = c4.number_input("Min counts per cell", 0.0, value=float(t.min_counts), step=100.0)
    max_counts = c5.number_input("Max counts per cell (0 = none)", 0.0,
                                 value=float(t.max_counts or 0.0), step=1000.0)
    try:
        thresholds = eqc.QCThresholds(min_genes=int(min_genes), min_cells=int(min_cells),
                                      max_pct_mt=float(max_pct_mt), min_counts=float(min_counts),
                                      max_counts=float(max_counts) or None)
    except ValueError as err:
        st.error(str(err))
        return
    cells, genes = eqc.filter_masks(adata, thresholds)
    n_cells, n_genes = int(cells.sum()), int(genes.sum())
    kept = (f"Keeps **{n_cells:,} of {adata.n_obs:,} cells** ({n_cells / adata.n_obs:.1%}) and "
            f"**{n_genes:,} of {adata.n_vars:,} genes** ({n_genes / adata.n_vars:.1%}).")
    (st.warning if n_cells == 0 or n_genes == 0 else st.success)(kept)

    v1, v2, v3 = st.columns(3)
    v1.plotly_chart(qc_violin(obs, "total_counts", groupby=groupby, lower=thresholds.min_counts or None,
                              upper=thresholds.max_counts), width="stretch")
    v2.plotly_chart(qc_violin(obs, "n_genes_by_counts", groupby=groupby,
                              lower=thresholds.min_genes or None), width="stretch")
    with v3:
        prefixes = st.text_input("Mitochondrial gene prefixes", ", ".join(state.mito_prefixes),
                                 help="Genes whose display name starts with one of these count as "
                                      "mitochondrial. Comma-separated.")
        chosen = tuple(p.strip() for p in prefixes.split(",") if p.strip())
        if chosen != state.mito_prefixes:
            loading.use_mito_prefixes(state, chosen)
            st.rerun(scope="app")
        n_mt = int(adata.var["mt"].sum())
        if n_mt:
            st.plotly_chart(qc_violin(obs, "pct_counts_mt", groupby=groupby,
                                      upper=thresholds.max_pct_mt if thresholds.max_pct_mt < 100 else None),
                            width="stretch")
            st.caption(f"{n_mt} mitochondrial gene{'' if n_mt == 1 else 's'}.")
        else:
            st.info(f"No gene name starts with {' or '.join(state.mito_prefixes) or '(no prefix)'}: "
                    "% mitochondrial is 0 for every cell. Change the prefixes if your mitochondrial "
                    "genes are named differently.")
    if adata.n_obs > max(MAX_VIOLIN_POINTS, MAX_SCATTER_POINTS):
        st.caption(f"{adata.n_obs:,} cells: the violins show densities computed from every cell; "
                   f"the scatter below draws a random {MAX_SCATTER_POINTS:,} of them (its title says so). "
                   f"The thresholds and the counts kept above always use every cell.")
    s1, s2 = st.columns([2, 1])
    s1.plotly_chart(totals_vs_genes(obs, kept=cells), width="stretch")
    s2.plotly_chart(gene_detection_histogram(adata.var["pct_cells_by_counts"]), width="stretch")

    st.markdown("**Highly variable genes** (seurat_v3 on counts; the Train page can train on them)")
    h1, h2 = st.columns(2)
    n_top = h1.number_input("Number of highly variable genes", 100, 20000,
                            value=min(state.n_top_genes, 20000), step=100)
    batch_options = ["(none)"] + groups
    hvg_batch = h2.selectbox("Batch-aware by", batch_options,
                             index=batch_options.index(state.hvg_batch_key)
                             if state.hvg_batch_key in batch_options else 0)
    hvg_batch = None if hvg_batch == "(none)" else hvg_batch

    if st.button("Apply filters and gene selection", type="primary"):
        try:
            with st.spinner("Filtering and selecting highly variable genes..."):
                loading.apply_settings(state, thresholds, int(n_top), hvg_batch)
        except ValueError as err:
            st.error(str(err))
            return
        st.rerun(scope="app")
    if state.filtered is not None:
        n_hvg = int(state.filtered.var.get("highly_variable", []).sum())
        st.caption(f"In use: {state.filtered.n_obs:,} cells x {state.filtered.n_vars:,} genes, "
                   f"{n_hvg:,} flagged highly variable.")


with st.container(border=True):
    quality_control()
