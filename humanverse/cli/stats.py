"""``humanverse stats ROOT``: counts, the reject funnel and distributions of a dataset."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from humanverse.cli.plumbing import add_root, log, open_dataset

NAME = "stats"
HELP = "counts, reject funnel and distributions"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_root(p)
    p.add_argument("--plot", help="write a PNG figure")
    p.add_argument("--json", help="write the statistics as JSON")


def run(args: argparse.Namespace) -> int:
    from humanverse.stats import format_stats, plot_stats

    stats = open_dataset(args).stats()
    sys.stdout.write(format_stats(stats) + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(stats, indent=2, default=str))
        log.info("wrote %s", args.json)
    if args.plot:
        plot_stats(stats, args.plot)
        log.info("wrote %s", args.plot)
    return 0
