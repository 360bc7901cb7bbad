"""Stage-2 sampling (HyperHuman §3.3): SDXL's own scheduler (EulerDiscrete for SDXL-base), CFG over
the text with the structure maps applied to both branches (as SDXL ControlNet pipelines do), the
stage-1 depth and normal upsampled to the refiner resolution (:func:`upsample_maps`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from model.models.refiner import StructureGuidedControlNet
from model.models.sdxl import SDXLFrozenParts, time_ids

@dataclass
class RefinerOutput:
    images: list  # PIL images at the refiner resolution
    seed: int


class RefinerSampler:
    """Stage-2 sampling: SDXL's scheduler, CFG over text, structure maps in both CFG branches."""

    def __init__(self, refiner: StructureGuidedControlNet, frozen: SDXLFrozenParts):
        self.refiner, self.frozen = refiner, frozen

    @torch.no_grad()
    def __call__(self, prompts: list[str], cond: torch.Tensor, *, steps: int = 50, guidance_scale: float = 7.5,
                 seed: int = 0, conditioning_scale: float = 1.0, negative_prompt: str = "") -> RefinerOutput:
        """``cond``: (B, 7, H, W) from :func:`~model.models.refiner.structure_inputs` at the output resolution."""
        from diffusers import EulerDiscreteScheduler

        from model.sampling.stage1 import to_uint8
        from PIL import Image

        device = next(self.refiner.parameters()).device
        dtype = next(self.frozen.unet.parameters()).dtype
        b, _, h, w = cond.shape
        if len(prompts) != b:
            raise ValueError(f"got {len(prompts)} prompts for {b} structure inputs; give one prompt per input.")
        f = self.frozen.vae_scale_factor
        if h % f or w % f:
            raise ValueError(f"the refiner output size must be a multiple of {f}, got {w}x{h}.")
        sched = EulerDiscreteScheduler.from_config(self.frozen.scheduler_config)
        sched.set_timesteps(steps, device=device)
        gen = torch.Generator().manual_seed(seed)
        ctx, pooled = self.frozen.encode_text(list(prompts), device)
        use_cfg = guidance_scale != 1.0
        if use_cfg:  # SDXL's force_zeros_for_empty_prompt: an empty negative prompt is all zeros
            if negative_prompt:
                nctx, npooled = self.frozen.encode_text([negative_prompt] * b, device)
            else:
                nctx, npooled = torch.zeros_like(ctx), torch.zeros_like(pooled)
            ctx, pooled = torch.cat([nctx, ctx]), torch.cat([npooled, pooled])
        ids = time_ids(torch.tensor([[h, w]] * b), torch.zeros(b, 2), (h, w)).to(device)
        added = {"text_embeds": pooled.to(dtype), "time_ids": (torch.cat([ids, ids]) if use_cfg else ids).to(dtype)}
        ctx = ctx.to(dtype)
        cond = cond.to(device, dtype)
        cond_in = torch.cat([cond, cond]) if use_cfg else cond
        z = torch.randn((b, 4, h // f, w // f), generator=gen).to(device, dtype) * sched.init_noise_sigma
        for t in sched.timesteps:
            zin = sched.scale_model_input(torch.cat([z, z]) if use_cfg else z, t)
            down, mid = self.refiner(zin, t, ctx, cond_in, added, conditioning_scale=conditioning_scale)
            eps = self.frozen.unet(zin, t, encoder_hidden_states=ctx, added_cond_kwargs=added,
                                   down_block_additional_residuals=down, mid_block_additional_residual=mid,
                                   return_dict=False)[0]
            if use_cfg:
                eu, ec = eps.chunk(2)
                eps = eu + guidance_scale * (ec - eu)
            z = sched.step(eps, t, z).prev_sample
        x = self.frozen.decode(z)
        return RefinerOutput(images=[Image.fromarray(a) for a in to_uint8(x)], seed=seed)


def upsample_maps(depth: np.ndarray, normal: np.ndarray, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stage-1 maps -> refiner inputs at ``size`` (h, w): depth (B, H, W) in [0, 1] -> (B, 1, h, w) in
    [−1, 1]; normal (B, H, W, 3) unit -> (B, 3, h, w), bilinear then renormalised to unit length."""
    import torch.nn.functional as F

    d = torch.from_numpy(np.ascontiguousarray(depth, np.float32))[:, None] * 2 - 1
    n = torch.from_numpy(np.ascontiguousarray(normal, np.float32)).permute(0, 3, 1, 2)
    d = F.interpolate(d, size=size, mode="bilinear", align_corners=False)
    n = F.interpolate(n, size=size, mode="bilinear", align_corners=False)
    n = n / n.norm(dim=1, keepdim=True).clamp_min(1e-6)
    return d, n
