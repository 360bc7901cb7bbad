"""``humanverse testset rows|coco``: write an evaluation test set (``OUT/real/<id>.png`` and
``OUT/testset.jsonl``, the contract ``humanverse sample --testset`` and ``humanverse eval`` read):
from a dataset's rows, or from a local MS-COCO 2014 download as the paper's test set (§5)."""

from __future__ import annotations

import argparse
import os

from humanverse.cli.plumbing import add_subcommand

NAME = "testset"
HELP = "an evaluation test set from dataset rows or from MS-COCO 2014 val (paper §5)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="source", required=True, metavar="SOURCE")
    r = add_subcommand(sub, "rows", help="from HumanVerse rows (e.g. a held-out selection)")
    r.add_argument("root", help="dataset root")
    r.add_argument("out", help="output folder (real/, testset.jsonl)")
    r.add_argument("--where", help="SQL predicate on table hv selecting the rows")
    r.add_argument("--limit", type=int)
    r.add_argument("--resolution", type=int, default=512)
    r.add_argument("--keypoint-threshold", type=float, default=0.3,
                   help="keypoints scoring at least this are labelled visible (v = 2)")
    c = add_subcommand(sub, "coco", help="from MS-COCO 2014 val: the paper's human test set")
    c.add_argument("--coco", required=True, help="COCO folder with annotations/ and val2014/")
    c.add_argument("--out", required=True, help="output folder (real/, testset.jsonl)")
    c.add_argument("--wholebody", action="append", default=[], metavar="JSON",
                   help="COCO-WholeBody annotations (e.g. coco_wholebody_val_v1.0.json); repeatable")
    c.add_argument("--split", default="val2014")
    c.add_argument("--limit", type=int, help="keep the first N qualifying images (by image id)")
    c.add_argument("--resolution", type=int, default=512)
    c.add_argument("--caption", choices=["first", "random"], default="first")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--min-keypoints", type=int, default=1)
    c.add_argument("--max-persons", type=int)
    c.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))


def run(args: argparse.Namespace) -> int:
    if args.source == "rows":
        from model.evaluation.hv_testset import HVTestsetConfig, build_hv_testset

        build_hv_testset(HVTestsetConfig(args.root, args.out, args.where, args.limit, args.resolution,
                                         args.keypoint_threshold))
        return 0
    from model.evaluation.coco_testset import CocoTestsetConfig, build_coco_testset

    build_coco_testset(CocoTestsetConfig(
        coco=args.coco, out=args.out, wholebody=tuple(args.wholebody), split=args.split, limit=args.limit,
        resolution=args.resolution, caption=args.caption, seed=args.seed, min_keypoints=args.min_keypoints,
        max_persons=args.max_persons, workers=args.workers))
    return 0
