"""scvi-tools' own default SCVI model, for ``benchmarks/training_defaults.py``; runs in the scvi-tools venv.

Not a project module: it imports only scvi-tools and its dependencies (benchmarks/README.md says how
to build that venv) and is started by ``training_defaults.py`` as a subprocess. Unlike
``scvi_side.py`` (which matches our engine's architecture), it trains ``scvi.model.SCVI(adata)``
with every scvi-tools default: batch in the decoder only (``encode_covariates=False``), batch size
128, KL warm-up over 400 epochs, no early stopping, ``--epochs`` (400) epochs, on the cells of the
given train/validation split. Validation is not run during training (scvi-tools' default without
early stopping). Writes to ``--out``:

- ``scvi_default_results.json``: versions, ``train()`` wall time, validation ELBO per cell in our
  engine's sign convention (real ELBO, higher is better);
- ``scvi_default_latent.npy``: ``get_latent_representation()`` of every cell (float32).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from scvi_common import add_common_arguments, prepare, train, versions


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument("--epochs", type=int, default=400)
    parser.add_argument("--threads", type=int, default=1)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    import anndata as ad
    import scvi
    import torch

    out, train_idx, val_idx = prepare(args, threads=args.threads)

    adata = ad.read_h5ad(args.data)
    scvi.model.SCVI.setup_anndata(adata, batch_key=args.batch_key)
    model = scvi.model.SCVI(adata)  # every default: encode_covariates=False, ZINB, 1 x 128, 10 latent
    train_seconds = train(model, epochs=args.epochs, train_idx=train_idx, val_idx=val_idx)
    model.module.eval()
    elbo = -abs(float(model.get_elbo(indices=val_idx)))
    latent = np.asarray(model.get_latent_representation(), dtype=np.float32)
    np.save(out / "scvi_default_latent.npy", latent)
    results = {
        "tool": "scvi-tools default",
        "versions": versions(),
        "threads": torch.get_num_threads(),
        "n_epochs": args.epochs,  # no early stopping: every epoch is trained
        "train_seconds": train_seconds,
        "elbo_validation": elbo,
        "encode_covariates": getattr(model.module, "encode_covariates", None),
    }
    (out / "scvi_default_results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
