"""Generation speed: seconds per image for stage 1 (LSDM, DDIM + CFG) and stage 2 (the refiner).
Prints one JSON object.

Default: the whole :class:`model.sampling.hyperhuman.HyperHumanPipeline` (text encoders, denoising loops with
classifier-free guidance, VAE decodes) with the tiny zoo on this machine's CPU, at the given
resolutions and steps; the first call (warm-up) is not timed. ``--full`` times the two denoising
loops alone at the paper's sizes (stage 1: the full-size LSDM from the SD-2-base config at 512²;
stage 2: the SDXL-base UNet + the structure ControlNet at 1024²), random weights, CFG batches of 2,
``--dtype bfloat16`` on a GPU: what a lent GPU machine can measure without downloading weights
(the VAE decodes and text encoders, a few percent of the total at these sizes, are left out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _tiny(args) -> dict:
    import numpy as np
    import tempfile

    from humanverse import zoo
    from humanverse.cli.zoo import tiny_builders
    from humanverse.testing.synthetic import synthetic_table
    from model.sampling.hyperhuman import HyperHumanPipeline, SampleConfig, check_pose

    root = Path(os.environ.get("HUMANVERSE_TINY_ZOO") or tempfile.mkdtemp(prefix="tiny-zoo-"))
    os.environ["HUMANVERSE_TINY_ZOO"] = str(root)
    zoo.make_tiny(root, builders=tiny_builders())
    pipe = HyperHumanPipeline.from_pretrained("tiny", device="cpu")
    row = synthetic_table(1, shard="b", seed=0, width=96, height=128).to_pylist()[0]
    pose = check_pose([np.asarray(row["persons"][0]["keypoints"]).reshape(133, 3)], 96, 128, 0.0)
    cfg = SampleConfig(stage1_resolution=args.stage1_resolution or 64, stage2_resolution=args.stage2_resolution or 64,
                       stage1_steps=args.steps, stage2_steps=args.steps, batch_size=args.batch)
    prompts, poses = ["a person"] * args.batch, [pose] * args.batch
    pipe(prompts[:1], poses[:1], SampleConfig(**{**cfg.__dict__, "stage1_steps": 2, "stage2_steps": 2}))  # warm-up
    s1, s2 = [], []
    for _ in range(args.repeats):
        res = pipe(prompts, poses, cfg)
        s1.append(res[0].timings["stage1_s_per_image"])
        s2.append(res[0].timings["stage2_s_per_image"])
    return {"mode": "tiny zoo, whole pipeline", "stage1_resolution": cfg.stage1_resolution,
            "stage2_resolution": cfg.stage2_resolution, "steps": args.steps, "batch": args.batch,
            "stage1_s_per_image": min(s1), "stage2_s_per_image": min(s2),
            "total_s_per_image": min(s1) + min(s2)}


def _full(args) -> dict:
    import torch
    from diffusers import UNet2DConditionModel

    from model.models.lsdm import LatentStructuralUNet
    from model.models.refiner import StructureGuidedControlNet

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dt = getattr(torch, args.dtype)
    r1, r2, b, steps = args.stage1_resolution or 512, args.stage2_resolution or 1024, args.batch, args.steps
    sd2 = UNet2DConditionModel(sample_size=r1 // 8, cross_attention_dim=1024, attention_head_dim=[5, 10, 20, 20],
                               use_linear_projection=True)
    lsdm = LatentStructuralUNet.from_sd2(sd2).to(dev, dt).eval()
    del sd2
    sdxl = UNet2DConditionModel(  # SDXL-base's UNet config (its config.json)
        sample_size=r2 // 8, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"), block_out_channels=(320, 640, 1280),
        attention_head_dim=(5, 10, 20), transformer_layers_per_block=(1, 2, 10), cross_attention_dim=2048,
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816)
    refiner = StructureGuidedControlNet.from_unet(sdxl).to(dev, dt).eval()
    sdxl.to(dev, dt).eval()

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    @torch.no_grad()
    def stage1(n_steps):
        z = [torch.randn(2 * b, 4, r1 // 8, r1 // 8, device=dev, dtype=dt) for _ in range(3)]
        pose = torch.randn_like(z[0])
        ctx = torch.randn(2 * b, 77, 1024, device=dev, dtype=dt)
        add = torch.zeros(2 * b, 4, device=dev, dtype=dt)
        for i in range(n_steps):
            t = torch.full((2 * b,), 999 - i, device=dev)
            lsdm(*z, pose, t, ctx, added_cond=add)

    @torch.no_grad()
    def stage2(n_steps):
        z = torch.randn(2 * b, 4, r2 // 8, r2 // 8, device=dev, dtype=dt)
        cond = torch.rand(2 * b, 7, r2, r2, device=dev, dtype=dt)
        ctx = torch.randn(2 * b, 77, 2048, device=dev, dtype=dt)
        added = {"text_embeds": torch.randn(2 * b, 1280, device=dev, dtype=dt),
                 "time_ids": torch.tensor([[r2, r2, 0, 0, r2, r2]] * 2 * b, device=dev, dtype=dt)}
        for i in range(n_steps):
            t = torch.full((2 * b,), 999 - i, device=dev)
            down, mid = refiner(z, t, ctx, cond, added)
            sdxl(z, t, encoder_hidden_states=ctx, added_cond_kwargs=added, down_block_additional_residuals=down,
                 mid_block_additional_residual=mid)

    out = {"mode": "full-size denoisers, random weights (no VAE/text encoders)", "dtype": args.dtype,
           "stage1_resolution": r1, "stage2_resolution": r2, "steps": steps, "batch": b}
    for name, fn in (("stage1", stage1), ("stage2", stage2)):
        fn(2)
        sync()
        t0 = time.perf_counter()
        fn(steps)
        sync()
        out[f"{name}_s_per_image"] = (time.perf_counter() - t0) / b
        if dev.type == "cuda":
            out[f"{name}_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    out["total_s_per_image"] = out["stage1_s_per_image"] + out["stage2_s_per_image"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--full", action="store_true", help="full-size denoisers at 512/1024 (a GPU machine)")
    ap.add_argument("--stage1-resolution", type=int)
    ap.add_argument("--stage2-resolution", type=int)
    ap.add_argument("--steps", type=int, default=50, help="denoising steps per stage (paper: 50)")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import logging

    import torch

    logging.basicConfig(level=logging.WARNING)
    res = _full(args) if args.full else _tiny(args)
    res.update(machine=platform.machine(), cpus=os.cpu_count(), torch=torch.__version__,
               threads=torch.get_num_threads(),
               device=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
