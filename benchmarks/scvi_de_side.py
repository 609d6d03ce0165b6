"""The scvi-tools half of ``benchmarks/de_vs_scvi_tools.py``; runs in the separate scvi-tools venv.

Not a project module: it imports only scvi-tools and its dependencies (see benchmarks/README.md for
the venv) and is started by ``de_vs_scvi_tools.py`` as a subprocess, once per (data set, seed). It
trains ``scvi.model.SCVI`` with scvi-tools' default architecture (``encode_covariates=False``: the
batch enters the decoder only) and the settings of the benchmark (ZINB, gene dispersion, 1 x 128
hidden, 10 latent, dropout 0.1, batch size 128, scvi-tools' default KL warm-up, no early stopping) on
the training cells of a given split, then runs ``SCVI.differential_expression(mode="change")`` for
every pair of boolean masks in ``--groups`` and writes to ``--out``:

- ``{tag}_de_{name}.csv``: scvi-tools' DE table as it returns it (rows in its own order: sorted
  by ``proba_de``, descending), index = ``var_names``;
- ``{tag}_scvi.json``: versions, training wall time, the KL warm-up used, DE wall time per comparison.
"""

from __future__ import annotations

import argparse
import inspect
import json
import time

import numpy as np
from scvi_common import add_common_arguments, kl_warmup_default, prepare, train, versions


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser)
    parser.add_argument(
        "--groups", required=True, help=".npz with boolean masks '<name>__1' and '<name>__2' per comparison"
    )
    parser.add_argument("--tag", required=True, help="prefix of the files written, e.g. scvi_ctrl_seed0")
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--delta", type=float, default=0.25)
    parser.add_argument("--fdr", type=float, default=0.05)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    # torch/scvi are imported after argument parsing so that --help works without them
    import anndata as ad
    import scvi
    import torch

    out, train_idx, val_idx = prepare(args, threads=args.threads)
    groups = np.load(args.groups)
    names = sorted({key.rsplit("__", 1)[0] for key in groups.files})

    adata = ad.read_h5ad(args.data)
    scvi.model.SCVI.setup_anndata(adata, batch_key=args.batch_key)
    model = scvi.model.SCVI(
        adata,
        n_hidden=128,
        n_latent=10,
        n_layers=1,
        dropout_rate=0.1,
        gene_likelihood="zinb",
        dispersion="gene",
        # scvi-tools' defaults, written out: the batch enters the decoder, not the encoder
        encode_covariates=False,
        deeply_inject_covariates=True,
    )
    train_seconds = train(model, epochs=args.epochs, train_idx=train_idx, val_idx=val_idx,
                          batch_size=args.batch_size, early_stopping=False)

    de_seconds = {}
    for name in names:
        start = time.perf_counter()
        table = model.differential_expression(
            idx1=np.asarray(groups[f"{name}__1"], dtype=bool),
            idx2=np.asarray(groups[f"{name}__2"], dtype=bool),
            mode="change",
            delta=args.delta,
            fdr_target=args.fdr,
            silent=True,
        )
        de_seconds[name] = time.perf_counter() - start
        table.to_csv(out / f"{args.tag}_de_{name}.csv")

    results = {
        "tool": "scvi-tools",
        "versions": versions(),
        "seed": args.seed,
        "threads": torch.get_num_threads(),
        "n_epochs": args.epochs,
        "train_seconds": train_seconds,
        "de_seconds": de_seconds,
        "n_train": len(train_idx),
        "n_validation": len(val_idx),
        "kl_warmup_epochs": kl_warmup_default(),
        "de_defaults": {
            name: parameter.default
            for name, parameter in inspect.signature(
                scvi.model.base.DifferentialComputation.get_bayes_factors
            ).parameters.items()
            if name in ("n_samples_overall", "use_permutation", "m_permutation", "test_mode")
        },
    }
    (out / f"{args.tag}_scvi.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
