"""Diffusion schedules and targets for stage 1 (HyperHuman §3.2, Eq. 4).

* Training: DDPM, 1000 steps, SD-2's scaled-linear betas rescaled to zero terminal SNR
  (ᾱ_T = 0; Lin et al., "Common Diffusion Noise Schedules and Sample Steps are Flawed", 2024,
  Alg. 1), v-prediction (Salimans & Ho 2022): v = √ᾱ_t ε − √(1−ᾱ_t) x₀.
* One timestep per sample shared by the RGB, depth and normal latents, independent noise per
  modality; loss = Σ_m ‖v̂_m − v_m‖² (Eq. 4).
* Sampling: DDIM with "trailing" timestep spacing (so the first step starts at t = T−1, where the
  SNR is zero) and classifier-free guidance.

The schedules are diffusers' own (``DDPMScheduler``/``DDIMScheduler`` with
``rescale_betas_zero_snr=True``), so a test can compare against them directly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: SD-2-base's training schedule (its scheduler_config.json), with zero terminal SNR added.
SCHEDULE_KWARGS = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                       rescale_betas_zero_snr=True, prediction_type="v_prediction", clip_sample=False)


def training_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(**SCHEDULE_KWARGS, timestep_spacing="trailing")


def sampling_scheduler():
    from diffusers import DDIMScheduler

    return DDIMScheduler(**SCHEDULE_KWARGS, timestep_spacing="trailing", set_alpha_to_one=False)


def alphas_cumprod(scheduler) -> torch.Tensor:
    return scheduler.alphas_cumprod.to(torch.float64)


def add_noise(alphas_cumprod: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = √ᾱ_t x₀ + √(1−ᾱ_t) ε  (x0, noise: (B, C, h, w); t: (B,) int64)."""
    a = alphas_cumprod.to(x0.device)[t].to(x0.dtype).view(-1, 1, 1, 1)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def velocity(alphas_cumprod: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """v = √ᾱ_t ε − √(1−ᾱ_t) x₀ (the v-prediction target)."""
    a = alphas_cumprod.to(x0.device)[t].to(x0.dtype).view(-1, 1, 1, 1)
    return a.sqrt() * noise - (1 - a).sqrt() * x0


def snr(alphas_cumprod: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """SNR_t = ᾱ_t / (1 − ᾱ_t); 0 at the terminal step of a zero-terminal-SNR schedule."""
    a = alphas_cumprod.to(t.device)[t]
    return a / (1 - a).clamp_min(1e-12)


@dataclass(frozen=True)
class LossWeighting:
    """Optional Min-SNR-γ weighting for v-prediction (Hang et al. 2023): w = min(SNR, γ) / (SNR + 1).

    With zero terminal SNR that weight is exactly 0 at t = T−1, so the terminal step would never be
    learnt (and the ε-form min(SNR, γ)/SNR divides by zero). We floor the SNR at ``snr_floor``
    before weighting: the weight stays finite and positive at every step. ``gamma=None`` (default,
    the paper's loss) weights every step 1.
    """

    gamma: float | None = None
    snr_floor: float = 0.05

    def __call__(self, alphas_cumprod: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.gamma is None:
            return torch.ones(t.shape, dtype=torch.float32, device=t.device)
        s = snr(alphas_cumprod, t).clamp_min(self.snr_floor)
        return (torch.minimum(s, torch.full_like(s, self.gamma)) / (s + 1)).float()


def v_loss(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted mean-squared error per sample, then averaged: (B, C, h, w) -> scalar."""
    per_sample = ((pred.float() - target.float()) ** 2).mean(dim=(1, 2, 3))
    return (per_sample * weight).mean()
