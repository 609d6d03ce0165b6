"""``python -m engine embed``: neighbours, UMAP, Leiden and t-SNE of a latent, as the Explore page computes them."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from engine.analysis.embedding import pca_uncorrected
from engine.cli.main import main
from engine.reading.load import read_counts


@pytest.fixture(scope="module")
def latent_file(kang_small_path, tmp_path_factory):
    """The small Kang fixture with a 10-dimensional PCA standing in for a trained latent."""
    adata = read_counts(kang_small_path)
    adata.obsm["X_scVI"] = pca_uncorrected(adata, n_comps=10)
    del adata.obsm["X_pca"]
    path = tmp_path_factory.mktemp("embed") / "latent.h5ad"
    adata.write_h5ad(path)
    return path


def test_embed_writes_what_scanpy_reads(latent_file, tmp_path, capsys):
    out = tmp_path / "embedded.h5ad"
    assert main(["embed", str(latent_file), "--out", str(out), "--tsne", "--resolution", "0.5"]) == 0
    printed = capsys.readouterr()
    assert "t-SNE" in printed.err and f"wrote {out}" in printed.out
    adata = ad.read_h5ad(out)
    assert adata.obsm["X_umap"].shape == adata.obsm["X_tsne"].shape == (adata.n_obs, 2)
    assert adata.obsp["connectivities"].shape == (adata.n_obs, adata.n_obs)
    assert adata.uns["neighbors"]["params"]["n_neighbors"] == 15
    assert adata.uns["leiden"]["resolution"] == 0.5
    # the clusters recover the annotated cell types (8 types, 150 cells each at most)
    assert adjusted_rand_score(adata.obs["cell_type"], adata.obs["leiden"]) > 0.4
    assert np.isfinite(adata.obsm["X_tsne"]).all()


def test_embed_bad_input_exits_2_with_one_line(latent_file, kang_small_path, tmp_path, capsys):
    cases = [
        ([str(tmp_path / "missing.h5ad")], "not found"),
        ([str(kang_small_path)], "obsm['X_scVI'] not found"),  # counts, never trained
        ([str(latent_file), "--resolution", "0"], "resolution"),
        ([str(latent_file), "--n-neighbors", "1"], "n_neighbors"),
    ]
    not_h5ad = tmp_path / "table.h5ad"
    not_h5ad.write_text("gene,cell\n")
    cases.append(([str(not_h5ad)], "could not be read"))
    for args, needle in cases:
        assert main(["embed", *args, "--out", str(tmp_path / "o.h5ad")]) == 2, args
        lines = capsys.readouterr().err.strip().splitlines()
        assert lines[-1].startswith("error:") and needle in lines[-1], lines
