"""Milliseconds per training step (forward / backward / optimizer) of our VAE, and of scvi-tools'.

    python benchmarks/step_profile.py [--steps 60] [--threads 1 2] [--scvi-python /work/scvi-venv/bin/python]

Kang PBMC control (12,261 cells x 1,287 genes), batch key ``donor`` (8 batches), minibatches of
128 cells, ZINB with gene dispersion, 1 x 128 hidden, 10 latent, dropout 0.1, batch injected in
encoder and decoder: the configuration of ``benchmarks/vs_scvi_tools.py``. Each phase is timed
separately over ``--steps`` steps after ``--warmup`` untimed ones; the table shows medians.

- ours: ``VAE.loss`` + ``training_loss`` (forward), ``backward()``, ``zero_grad`` + Adam ``step``
  (optimizer), plus the time to cut the minibatches from the CSR matrix (data, per step); as in
  ``engine.model.training``, torch runs on one thread and the likelihood kernel on ``--threads``;
- scvi-tools (with ``--scvi-python``): this same file is run by that venv's python with
  ``--scvi-side``; it times ``scvi.module.VAE`` forward + ``loss`` (forward), ``backward()`` and
  ``torch.optim.Adam(eps=0.01, weight_decay=1e-6)`` (scvi-tools' TrainingPlan optimizer) on dense
  minibatches of the same cells, i.e. the module's work without Lightning's or the data loader's
  overhead (so the ratio here is a lower bound of the end-to-end one).

OMP_WAIT_POLICY=PASSIVE is set before torch is imported (see benchmarks/train_speed.py).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import json  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "kang_pbmc_ctrl_12261x1287.h5ad"
BATCH_SIZE = 128


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--scvi-python", default=os.environ.get("SCVI_PYTHON"))
    parser.add_argument("--scvi-side", action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args()


def load(path: Path):
    import anndata as ad
    import scipy.sparse as sp

    adata = ad.read_h5ad(path)
    counts = sp.csr_matrix(adata.X, dtype=np.float32)
    counts.sort_indices()
    batch = adata.obs["donor"].astype("category").cat.codes.to_numpy().astype(np.int64)
    return counts, batch, int(batch.max()) + 1


def medians(times: dict[str, list[float]]) -> dict[str, float]:
    return {k: 1e3 * float(np.median(v)) for k, v in times.items()}


def profile_ours(counts, batch, n_batch, threads: int, steps: int, warmup: int) -> dict[str, float]:
    import torch

    sys.path.insert(0, str(ROOT))
    from engine.model.params import RunParams
    from engine.model.training import ADAM_EPS, WEIGHT_DECAY, library_log_prior
    from engine.model.vae import VAE, CellConstants, iterate_minibatches

    torch.set_num_threads(1)  # as engine.model.training: torch ops on one thread, the likelihood kernel on `threads`
    params = RunParams(likelihood="zinb", dispersion="gene", n_hidden=128, n_latent=10, dropout=0.1)
    lib_mean, lib_var = library_log_prior(counts, batch, n_batch)
    gen = torch.Generator().manual_seed(0)
    module = VAE(counts.shape[1], n_batch, params, library_log_mean=lib_mean, library_log_var=lib_var, generator=gen)
    module.train()
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-3, eps=ADAM_EPS, weight_decay=WEIGHT_DECAY, fused=True)
    order = np.random.default_rng(0).permutation(counts.shape[0])
    n = steps + warmup
    constants = CellConstants.of(counts)  # once per data set, as engine.model.training does
    start = time.perf_counter()
    minibatches = list(
        iterate_minibatches(
            counts, batch, order[: n * BATCH_SIZE], BATCH_SIZE, min_size=BATCH_SIZE, constants=constants
        )
    )
    data_s = (time.perf_counter() - start) / len(minibatches)
    times: dict[str, list[float]] = {"forward": [], "backward": [], "optimizer": [], "step": []}
    for i, mb in enumerate(minibatches):
        t0 = time.perf_counter()
        loss = module.loss(mb, generator=gen, threads=threads).training_loss(0.5)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        t3 = time.perf_counter()
        if i >= warmup:
            for key, value in zip(times, (t1 - t0, t2 - t1, t3 - t2, t3 - t0), strict=True):
                times[key].append(value)
    result = medians(times)
    result["data"] = 1e3 * data_s
    return result


def profile_scvi(counts, batch, n_batch, threads: int, steps: int, warmup: int) -> dict[str, float]:
    """scvi-tools' module on the same minibatches (runs inside the scvi-tools venv)."""
    import torch
    from scvi import REGISTRY_KEYS
    from scvi.module import VAE as ScviVAE

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    module = ScviVAE(
        counts.shape[1], n_batch=n_batch, n_hidden=128, n_latent=10, n_layers=1, dropout_rate=0.1,
        dispersion="gene", gene_likelihood="zinb", encode_covariates=True, deeply_inject_covariates=True,
    )  # fmt: skip
    module.train()
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-3, eps=0.01, weight_decay=1e-6)
    order = np.random.default_rng(0).permutation(counts.shape[0])
    times: dict[str, list[float]] = {"forward": [], "backward": [], "optimizer": [], "step": []}
    data: list[float] = []
    for i in range(steps + warmup):
        cells = order[i * BATCH_SIZE : (i + 1) * BATCH_SIZE]
        t = time.perf_counter()
        tensors = {
            REGISTRY_KEYS.X_KEY: torch.from_numpy(counts[cells].toarray()),
            REGISTRY_KEYS.BATCH_KEY: torch.from_numpy(batch[cells]).reshape(-1, 1),
            REGISTRY_KEYS.LABELS_KEY: torch.zeros(len(cells), 1, dtype=torch.int64),
        }
        t0 = time.perf_counter()
        _, _, losses = module(tensors, loss_kwargs={"kl_weight": 0.5})
        loss = losses.loss
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        t3 = time.perf_counter()
        if i >= warmup:
            data.append(t0 - t)
            for key, value in zip(times, (t1 - t0, t2 - t1, t3 - t2, t3 - t0), strict=True):
                times[key].append(value)
    result = medians(times)
    result["data"] = 1e3 * float(np.median(data))
    return result


def main() -> None:
    args = parse_args()
    counts, batch, n_batch = load(args.data)
    if args.scvi_side:
        print(json.dumps({t: profile_scvi(counts, batch, n_batch, t, args.steps, args.warmup) for t in args.threads}))
        return
    rows = [("ours", t, profile_ours(counts, batch, n_batch, t, args.steps, args.warmup)) for t in args.threads]
    if args.scvi_python:
        command = [args.scvi_python, __file__, "--scvi-side", "--steps", str(args.steps), "--warmup", str(args.warmup),
                   "--data", str(args.data), "--threads", *map(str, args.threads)]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ))
        if done.returncode != 0:
            raise RuntimeError(f"scvi-tools side failed:\n{done.stderr[-3000:]}")
        scvi = json.loads(done.stdout.strip().splitlines()[-1])
        rows += [("scvi-tools module", int(t), r) for t, r in scvi.items()]
    print("| model | threads | forward ms | backward ms | optimizer ms | step ms | data ms/step |")
    print("|---|--:|--:|--:|--:|--:|--:|")
    for name, threads, r in rows:
        print(
            f"| {name} | {threads} | {r['forward']:.2f} | {r['backward']:.2f} | {r['optimizer']:.2f} "
            f"| {r['step']:.2f} | {r['data']:.2f} |"
        )


if __name__ == "__main__":
    main()
