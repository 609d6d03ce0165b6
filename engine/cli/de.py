r"""``python -m engine de``: Bayesian differential expression of two groups, written as CSV.

Example::

    python -m engine de trained.h5ad --cache-dir runs --groupby cell_type \
        --group1 "B cells" --group2 rest --out b_cells.csv

``IN.h5ad`` is a file written by ``python -m engine train``: its ``uns["atlas_run"]["run_id"]``
names the trained run in ``--cache-dir``. The CSV starts with ``# key: value`` provenance lines;
read it with ``pandas.read_csv(path, comment="#", index_col=0)``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import get_args

from engine.analysis.de import Mode, groups_from_obs, write_de_csv
from engine.cli.trained_input import read_trained


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``de`` command."""
    parser = subparsers.add_parser(
        "de",
        help="differential expression between two groups of cells with a trained run",
        description="Bayesian differential expression (scVI 'change' or 'vanilla' mode) between "
        "two groups of cells, written as a CSV table, one row per gene.",
    )
    add = parser.add_argument
    add("input", type=Path, metavar="IN.h5ad", help="AnnData written by 'python -m engine train'")
    add("--cache-dir", type=Path, required=True, help="run cache the model was trained into")
    add("--groupby", required=True, help="obs column defining the groups, e.g. cell_type")
    add("--group1", required=True, help="value of --groupby for group 1")
    add("--group2", required=True, help="value of --groupby for group 2, or 'rest' for all other cells")
    add("--within", metavar="COL=VALUE", help="restrict both groups to cells with obs[COL] == VALUE")
    add("--mode", choices=get_args(Mode), default="change", help="decision rule (default: change)")
    add("--delta", type=float, default=0.25, help="smallest |log2 fold change| that counts (change mode)")
    add("--fdr", type=float, default=0.05, help="target posterior expected FDR for is_de_fdr")
    add("--max-cells-per-group", type=int, default=500, help="cells drawn per group for posterior sampling")
    add(
        "--batch-correction",
        action="store_true",
        help="compare groups in every batch of the run and pair like with like (needs a batch key)",
    )
    add("--seed", type=int, default=0, help="random seed (default: 0)")
    add("--out", type=Path, required=True, help="CSV file to write")


def parse_within(text: str | None) -> tuple[str, str] | None:
    """``"leiden=3"`` -> ``("leiden", "3")``; ``None`` stays ``None``."""
    if text is None:
        return None
    column, sep, value = text.partition("=")
    if not sep or not column or not value:
        raise ValueError(f"--within expects COL=VALUE (e.g. leiden=3), got {text!r}")
    return column, value


def run(args: argparse.Namespace) -> int:
    """Run the ``de`` command; bad input raises ValueError (exit code 2)."""
    from engine.analysis.de import differential_expression

    within = parse_within(args.within)
    adata, trained = read_trained(args.input, args.cache_dir)
    run_id = trained.run_id
    group1, group2 = groups_from_obs(
        adata, groupby=args.groupby, group1=args.group1, group2=args.group2, within=within
    )
    result = differential_expression(
        trained,
        adata,
        group1=group1,
        group2=group2,
        mode=args.mode,
        delta=args.delta,
        fdr=args.fdr,
        max_cells_per_group=args.max_cells_per_group,
        batch_correction=args.batch_correction,
        seed=args.seed,
    )
    for note in result.warnings:
        print(f"warning: {note}", file=sys.stderr)
    table = result.table()
    provenance: dict[str, object] = {
        "run_id": run_id,
        "input": args.input.name,
        "groupby": args.groupby,
        "group1": args.group1,
        "group2": args.group2,
        "within": args.within or "all cells",
        "delta": result.delta,
        "fdr": result.fdr,
        **result.provenance(),
    }
    write_de_csv(table, args.out, provenance=provenance)
    print(
        f"wrote {args.out}: {len(table)} genes, {int(table['is_de_fdr'].sum())} DE at FDR {result.fdr} "
        f"({args.group1}: {result.n_cells_1} cells vs {args.group2}: {result.n_cells_2} cells)"
    )
    return 0
