"""``humanverse train stage1|stage2``: train the LSDM (HyperHuman §3.2) or the Structure-Guided
Refiner (§3.3) on a dataset, on Ray Train."""

from __future__ import annotations

import argparse

from humanverse.cli.plumbing import add_address, add_models, add_set, parse_sets
from humanverse.fs import absolute

NAME = "train"
HELP = "train stage 1 (LSDM) or stage 2 (refiner) on a dataset (Ray Train)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("stage", choices=["stage1", "stage2"], help="stage1: the LSDM (§3.2); stage2: the refiner (§3.3)")
    p.add_argument("--data", required=True, help="HumanVerse dataset root")
    p.add_argument("--latents", help="latent cache built by `humanverse latents` (stage 1, optional)")
    p.add_argument("--config", help="YAML training config (Stage1TrainConfig / Stage2TrainConfig fields; a combined "
                   "preset such as model/presets/demo.yaml is read from its stage1:/stage2: section)")
    add_models(p)
    p.add_argument("--max-steps", type=int, help="stop after N optimizer steps (the config's max_steps)")
    p.add_argument("--resume", action="store_true", help="continue from the newest complete checkpoint in --out")
    p.add_argument("--out", required=True, help="run folder (checkpoints, tensorboard, samples)")
    p.add_argument("--report-to", metavar="tensorboard|wandb|mlflow|none",
                   help="where scalars (train/*, val/*) and validation grids go, comma-separated (default: "
                        "tensorboard; wandb honours WANDB_MODE=offline)")
    add_address(p)
    add_set(p, "--set data.where=\"num_persons = 1\"")


def run(args: argparse.Namespace) -> int:
    overrides = parse_sets(args.set)
    if args.max_steps is not None:
        overrides["max_steps"] = args.max_steps
    if args.report_to is not None:  # checked before torch is imported: a missing package fails fast
        from model.training.report import parse_report_to

        overrides["report_to"] = list(parse_report_to(args.report_to))
    from model.training.loop import load_train_config, run_training

    cfg = load_train_config(args.config, overrides, args.stage)
    run_training(cfg, absolute(args.data), absolute(args.out), args.models, absolute(args.latents), args.resume,
                 args.address)
    return 0
