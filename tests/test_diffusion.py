"""Stage-1 diffusion facts (HyperHuman §3.2) checked against diffusers, and checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

from model.schedules import diffusion
from model.training.checkpoints import latest_checkpoint, list_checkpoints, save_checkpoint


def test_zero_terminal_snr_and_trailing_spacing():
    s = diffusion.training_scheduler()
    ac = diffusion.alphas_cumprod(s)
    assert ac[-1].item() == 0.0 and ac[0].item() > 0.99
    assert s.config.prediction_type == "v_prediction"
    d = diffusion.sampling_scheduler()
    d.set_timesteps(50)
    assert int(d.timesteps[0]) == 999 and len(d.timesteps) == 50  # trailing: first step at t = T-1


def test_v_target_and_noising_equal_diffusers():
    s = diffusion.training_scheduler()
    ac = diffusion.alphas_cumprod(s)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(6, 4, 8, 8, generator=g), torch.randn(6, 4, 8, 8, generator=g)
    t = torch.tensor([0, 1, 250, 500, 998, 999])
    assert torch.allclose(diffusion.velocity(ac, x0, eps, t), s.get_velocity(x0, eps, t), atol=1e-6)
    assert torch.allclose(diffusion.add_noise(ac, x0, eps, t), s.add_noise(x0, eps, t), atol=1e-6)
    # at t = T-1 the input is pure noise and the target is -x0
    assert torch.allclose(diffusion.add_noise(ac, x0, eps, t)[-1], eps[-1])
    assert torch.allclose(diffusion.velocity(ac, x0, eps, t)[-1], -x0[-1])


def test_snr_weighting_never_vanishes_or_divides_by_zero():
    ac = diffusion.alphas_cumprod(diffusion.training_scheduler())
    t = torch.arange(1000)
    assert diffusion.snr(ac, t)[-1].item() == 0.0
    w = diffusion.LossWeighting(gamma=5.0)(ac, t)
    assert torch.isfinite(w).all() and (w > 0).all()
    assert w[-1].item() == pytest.approx(0.05 / 1.05)
    assert (diffusion.LossWeighting()(ac, t) == 1).all()  # paper default: unweighted


def test_checkpoints_atomic_rotated_latest(tmp_path):
    def writer(payload):
        def write(d):
            (d / "state.json").write_text(json.dumps(payload))
        return write

    for step in (10, 20, 30, 40):
        save_checkpoint(tmp_path, step, writer({"step": step}), keep=2)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-00000030", "step-00000040"]
    # a crash mid-save leaves a temp folder and no marker: never picked, cleaned by the next save
    def crashing(d):
        (d / "state.json").write_text("{}")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, 50, crashing, keep=2)
    assert latest_checkpoint(tmp_path).name == "step-00000040"
    (tmp_path / "checkpoints" / "step-00000060").mkdir()  # no COMPLETE marker: ignored
    assert latest_checkpoint(tmp_path).name == "step-00000040"
    assert latest_checkpoint(tmp_path / "nothing-here") is None


def test_latent_stats_map_depth_onto_rgb_statistics_and_back():
    """§3.2: depth/normal latents are normalised to the RGB latent statistics before the LSDM sees
    them and mapped back before decoding."""
    import torch

    from model.models.sd2 import LatentStats

    g = torch.Generator().manual_seed(0)
    rgb = torch.randn(64, 4, 8, 8, generator=g) * torch.tensor([1.0, 2.0, 0.5, 1.5]).view(1, 4, 1, 1) + 0.3
    depth = torch.randn(64, 4, 8, 8, generator=g) * 4.0 - 1.0
    stats = LatentStats.estimate({"rgb": [rgb], "depth": [depth]})
    mapped = stats.normalise(depth, "depth")
    assert torch.allclose(mapped.mean(dim=(0, 2, 3)), rgb.mean(dim=(0, 2, 3)), atol=1e-4)
    assert torch.allclose(mapped.std(dim=(0, 2, 3)), rgb.std(dim=(0, 2, 3)), atol=1e-4)
    assert torch.allclose(stats.denormalise(mapped, "depth"), depth, atol=1e-4)
    assert torch.equal(stats.normalise(rgb, "rgb"), rgb)
    assert LatentStats.from_json(stats.to_json()) == stats
