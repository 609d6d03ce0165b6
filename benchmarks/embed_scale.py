"""``python -m engine embed`` at atlas scale beside scanpy: seconds per step and peak memory (issue 15).

Usage (atlases from ``benchmarks/make_atlas.py``; from the repository root, project venv)::

    python benchmarks/embed_scale.py /tmp/atlases/kang-100k.h5ad /tmp/atlases/kang-1m.h5ad
    python benchmarks/embed_scale.py /tmp/atlases/kang-100k.h5ad --scanpy

For each atlas a stand-in for a trained file is written once next to it (``<name>-latent.h5ad``:
the counts with ``obsm["X_scVI"]`` = the first 10 principal components of the log-normalised
counts, the size of the default latent space), so no model has to be trained first. Then, in a
fresh process each:

- ``ours``: ``python -m engine embed IN --out OUT`` (neighbours, UMAP, Leiden at resolution 1, as the
  Explore page computes them), its own per-step seconds as it prints them, the wall time including
  reading and writing the file, and the peak resident memory of the command;
- ``scanpy`` (``--scanpy``): ``sc.pp.neighbors(use_rep="X_scVI")`` (pynndescent), ``sc.tl.umap``
  and ``sc.tl.leiden(flavor="igraph", n_iterations=2)`` on the same file, timed the same way (the
  first scanpy call in a process includes numba compilation, as a user's would).
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def latent_file(atlas: Path) -> Path:
    """The atlas with a 10-dim PCA as ``obsm["X_scVI"]``, written once beside it."""
    out = atlas.with_name(atlas.stem + "-latent.h5ad")
    if out.exists():
        return out
    sys.path.insert(0, str(REPO))
    import anndata as ad

    from engine.analysis.embedding import pca_uncorrected

    adata = ad.read_h5ad(atlas)
    pcs = pca_uncorrected(adata, layer="X", n_comps=10, seed=0)
    adata.obsm["X_scVI"] = pcs
    del adata.obsm["X_pca"]
    adata.write_h5ad(out)
    return out


def ours(path: Path, out: Path) -> dict:
    """``python -m engine embed`` in a fresh process (this script's ``--ours-one``, for its own peak memory)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--ours-one", str(path), str(out)],
                          cwd=REPO, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    steps = {name: float(s) for name, s in re.findall(r"(neighbours|UMAP|Leiden)\.\.\.\s*([\d.]+) s", done.stderr)}
    clusters = re.search(r"(\d+) Leiden clusters", done.stdout)
    peak = int(done.stdout.strip().splitlines()[-1])
    return {"steps": steps, "wall": wall, "peak": peak, "clusters": int(clusters.group(1)) if clusters else None}


def ours_one(path: str, out: str) -> None:
    sys.path.insert(0, str(REPO))
    from engine.cli.main import main

    if main(["embed", path, "--out", out]):
        raise SystemExit("python -m engine embed failed")
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)


def scanpy_side(path: str) -> dict:
    import anndata as ad
    import scanpy as sc

    started = time.perf_counter()
    adata = ad.read_h5ad(path)
    steps = {}
    for name, step in (
        ("neighbours", lambda: sc.pp.neighbors(adata, use_rep="X_scVI", n_neighbors=15, random_state=0)),
        ("UMAP", lambda: sc.tl.umap(adata, random_state=0)),
        ("Leiden", lambda: sc.tl.leiden(adata, flavor="igraph", n_iterations=2, random_state=0)),
    ):
        start = time.perf_counter()
        step()
        steps[name] = time.perf_counter() - start
    return {"steps": steps, "wall": time.perf_counter() - started,
            "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "clusters": int(adata.obs["leiden"].nunique())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path)
    parser.add_argument("--scanpy", action="store_true", help="also run scanpy's neighbours, UMAP, Leiden")
    parser.add_argument("--scanpy-one", help=argparse.SUPPRESS)
    parser.add_argument("--ours-one", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ours_one:
        ours_one(*args.ours_one)
        return 0
    if args.scanpy_one:
        print(json.dumps(scanpy_side(args.scanpy_one)))
        return 0
    rows = []
    for atlas in args.files:
        path = latent_file(atlas)
        import anndata as ad

        n_obs = ad.read_h5ad(path, backed="r").n_obs
        embedded = Path("/tmp") / f"{atlas.stem}-embedded.h5ad"
        rows.append((atlas.name, n_obs, "ours (python -m engine embed)", ours(path, embedded)))
        if args.scanpy:
            done = subprocess.run([sys.executable, __file__, "--scanpy-one", str(path)], capture_output=True,
                                  text=True, check=True)
            rows.append((atlas.name, n_obs, "scanpy 1.11 (pynndescent, umap-learn)",
                         json.loads(done.stdout.strip().splitlines()[-1])))
        print(f"done {atlas.name}", file=sys.stderr, flush=True)
    print("| file | cells | tool | neighbours s | UMAP s | Leiden s (clusters) | wall s (read+write) | peak memory |")
    print("|---|---|---|---|---|---|---|---|")
    for name, n_obs, tool, r in rows:
        s = {k: r["steps"].get(k, float("nan")) for k in ("neighbours", "UMAP", "Leiden")}
        print(f"| {name} | {n_obs:,} | {tool} | {s['neighbours']:.1f} | {s['UMAP']:.1f} | {s['Leiden']:.1f} "
              f"({r['clusters']}) | {r['wall']:.1f} | {r['peak'] / 2**30:.2f} GiB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
