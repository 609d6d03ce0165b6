"""Export page: download the AnnData, DE tables, figures and the model bundle."""

import streamlit as st

from dashboard import de as dede
from dashboard import explore, imported
from dashboard import export as dexport
from dashboard import markers as dmark
from dashboard.active_run import require_active_run
from dashboard.de_figures import WILCOXON_Y, concordance_scatter, gene_violins, volcano
from dashboard.marker_figures import dotplot
from dashboard.progress import progress_bar
from dashboard.state import get_state

state = get_state()
st.title("Export")
st.caption("Take your results elsewhere: the annotated cells for scanpy, cellxgene or a "
           "collaborator, the DE table for a spreadsheet, figures for slides and papers, and the "
           "trained model itself.")

run = require_active_run(state)
stem = f"atlas_{run.run_id[:10]}"
last = dede.last_result(state, run)  # the session's DE comparison, if any (cached)
session = dede.de_session()
marker_request = dmark.last_request()
if marker_request is not None and marker_request.run_id != run.run_id:
    marker_request = None

# ---- The annotated dataset ------------------------------------------------------------------------
with st.container(border=True):
    st.subheader("Annotated cells (.h5ad)")
    st.markdown(
        "One file with every cell that passed QC: its counts, its position in the model's latent "
        "space, the UMAP (and t-SNE, if you computed it), the clusters with the names you gave "
        "them, and how the model was trained. It opens in scanpy, cellxgene and Seurat "
        "(through SeuratDisk or zellkonverter).")
    with st.expander("For scanpy users: where things are"):
        st.markdown(
            "`X`: log1p(counts per 10,000), what cellxgene displays · `layers['counts']`: raw counts · "
            "`obsm['X_scVI']`: latent · `obsm['X_umap']`, `obsm['X_tsne']` (if computed) · "
            "`obs['leiden']`: clusters with your names · `obs['group_<name>']`: each saved cell "
            "group, 'in'/'out' (`uns['atlas_groups']` maps names to columns) · `var['gene_ids']`: "
            "the ids when genes are named by symbol · `uns['atlas_de']`, `uns['atlas_markers']`: "
            "the DE comparison and the markers, each a `table` with its `params` · "
            "`uns['atlas_run']`: run id, parameters, metrics.")
    genes = st.radio("Genes", ["run", "all"], horizontal=True, key="export_genes",
                     format_func={"run": (f"the {len(run.var_names):,} genes the model was trained on "
                                          "(the file can be reopened for DE from the command line)")
                                  if run.has_model else f"the {len(run.var_names):,} genes of the run",
                                  "all": f"all {state.filtered.n_vars:,} genes that passed QC"}.get)
    gene_names = st.radio("Gene names", ["symbols", "ids"], horizontal=True, key="export_gene_names",
                          format_func={"symbols": "gene symbols, e.g. CD79A (the ids are kept beside them)",
                                       "ids": "gene ids, e.g. ENSG00000105369 (the symbols are kept beside them)"}.get)
    # What the file holds besides the run: a prepared file is offered only while these are unchanged.
    contents = (run.run_id, genes, gene_names,
                tuple((name, len(cells)) for name, cells in state.cell_groups.items()),
                (last[0], session.delta, session.fdr) if last is not None else None, marker_request,
                state.leiden_resolution, dict(state.cluster_names))
    if st.button("Prepare the .h5ad", key="export_prepare_h5ad"):
        with progress_bar("Preparing the .h5ad") as show:
            show(0.0, "UMAP and clusters (if not computed yet)")
            explored = explore.explored_adata(state)
            embeddings = {k: explored.obsm[k] for k in ("X_umap", "X_tsne") if k in explored.obsm}
            show(0.4, "assembling cells, genes and annotations")
            de = markers = None
            if last is not None:
                request, result = last
                de = (result.table(delta=session.delta, fdr=session.fdr),
                      dede.provenance(request, result, delta=session.delta, fdr=session.fdr,
                                      dataset=state.dataset.name))
            if marker_request is not None:
                found = dmark.markers(state, run, marker_request)
                markers = (found.table, dmark.provenance(found, run_id=run.run_id, groupby=marker_request.groupby,
                                                         dataset=state.dataset.name))
            adata = dexport.export_anndata(state.filtered, run, clusters=explored.obs["leiden"],
                                           embeddings=embeddings, leiden=explored.uns["leiden"],
                                           genes=genes, gene_names=gene_names, cell_groups=state.cell_groups,
                                           de=de, markers=markers)
            show(0.6, "writing the compressed file")
            st.session_state["export_h5ad"] = (contents, dexport.h5ad_bytes(adata))
    prepared = st.session_state.get("export_h5ad")
    if prepared is not None and prepared[0] == contents:
        st.download_button("Download .h5ad", prepared[1], file_name=f"{stem}.h5ad",
                           mime="application/x-hdf5", key="export_h5ad_download", type="primary",
                           on_click="ignore")
    elif prepared is not None:
        st.caption("The groups, comparisons or choices changed since the file was prepared: prepare it again.")

