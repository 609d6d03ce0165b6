"""Training at atlas scale (issue 15): seconds per epoch, throughput and peak memory against the number of cells.

    python benchmarks/train_scale.py --data /tmp/atlases/kang-1m.h5ad --sizes 50000,100000,1000000
    python benchmarks/train_scale.py --make-wide /tmp/atlases/kang-1m-2k.h5ad --data /tmp/atlases/kang-1m.h5ad

Each size is trained in its own fresh Python process, so its peak resident memory (``ru_maxrss``)
is that size's own: reading the first ``n`` cells of ``--data`` (backed, so the rest is never
loaded), then ``engine.runs.fit.fit`` with the Train page's defaults (``RunParams()``) except a fixed
``--epochs`` (per-epoch time does not depend on how many epochs are trained), batch key ``--batch-key``
(the atlases' ``batch``: 24 batches), CPU, no run cache. Before the measured run the child trains
1,000 cells for one epoch, so imports and loading the compiled likelihood kernel are not charged to
the first epoch.

Per size it prints: cells, genes, epochs, seconds per epoch (mean of the epochs from the engine's
history; each includes the validation pass), training cells per second, the process's CPU seconds
per epoch (epochs 2 on; less sensitive than wall time to other jobs on a shared machine), the rest of ``fit`` (input
checks, data hash, final latent of every cell), reading time, resident memory after reading and the
peak, and the ratio of s/epoch to the first size's figure scaled linearly (1.00 = exactly linear).

``--make-wide OUT`` writes a wider copy of ``--data`` (``--genes``, default 2,000): the extra genes are
existing genes' columns taken from other cells (a seeded permutation of the rows), so the density
per gene and the counts stay those of the real data. It is made in its own process, so its memory
is not charged to training.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _peak_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def _current_gib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


def _load() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def child(args: argparse.Namespace) -> None:
    import dataclasses

    import anndata as ad
    import numpy as np

    from engine.model.params import RunParams
    from engine.runs.fit import fit

    start = time.perf_counter()
    backed = ad.read_h5ad(args.data, backed="r")
    n = min(args.cells, backed.n_obs)
    if n == backed.n_obs:
        backed.file.close()
        adata = ad.read_h5ad(args.data)
    else:
        adata = backed[:n].to_memory()
        backed.file.close()
    read_seconds = time.perf_counter() - start
    rss_read = _current_gib()
    peak_read = _peak_gib()

    params = dataclasses.replace(RunParams(), max_epochs=args.epochs)
    warm = adata[:1000].copy()
    fit(warm, params=dataclasses.replace(params, max_epochs=1), batch_key=args.batch_key, device="cpu")
    del warm

    marks = [time.process_time()]  # CPU seconds of the process at the start and after each epoch
    start = time.perf_counter()
    run = fit(adata, params=params, batch_key=args.batch_key, device="cpu",
              on_epoch=lambda report: marks.append(time.process_time()))
    fit_seconds = time.perf_counter() - start
    epochs = run.history["seconds"].to_numpy(dtype=float)
    n_train = adata.n_obs - int(round(adata.n_obs * params.validation_fraction))
    result = {
        "cells": int(adata.n_obs),
        "genes": int(adata.n_vars),
        "nnz": int(adata.X.nnz),
        "epochs": len(epochs),
        "epoch_seconds": epochs.tolist(),
        "s_per_epoch": float(epochs.mean()),
        "cells_per_s": n_train / float(epochs.mean()),
        # CPU seconds of epochs 2.. (epoch 1's interval also holds fit's checks and hashing): less
        # sensitive than wall time to other people's jobs on a shared machine
        "cpu_s_per_epoch": float(np.mean(np.diff(marks[1:]))) if len(marks) > 2 else None,
        "fit_seconds": fit_seconds,
        "rest_of_fit_seconds": fit_seconds - float(epochs.sum()),
        "read_seconds": read_seconds,
        "rss_after_read_gib": rss_read,
        "peak_after_read_gib": peak_read,
        "peak_rss_gib": _peak_gib(),
        "threads": int(__import__("torch").get_num_threads()),
        "elbo_validation": run.metrics["elbo_validation"],
        "finite_latent": bool(np.isfinite(run.latent).all()),
    }
    print("RESULT " + json.dumps(result), flush=True)


def make_wide(args: argparse.Namespace) -> None:
    import anndata as ad
    import numpy as np
    import scipy.sparse as sp

    adata = ad.read_h5ad(args.data)
    x = sp.csr_matrix(adata.X)
    extra = args.genes - adata.n_vars
    if extra <= 0:
        raise SystemExit(f"{args.data} already has {adata.n_vars} genes")
    rng = np.random.default_rng(0)
    columns = np.sort(rng.choice(adata.n_vars, size=extra, replace=extra > adata.n_vars))
    rows = rng.permutation(adata.n_obs)
    added = x[:, columns][rows]
    # side by side a slice of cells at a time: one sp.hstack of the whole goes through COO (~12 GB)
    step = 50_000
    parts = [sp.hstack([x[r:r + step], added[r:r + step]], format="csr", dtype=np.float32)
             for r in range(0, adata.n_obs, step)]
    del x, added
    adata.X = None
    wide = sp.vstack(parts, format="csr", dtype=np.float32)
    del parts
    var = adata.var.iloc[np.concatenate([np.arange(adata.n_vars), columns])].copy()
    var.index = list(adata.var_names) + [f"{adata.var_names[c]}-copy{i}" for i, c in enumerate(columns)]
    out = ad.AnnData(X=wide, obs=adata.obs, var=var)
    out.write_h5ad(args.make_wide)
    print(f"wrote {args.make_wide}: {out.n_obs:,} x {out.n_vars:,}, {wide.nnz:,} non-zeros")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("/tmp/atlases/kang-1m.h5ad"))
    parser.add_argument("--sizes", default="50000,100000,1000000", help="cells: the first n of --data")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-key", default="batch")
    parser.add_argument("--make-wide", type=Path, help="write a wider copy of --data here and stop")
    parser.add_argument("--genes", type=int, default=2000, help="genes of --make-wide's copy")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--cells", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="also write every size's result here")
    args = parser.parse_args()
    if args.make_wide:
        make_wide(args)
        return
    if args.child:
        child(args)
        return
    rows = []
    for size in [int(s) for s in args.sizes.split(",")]:
        load_before = _load()
        command = [sys.executable, __file__, "--child", "--cells", str(size), "--data", str(args.data),
                   "--epochs", str(args.epochs), "--batch-key", args.batch_key]
        done = subprocess.run(command, capture_output=True, text=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode or not lines:
            sys.stderr.write(done.stdout + done.stderr)
            raise SystemExit(f"size {size} failed (exit {done.returncode})")
        row = json.loads(lines[-1][len("RESULT "):])
        row["load_before"], row["load_after"] = load_before, _load()
        rows.append(row)
        print(f"{size:,} cells done: {row['s_per_epoch']:.2f} s/epoch, peak {row['peak_rss_gib']:.2f} GiB, "
              f"load {row['load_before']} -> {row['load_after']}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    base = rows[0]
    print()
    print(f"Data: {args.data}; epochs: {args.epochs}; batch key: {args.batch_key}")
    print("| cells | genes | non-zeros | epochs | s/epoch | cells/s | rest of fit s | read s | RSS after read | "
          "peak RSS | s/epoch / (first x n/first) | CPU s/epoch (epochs 2+) | CPU ratio | load avg before -> after |")
    print("|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|")
    for row in rows:
        ratio = row["s_per_epoch"] / (base["s_per_epoch"] * row["cells"] / base["cells"])
        cpu, base_cpu = row["cpu_s_per_epoch"], base["cpu_s_per_epoch"]
        cpu_text = "-" if cpu is None else f"{cpu:.2f}"
        cpu_ratio = "-" if cpu is None or base_cpu is None else f"{cpu / (base_cpu * row['cells'] / base['cells']):.2f}"
        print(f"| {row['cells']:,} | {row['genes']:,} | {row['nnz']:,} | {row['epochs']} | {row['s_per_epoch']:.2f} | "
              f"{row['cells_per_s']:,.0f} | {row['rest_of_fit_seconds']:.1f} | {row['read_seconds']:.1f} | "
              f"{row['rss_after_read_gib']:.2f} GiB | {row['peak_rss_gib']:.2f} GiB | {ratio:.2f} | {cpu_text} | "
              f"{cpu_ratio} | "
              f"{row['load_before']} -> {row['load_after']} |")


if __name__ == "__main__":
    main()
