"""What ``de`` and ``markers`` start from: a file written by ``python -m engine train`` and its run."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import anndata as ad

    from engine.runs.records import Run


def read_trained(path: Path, cache_dir: Path) -> tuple[ad.AnnData, Run]:
    """The AnnData at ``path`` and the run its ``uns['atlas_run']['run_id']`` names in ``cache_dir``.

    A file whose genes are named by symbol with the run's ids in ``var["gene_ids"]`` (the
    dashboard's export) is named by id again, so the run finds its genes.

    Raises ValueError, saying how to train it, when the file, its run id or the run is missing, or
    the run has no model (imported from a file without training, :mod:`engine.runs.imported`).
    """
    import anndata as ad

    # The model stack (torch) is imported only when a command runs, not for --help.
    from engine.runs.storage import load_run

    if not path.is_file():
        raise ValueError(f"{path} not found")
    adata = ad.read_h5ad(path)
    run_id = adata.uns.get("atlas_run", {}).get("run_id")
    train_first = f"train it first with python -m engine train {path} --cache-dir {cache_dir} ..."
    if run_id is None:
        raise ValueError(f"{path} has no uns['atlas_run']['run_id']: {train_first}")
    trained = load_run(cache_dir, str(run_id))
    if trained is None:
        raise ValueError(f"run {run_id} not found in {cache_dir}: {train_first}")
    if not trained.has_model:
        raise ValueError(f"run {run_id} was opened from a file without training: it has no model for "
                         f"scVI's differential expression; {train_first}")
    _ids_as_var_names(adata, trained.var_names)
    return adata, trained


def _ids_as_var_names(adata: ad.AnnData, run_genes: list[str]) -> None:
    """Name genes by ``var["gene_ids"]`` again when the file names them by symbol and the run by id.

    The dashboard's export names genes by symbol, scanpy-style, and keeps the ids the run was
    trained on in ``var["gene_ids"]``; the symbols stay readable in ``var["display_name"]``.
    """
    if "gene_ids" not in adata.var.columns or set(run_genes) <= set(adata.var_names):
        return
    ids = adata.var["gene_ids"].astype(str)
    if not set(run_genes) <= set(ids):
        return
    if "display_name" not in adata.var.columns:
        adata.var["display_name"] = adata.var_names.astype(str).to_numpy(dtype=object)
    adata.var_names = ids.to_numpy(dtype=object)
