r"""``python -m engine train``: train an scVI-style model on a count file and write an annotated h5ad.

Example::

    python -m engine train pbmc.h5ad --likelihood nb --n-latent 10 --batch-key donor \
        --max-epochs 50 --seed 0 --cache-dir runs --out pbmc_scvi.h5ad

The output holds the counts, ``obsm["X_scVI"]`` (latent means) and ``uns["atlas_run"]`` (run id,
parameters, metrics, history). With ``--cache-dir`` the trained run is kept there and an identical
second call loads it instead of training again.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import TextIO

from engine.model.params import Option, RunParams, choices, options, value_type

__all__ = ["add_parser", "run"]


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``train`` command; its model and training options come from :class:`RunParams`."""
    parser = subparsers.add_parser(
        "train",
        help="train an scVI-style model on a count matrix",
        description="Train an scVI-style VAE on raw counts and write OUT.h5ad with obsm['X_scVI'] "
        "and uns['atlas_run'].",
    )
    parser.add_argument("input", type=Path, metavar="INPUT",
                        help="count file (.h5ad, 10x .h5 or folder, .loom, .csv ...)")
    parser.add_argument("--out", type=Path, required=True, metavar="OUT.h5ad", help="AnnData file to write")
    parser.add_argument("--batch-key", default=None, help="obs column with the batch of each cell (default: none)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="run cache folder (default: no cache)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: auto")
    groups = {"main": parser.add_argument_group("model"), "training": parser.add_argument_group("training")}
    groups["model"] = groups["main"]
    for name, (field, option) in options().items():
        add_option(groups[option.group], name, field, option)


def add_option(group: argparse._ArgumentGroup, name: str, field: dataclasses.Field, option: Option) -> None:
    """One ``--option`` from a :class:`RunParams` field: its type, choices, default and help."""
    flag = "--" + name.replace("_", "-")
    kind = value_type(name)
    text = option.help.replace("%", "%%")
    if field.default is None:
        text += f" (default: {option.auto})"
    elif kind is not bool:
        text += f" (default: {field.default})"
    if kind is bool:
        text += f" (default: {'on' if field.default else 'off'})"
        group.add_argument(flag, action=argparse.BooleanOptionalAction, default=field.default, help=text)
    elif choices(name):
        group.add_argument(flag, choices=choices(name), default=field.default, help=text)
    else:
        group.add_argument(flag, type=kind, default=field.default, metavar=name.upper(), help=text)


def params_from_args(args: argparse.Namespace) -> RunParams:
    """The :class:`RunParams` the command-line options describe (ValueError when invalid)."""
    return RunParams(**{name: getattr(args, name) for name in options()})


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
    from engine.reading.load import read_counts
    from engine.runs.fit import fit

    params = params_from_args(args)
    if not args.out.parent.exists():
        raise ValueError(f"output folder {args.out.parent} does not exist")
    adata = read_counts(args.input)
    progress = Progress()
    try:
        trained = fit(adata, params=params, batch_key=args.batch_key, cache_dir=args.cache_dir, on_epoch=progress,
                      device=args.device)
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
