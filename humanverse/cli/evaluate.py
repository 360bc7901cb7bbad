"""``humanverse eval``: the evaluation protocol of HyperHuman §5 (Table 1): FID, KID×1k, FID-CLIP,
CLIP score and pose AP/AR of generated images against a test set.

The pose AP/AR metrics estimate poses on the generated images with the builder's own pose stage
(``pipelines``); the evaluation itself lives in ``model``. The two packages never import each
other: this command joins them.
"""

from __future__ import annotations

import argparse
import logging
import sys

from humanverse.cli.plumbing import add_models, given

log = logging.getLogger("humanverse")

NAME = "eval"
HELP = "FID, KID, FID-CLIP, CLIP score, pose AP/AR: the stage-1 row (paper Table 1) and the refined row"

#: options that are ``EvalConfig`` fields; one left out keeps the config's default
FIELDS = ("models", "clip_model", "inception_weights", "device", "batch_size", "resolution", "seed",
          "fid_clip_backbone", "fid_clip_weights")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--real", required=True, help="folder of real test images (any size)")
    p.add_argument("--generated", required=True,
                   help="`humanverse sample --testset` folder (stage1/ scored for the Table-1 row, refined/ for a "
                   "second row beside Table 7), or a folder of <id>.png")
    p.add_argument("--score", metavar="OUTPUTS",
                   help="comma-separated sampler outputs to score: stage1,refined (default: every one present)")
    p.add_argument("--poses", "--testset", dest="poses", metavar="TESTSET.jsonl",
                   help="test set (captions + input poses); enables the CLIP score and pose AP/AR")
    add_models(p, "CLIP and pose models")
    p.add_argument("--out", default="report.json", help="report JSON (a Markdown table is written beside it)")
    p.add_argument("--metrics", help="comma-separated subset of fid,kid,fid_clip,clip,pose (default: all the "
                   "inputs allow)")
    p.add_argument("--inception-weights", metavar="PATH",
                   help="clean-fid's Inception weights file (default: downloaded on first use)")
    p.add_argument("--clip-model", help="zoo spec overriding --models for clip-vit-l14 (the CLIP score)")
    p.add_argument("--fid-clip-backbone", choices=["vit-b32", "vit-l14"],
                   help="FID-CLIP features: vit-b32 (default: clean-fid's CLIP ViT-B/32, the paper's) or vit-l14")
    p.add_argument("--fid-clip-weights", metavar="DIR", help="a local open_clip ViT-B-32 snapshot for FID-CLIP")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default: auto")
    p.add_argument("--batch-size", type=int, help="images per feature batch (default 32)")
    p.add_argument("--resolution", type=int, help="evaluation frame side (default 512, the paper's)")
    p.add_argument("--allow-missing", action="store_true",
                   help="evaluate the test ids that have a generated image instead of failing")
    p.add_argument("--seed", type=int, help="seed of KID's subset draws (default 0)")


def run(args: argparse.Namespace) -> int:
    from model.evaluation.evaluate import EvalConfig, evaluate_outputs, format_table, write_report
    from pipelines.eval_pose import BuilderPoseEstimator

    fields = given(args, FIELDS)
    if args.metrics:
        fields["metrics"] = tuple(m.strip() for m in args.metrics.split(",") if m.strip())
    cfg = EvalConfig(**fields, allow_missing=args.allow_missing)
    outputs = [o.strip() for o in args.score.split(",") if o.strip()] if args.score else None
    report = evaluate_outputs(args.real, args.generated, args.poses, cfg, outputs=outputs,
                              pose_factory=BuilderPoseEstimator)
    out, md = write_report(report, args.out)
    sys.stdout.write(format_table(report))
    log.info("eval: wrote %s and %s", out, md)
    return 0
