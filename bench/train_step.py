"""Stage-1 training step: seconds per step and model FLOPs per sample. Prints one JSON object.

Runs the real training step (frozen VAE + text encoder, LSDM forward/backward, AdamW) on synthetic
batches. FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` on one LSDM
forward+backward (the trainable part) and, separately, the frozen encoders' forward. Default: the
tiny zoo at 64 px on the CPU (what this machine can run); ``--full`` builds the full-size LSDM from
the SD-2-base config with random weights (a GPU machine; ``--dtype bfloat16``) and reports MFU
against ``--peak-tflops``.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--full", action="store_true", help="full-size LSDM (SD-2-base config), random weights")
    ap.add_argument("--resolution", type=int, default=None)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--peak-tflops", type=float, default=989.0, help="accelerator peak (dense bf16) for MFU")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from model.schedules import diffusion
    from model.models.lsdm import LatentStructuralUNet

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype)
    from diffusers import UNet2DConditionModel

    if args.full:
        res, b = args.resolution or 512, args.batch or 8
        sd2 = UNet2DConditionModel(sample_size=res // 8, cross_attention_dim=1024, attention_head_dim=[5, 10, 20, 20],
                                   use_linear_projection=True)
        unet, ctx_dim = LatentStructuralUNet.from_sd2(sd2), 1024
        del sd2
    else:
        import tempfile

        from humanverse.testing.tiny_models import build_sd2_base

        res, b = args.resolution or 64, args.batch or 4
        tmp = Path(tempfile.mkdtemp())
        build_sd2_base(tmp, 0)
        sd2 = UNet2DConditionModel.from_pretrained(tmp / "unet")
        unet, ctx_dim = LatentStructuralUNet.from_sd2(sd2), sd2.config.cross_attention_dim
    unet.to(device, dtype).train()
    opt = torch.optim.AdamW(unet.parameters(), lr=1e-5, weight_decay=0.01)
    ac = diffusion.alphas_cumprod(diffusion.training_scheduler())
    h = res // 8
    g = torch.Generator().manual_seed(0)

    def batch():
        z = {m: torch.randn(b, 4, h, h, generator=g).to(device, dtype) for m in ("rgb", "depth", "normal", "pose")}
        t = torch.randint(0, 1000, (b,), generator=g).to(device)
        ctx = torch.randn(b, 77, ctx_dim, generator=g).to(device, dtype)
        return z, t, ctx

    def step():
        z, t, ctx = batch()
        noise = {m: torch.randn_like(z[m]) for m in ("rgb", "depth", "normal")}
        noisy = {m: diffusion.add_noise(ac, z[m], noise[m], t) for m in noise}
        out = unet(noisy["rgb"], noisy["depth"], noisy["normal"], z["pose"], t, ctx)
        loss = sum(((getattr(out, m).float() - diffusion.velocity(ac, z[m], noise[m], t).float()) ** 2).mean()
                   for m in noise)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    with FlopCounterMode(display=False) as fc:
        step()
    flops_per_step = fc.get_total_flops()
    times = []
    for _ in range(args.steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    times.sort()
    med = times[len(times) // 2]
    out = {"benchmark": "train_step.stage1_lsdm", "model": "full (SD-2-base config)" if args.full else "tiny",
           "params": sum(p.numel() for p in unet.parameters()), "resolution": res, "batch": b, "dtype": args.dtype,
           "device": str(device), "step_s_median": round(med, 4), "samples_per_s": round(b / med, 2),
           "model_tflop_per_sample": round(flops_per_step / b / 1e12, 4),
           "note": "LSDM forward+backward+AdamW only; the frozen VAE/text encoders are excluded (cached latents)",
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                       "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}}
    if device.type == "cuda":
        out["mfu"] = round(flops_per_step / med / (args.peak_tflops * 1e12), 4)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
