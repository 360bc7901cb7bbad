"""Stage 2 of HyperHuman: training and sampling the Structure-Guided Refiner (paper §3.3).

Training step (one batch of HumanVerse examples at the refiner resolution, see :mod:`model.data`):

1. text → SDXL's two frozen text encoders: context = concat(hidden_states[−2] of both), pooled =
   encoder 2's projected embedding; SDXL micro-conditioning ``time_ids`` = (orig_h, orig_w,
   crop_top, crop_left, target_h, target_w) from the data reader's size/crop record;
2. image → frozen SDXL VAE → latent × scaling factor; ε-prediction DDPM noising with SDXL's
   training schedule (scaled-linear 0.00085–0.012, 1000 steps);
3. structure maps (ground-truth pose skeleton, depth, normal from HumanVerse) → the trainable
   :class:`~model.refiner.StructureGuidedControlNet` → residuals added to the frozen SDXL UNet;
4. loss = ‖ε̂ − ε‖².

Robust conditioning (§3.3), drawn fresh every step and independently per sample: each structure
map is replaced by zeros and the caption by "" with probability 0.5 each; additionally, with
probability ``all_dropout`` every condition is dropped at once (our choice, not stated in the
paper: it keeps the fully unconditional case well represented for guidance; the independent draws
alone give it 1/16 of the time). All draws come from the step's seeded generator, so a resumed
run repeats them.

Sampling (:class:`RefinerSampler`): SDXL's own scheduler (EulerDiscrete for SDXL-base), CFG over
the text with the structure maps applied to both branches (as SDXL ControlNet pipelines do), the
stage-1 depth and normal upsampled to the refiner resolution.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from model.refiner import CONDITIONS, StructureGuidedControlNet, drop_conditions, structure_inputs

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


@dataclass
class SDXLFrozenParts:
    """SDXL-base's frozen pieces: two tokenizers and text encoders, the UNet, the VAE, the schedule config."""

    tokenizer: object
    tokenizer_2: object
    text_encoder: torch.nn.Module
    text_encoder_2: torch.nn.Module
    unet: torch.nn.Module
    vae: torch.nn.Module
    scheduler_config: dict

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @torch.no_grad()
    def encode_text(self, captions: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (context (B, 77, D1 + D2), pooled (B, P)) as SDXL computes them (MODELS.md §10)."""
        ctxs, pooled = [], None
        for tok, enc in ((self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)):
            ids = tok(captions, padding="max_length", max_length=tok.model_max_length, truncation=True,
                      return_tensors="pt").input_ids.to(device)
            out = enc(ids, output_hidden_states=True)
            ctxs.append(out.hidden_states[-2])
            if enc is self.text_encoder_2:
                pooled = out.text_embeds if hasattr(out, "text_embeds") else out[0]
        return torch.cat(ctxs, dim=-1), pooled

    @torch.no_grad()
    def encode_images(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        dist = self.vae.encode(x.to(self.vae.dtype)).latent_dist
        eps = torch.randn(dist.mean.shape, generator=generator, dtype=dist.mean.dtype).to(dist.mean.device)
        return (dist.mean + dist.std * eps) * self.scaling_factor

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> images in [−1, 1] (decoded in fp32: SDXL's VAE overflows in fp16)."""
        vae = self.vae
        if vae.dtype != torch.float32 and getattr(vae.config, "force_upcast", False):
            vae = vae.to(torch.float32)
        return vae.decode((z / self.scaling_factor).to(vae.dtype)).sample.float().clamp(-1, 1)


def load_sdxl_parts(models: str, device, dtype: torch.dtype = torch.float32) -> SDXLFrozenParts:
    """SDXL-base (tokenizers, text encoders, UNet, scheduler config) and the fp16-fix VAE, via the zoo."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from humanverse.zoo import resolve

    sd = resolve("sdxl-base", models)
    vae_entry = resolve("sdxl-vae-fp16-fix", models)
    kw = sd.pretrained_kwargs()
    tok = CLIPTokenizer.from_pretrained(sd.path, subfolder="tokenizer", **kw)
    tok2 = CLIPTokenizer.from_pretrained(sd.path, subfolder="tokenizer_2", **kw)
    te = CLIPTextModel.from_pretrained(sd.path, subfolder="text_encoder", use_safetensors=True, **kw)
    te2 = CLIPTextModelWithProjection.from_pretrained(sd.path, subfolder="text_encoder_2", use_safetensors=True, **kw)
    unet = UNet2DConditionModel.from_pretrained(sd.path, subfolder="unet", use_safetensors=True, **kw)
    vae = AutoencoderKL.from_pretrained(vae_entry.path, use_safetensors=True, **vae_entry.pretrained_kwargs())
    from diffusers import EulerDiscreteScheduler

    sched_cfg = dict(EulerDiscreteScheduler.load_config(sd.path, subfolder="scheduler", **kw))
    for m in (te, te2, unet, vae):
        m.requires_grad_(False).eval().to(device)
        if dtype != torch.float32:
            m.to(dtype)
    return SDXLFrozenParts(tok, tok2, te, te2, unet, vae, sched_cfg)


def time_ids(original_size: torch.Tensor, crop_top_left: torch.Tensor, target: tuple[int, int]) -> torch.Tensor:
    """SDXL's micro-conditioning: (B, 6) = (orig_h, orig_w, crop_top, crop_left, target_h, target_w)."""
    b = original_size.shape[0]
    tgt = torch.tensor(target, dtype=torch.float32).expand(b, 2)
    return torch.cat([original_size.float(), crop_top_left.float(), tgt], dim=1)


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
        """``cond``: (B, 7, H, W) from :func:`~model.refiner.structure_inputs` at the output resolution."""
        from diffusers import EulerDiscreteScheduler

        from model.sampler import _to_uint8
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
        return RefinerOutput(images=[Image.fromarray(a) for a in _to_uint8(x)], seed=seed)


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
