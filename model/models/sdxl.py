"""Stage 2's frozen SDXL-base parts (HyperHuman §3.3): two tokenizers and text encoders, the UNet,
the fp16-fix VAE and the scheduler config, and SDXL's micro-conditioning ``time_ids`` (Podell et
al. 2023, §2.2).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

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
        """-> (context (B, 77, D1 + D2), pooled (B, P)) as SDXL computes them (diffusers' StableDiffusionXLPipeline.encode_prompt)."""
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

    from diffusers import EulerDiscreteScheduler

    from humanverse.zoo import loading, resolve

    sd = resolve("sdxl-base", models)
    vae_entry = resolve("sdxl-vae-fp16-fix", models)
    kw = sd.pretrained_kwargs()
    with loading("sdxl-base", sd):
        tok = CLIPTokenizer.from_pretrained(sd.path, subfolder="tokenizer", **kw)
        tok2 = CLIPTokenizer.from_pretrained(sd.path, subfolder="tokenizer_2", **kw)
        te = CLIPTextModel.from_pretrained(sd.path, subfolder="text_encoder", use_safetensors=True, **kw)
        te2 = CLIPTextModelWithProjection.from_pretrained(sd.path, subfolder="text_encoder_2", use_safetensors=True,
                                                          **kw)
        unet = UNet2DConditionModel.from_pretrained(sd.path, subfolder="unet", use_safetensors=True, **kw)
        sched_cfg = dict(EulerDiscreteScheduler.load_config(sd.path, subfolder="scheduler", **kw))
    with loading("sdxl-vae-fp16-fix", vae_entry):
        vae = AutoencoderKL.from_pretrained(vae_entry.path, use_safetensors=True, **vae_entry.pretrained_kwargs())
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
