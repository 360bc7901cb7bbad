"""Stage 2 of HyperHuman: training the Structure-Guided Refiner (paper §3.3).

Training step (one batch of HumanVerse examples at the refiner resolution, see :mod:`model.training.data`):

1. text → SDXL's two frozen text encoders: context = concat(hidden_states[−2] of both), pooled =
   encoder 2's projected embedding; SDXL micro-conditioning ``time_ids`` = (orig_h, orig_w,
   crop_top, crop_left, target_h, target_w) from the data reader's size/crop record;
2. image → frozen SDXL VAE → latent × scaling factor; ε-prediction DDPM noising with SDXL's
   training schedule (scaled-linear 0.00085–0.012, 1000 steps);
3. structure maps (ground-truth pose skeleton, depth, normal from HumanVerse) → the trainable
   :class:`~model.models.refiner.StructureGuidedControlNet` → residuals added to the frozen SDXL UNet;
4. loss = ‖ε̂ − ε‖².

Robust conditioning (§3.3), drawn fresh every step and independently per sample: each structure
map is replaced by zeros and the caption by "" with probability 0.5 each; additionally, with
probability ``all_dropout`` every condition is dropped at once (our choice, not stated in the
paper: it keeps the fully unconditional case well represented for guidance; the independent draws
alone give it 1/16 of the time). All draws come from the step's seeded generator, so a resumed
run repeats them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from model.models.refiner import CONDITIONS, drop_conditions, structure_inputs
from model.models.sdxl import SDXLFrozenParts, time_ids

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Stage2LossConfig:
    """Robust-conditioning rates (paper §3.3: 0.5 for every condition, text included)."""

    pose_dropout: float = 0.5
    depth_dropout: float = 0.5
    normal_dropout: float = 0.5
    text_dropout: float = 0.5
    all_dropout: float = 0.1

    def __post_init__(self):
        for k in ("pose_dropout", "depth_dropout", "normal_dropout", "text_dropout", "all_dropout"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0.0 <= v <= 1.0:
                raise ValueError(f"loss.{k} must be a probability in [0, 1], got {v!r}.")


def _ddpm_from(config: dict):
    """SDXL's training schedule as a DDPMScheduler (same betas and timesteps as the sampling config)."""
    from diffusers import DDPMScheduler

    keep = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas", "prediction_type",
            "timestep_spacing", "steps_offset", "rescale_betas_zero_snr")
    return DDPMScheduler(**{k: v for k, v in config.items() if k in keep})


class Stage2Objective:
    """ε-MSE of the frozen SDXL UNet steered by the refiner (§3.3); owns nothing trainable."""

    def __init__(self, frozen: SDXLFrozenParts, cfg: Stage2LossConfig, conditions=tuple(CONDITIONS)):
        self.frozen, self.cfg, self.conditions = frozen, cfg, tuple(conditions)
        self.scheduler = _ddpm_from(frozen.scheduler_config)
        if self.scheduler.config.prediction_type != "epsilon":
            raise ValueError(f"the SDXL base schedule predicts {self.scheduler.config.prediction_type!r}; "
                             "the refiner trains the paper's epsilon-prediction SDXL.")
        self.alphas_cumprod = self.scheduler.alphas_cumprod.to(torch.float64)
        self.rates = {"pose": cfg.pose_dropout, "depth": cfg.depth_dropout, "normal": cfg.normal_dropout}

    def draw_dropout(self, b: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (keep (B, n_conditions) bool, drop_text (B,) bool), drawn fresh from ``gen``."""
        u = torch.rand(b, len(self.conditions) + 2, generator=gen)
        drop_all = u[:, -1] < self.cfg.all_dropout
        keep = torch.stack([u[:, j] >= self.rates[c] for j, c in enumerate(self.conditions)], dim=1)
        keep &= ~drop_all[:, None]
        drop_text = (u[:, len(self.conditions)] < self.cfg.text_dropout) | drop_all
        return keep, drop_text

    def __call__(self, refiner, batch: dict, gen: torch.Generator, device) -> dict[str, torch.Tensor]:
        x = batch["image"].to(device)
        b, _, h, w = x.shape
        z = self.frozen.encode_images(x, gen)
        keep, drop_text = self.draw_dropout(b, gen)
        captions = ["" if d else c for c, d in zip(batch["caption"], drop_text.tolist())]
        ctx, pooled = self.frozen.encode_text(captions, device)
        added = {"text_embeds": pooled, "time_ids": time_ids(batch["original_size"], batch["crop_top_left"],
                                                                 (h, w)).to(device)}
        cond = structure_inputs(batch["pose"], batch["depth"], batch["normal"], self.conditions)
        cond = drop_conditions(cond, keep, self.conditions).to(device)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (b,), generator=gen)
        noise = torch.randn(z.shape, generator=gen).to(z)
        a = self.alphas_cumprod.to(device)[t.to(device)].to(z.dtype).view(-1, 1, 1, 1)
        noisy = a.sqrt() * z + (1 - a).sqrt() * noise
        tt = t.to(device)
        down, mid = refiner(noisy, tt, ctx, cond, added)
        eps = self.frozen.unet(noisy, tt, encoder_hidden_states=ctx, added_cond_kwargs=added,
                               down_block_additional_residuals=down, mid_block_additional_residual=mid,
                               return_dict=False)[0]
        loss = ((eps.float() - noise.float()) ** 2).mean()
        out = {"loss": loss, "text_dropped": drop_text.float().mean()}
        for j, c in enumerate(self.conditions):
            out[f"{c}_dropped"] = (~keep[:, j]).float().mean()
        return out
