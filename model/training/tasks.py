"""What differs between the two stages inside the one trainer (:mod:`model.training.loop`).

A task builds the frozen parts and the trainable module (fresh or from a checkpoint), computes the
stage's loss for a batch, writes and reads its part of a checkpoint, and renders validation
samples. Everything else (data stream and its position, AdamW, accumulation, clipping, EMA,
mixed precision, atomic rotated checkpoints, step-exact resume, TensorBoard, Ray Train/DDP) is the
trainer's and identical for both stages.

* :class:`Stage1Task`: the Latent Structural Diffusion Model (§3.2), SD-2-base + VAE frozen,
  the LSDM trainable; depth/normal latent statistics estimated on the data and stored.
* :class:`Stage2Task`: the Structure-Guided Refiner (§3.3), SDXL-base (UNet, text encoders, VAE)
  frozen, the structure embedders + ControlNet trainable.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

log = logging.getLogger("model.training.loop")


#: Written beside the weights of every checkpoint (and in the run folder): how the conditions were
#: made, which sampling must reproduce (:func:`model.sampling.hyperhuman.check_conditioning`).
CONDITIONING_FILE = "conditioning.json"


def conditioning_record(cfg) -> dict:
    """The conditioning a run trains on: pose-map style and threshold, and (stage 1) the layout
    of the LSDM it trains."""
    rec = {"stage": cfg.stage, "pose_style": cfg.data.pose_style, "skeleton_threshold": cfg.data.skeleton_threshold,
           "depth": cfg.data.depth}
    loss = getattr(cfg, "loss", None)
    if hasattr(loss, "all_dropout"):
        rec["all_dropout"] = loss.all_dropout
    layout = getattr(cfg, "lsdm", None)
    if layout is not None:
        rec["expert_depth"], rec["modalities"] = layout.expert_depth, list(layout.modalities)
    return rec


def write_conditioning(cfg, d: Path) -> None:
    import json

    (d / CONDITIONING_FILE).write_text(json.dumps(conditioning_record(cfg), indent=2))


def frozen_dtype(cfg, device: torch.device) -> torch.dtype:
    """The frozen encoders' (and stage 2's frozen UNet's) dtype: bf16 where the step runs in bf16
    autocast on a GPU (halves their memory; SDXL's VAE decodes upcast), else float32."""
    mp = cfg.mixed_precision
    if device.type == "cuda" and (mp == "bf16" or (mp == "auto" and torch.cuda.is_bf16_supported())):
        return torch.bfloat16
    return torch.float32


class Stage1Task:
    name = "stage1"
    weights_dir = "lsdm"
    scalars = ("loss", "rgb", "depth", "normal", "text_dropped", "pose_dropped", "all_dropped")

    def __init__(self, cfg, models: str, data_root: str, device: torch.device):
        self.cfg, self.models, self.data_root, self.device = cfg, models, data_root, device
        self.frozen = self.stats = self.model = self.objective = None

    def setup(self, ck: Path | None, stats_batches: Callable[[], Iterator[dict]]) -> torch.nn.Module:
        from model.models.lsdm import LatentStructuralUNet
        from model.models.sd2 import LatentStats, load_frozen_parts, load_sd2_unet
        from model.training.stage1 import Stage1Objective, estimate_latent_stats

        self.frozen = load_frozen_parts(self.models, self.device, frozen_dtype(self.cfg, self.device))
        if ck is not None:
            self.model = LatentStructuralUNet.from_pretrained(ck / self.weights_dir)
            self.stats = LatentStats.from_json((ck / "latent_stats.json").read_text())
        else:
            layout = self.cfg.lsdm
            self.model = LatentStructuralUNet.from_sd2(load_sd2_unet(self.models), expert_depth=layout.expert_depth,
                                                       num_branches=len(layout.modalities))
            self.stats = estimate_latent_stats(self.frozen, stats_batches(), self.device,
                                               self.cfg.latent_stats_samples, self.cfg.seed)
        self.objective = Stage1Objective(self.frozen, self.stats, self.cfg.loss)
        return self.model

    def loss(self, model, batch: dict, gen: torch.Generator) -> dict[str, torch.Tensor]:
        return self.objective(model, batch, gen, self.device)

    def save(self, d: Path) -> None:
        self.model.save_pretrained(d / self.weights_dir, safe_serialization=True)
        (d / "latent_stats.json").write_text(self.stats.to_json())
        write_conditioning(self.cfg, d)

    def run_files(self, run_dir: Path) -> None:
        (run_dir / "latent_stats.json").write_text(self.stats.to_json())
        write_conditioning(self.cfg, run_dir)

    def describe(self, m: dict) -> str:
        return f"loss {m['loss']:.4f} (rgb {m['rgb']:.4f} depth {m['depth']:.4f} normal {m['normal']:.4f})"

    def validate(self, batch: dict, path: Path, title: str):
        """Sample the fixed prompts with the batch's poses: grid RGB | depth | normal | pose."""
        from model.sampling.stage1 import Stage1Sampler, save_grid

        cfg = self.cfg
        n = min(len(cfg.validation_prompts), batch["pose"].shape[0])
        out = Stage1Sampler(self.model, self.frozen, self.stats)(
            list(cfg.validation_prompts[:n]), batch["pose"][:n], steps=cfg.sample_steps,
            guidance_scale=cfg.guidance_scale, seed=cfg.seed, added_cond=batch["added_cond"][:n])
        return save_grid(out, batch["pose"][:n], path, title=title, prompts=cfg.validation_prompts[:n])


class Stage2Task:
    name = "stage2"
    weights_dir = "refiner"

    def __init__(self, cfg, models: str, data_root: str, device: torch.device):
        self.cfg, self.models, self.data_root, self.device = cfg, models, data_root, device
        self.frozen = self.model = self.objective = None
        self.scalars = ("loss", "text_dropped") + tuple(f"{c}_dropped" for c in cfg.conditions)

    def setup(self, ck: Path | None, stats_batches=None) -> torch.nn.Module:
        from model.models.refiner import StructureGuidedControlNet
        from model.models.sdxl import load_sdxl_parts
        from model.training.stage2 import Stage2Objective

        self.frozen = load_sdxl_parts(self.models, self.device, frozen_dtype(self.cfg, self.device))
        if self.cfg.data.resolution % self.frozen.vae_scale_factor:
            raise ValueError(f"data.resolution {self.cfg.data.resolution} is not a multiple of the SDXL VAE's "
                             f"factor {self.frozen.vae_scale_factor}.")
        if ck is not None:
            self.model = StructureGuidedControlNet.from_pretrained(ck / self.weights_dir)
        else:
            self.model = StructureGuidedControlNet.from_unet(
                self.frozen.unet, embedder_widths=self.cfg.embedder_widths,
                vae_scale_factor=self.frozen.vae_scale_factor, conditions=self.cfg.conditions)
        self.objective = Stage2Objective(self.frozen, self.cfg.loss, self.model.conditions)
        return self.model

    def loss(self, model, batch: dict, gen: torch.Generator) -> dict[str, torch.Tensor]:
        return self.objective(model, batch, gen, self.device)

    def save(self, d: Path) -> None:
        self.model.save_pretrained(d / self.weights_dir, safe_serialization=True)
        write_conditioning(self.cfg, d)

    def run_files(self, run_dir: Path) -> None:
        write_conditioning(self.cfg, run_dir)

    def describe(self, m: dict) -> str:
        drops = " ".join(f"{k.split('_')[0]} {m[k]:.2f}" for k in self.scalars[1:])
        return f"loss {m['loss']:.4f} (dropped: {drops})"

    def validate(self, batch: dict, path: Path, title: str):
        """Refine the fixed prompts on the batch's ground-truth structure: grid pose | depth | normal | output."""
        from PIL import Image

        from model.models.refiner import structure_inputs
        from model.sampling.stage1 import to_uint8, write_grid
        from model.sampling.refiner import RefinerSampler

        cfg = self.cfg
        n = min(len(cfg.validation_prompts), batch["pose"].shape[0])
        cond = structure_inputs(batch["pose"][:n], batch["depth"][:n], batch["normal"][:n], self.model.conditions)
        out = RefinerSampler(self.model, self.frozen)(list(cfg.validation_prompts[:n]), cond, steps=cfg.sample_steps,
                                                      guidance_scale=cfg.guidance_scale, seed=cfg.seed)
        cols = [to_uint8(batch["pose"][:n]), to_uint8(batch["depth"][:n]), to_uint8(batch["normal"][:n])]
        rows = [tuple(Image.fromarray(c[i]) for c in cols) + (out.images[i],) for i in range(n)]
        return write_grid(rows, path, title, columns=("pose", "depth", "normal", "refined"),
                          prompts=cfg.validation_prompts[:n])


def task_for(cfg) -> type:
    """The task of a training config, by its ``stage`` (robust to ``python -m model.training.loop``, where the
    config classes of ``__main__`` are not those of ``model.training.loop``)."""
    tasks = {"stage1": Stage1Task, "stage2": Stage2Task}
    stage = getattr(cfg, "stage", None)
    if stage not in tasks:
        raise TypeError(f"no training task for {type(cfg).__name__}.")
    return tasks[stage]


def validation_batch(data_root: str, cfg, n: int) -> dict:
    """The first ``n`` rows of the selection, centre-cropped and unflipped: fixed across steps."""
    from model.training.data import iter_examples

    val_cfg = dataclasses.replace(cfg.data, crop="center", flip_prob=0.0)
    return next(iter(iter_examples(data_root, val_cfg, epoch=0, rank=0, world_size=1, skip_batches=0, batch_size=n)))
