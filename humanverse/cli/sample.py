"""``humanverse sample``: generate with both stages (HyperHuman §3): stage 1 (RGB, depth, normal
from text + pose), then the refiner, from a pose file, a dataset row or a whole test set."""

from __future__ import annotations

import argparse

from humanverse.cli.plumbing import add_models, add_set, parse_sets

NAME = "sample"
HELP = "generate: stage 1 (RGB, depth, normal) then the refiner"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--prompt", help="the text prompt (default with --pose-from and --testset: the row's caption)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--pose", help="POSE.json: 133 x (x, y, score) keypoints per person (see the README)")
    src.add_argument("--pose-from", metavar="ROOT[#ID]", help="take the pose (and caption) from a HumanVerse row")
    src.add_argument("--testset", help="an evaluation test set (JSONL): writes OUT/stage1/<id>.png (stage-1 RGB, "
                     "what the paper's Table 1 scores) and OUT/refined/<id>.png for every row")
    add_models(p, "frozen parts")
    p.add_argument("--stage1", help="stage-1 run, checkpoint or lsdm/ folder (default: the zoo's lsdm)")
    p.add_argument("--stage2", help="stage-2 run, checkpoint or refiner/ folder (default: a fresh refiner)")
    p.add_argument("--no-refine", action="store_true", help="stop after stage 1")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--device", help="cpu | cuda (default: cuda when available)")
    p.add_argument("--limit", type=int, help="with --testset: only the first N rows")
    add_set(p, "--set stage1_steps=50 (SampleConfig fields)")


def run(args: argparse.Namespace) -> int:
    from humanverse.config import from_dict
    from model.sampling.hyperhuman import SampleConfig, run_sample

    overrides = parse_sets(args.set)
    if args.no_refine:
        overrides["refine"] = False
    run_sample(from_dict(SampleConfig, overrides), args.out, models=args.models, prompt=args.prompt,
               pose_file=args.pose, pose_from=args.pose_from, testset=args.testset, limit=args.limit,
               stage1=args.stage1, stage2=args.stage2, device=args.device)
    return 0
