"""Classifier-free guidance as trained and sampled (Lin et al. 2024 guidance rescale, checked
against diffusers' ``rescale_noise_cfg``) and the EMA warm-up (checked against diffusers'
``EMAModel``)."""

from __future__ import annotations

import pytest
import torch
from diffusers.training_utils import EMAModel

from model.sampling.stage1 import rescale_guidance
from model.training.checkpoints import EMA


@pytest.mark.parametrize("phi", [0.0, 0.3, 0.7, 1.0])
def test_guidance_rescale_matches_diffusers(phi):
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import (
        rescale_noise_cfg,
    )

    g = torch.Generator().manual_seed(0)
    c, u = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g) * 0.5
    guided = u + 7.5 * (c - u)
    ours = rescale_guidance(guided, c, phi)
    assert torch.allclose(ours, rescale_noise_cfg(guided, c, guidance_rescale=phi), atol=1e-6)
    if phi == 1.0:  # fully rescaled: each sample has the conditional prediction's std
        assert torch.allclose(ours.std(dim=(1, 2, 3)), c.std(dim=(1, 2, 3)), rtol=1e-5)


def test_sample_config_rescale_default_and_bounds():
    from model.sampling.hyperhuman import SampleConfig

    assert SampleConfig().stage1_guidance_rescale == 0.7
    with pytest.raises(ValueError, match="stage1_guidance_rescale"):
        SampleConfig(stage1_guidance_rescale=1.5)


def test_ema_warmup_matches_diffusers_and_resumes():
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3)
    params = list(net.parameters())
    ours = EMA(params, decay=0.999)
    ref = EMAModel(params, decay=0.999, foreach=False)
    opt = torch.optim.SGD(params, lr=0.1)
    decays = []
    for step in range(30):
        opt.zero_grad()
        net(torch.randn(8, 4)).pow(2).mean().backward()
        opt.step()
        decays.append(ours.current_decay())
        ours.update(params)
        ref.step(params)
        assert ref.cur_decay_value == pytest.approx(decays[-1])
        for a, b in zip(ours.shadow, ref.shadow_params):
            assert torch.allclose(a, b, atol=1e-6)
    assert decays[:3] == [0.0, pytest.approx(2 / 11), pytest.approx(3 / 12)]
    # the update count travels with the checkpoint, so a resumed run continues the schedule
    back = EMA(params, decay=0.999)
    back.load_state_dict(ours.state_dict())
    assert back.updates == 30 and back.current_decay() == pytest.approx(31 / 40)
    flat = EMA(params, decay=0.999, warmup=False)
    assert flat.current_decay() == 0.999
