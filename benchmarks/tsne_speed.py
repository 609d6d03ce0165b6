"""t-SNE of the 12k sample: our FFT-accelerated openTSNE path against scikit-learn's Barnes-Hut.

    python benchmarks/tsne_speed.py [--input trained.h5ad] [--skip-sklearn]

The representation is ``obsm["X_scVI"]`` of ``--input`` (e.g. written by ``python -m engine train``),
else a 10-component PCA of the bundled sample's log-normalised counts as a stand-in of the same size.
Prints wall seconds of each method (2 threads) and the trustworthiness (15 neighbours, on 3,000
random cells) of each layout, and the 15-NN cell-type accuracy when ``obs["cell_type"]`` exists.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=Path, default=None, help="h5ad with obsm['X_scVI'] (default: PCA stand-in)")
    parser.add_argument("--skip-sklearn", action="store_true", help="time only our t-SNE")
    args = parser.parse_args()

    import anndata as ad
    from sklearn.manifold import TSNE, trustworthiness
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    import engine
    from engine.analysis.embedding import pca_uncorrected, tsne

    if args.input is not None:
        adata = ad.read_h5ad(args.input)
        source = f"obsm['X_scVI'] of {args.input.name}"
    else:
        adata = engine.read_counts(ROOT / "sample_data" / "kang_pbmc_ctrl.h5ad")
        adata.obsm["X_scVI"] = pca_uncorrected(adata, n_comps=10)
        source = "10-component PCA of the sample (stand-in latent)"
    x = np.asarray(adata.obsm["X_scVI"], dtype=np.float64)
    rng = np.random.default_rng(0)
    sub = np.sort(rng.choice(len(x), min(3000, len(x)), replace=False))

    def quality(y: np.ndarray) -> str:
        trust = trustworthiness(x[sub], y[sub], n_neighbors=15)
        text = f"trustworthiness {trust:.3f}"
        if "cell_type" in adata.obs:
            labels = adata.obs["cell_type"].astype(str).to_numpy()[sub]
            acc = cross_val_score(KNeighborsClassifier(15), y[sub], labels, cv=3).mean()
            text += f", 15-NN cell-type accuracy {acc:.3f}"
        return text

    rows = []
    start = time.perf_counter()
    tsne(adata, seed=0)
    rows.append(("ours: openTSNE FFT on exact kNN", time.perf_counter() - start, quality(adata.obsm["X_tsne"])))
    if not args.skip_sklearn:
        start = time.perf_counter()
        y = TSNE(perplexity=30, init="pca", method="barnes_hut", random_state=0, n_jobs=2).fit_transform(x)
        rows.append(("scikit-learn Barnes-Hut (before)", time.perf_counter() - start, quality(y)))
    print(f"{adata.n_obs:,} cells; {source}")
    print("| method | seconds | quality |\n|---|---|---|")
    for name, seconds, text in rows:
        print(f"| {name} | {seconds:.1f} | {text} |")


if __name__ == "__main__":
    main()
