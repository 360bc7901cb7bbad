"""Stage 1 of HyperHuman: the Latent Structural Diffusion Model's training step (§3.2, Eq. 4).

Per step (one batch of HumanVerse examples, see :mod:`model.training.data`):

1. text → frozen text encoder (SD-2: OpenCLIP ViT-H text, penultimate layer) → cross-attention
   context; with probability ``text_dropout`` a caption becomes the empty string (condition dropout,
   see :meth:`Stage1Objective.draw_dropout` for the explicit all-conditions-dropped case);
2. RGB, depth (3-channel) and normal images and the rendered skeleton → the same frozen VAE → latents
   × scaling factor; depth and normal latents are normalised to the RGB latent statistics
   (estimated once on the dataset, stored with the run); with probability ``pose_dropout`` the pose
   latent is replaced by zeros;
3. one timestep per sample for all three modalities, independent noise per modality, v-targets;
4. loss = Σ_m ‖v̂_m − v_m‖² over m ∈ {rgb, depth, normal} (optionally Min-SNR weighted).

Condition dropout is drawn fresh every step from a generator seeded by (seed, step, micro-batch,
rank), which also draws timesteps and noise: a resumed run repeats the same randomness.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from model.models.sd2 import MODALITIES, FrozenParts, LatentStats
from model.schedules import diffusion

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Stage1LossConfig:
    """Eq. 4's loss and the condition dropout that trains classifier-free guidance.

    ``text_dropout`` / ``pose_dropout``: the paper's independent 15 % drops (§4, "Implementation
    Details"). ``all_dropout``: the share of samples whose text AND pose are both dropped on purpose,
    drawn first; the other samples draw the two independent drops. Sampling's unconditional branch
    is exactly that case (empty text, zero pose latent), which independent 15 % drops alone produce
    in only 2.25 % of samples. The paper states no such rate; 0.05 follows the usual practice of
    dropping every condition together a few percent of the time (InstructPix2Pix, §3.2.1). Marginal
    rates: P(text dropped) = a + (1 − a)·p_text, P(both) = a + (1 − a)·p_text·p_pose.
    """

    text_dropout: float = 0.15
    pose_dropout: float = 0.15
    all_dropout: float = 0.05
    snr_gamma: float | None = None

    def __post_init__(self):
        for k in ("text_dropout", "pose_dropout", "all_dropout"):
            v = getattr(self, k)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"loss.{k} must be a probability in [0, 1], got {v}.")


@dataclass(frozen=True)
class LSDMLayout:
    """Which LSDM stage 1 trains (HyperHuman Table 2's ablation knobs; defaults: the paper's model).

    ``expert_depth``: how much of the UNet each modality's expert branch owns at each end,
    ``"half"`` (half of the first down block's layers), ``"one"`` (the first down and last up
    block) or ``"two"`` (two down and two up blocks). ``modalities``: ``("rgb",)``,
    ``("rgb", "depth")`` or ``("rgb", "depth", "normal")``; the loss sums over these.
    """

    expert_depth: str = "one"
    modalities: tuple[str, ...] = ("rgb", "depth", "normal")

    def __post_init__(self):
        from model.models.lsdm import BRANCH_NAMES, EXPERT_DEPTHS

        if self.expert_depth not in EXPERT_DEPTHS:
            raise ValueError(f"lsdm.expert_depth must be one of {', '.join(EXPERT_DEPTHS)}, got {self.expert_depth!r}.")
        mods = tuple(self.modalities)
        if mods not in (BRANCH_NAMES[:1], BRANCH_NAMES[:2], BRANCH_NAMES):
            raise ValueError(f"lsdm.modalities must be [rgb], [rgb, depth] or [rgb, depth, normal], got {list(mods)}.")
        object.__setattr__(self, "modalities", mods)


class Stage1Objective:
    """Computes Eq. 4's loss for a batch; owns nothing trainable (the LSDM is passed in)."""

    def __init__(self, frozen: FrozenParts, stats: LatentStats, cfg: Stage1LossConfig):
        self.frozen, self.stats, self.cfg = frozen, stats, cfg
        self.scheduler = diffusion.training_scheduler()
        self.alphas_cumprod = diffusion.alphas_cumprod(self.scheduler)
        self.weighting = diffusion.LossWeighting(cfg.snr_gamma)
        self.empty_context: torch.Tensor | None = None

    def latents(self, batch: dict, device, gen: torch.Generator) -> dict[str, torch.Tensor]:
        """Scaled VAE latents of the four images; depth/normal normalised to the RGB statistics."""
        pairs = (("rgb", "image"), ("depth", "depth"), ("normal", "normal"), ("pose", "pose"))
        if batch.get("latent_cache"):  # unscaled latents sampled from the cached posteriors
            out = {m: batch[k].to(device) * self.frozen.scaling_factor for m, k in pairs}
        else:
            out = {m: self.frozen.encode_images(batch[k].to(device), gen) for m, k in pairs}
        for m in ("depth", "normal"):
            out[m] = self.stats.normalise(out[m], m)
        return out

    def draw_dropout(self, b: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Condition dropout, drawn fresh each step and independently per sample: first the
        all-conditions-dropped case (``all_dropout``: caption -> "" and pose -> zeros together, the
        unconditional branch of CFG), then the paper's independent drops (15 % of captions -> "",
        15 % of poses -> zeros). Returns boolean masks (text, pose) of shape (B,)."""
        both = torch.rand(b, generator=gen) < self.cfg.all_dropout
        return (both | (torch.rand(b, generator=gen) < self.cfg.text_dropout),
                both | (torch.rand(b, generator=gen) < self.cfg.pose_dropout))

    def __call__(self, unet, batch: dict, gen: torch.Generator, device) -> dict[str, torch.Tensor]:
        z = self.latents(batch, device, gen)
        b = z["rgb"].shape[0]
        drop_text, drop_pose = self.draw_dropout(b, gen)
        captions = ["" if d else c for c, d in zip(batch["caption"], drop_text.tolist())]
        context = self.frozen.encode_text(captions, device)  # (B, 77, D)
        pose = z["pose"] * (~drop_pose).to(z["pose"]).view(-1, 1, 1, 1)
        # one timestep per sample for all modalities, independent noise per modality
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (b,), generator=gen)
        mods = getattr(unet, "module", unet).modalities  # DDP wraps the LSDM; Table-2 ablations model fewer
        noise = {m: torch.randn(z[m].shape, generator=gen).to(z[m]) for m in MODALITIES}  # drawn for all: same RNG
        noisy = {m: diffusion.add_noise(self.alphas_cumprod, z[m], noise[m], t.to(device)) for m in mods}
        target = {m: diffusion.velocity(self.alphas_cumprod, z[m], noise[m], t.to(device)) for m in mods}
        added = batch.get("added_cond")
        out = unet(noisy["rgb"], noisy.get("depth"), noisy.get("normal"), pose, t.to(device), context,
                   added_cond=None if added is None else added.to(device))
        w = self.weighting(self.alphas_cumprod, t).to(device)
        losses = {m: diffusion.v_loss(getattr(out, m), target[m], w) if m in mods else torch.zeros((), device=device)
                  for m in MODALITIES}
        losses["loss"] = sum(losses[m] for m in mods)
        losses["text_dropped"] = drop_text.float().mean()
        losses["pose_dropped"] = drop_pose.float().mean()
        losses["all_dropped"] = (drop_text & drop_pose).float().mean()
        return losses


@torch.no_grad()
def estimate_latent_stats(frozen: FrozenParts, batches, device, max_samples: int = 64, seed: int = 0) -> LatentStats:
    """Per-channel statistics of the scaled latents of each modality over ``max_samples`` examples."""
    gen = torch.Generator().manual_seed(seed)
    acc: dict[str, list[torch.Tensor]] = {m: [] for m in MODALITIES}
    n = 0
    for batch in batches:
        for m, k in (("rgb", "image"), ("depth", "depth"), ("normal", "normal")):
            acc[m].append(frozen.encode_images(batch[k].to(device), gen).cpu())
        n += batch["image"].shape[0]
        if n >= max_samples:
            break
    if n == 0:
        raise ValueError("the training data selection is empty: no rows to estimate latent statistics from.")
    return LatentStats.estimate(acc)
