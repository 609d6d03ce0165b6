"""Training throughput of our engine on the Kang PBMC control set (12,261 cells x 1,287 genes).

    python benchmarks/train_speed.py [--epochs 30] [--threads 2] [--likelihood zinb]

Batch key donor, batch size 128, seed 0, CPU. Prints seconds per epoch (median over epochs, so a
busy shared machine skews it less), cells per second and the final validation ELBO (per cell,
higher is better; scvi-tools' elbo_validation is its negative). ``--kl-warmup-epochs 400`` matches
scvi-tools' schedule for a like-for-like ELBO comparison.

OMP_WAIT_POLICY=PASSIVE (set here unless already set): on a machine whose cores are busy with other
work, OpenMP threads that spin-wait at each of the ~500 parallel regions of a step make 2 threads
~15x slower than 1 (34 s vs 1.9 s per epoch measured); passive waiting removes that. It must be set
before torch is imported, so compare other engines with the same environment.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import sys  # noqa: E402
import time
from pathlib import Path  # noqa: E402

import anndata as ad  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.model.params import RunParams  # noqa: E402
from engine.runs.fit import fit  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "kang_pbmc_ctrl_12261x1287.h5ad"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--likelihood", default="zinb")
    parser.add_argument("--kl-warmup-epochs", type=int, default=400)
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    adata = ad.read_h5ad(args.data)
    params = RunParams(
        likelihood=args.likelihood, max_epochs=args.epochs, batch_size=128, seed=0,
        kl_warmup_epochs=args.kl_warmup_epochs, early_stopping=False,
    )
    start = time.perf_counter()
    run = fit(adata, params=params, batch_key="donor", device="cpu")
    total = time.perf_counter() - start
    per_epoch = float(np.median(run.history["seconds"]))
    n_train = round(adata.n_obs * (1 - params.validation_fraction))
    print("| engine | likelihood | epochs | threads | s/epoch (median) | cells/s | total s | validation ELBO |")
    print("|---|---|---|---|---|---|---|---|")
    print(
        f"| atlas engine | {args.likelihood} | {run.metrics['n_epochs_trained']} | {args.threads} | {per_epoch:.3f} | "
        f"{n_train / per_epoch:,.0f} | {total:.1f} | {run.metrics['elbo_validation']:.2f} |"
    )


if __name__ == "__main__":
    main()
