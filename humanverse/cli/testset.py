"""``humanverse testset rows|coco``: write an evaluation test set (``OUT/real/<id>.png`` and
``OUT/testset.jsonl``, the contract ``humanverse sample --testset`` and ``humanverse eval`` read):
from a dataset's rows, or from a local MS-COCO 2014 download as the paper's test set (§5)."""

from __future__ import annotations

import argparse
import json
import os
import sys

from humanverse.cli.plumbing import add_models, add_subcommand

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
    c.add_argument("--selection", choices=["detector", "annotations"], default="detector",
                   help="detector (default, the paper's): YOLOS + ViTPose on each 512 crop pick images with a "
                   "clearly visible person; annotations: COCO's ground-truth keypoints")
    add_models(c, "detector + pose models (--selection detector)")
    c.add_argument("--device", default="auto", help="auto | cpu | cuda (--selection detector)")
    c.add_argument("--person-score", type=float, default=0.5,
                   help="clearly visible: detection x mean keypoint score at least this (default 0.5)")
    c.add_argument("--min-box-fraction", type=float, default=0.05,
                   help="clearly visible: person box at least this fraction of the 512 frame (default 0.05)")
    c.add_argument("--min-visible-keypoints", type=int, default=8,
                   help="clearly visible: at least this many of the 17 body joints scoring >= --keypoint-threshold "
                   "(default 8)")
    c.add_argument("--keypoint-threshold", type=float, default=0.3,
                   help="keypoint score that counts as visible (and labelled in the test set; default 0.3)")
    c.add_argument("--max-images", type=int, help="--selection detector: scan only the first N val images by id")
    c.add_argument("--batch-size", type=int, default=8, help="images per detector + pose call")
    c.add_argument("--wholebody", action="append", default=[], metavar="JSON",
                   help="--selection annotations: COCO-WholeBody annotations (e.g. coco_wholebody_val_v1.0.json); "
                   "repeatable")
    c.add_argument("--split", default="val2014")
    c.add_argument("--limit", type=int, help="keep the first N selected images (by image id)")
    c.add_argument("--resolution", type=int, default=512)
    c.add_argument("--caption", choices=["first", "longest", "all", "random"], default="first",
                   help="first (default), longest, all (one test row per caption) or random (--seed)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--min-keypoints", type=int, default=1, help="--selection annotations: labelled keypoints in "
                   "the crop a person needs")
    c.add_argument("--max-persons", type=int, help="drop images with more people than this")
    c.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))


def run(args: argparse.Namespace) -> int:
    if args.source == "rows":
        from model.evaluation.hv_testset import HVTestsetConfig, build_hv_testset

        build_hv_testset(HVTestsetConfig(args.root, args.out, args.where, args.limit, args.resolution,
                                         args.keypoint_threshold))
        return 0
    from model.evaluation.coco_testset import PAPER_COUNT, CocoTestsetConfig, build_coco_testset

    cfg = CocoTestsetConfig(
        coco=args.coco, out=args.out, wholebody=tuple(args.wholebody), split=args.split, limit=args.limit,
        resolution=args.resolution, caption=args.caption, seed=args.seed, min_keypoints=args.min_keypoints,
        max_persons=args.max_persons, workers=args.workers, selection=args.selection, person_score=args.person_score,
        min_box_fraction=args.min_box_fraction, min_visible_keypoints=args.min_visible_keypoints,
        keypoint_threshold=args.keypoint_threshold, max_images=args.max_images, batch_size=args.batch_size)
    def estimator():
        # model and pipelines never import each other: the builder's detector + pose stages are composed here
        from pipelines.eval_pose import BuilderPoseEstimator

        return BuilderPoseEstimator(args.models, args.device, score_threshold=0.05, max_people=20)

    counts = build_coco_testset(cfg, estimator_factory=estimator)  # models load after the inputs are checked
    sys.stdout.write(f"selected {counts['selected']} images ({counts['rows']} test rows) by {cfg.selection}; "
                     f"the paper selected {PAPER_COUNT:,}\n{json.dumps(counts)}\n")
    return 0
