"""Aesthetic filter (HyperHuman §4: LAION aesthetic score >= 4.5).

The score is the LAION "improved aesthetic predictor" (``sac+logos+ava1-l14-linearMSE``): an MLP
(five Linear layers, no activations) over the L2-normalised OpenAI CLIP ViT-L/14 image embedding,
computed here with open_clip (``ViT-L-14-quickgelu`` weights; preprocessing: bicubic resize of the
shorter side to 224, centre crop, CLIP mean/std). The embedding is kept as ``clip_embedding``
(float16) for dedup and search.
"""

from __future__ import annotations

import io
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from humanverse.config import check
from pipelines import rows as R
from pipelines.stages.base import ModelStage, Reject
from pipelines.stages.loading import Device, Dtype

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AestheticConfig:
    threshold: float = 4.5
    clip_model: str | None = None  # spec overriding --models for the CLIP entry
    mlp_model: str | None = None  # spec overriding --models for the aesthetic MLP entry
    store_embedding: bool = True
    device: Device = "auto"
    dtype: Dtype = "auto"

    def __post_init__(self):
        check(math.isfinite(self.threshold), f"aesthetic.threshold must be a finite score, got {self.threshold}.")


def _open_clip_name(r) -> str:
    return ("hf-hub:" if r.kind == "hub" else "local-dir:") + r.path


def clip_embed_dim(config: AestheticConfig, models: str) -> int:
    """The CLIP embedding width (768 for ViT-L/14), read from the model's config file only."""
    from humanverse.zoo import resolve

    r = resolve("clip-vit-l14", config.clip_model or models)
    if r.kind == "hub":
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(r.path, "open_clip_config.json", **r.pretrained_kwargs())
    else:
        path = str(Path(r.path) / "open_clip_config.json")
    return int(json.loads(Path(path).read_text())["model_cfg"]["embed_dim"])


def load_aesthetic_mlp(r):
    """The LAION MLP as ``nn.Sequential`` with the original layer indices (safetensors only)."""
    import torch
    from safetensors.torch import load_file

    if r.kind == "hub":
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(r.path, "model.safetensors", **r.pretrained_kwargs())
    else:
        path = str(Path(r.path) / "model.safetensors")
    sd = load_file(path)
    dims = [sd["layers.0.weight"].shape[1]] + [sd[f"layers.{i}.weight"].shape[0] for i in (0, 2, 4, 6, 7)]
    nn = torch.nn
    mlp = nn.Sequential()
    mlp.add_module("layers", nn.Sequential(
        nn.Linear(dims[0], dims[1]), nn.Dropout(0.2), nn.Linear(dims[1], dims[2]), nn.Dropout(0.2),
        nn.Linear(dims[2], dims[3]), nn.Dropout(0.1), nn.Linear(dims[3], dims[4]), nn.Linear(dims[4], dims[5])))
    mlp.load_state_dict(sd, strict=True)
    return mlp.eval()


def aesthetic_verdict(score: float, threshold: float) -> Reject | None:
    """The threshold on the stored ``aesthetic`` score (also what ``humanverse refilter`` re-applies)."""
    return Reject("low_aesthetic", f"aesthetic {score:.3f} < {threshold}") if score < threshold else None


class AestheticScorer(ModelStage):
    name = "aesthetic"

    def __init__(self, config: AestheticConfig, models: str = "paper", clip_dim: int | None = None):
        super().__init__(clip_dim)  # the run-wide in-flight schema (no embedding column if not stored)
        import open_clip
        import torch

        from humanverse.zoo import loading, resolve
        from pipelines.stages.loading import place, placed

        self.config = config
        rc = resolve("clip-vit-l14", config.clip_model or models)
        rm = resolve("aesthetic-mlp", config.mlp_model or models)
        with loading("clip-vit-l14", rc):
            clip, _, self.preprocess = open_clip.create_model_and_transforms(_open_clip_name(rc))
        self.clip, self.device, self.dtype = placed(clip, config)
        with loading("aesthetic-mlp", rm):
            self.mlp = place(load_aesthetic_mlp(rm), self.device)
        self.tag = f"{rc.tag} + {rm.tag}"
        self._torch = torch
        log.info("aesthetic: %s, threshold %.2f", self.tag, config.threshold)

    def process(self, rows: list[dict]) -> None:
        torch = self._torch
        images = []
        for r in rows:
            with Image.open(io.BytesIO(r["image"])) as im:
                images.append(self.preprocess(im.convert("RGB")))
        with torch.inference_mode():
            x = torch.stack(images).to(self.device, self.dtype)
            emb = self.clip.encode_image(x).float()
            emb = emb / emb.norm(dim=-1, keepdim=True).clamp_min(1e-12)
            scores = self.mlp(emb).squeeze(-1).cpu().tolist()
        emb16 = emb.half().cpu().numpy()
        for r, s, e in zip(rows, scores, emb16):
            r["aesthetic"] = float(s)
            if self.config.store_embedding:
                r["clip_embedding"] = e.tolist()
            R.add_model(r, self.name, self.tag)
            if (why := aesthetic_verdict(s, self.config.threshold)) is not None:
                R.reject(r, self.name, why.reason, why.detail)
