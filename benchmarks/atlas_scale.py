"""Engine steps at atlas scale, each in a fresh process: seconds and peak memory (issue 15).

Usage (atlases from ``benchmarks/make_atlas.py``; from the repository root, project venv)::

    python benchmarks/atlas_scale.py /tmp/atlases/kang-100k.h5ad /tmp/atlases/kang-1m.h5ad
    python benchmarks/atlas_scale.py /tmp/atlases/pancreas-wide-100k.h5ad --steps read qc

Steps (``--steps``, default all of them):

- ``read``: :func:`engine.reading.load.read_counts` (the Data page's reader: finds the counts,
  drops empty cells and genes, makes names unique);
- ``qc``: read, then QC metrics (:func:`engine.preprocessing.qc.calculate_qc_metrics`) and
  2,000 highly variable genes (:func:`engine.preprocessing.hvg.highly_variable_genes`, Seurat v3);
  the time is of QC + HVG only.

Each step runs in its own Python process (``python benchmarks/atlas_scale.py --one STEP FILE``),
so the peak resident memory (``ru_maxrss`` of that process) is the step's own, imports included.
The table gives the CSR size of the counts beside it (issue 15: reading at most 3x the CSR size).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STEPS = ("read", "qc")


def one(step: str, path: Path) -> dict:
    sys.path.insert(0, str(REPO))
    from engine.preprocessing.hvg import highly_variable_genes
    from engine.preprocessing.qc import calculate_qc_metrics
    from engine.reading.load import read_counts

    start = time.perf_counter()
    adata = read_counts(path)
    seconds = time.perf_counter() - start
    x = adata.layers["counts"] if "counts" in adata.layers else adata.X
    csr = x.data.nbytes + x.indices.nbytes + x.indptr.nbytes
    if step == "qc":
        start = time.perf_counter()
        calculate_qc_metrics(adata)
        highly_variable_genes(adata, n_top_genes=min(2000, adata.n_vars))
        seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"step": step, "cells": adata.n_obs, "genes": adata.n_vars, "seconds": seconds, "peak": peak, "csr": csr}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*", type=Path)
    parser.add_argument("--steps", nargs="+", choices=STEPS, default=list(STEPS))
    parser.add_argument("--one", nargs=2, metavar=("STEP", "FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], Path(args.one[1]))))
        return 0
    print("| file | cells x genes | step | seconds | peak memory | CSR size | peak / CSR |")
    print("|---|---|---|---|---|---|---|")
    for path in args.files:
        for step in args.steps:
            done = subprocess.run([sys.executable, __file__, "--one", step, str(path)], capture_output=True,
                                  text=True, check=False)
            if done.returncode:
                print(f"| {path.name} | - | {step} | failed: {done.stderr.strip().splitlines()[-1]} | | | |")
                continue
            r = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"| {path.name} | {r['cells']:,} x {r['genes']:,} | {step} | {r['seconds']:.1f} | "
                  f"{r['peak'] / 2**30:.2f} GiB | {r['csr'] / 2**30:.2f} GiB | {r['peak'] / r['csr']:.1f}x |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
