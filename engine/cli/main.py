"""The command line: ``python -m engine COMMAND ...`` (also installed as ``atlas-engine``).

Each command lives in its own module exposing ``add_parser(subparsers)`` and ``run(args) -> int``.
Bad input exits with code 2 and a one-line message, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# command name -> module implementing it
COMMANDS = {
    "train": "engine.cli.train",
    "de": "engine.cli.de",
    "markers": "engine.cli.markers",
    "embed": "engine.cli.embed",
}


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m engine`` argument parser, with one sub-command per entry of :data:`COMMANDS`."""
    parser = argparse.ArgumentParser(
        prog="python -m engine",
        description="Atlas Explorer engine: train an scVI-style model and analyse single-cell counts.",
    )
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="log what each step does and how long it takes (to stderr)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in COMMANDS.values():
        importlib.import_module(module_name).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run the sub-command ``argv`` names; returns the exit code (2 for bad input, reported in one line)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    module = importlib.import_module(COMMANDS[args.command])
    try:
        return int(module.run(args) or 0)
    except ValueError as err:  # bad input: one line, exit code 2
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130

