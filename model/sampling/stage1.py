"""Stage-1 sampler: DDIM (trailing spacing) with classifier-free guidance over text + pose
(HyperHuman §3.2 and §5: 50 steps, CFG 7.5), producing RGB, depth and normal images together.

The three modality latents start from independent noise and are denoised jointly: at every step the
LSDM predicts v for all three from the same timestep; guidance mixes the conditional prediction
(text + pose) with the unconditional one (empty text, zero pose latent), per modality:
v = v_u + s (v_c − v_u), then rescaled towards the conditional prediction's standard deviation
(``guidance_rescale`` φ, Lin et al. 2024, "Common Diffusion Noise Schedules and Sample Steps are
Flawed", §3.4, Eq. 15-16, diffusers' ``rescale_noise_cfg``): v ← φ·v·σ(v_c)/σ(v) + (1 − φ)·v, σ over
each sample's (C, H, W). Zero terminal SNR with trailing steps over-exposes without it; the paper
recommends φ = 0.7 (:data:`DEFAULT_GUIDANCE_RESCALE`). Depth and normal latents are mapped back from
the RGB latent statistics before the VAE decodes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from model.schedules import diffusion
from model.models.sd2 import MODALITIES, FrozenParts, LatentStats


#: Lin et al. 2024's recommended guidance rescale for zero-terminal-SNR v-prediction models.
DEFAULT_GUIDANCE_RESCALE = 0.7


def rescale_guidance(v_cfg: torch.Tensor, v_cond: torch.Tensor, rescale: float) -> torch.Tensor:
    """Lin et al. 2024, Eq. 15-16: rescale the guided prediction ``v_cfg`` (B, C, H, W) to the
    per-sample standard deviation of the conditional one ``v_cond``, blended by ``rescale``."""
    if rescale == 0.0:
        return v_cfg
    dims = tuple(range(1, v_cfg.ndim))
    ratio = v_cond.std(dim=dims, keepdim=True) / v_cfg.std(dim=dims, keepdim=True)  # (B, 1, 1, 1)
    return rescale * (v_cfg * ratio) + (1.0 - rescale) * v_cfg


@dataclass
class Stage1Output:
    rgb: list[Image.Image]
    depth: list[Image.Image]  # relative inverse depth as an 8-bit grey image (bright = near)
    normal: list[Image.Image]  # (n + 1) / 2 as RGB
    depth_maps: np.ndarray  # (B, H, W) float32 in [0, 1]
    normal_maps: np.ndarray  # (B, H, W, 3) unit vectors
    seed: int


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] -> (B, H, W, 3) uint8."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


class Stage1Sampler:
    def __init__(self, unet, frozen: FrozenParts, stats: LatentStats):
        self.unet, self.frozen, self.stats = unet, frozen, stats
        self.scheduler = diffusion.sampling_scheduler()

    @torch.no_grad()
    def __call__(self, prompts: list[str], poses: torch.Tensor, *, steps: int = 50, guidance_scale: float = 7.5,
                 guidance_rescale: float = DEFAULT_GUIDANCE_RESCALE, seed: int = 0,
                 added_cond: torch.Tensor | None = None) -> Stage1Output:
        """``poses``: (B, 3, H, W) rendered skeletons in [-1, 1] (see ``humanverse.render_skeleton``)."""
        if not 0.0 <= guidance_rescale <= 1.0:
            raise ValueError(f"guidance_rescale must be in [0, 1], got {guidance_rescale}.")
        device = next(self.unet.parameters()).device
        b, _, h, w = poses.shape
        if len(prompts) != b:
            raise ValueError(f"got {len(prompts)} prompts for {b} poses; give one prompt per pose.")
        gen = torch.Generator().manual_seed(seed)
        pose = self.frozen.encode_images(poses.to(device), gen)  # (B, 4, h/8, w/8)
        ctx = self.frozen.encode_text(list(prompts), device)
        unc = self.frozen.encode_text([""] * b, device)
        use_cfg = guidance_scale != 1.0
        lat_shape = (b, 4, h // 8, w // 8)
        z = {m: torch.randn(lat_shape, generator=gen).to(device) for m in MODALITIES}  # all drawn: same RNG
        mods = getattr(self.unet, "modalities", MODALITIES)  # a Table-2 ablation may model fewer
        z = {m: z[m] for m in mods}
        scheds = {m: diffusion.sampling_scheduler() for m in mods}
        for s in scheds.values():
            s.set_timesteps(steps)
        cond = added_cond.to(device) if added_cond is not None else None
        for t in scheds["rgb"].timesteps:
            tt = torch.full((b,), int(t), device=device, dtype=torch.long)
            if use_cfg:
                out = self.unet(*(torch.cat([z[m], z[m]]) if m in z else None for m in MODALITIES),
                                torch.cat([pose, torch.zeros_like(pose)]), torch.cat([tt, tt]),
                                torch.cat([ctx, unc]),
                                added_cond=None if cond is None else torch.cat([cond, cond]))
                v = {}
                for m in mods:
                    c, u = getattr(out, m).chunk(2)
                    v[m] = rescale_guidance(u + guidance_scale * (c - u), c, guidance_rescale)
            else:
                out = self.unet(*(z.get(m) for m in MODALITIES), pose, tt, ctx, added_cond=cond)
                v = {m: getattr(out, m) for m in mods}
            for m in mods:
                z[m] = scheds[m].step(v[m], t, z[m]).prev_sample
        imgs = {}
        for m in mods:
            lat = self.stats.denormalise(z[m], m) / self.frozen.scaling_factor
            imgs[m] = self.frozen.vae.decode(lat.to(self.frozen.vae.dtype)).sample.float().clamp(-1, 1)
        blank = torch.zeros_like(imgs["rgb"])
        imgs.setdefault("depth", blank - 1)  # not modelled (Table-2 ablation): far everywhere
        imgs.setdefault("normal", torch.cat([blank[:, :2], blank[:, 2:] + 1], dim=1))  # facing the camera
        depth = ((imgs["depth"].mean(dim=1) + 1) / 2).cpu().numpy()  # (B, H, W) in [0, 1]
        n = imgs["normal"].permute(0, 2, 3, 1).cpu().numpy()
        n = n / np.maximum(np.linalg.norm(n, axis=-1, keepdims=True), 1e-6)
        return Stage1Output(
            rgb=[Image.fromarray(a) for a in to_uint8(imgs["rgb"])],
            depth=[Image.fromarray((d * 255).round().astype(np.uint8), "L").convert("RGB") for d in depth],
            normal=[Image.fromarray(((x + 1) * 127.5).round().clip(0, 255).astype(np.uint8)) for x in n],
            depth_maps=depth.astype(np.float32), normal_maps=n.astype(np.float32), seed=seed)


def save_grid(out: Stage1Output, poses: torch.Tensor, path: Path, title: str = "",
              prompts: Sequence[str] = ()) -> Image.Image:
    """One row per sample (its prompt above it): RGB | depth | normal | pose; a title line on top."""
    pose_imgs = [Image.fromarray(a) for a in to_uint8(poses)]
    return write_grid(list(zip(out.rgb, out.depth, out.normal, pose_imgs)), path, title,
                      columns=("RGB", "depth", "normal", "pose"), prompts=prompts)


#: the short side of a grid tile at least (small samples are scaled up, pixels kept sharp)
GRID_MIN_TILE = 256


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # a Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int) -> list[str]:
    """``text`` in lines that fit ``width`` pixels (words kept whole)."""
    lines, line = [], ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if line and draw.textlength(trial, font=font) > width:
            lines.append(line)
            line = word
        else:
            line = trial
    return [*lines, line] if line else lines


def write_grid(rows: list[tuple[Image.Image, ...]], path: Path, title: str = "", columns: Sequence[str] = (),
               prompts: Sequence[str] = (), min_tile: int = GRID_MIN_TILE) -> Image.Image:
    """Tiles, one row per sample, under a title (wrapped to the grid's width), a label per column
    and each row's prompt above the row; saved to ``path``. Tiles take the first tile's size,
    scaled up (nearest neighbour) to at least ``min_tile`` pixels on the short side so that a
    64-pixel sample stays readable."""
    w, h = rows[0][0].size
    scale = max(1, -(-min_tile // max(min(w, h), 1)))
    w, h = w * scale, h * scale
    width = len(rows[0]) * w
    font, small = _font(16), _font(14)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    line_h, small_h = 20, 18
    title_lines = _wrap(probe, title, font, width - 8) if title else []
    prompt_lines = [_wrap(probe, f"{i + 1}. {p}", small, width - 8)[:2] if p else []
                    for i, p in enumerate(list(prompts) + [""] * (len(rows) - len(prompts)))]
    head = len(title_lines) * line_h + (small_h + 4 if columns else 0) + (4 if title_lines else 0)
    row_heads = [len(lines) * small_h + (2 if lines else 0) for lines in prompt_lines]
    grid = Image.new("RGB", (width, head + sum(row_heads) + len(rows) * h), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    y = 4
    for line in title_lines:
        draw.text((4, y), line, fill=(0, 0, 0), font=font)
        y += line_h
    if columns:
        for j, label in enumerate(columns[:len(rows[0])]):
            draw.text((j * w + w // 2, y + small_h // 2), label, fill=(40, 40, 40), font=small, anchor="mm")
    y = head
    for i, row in enumerate(rows):
        for line in prompt_lines[i]:
            draw.text((4, y), line, fill=(60, 60, 60), font=small)
            y += small_h
        y += 2 if prompt_lines[i] else 0
        for j, im in enumerate(row):
            grid.paste(im.convert("RGB").resize((w, h), Image.NEAREST), (j * w, y))
        y += h
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return grid
