"""``humanverse``: the one front door.

    humanverse query ROOT SQL [--format table|csv|json|parquet] [--out FILE]
    humanverse stats ROOT [--plot FILE.png] [--json FILE]
    humanverse show ROOT [--where SQL] [--limit N] --out FILE.html|FILE.png
    humanverse zoo list | make-tiny DIR
    humanverse download URLS OUT [...]
    humanverse build INPUT OUTPUT [--config FILE.yaml] [--models tiny|paper|DIR] [--address ADDR]
    humanverse refilter ROOT --set aesthetic.threshold=5.0
    humanverse latents ROOT OUT [--models ...]
    humanverse train stage1|stage2 --data ROOT [--latents OUT] [--config FILE.yaml] [--models ...] --out RUN
    humanverse testset rows ROOT OUT | coco --coco DIR --out OUT
    humanverse sample --prompt TEXT --pose POSE.json|--pose-from ROOT[#ID]|--testset FILE.jsonl --out DIR
    humanverse eval --real REAL --generated GEN [--poses TESTSET.jsonl] [--out report.json]
    humanverse demo [--out out/demo]

Each command is one small module of this package: ``NAME``, ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int``. The parser tree imports none of torch, Ray, ``pipelines`` or ``model``; a
command imports what it needs inside ``run``. This package is the only part of ``humanverse`` that
reaches into ``pipelines`` and ``model`` (see docs/architecture.md).
"""

from __future__ import annotations

import argparse
import sys

from humanverse.cli import (build, demo, download, evaluate, latents, query, refilter, sample, show, stats, testset,
                            train, zoo)
from humanverse.cli.plumbing import add_log_level, configure_logging, run_command

#: the commands, in the order ``humanverse --help`` lists them
COMMANDS = (query, stats, show, zoo, download, build, refilter, latents, train, testset, sample, evaluate, demo)


def build_parser() -> argparse.ArgumentParser:
    from humanverse import __version__

    p = argparse.ArgumentParser(prog="humanverse", description="HumanVerse dataset builder and HyperHuman "
                                "trainer (an open implementation of arXiv 2310.08579).")
    p.add_argument("--version", action="version", version=f"humanverse {__version__}")
    add_log_level(p)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        sp = sub.add_parser(command.NAME, help=command.HELP, description=(command.__doc__ or "").strip(),
                            formatter_class=argparse.RawDescriptionHelpFormatter)
        command.add_arguments(sp)
        add_log_level(sp, default=None)
        sp.set_defaults(run=command.run)
    return p


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default: the process's arguments), set up logging, run the command; the exit code."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    configure_logging(args.log_level, args.verbose)
    return run_command(args.run, args)
