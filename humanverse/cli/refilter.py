"""``humanverse refilter ROOT --set aesthetic.threshold=5``: re-apply thresholds to stored scores."""

from __future__ import annotations

import argparse

from humanverse.cli.plumbing import add_set, log, parse_sets

NAME = "refilter"
HELP = "re-apply filter thresholds to the scores a dataset stores (a new committed run; reversible)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("root", help="dataset root (local path or URL)")
    add_set(p, "aesthetic.threshold=5.0 (also person_filter.min_persons, max_persons, min_area)")


def run(args: argparse.Namespace) -> int:
    from pipelines.refilter import refilter

    report = refilter(args.root, parse_sets(args.set))
    for key, (before, after) in report.changes.items():
        log.info("%s: %s -> %s", key, before, after)
    return 0