# ---- Differential expression ----------------------------------------------------------------------
with st.container(border=True):
    st.subheader("Differential expression")
    if last is None:
        st.info("Run a comparison on the Differential expression page first.")
    else:
        request, result = last
        table = result.table(delta=session.delta, fdr=session.fdr)
        st.write(f"{request.comparison.describe()}: {int(table['is_de_fdr'].sum()):,} of "
                 f"{len(table):,} genes DE (delta {session.delta:g}, FDR {session.fdr:g}).")
        provenance = dede.provenance(request, result, delta=session.delta, fdr=session.fdr,
                                     dataset=state.dataset.name)
        st.download_button("Download the DE table (.csv)",
                           dexport.de_csv_bytes(table, provenance=provenance),
                           file_name=f"{stem}_de.csv", mime="text/csv", key="export_de_csv",
                           on_click="ignore")
        st.caption("The first lines, starting with '#', record how the table was made (run, groups, "
                   "thresholds, date). Spreadsheets show them as text above the table; in Python read "
                   "it with `pandas.read_csv(path, comment='#', index_col=0)`.")


# ---- Figures ------------------------------------------------------------------------------------
with st.container(border=True):
    st.subheader("Figures")
    st.caption("For slides and papers: PNG at 300 dpi or SVG, at a journal's column width; HTML keeps "
               "the plot interactive.")
    figures = {"UMAP, clusters named on the plot": explore.umap_figure(state, run)}
    if last is not None:
        names = request.comparison.names()
        mask1, mask2 = dede.request_masks(state, run, request)
        wilcoxon_only = result.mode == dede.WILCOXON
        figures["volcano (top 10 genes named)"] = volcano(
            table, y=WILCOXON_Y if wilcoxon_only else "proba_de",
            delta=session.delta if result.mode in ("change", dede.WILCOXON) else None, group_names=names,
            selected=session.selected_gene)
        if session.selected_gene is not None:
            gene, values = dede.gene_values(state, run, session.selected_gene)
            figures[f"violins of {gene}"] = gene_violins(
                {names[0]: values[mask1], names[1]: values[mask2]}, gene=gene)
        if not wilcoxon_only:
            figures["scVI vs Wilcoxon ranks"] = concordance_scatter(table, dede.wilcoxon(state, mask1, mask2, run))
    if marker_request is not None:
        marker_result = dmark.markers(state, run, marker_request)
        stats = dmark.expression_by_group(state, run, marker_request, dmark.plot_genes(marker_result, 3))
        figures["marker dot plot"] = dotplot(stats, title=f"Markers of {marker_request.groupby}",
                                             width=dexport.FIGURE_SIZES[st.session_state.get(
                                                 "export_size", next(iter(dexport.FIGURE_SIZES)))][0])
    else:
        st.caption("The volcano appears here after a comparison on the Differential expression page, "
                   "the marker dot plot after Find markers on the Markers page.")
    f1, f2, f3 = st.columns([2, 1, 2])
    name = f1.selectbox("Figure", list(figures), key="export_figure")
    fmt = f2.radio("Format", ["png", "svg", "html"], horizontal=True, key="export_format",
                   help="PNG and SVG are drawn by the local Chromium (a few seconds); HTML is "
                        "interactive and self-contained (plotly.js embedded).")
    size = f3.selectbox("Size", list(dexport.FIGURE_SIZES), key="export_size", disabled=fmt == "html")
    file_stem = f"{stem}_{name.split(' (')[0].replace(' ', '_').replace(',', '')}"
    if fmt == "html":
        st.download_button("Download figure", dexport.figure_html(figures[name]),
                           file_name=f"{file_stem}.html", mime="text/html",
                           key="export_figure_download", on_click="ignore")
    elif st.button("Render figure", key="export_render"):
        try:
            with progress_bar(f"Rendering the {name} as {fmt.upper()}") as show:
                show(0.1, "drawing with the local Chromium")
                image = dexport.figure_image(figures[name], fmt=fmt, size=size)
            st.download_button("Download figure", image, file_name=f"{file_stem}.{fmt}",
                               mime="image/png" if fmt == "png" else "image/svg+xml",
                               key="export_figure_download", on_click="ignore")
            if fmt == "png":
                st.image(image, caption="Preview of the PNG", width=420)
        except Exception as err:  # noqa: BLE001 - kaleido/Chromium fail in many ways; HTML still works
            st.error(f"Static export failed ({err}). Download the HTML version instead.")

# ---- The model --------------------------------------------------------------------------------------
with st.container(border=True):
    st.subheader("Trained model (.zip)")
    if not run.has_model:
        imported.needs_model("A model bundle")
        st.stop()
    st.markdown("The model itself, to keep with the data or hand to a colleague: with it, new DE "
                "comparisons and denoised expression need no retraining.")
    with st.expander("For Python users: what is inside"):
        st.markdown(f"The run folder: weights (`model.pt`), `run.json` (parameters, genes, metrics), "
                    f"`history.csv`, `latent.npy`. Unzip it into a folder `F` and load it with "
                    f"`engine.runs.storage.load_run(F, '{run.run_id}')`.")
    try:
        st.download_button("Download the model bundle", dexport.run_bundle(run),
                           file_name=f"{stem}_model.zip", mime="application/zip",
                           key="export_bundle", on_click="ignore")
    except ValueError as err:
        st.error(str(err))
