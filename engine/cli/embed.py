r"""``python -m engine embed``: neighbours, UMAP and Leiden (and t-SNE) of a trained latent space.

Example::

    python -m engine embed trained.h5ad --out embedded.h5ad --tsne --resolution 0.8

``IN.h5ad`` holds ``obsm["X_scVI"]`` (written by ``python -m engine train``). The same engine
functions and defaults as the Explore page compute ``obsp["distances"]``/``obsp["connectivities"]``
(15 exact nearest neighbours), ``obsm["X_umap"]``, ``obs["leiden"]`` and, with ``--tsne``,
``obsm["X_tsne"]``; the file opens in scanpy with them in place.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from engine.analysis.neighbors import DEFAULT_N_NEIGHBORS


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``embed`` command."""
    parser = subparsers.add_parser(
        "embed",
        help="neighbours, UMAP, Leiden (and t-SNE) of obsm['X_scVI']",
        description="Compute the kNN graph, UMAP and Leiden clusters (and optionally t-SNE) of a "
        "trained latent space, as the Explore page does, and write them into OUT.h5ad.",
    )
    add = parser.add_argument
    add("input", type=Path, metavar="IN.h5ad", help="AnnData with obsm['X_scVI'] (python -m engine train)")
    add("--out", type=Path, required=True, metavar="OUT.h5ad", help="AnnData file to write")
    add("--use-rep", default="X_scVI", help="obsm key of the representation (default: X_scVI)")
    add("--resolution", type=float, default=1.0, help="Leiden resolution (default: 1.0)")
    add("--n-neighbors", type=int, default=DEFAULT_N_NEIGHBORS,
        help=f"neighbours per cell (default: {DEFAULT_N_NEIGHBORS})")
    add("--tsne", action="store_true", help="also compute a t-SNE (FFT-accelerated)")
    add("--seed", type=int, default=0, help="random seed (default: 0)")


def run(args: argparse.Namespace) -> int:
    """Run the ``embed`` command; bad input raises ValueError (exit code 2)."""
    import anndata as ad

    from engine.analysis.clustering import leiden
    from engine.analysis.embedding import tsne, umap
    from engine.analysis.neighbors import neighbors, representation

    if not args.input.is_file():
        raise ValueError(f"{args.input} not found")
    if not args.out.parent.exists():
        raise ValueError(f"output folder {args.out.parent} does not exist")
    try:
        adata = ad.read_h5ad(args.input)
    except Exception as err:  # noqa: BLE001 - any failure to read means the file is not an h5ad
        raise ValueError(f"{args.input} could not be read as an .h5ad file ({type(err).__name__}: {err})") from err
    representation(adata, args.use_rep)  # a clear message before any work when it is missing
    if args.resolution <= 0:
        raise ValueError(f"--resolution {args.resolution:g} must be positive (1.0 is the usual start)")
    steps = [
        ("neighbours", lambda: neighbors(adata, use_rep=args.use_rep, n_neighbors=args.n_neighbors, seed=args.seed)),
        ("UMAP", lambda: umap(adata, seed=args.seed)),
        ("Leiden", lambda: leiden(adata, resolution=args.resolution, seed=args.seed)),
    ]
    if args.tsne:
        steps.append(("t-SNE", lambda: tsne(adata, use_rep=args.use_rep, seed=args.seed, on_progress=_progress)))
    for name, step in steps:
        start = time.perf_counter()
        print(f"{name}...", end="", file=sys.stderr, flush=True)
        try:
            step()
        except BaseException:
            print(file=sys.stderr)  # the error message starts its own line
            raise
        print(f" {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    adata.write_h5ad(args.out)
    print(f"{adata.n_obs:,} cells, {adata.uns['leiden']['n_clusters']} Leiden clusters at resolution "
          f"{args.resolution:g}; wrote {args.out}")
    return 0


def _progress(done: float) -> None:
    if round(done * 100) % 20 == 0:
        print(f" {done:.0%}", end="", file=sys.stderr, flush=True)
