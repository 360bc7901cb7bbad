"""``humanverse show ROOT --out FILE.html|FILE.png``: a gallery of rows (boxes, skeletons, depth and
normal maps) and of rejects."""

from __future__ import annotations

import argparse

from humanverse.cli.plumbing import add_root, log, open_dataset

NAME = "show"
HELP = "a gallery of rows (boxes, skeletons, depth, normals) and rejects"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_root(p)
    p.add_argument("--where", help="SQL condition on table hv, e.g. \"num_persons = 1 AND aesthetic >= 5\"")
    p.add_argument("--limit", type=int, default=24)
    p.add_argument("--out", default="gallery.html", help="FILE.html or FILE.png (default: gallery.html here)")
    p.add_argument("--banner", help="text shown above the gallery (default: the dataset's own banner)")
    p.add_argument("--keypoint-threshold", type=float, default=0.3, help="hide keypoints scoring below this")


def run(args: argparse.Namespace) -> int:
    from humanverse.show import GalleryStyle, render_gallery

    ds = open_dataset(args)
    banner = args.banner if args.banner is not None else ds.manifest.get("banner")
    out = render_gallery(ds, args.out, where=args.where, limit=args.limit, banner=banner,
                         style=GalleryStyle(keypoint_threshold=args.keypoint_threshold))
    log.info("wrote %s", out)
    return 0
