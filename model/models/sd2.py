"""Stage 1's frozen SD-2 parts and the latent statistics of its three modalities (HyperHuman §3.2).

The text encoder and tokenizer come from SD-2-base, the VAE from ``sd-vae-ft-mse``; both are
frozen. Depth and normal latents are mapped onto the RGB latent statistics before the LSDM sees
them (:class:`LatentStats`), and mapped back before the VAE decodes them.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch

MODALITIES = ("rgb", "depth", "normal")


@dataclass(frozen=True)
class LatentStats:
    """Per-channel mean/std of the scaled VAE latents of each modality (C = 4 each)."""

    mean: dict[str, list[float]]
    std: dict[str, list[float]]

    def normalise(self, z: torch.Tensor, modality: str) -> torch.Tensor:
        """Map ``modality``'s latents onto the RGB latent statistics (identity for rgb)."""
        return z if modality == "rgb" else self._affine(z, modality, "rgb")

    def denormalise(self, z: torch.Tensor, modality: str) -> torch.Tensor:
        """:meth:`normalise` reversed: RGB latent statistics back to ``modality``'s own."""
        return z if modality == "rgb" else self._affine(z, "rgb", modality)

    def _affine(self, z: torch.Tensor, source: str, target: str) -> torch.Tensor:
        """``z`` standardised per channel with ``source``'s statistics, then given ``target``'s."""
        def t(v):  # (1, C, 1, 1) like z
            return torch.tensor(v, dtype=z.dtype, device=z.device).view(1, -1, 1, 1)

        return (z - t(self.mean[source])) / t(self.std[source]) * t(self.std[target]) + t(self.mean[target])

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_json(cls, text: str) -> "LatentStats":
        d = json.loads(text)
        return cls(mean=d["mean"], std=d["std"])

    @classmethod
    def estimate(cls, latents: dict[str, list[torch.Tensor]]) -> "LatentStats":
        mean, std = {}, {}
        for m, zs in latents.items():
            z = torch.cat(zs).float()  # (N, 4, h, w)
            mean[m] = z.mean(dim=(0, 2, 3)).tolist()
            std[m] = z.std(dim=(0, 2, 3)).clamp_min(1e-4).tolist()
        return cls(mean, std)


@dataclass
class FrozenParts:
    """The frozen encoders stage 1 conditions on."""

    tokenizer: object
    text_encoder: torch.nn.Module
    vae: torch.nn.Module

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    @torch.no_grad()
    def encode_text(self, captions: list[str], device) -> torch.Tensor:
        ids = self.tokenizer(captions, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids.to(device)
        return self.text_encoder(ids)[0]  # (B, 77, D) last hidden state (SD-2's encoder is truncated)

    @torch.no_grad()
    def encode_images(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> scaled latents (B, 4, H/8, W/8), sampled from the posterior."""
        dist = self.vae.encode(x.to(self.vae.dtype)).latent_dist
        eps = torch.randn(dist.mean.shape, generator=generator, dtype=dist.mean.dtype).to(dist.mean.device)
        return (dist.mean + dist.std * eps) * self.scaling_factor


def load_frozen_parts(models: str, device, dtype=torch.float32) -> FrozenParts:
    """Tokenizer + text encoder from SD-2-base, VAE from sd-vae-ft-mse (docs/models.md), via the zoo."""
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel, CLIPTokenizer

    from humanverse.zoo import loading, resolve

    sd = resolve("sd2-base", models)
    vae = resolve("sd-vae-ft-mse", models)
    kw = sd.pretrained_kwargs()
    with loading("sd2-base", sd):
        tokenizer = CLIPTokenizer.from_pretrained(sd.path, subfolder="tokenizer", **kw)
        text_encoder = CLIPTextModel.from_pretrained(sd.path, subfolder="text_encoder", use_safetensors=True, **kw)
    with loading("sd-vae-ft-mse", vae):
        vae_model = AutoencoderKL.from_pretrained(vae.path, use_safetensors=True, **vae.pretrained_kwargs())
    for m in (text_encoder, vae_model):
        m.requires_grad_(False).eval().to(device)
        if dtype != torch.float32:
            m.to(dtype)
    return FrozenParts(tokenizer, text_encoder, vae_model)


def load_sd2_unet(models: str):
    from diffusers import UNet2DConditionModel

    from humanverse.zoo import loading, resolve

    sd = resolve("sd2-base", models)
    with loading("sd2-base", sd):
        return UNet2DConditionModel.from_pretrained(sd.path, subfolder="unet", use_safetensors=True,
                                                    **sd.pretrained_kwargs())
