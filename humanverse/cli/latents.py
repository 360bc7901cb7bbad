"""``humanverse latents ROOT OUT``: the VAE-latent cache of a dataset for stage-1 training (a Ray job)."""

from __future__ import annotations

import argparse
import json
import sys

from humanverse.cli.plumbing import add_address, add_models, given
from humanverse.fs import absolute

NAME = "latents"
HELP = "build the VAE-latent cache of a dataset (a Ray job)"

#: options that are ``LatentCacheConfig`` fields; one left out keeps the config's default
FIELDS = ("vae", "resolution", "where", "batch_size", "dtype", "files_per_chunk", "skeleton_threshold", "pose_style",
          "depth")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("root", help="HumanVerse dataset root")
    p.add_argument("out", help="latent cache folder (created or updated)")
    add_models(p)
    p.add_argument("--vae", help="zoo entry: sd-vae-ft-mse (default, the paper's) or sd2-base")
    p.add_argument("--resolution", type=int, help="crop side in pixels (default 512)")
    p.add_argument("--no-flips", action="store_true", help="do not cache horizontally flipped examples")
    p.add_argument("--where", help="SQL row predicate on table hv, e.g. \"num_persons = 1 AND aesthetic >= 5\"")
    p.add_argument("--batch-size", type=int, help="images per VAE call (default 8)")
    p.add_argument("--dtype", help="VAE compute dtype: float32 (default), float16 or bfloat16")
    p.add_argument("--files-per-chunk", type=int, help="source data files per unit of work (default 32)")
    p.add_argument("--skeleton-threshold", type=float, help="keypoints scoring below this are not drawn (default 0.3)")
    p.add_argument("--pose-style", choices=["humansd", "wholebody"],
                   help="pose map drawing: humansd (default, the paper's) or wholebody; training checks it")
    p.add_argument("--depth", choices=["midas", "omnidata"],
                   help="depth map to encode: midas (default, column depth) or omnidata (column depth_omnidata)")
    p.add_argument("--no-ray", action="store_true", help="encode in this process (no Ray)")
    add_address(p)
    p.add_argument("--encoders", type=int, help="VAE actors (default: one per GPU)")
    p.add_argument("--num-gpus", type=float, help="GPUs per VAE actor (default: 1 if the cluster has GPUs)")
    p.add_argument("--overwrite", action="store_true", help="replace a cache of another config in OUT")


def run(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from humanverse.config import from_dict
    from model.training.latents import EncoderResources, LatentCacheConfig, build_latent_cache

    cfg = from_dict(LatentCacheConfig, {**given(args, FIELDS), **({"flips": False} if args.no_flips else {})})
    report = build_latent_cache(absolute(args.root), absolute(args.out), cfg, args.models, use_ray=not args.no_ray,
                                resources=EncoderResources(encoders=args.encoders, num_gpus=args.num_gpus),
                                overwrite=args.overwrite, address=args.address)
    sys.stdout.write(json.dumps(asdict(report)) + "\n")
    return 0
