"""``humanverse build INPUT OUTPUT``: the HumanVerse builder (HyperHuman §4) on Ray Data.

Also the ``ray job submit`` entrypoint, as ``python -m pipelines.build INPUT OUTPUT ...``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from humanverse.cli.plumbing import add_address, add_models, add_set, parse_sets

NAME = "build"
HELP = "build a HumanVerse dataset from image shards (Ray Data)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="image folder, folder of webdataset .tar shards, or of .parquet files")
    p.add_argument("output", help="dataset root (local path or URL)")
    p.add_argument("--config", help="YAML config (presets: pipelines/presets/cpu.yaml, gpu-node.yaml, demo.yaml)")
    add_models(p)
    add_address(p)
    p.add_argument("--image-column", help="image-bytes column of Parquet inputs")
    add_set(p, "--set detect.score_threshold=0.7")
    p.add_argument("--force-new-config", action="store_true",
                   help="continue an existing dataset with a config that differs from humanverse.json")
    p.add_argument("--add-input", action="store_true",
                   help="build INPUT into an existing dataset built from other inputs (refused without it when "
                        "INPUT shares no source shard with them)")


def run(args: argparse.Namespace) -> int:
    from humanverse.config import ConfigError, to_dict
    from pipelines.build import build, load_config

    overrides = parse_sets(args.set)
    if args.image_column:
        overrides["input.image_column"] = args.image_column
    cfg = load_config(args.config, overrides)
    if not Path(args.input).exists() and "://" not in args.input:
        raise ConfigError(f"input {args.input} does not exist.")
    if args.models not in ("tiny", "paper") and not Path(args.models).is_dir():
        raise ConfigError(f"--models must be 'tiny', 'paper' or an existing directory, got {args.models!r}.")
    report = build(args.input, args.output, cfg, models=args.models, address=args.address,
                   force_new_config=args.force_new_config, add_input=args.add_input)
    sys.stdout.write(end_of_build(report.stats, args.output, to_dict(cfg)))
    return 0


def end_of_build(stats: dict, output: str, config: dict) -> str:
    """What ``build`` prints at its end: the dataset's totals and its reject funnel (rows per stage),
    and one line saying where the config and the full report are."""
    from humanverse.stats import format_stats

    def leaves(v) -> int:
        return sum(leaves(x) for x in v.values()) if isinstance(v, dict) else 1

    text = format_stats(stats)
    head = text.split("\nSource shards:", 1)[0].rstrip("\n")  # title, totals, funnel
    n = leaves(config)
    where = f"{output.rstrip('/')}/humanverse.json"
    return (f"{head}\n\nconfig ({n} settings) and models recorded in {where}; the full report: "
            f"humanverse stats {output}\n")
