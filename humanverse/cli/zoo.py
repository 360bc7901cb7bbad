"""``humanverse zoo list | make-tiny DIR``: the table of pretrained models, and their tiny stand-ins.

The zoo table lives in :mod:`humanverse.zoo`; the tiny builders of the classes this project defines
itself (the Omnidata DPT in ``pipelines``, the LSDM in ``model``) live beside those classes, and
:func:`tiny_builders` collects them here, the one place allowed to reach into both packages.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from humanverse.cli.plumbing import add_subcommand

NAME = "zoo"
HELP = "the table of pretrained models and their tiny stand-ins"


def tiny_builders() -> dict[str, Callable[[Path, int], None]]:
    """Tiny builders of the zoo entries whose classes live in ``pipelines`` and ``model``."""
    from model.models.lsdm import make_tiny_lsdm
    from pipelines.annotators.omnidata import TINY_BUILDERS

    return {**TINY_BUILDERS, "lsdm": make_tiny_lsdm}


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="zoo_cmd", required=True, metavar="ZOO_COMMAND")
    add_subcommand(sub, "list", help="print the model table")
    mt = add_subcommand(sub, "make-tiny", help="build tiny random models of every entry into DIR (offline)")
    mt.add_argument("dir")
    mt.add_argument("--only", help="comma-separated entry names")
    mt.add_argument("--seed", type=int, default=0)
    mt.add_argument("--force", action="store_true", help="rebuild entries that already exist")


def run(args: argparse.Namespace) -> int:
    from humanverse import zoo

    if args.zoo_cmd == "list":
        sys.stdout.write(zoo.format_table() + "\n")
        return 0
    names = args.only.split(",") if args.only else None
    built = zoo.make_tiny(args.dir, names, seed=args.seed, builders=tiny_builders(), force=args.force)
    for name, path in built.items():
        sys.stdout.write(f"{name:22s} {path}\n")
    return 0
