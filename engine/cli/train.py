"""``python -m engine train``: train an scVI-style model on a count file and write an annotated h5ad.

Example::

    python -m engine train pbmc.h5ad --likelihood nb --n-latent 10 --batch-key donor \\
        --max-epochs 50 --seed 0 --cache-dir runs --out pbmc_scvi.h5ad

The output holds the counts, ``obsm["X_scVI"]`` (latent means) and ``uns["atlas_run"]`` (run id,
parameters, metrics, history). With ``--cache-dir`` the trained run is kept there and an identical
second call loads it instead of training again.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TextIO, get_args

from engine.model.params import Dispersion, Library, Likelihood, Prior, RunParams

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``train`` command."""
    d = RunParams()
    parser = subparsers.add_parser(
        "train",
        help="train an scVI-style model on a count matrix",
        description="Train an scVI-style VAE on raw counts and write OUT.h5ad with obsm['X_scVI'] "
        "and uns['atlas_run']. Defaults follow scvi-tools.",
    )
    parser.add_argument("input", type=Path, metavar="INPUT", help="count file (.h5ad, 10x .h5 or folder, .loom, .csv ...)")
    parser.add_argument("--out", type=Path, required=True, metavar="OUT.h5ad", help="AnnData file to write")
    parser.add_argument("--batch-key", default=None, help="obs column with the batch of each cell (default: none)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="run cache folder (default: no cache)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: auto")
    model = parser.add_argument_group("model")
    model.add_argument("--likelihood", choices=get_args(Likelihood), default=d.likelihood, help=f"default: {d.likelihood}")
    model.add_argument("--n-latent", type=int, default=d.n_latent, help=f"latent dimensions (default: {d.n_latent})")
    model.add_argument("--n-hidden", type=int, default=d.n_hidden, help=f"hidden units per layer (default: {d.n_hidden})")
    model.add_argument("--n-layers", type=int, default=d.n_layers, help=f"hidden layers (default: {d.n_layers})")
    model.add_argument("--dropout", type=float, default=d.dropout, help=f"encoder dropout rate (default: {d.dropout})")
    model.add_argument("--dispersion", choices=get_args(Dispersion), default=d.dispersion, help=f"default: {d.dispersion}")
    model.add_argument("--library", choices=get_args(Library), default=d.library, help=f"library size (default: {d.library})")
    model.add_argument("--prior", choices=get_args(Prior), default=d.prior, help=f"prior on z (default: {d.prior})")
    model.add_argument("--n-components", type=int, default=d.n_components, help=f"mixture prior components (default: {d.n_components})")
    training = parser.add_argument_group("training")
    training.add_argument("--max-epochs", type=int, default=None, help="default: min(round(20000/n_cells*400), 400)")
    training.add_argument("--batch-size", type=int, default=d.batch_size, help=f"default: {d.batch_size}")
    training.add_argument("--lr", type=float, default=d.lr, help=f"Adam learning rate (default: {d.lr})")
    training.add_argument("--kl-warmup-epochs", type=int, default=None, help="default: min(400, epochs // 2)")
    training.add_argument("--no-early-stopping", action="store_true", help="train all epochs")
    training.add_argument("--patience", type=int, default=d.patience, help=f"early-stopping patience (default: {d.patience})")
    training.add_argument("--validation-fraction", type=float, default=d.validation_fraction, help=f"default: {d.validation_fraction}")
    training.add_argument("--seed", type=int, default=d.seed, help=f"random seed (default: {d.seed})")


def params_from_args(args: argparse.Namespace) -> RunParams:
    """The :class:`RunParams` the command-line options describe (ValueError when invalid)."""
    return RunParams(
        likelihood=args.likelihood,
        n_latent=args.n_latent,
        n_hidden=args.n_hidden,
        n_layers=args.n_layers,
        dropout=args.dropout,
        dispersion=args.dispersion,
        library=args.library,
        prior=args.prior,
        n_components=args.n_components,
        max_epochs=args.max_epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        kl_warmup_epochs=args.kl_warmup_epochs,
        early_stopping=not args.no_early_stopping and args.validation_fraction > 0,
        patience=args.patience,
        validation_fraction=args.validation_fraction,
        seed=args.seed,
    )


class Progress:
    """Epoch progress on stderr: one rewritten line on a terminal, one line per epoch otherwise."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = sys.stderr if stream is None else stream
        self.tty = self.stream.isatty()
        self.written = False

    def __call__(self, report) -> None:
        width = 30
        done = int(width * report.epoch / report.n_epochs)
        elbo = report.validation_elbo if report.validation_elbo is not None else report.train_elbo
        text = (
            f"epoch {report.epoch}/{report.n_epochs} [{'#' * done}{'.' * (width - done)}] "
            f"elbo {elbo:,.1f}  {report.seconds:.2f} s/epoch"
        )
        self.written = True
        if self.tty:
            self.stream.write("\r" + text)
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self.written:
            self.stream.write("\n")
            self.stream.flush()


def run(args: argparse.Namespace) -> int:
    """Run the ``train`` command; bad input raises ValueError (exit code 2)."""
    # torch and the reader are imported only when the command runs, not for --help
    from engine.runs.fit import fit
    from engine.reading.load import read_counts

    params = params_from_args(args)
    if not args.out.parent.exists():
        raise ValueError(f"output folder {args.out.parent} does not exist")
    adata = read_counts(args.input)
    progress = Progress()
    try:
        trained = fit(adata, params=params, batch_key=args.batch_key, cache_dir=args.cache_dir, on_epoch=progress, device=args.device)
    finally:
        progress.close()
    adata.write_h5ad(args.out)
    m = trained.metrics
    elbo = m.get("elbo_validation")
    print(
        f"run {trained.run_id}{'' if progress.written else ' (from cache)'}: {m['n_epochs_trained']} epochs, "
        f"{m['seconds_per_epoch']:.2f} s/epoch"
        + (f", validation ELBO {elbo:,.1f}" if elbo is not None else "")
        + f"; wrote {args.out}"
    )
    return 0
