"""The scvi-tools half of ``benchmarks/vs_scvi_tools.py``; runs in the separate scvi-tools venv.

Not a project module: it imports only scvi-tools and its dependencies (see benchmarks/README.md for
the venv) and is started by ``vs_scvi_tools.py`` as a subprocess. It trains ``scvi.model.SCVI`` with
the architecture of our engine's defaults on the cells of a given train/validation split, then
writes to ``--out``:

- ``scvi_results.json``: versions, timings (``train()`` wall time, per-epoch times from a Lightning
  callback), validation ELBO / reconstruction / KL per cell, all in our engine's sign convention;
- ``scvi_latent.npy``: ``get_latent_representation()`` of every cell (float32).

Sign convention: the numbers written are the real ELBO per cell (higher is better, negative for
counts), ``reconstruction = E_q log p(x | z)`` (negative) and ``kl >= 0``. scvi-tools is not
consistent here: in 1.4 ``get_elbo`` returns the ELBO while ``get_reconstruction_error`` and the
training history's ``elbo_validation`` are losses (positive). The log-likelihood of counts is
never positive, so ``-abs(value)`` gives our convention whichever sign a version returns.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from scvi_common import add_common_arguments, kl_warmup_default, prepare, train, versions


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    # torch/scvi are imported after argument parsing so that --help works without them
    import anndata as ad
    import lightning.pytorch as pl
    import scvi
    import torch

    out, train_idx, val_idx = prepare(args, threads=args.threads)

    adata = ad.read_h5ad(args.data)
    scvi.model.SCVI.setup_anndata(adata, batch_key=args.batch_key)
    # Our engine's architecture: the batch enters every layer of the encoder AND the decoder
    # (scvi-tools' default encode_covariates=False would leave it out of the encoder).
    model = scvi.model.SCVI(
        adata,
        n_hidden=128,
        n_latent=10,
        n_layers=1,
        dropout_rate=0.1,
        gene_likelihood="zinb",
        dispersion="gene",
        encode_covariates=True,
        deeply_inject_covariates=True,
    )

    class EpochTimer(pl.Callback):
        """Wall time of each epoch: training steps plus the validation pass (as our engine reports)."""

        def __init__(self) -> None:
            self.seconds: list[float] = []
            self._start = 0.0

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self._start = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            # Lightning 2 runs the epoch-end validation before this hook, so it is included
            self.seconds.append(time.perf_counter() - self._start)

    timer = EpochTimer()
    train_seconds = train(
        model, epochs=args.epochs, train_idx=train_idx, val_idx=val_idx, batch_size=args.batch_size,
        early_stopping=False,
        # validate every epoch as our engine does (scvi-tools skips it without early stopping)
        check_val_every_n_epoch=1,
        callbacks=[timer],
    )

    model.module.eval()
    elbo = -abs(float(model.get_elbo(indices=val_idx)))
    rec_values = model.get_reconstruction_error(indices=val_idx)
    reconstruction = -abs(float(sum(float(v) for v in rec_values.values())))
    latent = np.asarray(model.get_latent_representation(), dtype=np.float32)
    np.save(out / "scvi_latent.npy", latent)

    history = model.history
    val_curve = history.get("elbo_validation")
    results = {
        "tool": "scvi-tools",
        "versions": versions(),
        "threads": torch.get_num_threads(),
        "n_epochs": args.epochs,
        "train_seconds": train_seconds,
        "epoch_seconds": timer.seconds,
        "n_train": int(len(train_idx)),
        "n_validation": int(len(val_idx)),
        "elbo_validation": elbo,
        "reconstruction_validation": reconstruction,
        "kl_validation": reconstruction - elbo,
        "elbo_validation_curve": None if val_curve is None else [-abs(float(v)) for v in val_curve.iloc[:, 0]],
        # the KL warm-up actually used: scvi-tools' default, whatever max_epochs is
        "kl_warmup_epochs": kl_warmup_default(),
    }
    (out / "scvi_results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
