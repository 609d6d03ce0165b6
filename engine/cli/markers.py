r"""``python -m engine markers``: marker genes of every group, one-vs-rest, written as CSV.

Example::

    python -m engine markers trained.h5ad --cache-dir runs --groupby cell_type --top 10 \
        --out markers.csv

``IN.h5ad`` is a file written by ``python -m engine train``: its ``uns["atlas_run"]["run_id"]``
names the trained run in ``--cache-dir``. The CSV holds the first ``--top`` markers of each group
(see :func:`engine.analysis.markers.find_markers` for the rule) and starts with ``# key: value``
provenance lines; read it with ``pandas.read_csv(path, comment="#")``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from engine.analysis.de import write_de_csv
from engine.analysis.markers import MARKER_COLUMNS
from engine.cli.trained_input import read_trained

# Columns of the CSV (the marker table less the mean expressions), then the Wilcoxon ones when the test ran.
CSV_COLUMNS = tuple(c for c in MARKER_COLUMNS if not c.startswith("mean_norm"))


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``markers`` command."""
    parser = subparsers.add_parser(
        "markers",
        help="marker genes of every group of cells (one-vs-rest) with a trained run",
        description="Marker genes of each group of an obs column: Bayesian differential expression "
        "(scVI 'change' mode) of the group against all other cells, with the Wilcoxon test beside it, "
        "written as a CSV table of the top genes per group.",
    )
    add = parser.add_argument
    add("input", type=Path, metavar="IN.h5ad", help="AnnData written by 'python -m engine train'")
    add("--cache-dir", type=Path, required=True, help="run cache the model was trained into")
    add("--groupby", required=True, help="obs column defining the groups, e.g. cell_type")
    add("--top", type=int, default=10, help="markers written per group (default: 10)")
    add("--groups", nargs="+", metavar="GROUP", help="only these groups (default: every group)")
    add("--min-fraction", type=float, default=0.1,
        help="smallest fraction of a group's cells expressing a marker (default: 0.1)")
    add("--delta", type=float, default=0.25, help="smallest |log2 fold change| that counts")
    add("--fdr", type=float, default=0.05, help="target posterior expected FDR for is_de_fdr")
    add("--max-cells-per-group", type=int, default=500, help="cells drawn per group for posterior sampling")
    add("--no-wilcoxon", action="store_true", help="leave out the Wilcoxon rank-sum test")
    add("--seed", type=int, default=0, help="random seed (default: 0)")
    add("--out", type=Path, required=True, help="CSV file to write")


def run(args: argparse.Namespace) -> int:
    """Run the ``markers`` command; bad input raises ValueError (exit code 2)."""
    from engine.analysis.markers import WILCOXON_COLUMNS, find_markers

    adata, trained = read_trained(args.input, args.cache_dir)
    run_id = trained.run_id
    start = time.perf_counter()
    result = find_markers(
        trained,
        adata,
        groupby=args.groupby,
        groups=args.groups,
        top=args.top,
        min_fraction=args.min_fraction,
        max_cells_per_group=args.max_cells_per_group,
        delta=args.delta,
        fdr=args.fdr,
        seed=args.seed,
        wilcoxon=not args.no_wilcoxon,
    )
    seconds = time.perf_counter() - start
    for group, why in result.skipped.items():
        print(f"warning: group {group!r} skipped: {why}", file=sys.stderr)
    columns = list(CSV_COLUMNS) + ([] if args.no_wilcoxon else list(WILCOXON_COLUMNS))
    table = result.top_table()[columns].set_index("group")
    provenance: dict[str, object] = {
        "run_id": run_id,
        "input": args.input.name,
        "groupby": args.groupby,
        "groups": _plain("; ".join(result.groups)),
        "n_cells": _plain("; ".join(f"{g}={result.n_cells[g]}" for g in result.groups)),
        "skipped": _plain("; ".join(f"{g} ({why})" for g, why in result.skipped.items()) or "none"),
        "top": result.top,
        "min_fraction": args.min_fraction,
        "mode": "change",
        "delta": result.delta,
        "fdr": result.fdr,
        "max_cells_per_group": args.max_cells_per_group,
        "wilcoxon": not args.no_wilcoxon,
        "seed": result.seed,
    }
    write_de_csv(table, args.out, provenance=provenance)
    top3 = result.top_table(3)
    leaders = "; ".join(
        f"{group}: {', '.join(top3.loc[top3['group'] == group, 'gene']) or '-'}" for group in result.groups
    )
    print(f"wrote {args.out}: {len(result.groups)} groups of {adata.n_obs:,} cells, {seconds:.1f} s; "
          f"top 3: {leaders}")
    return 0


def _plain(text: str) -> str:
    """``text`` safe for a provenance line: no newline, no '#'."""
    return text.replace("\n", " ").replace("#", "%23")
