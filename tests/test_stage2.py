"""Stage 2 (the Structure-Guided Refiner, §3.3) with the tiny zoo: the embedders land at the
latent resolution and start at zero contribution, the ControlNet copy equals SDXL's encoder, the
robust-conditioning rates are right, and the shared trainer overfits a tiny set, resumes
step-exactly after a SIGKILL and refuses the wrong stage."""

from __future__ import annotations

import json

import pytest
import torch

import humanverse
from humanverse.testing.synthetic import synthetic_table
from model.training.data import TrainDataConfig
from model.models.refiner import CONDITIONS, StructureEmbedder, StructureGuidedControlNet, drop_conditions, structure_inputs
from model.models.sdxl import load_sdxl_parts
from model.training.stage2 import Stage2LossConfig, Stage2Objective
from model.training.loop import OptimConfig, ScalingConfig, Stage2TrainConfig, train_loop
from helpers import loss_history, train_and_kill_at

RES = 64  # the tiny SDXL's sample size 8 x VAE factor 8


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("s2") / "ds"
    sink = humanverse.ShardSink.open(root)
    for s in range(2):  # 2 files of 8 rows
        sink.write(synthetic_table(8, shard=f"s{s}", seed=10 + s, width=96, height=128), "data", f"s{s}")
    sink.close()
    return root


@pytest.fixture(scope="module")
def sdxl(tiny_zoo):
    return load_sdxl_parts("tiny", torch.device("cpu"))


def _cfg(**kw) -> Stage2TrainConfig:
    base = dict(data=TrainDataConfig(resolution=RES, shuffle_buffer=8), scaling=ScalingConfig(use_ray=False),
                batch_size=2, max_steps=6, checkpoint_every=3, validate_every=10_000, log_every=3, sample_steps=2,
                optim=OptimConfig(lr=1e-3), ema_decay=0.99, validation_prompts=("a person",))
    base.update(kw)
    return Stage2TrainConfig(**base)


@pytest.mark.parametrize("size", [64, 96, 1024])
def test_embedder_lands_at_latent_resolution_and_starts_at_zero(size):
    e = StructureEmbedder(3, 320)  # the paper's widths 16/32/96/256, SDXL's first block width
    out = e(torch.rand(1, 3, size, size))
    assert out.shape == (1, 320, size // 8, size // 8)
    assert torch.count_nonzero(out) == 0  # zero-initialised output projection
    convs = [m for m in e.body if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 32, 96, 256]
    assert [c.kernel_size for c in convs[:3]] == [(4, 4)] * 3 and [c.stride for c in convs[:3]] == [(2, 2)] * 3


def test_fresh_refiner_copies_sdxl_and_adds_nothing(sdxl):
    unet = sdxl.unet
    ref = StructureGuidedControlNet.from_unet(unet)
    cn = ref.controlnet.state_dict()
    for name, w in unet.down_blocks.state_dict().items():  # the ControlNet encoder is a copy of SDXL's
        assert torch.equal(cn[f"down_blocks.{name}"], w), name
    b = 2
    z, t = torch.randn(b, 4, 8, 8), torch.tensor([3, 900])
    ctx, pooled = sdxl.encode_text(["a person", ""], "cpu")
    added = {"text_embeds": pooled, "time_ids": torch.tensor([[128.0, 96, 0, 0, 64, 64]] * b)}
    cond = torch.rand(b, 7, RES, RES)
    assert torch.count_nonzero(ref.embed(cond)) == 0
    down, mid = ref(z, t, ctx, cond, added)
    assert len(down) == len(ref.controlnet.controlnet_down_blocks)
    assert all(torch.count_nonzero(d) == 0 for d in down) and torch.count_nonzero(mid) == 0
    with torch.no_grad():
        plain = unet(z, t, encoder_hidden_states=ctx, added_cond_kwargs=added).sample
        steered = unet(z, t, encoder_hidden_states=ctx, added_cond_kwargs=added,
                       down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
    assert torch.equal(plain, steered)


def test_refiner_save_load_roundtrip_and_bad_input(sdxl, tmp_path):
    ref = StructureGuidedControlNet.from_unet(sdxl.unet, conditions=("pose", "normal"))
    ref.save_pretrained(tmp_path / "r", safe_serialization=True)
    back = StructureGuidedControlNet.from_pretrained(tmp_path / "r")
    assert back.conditions == ("pose", "normal") and back.in_channels == 6
    for (k, a), (_, b) in zip(ref.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), k
    with pytest.raises(ValueError, match="has 7 channels; expected 6"):
        back.embed(torch.zeros(1, 7, RES, RES))
    with pytest.raises(ValueError, match="latent"):
        ctx, pooled = sdxl.encode_text(["x"], "cpu")
        back(torch.zeros(1, 4, 8, 8), torch.tensor([1]), ctx, torch.zeros(1, 6, 32, 32),
             {"text_embeds": pooled, "time_ids": torch.zeros(1, 6)})


def test_structure_inputs_and_dropping():
    pose = torch.full((2, 3, 8, 8), -1.0)  # black canvas
    depth = torch.ones(2, 3, 8, 8)
    normal = torch.zeros(2, 3, 8, 8)
    normal[:, 2] = 1
    x = structure_inputs(pose, depth, normal)
    assert x.shape == (2, 7, 8, 8)
    assert x[:, :3].eq(0).all() and x[:, 3].eq(1).all() and x[:, 6].eq(1).all()
    keep = torch.tensor([[True, False, True], [False, True, False]])
    y = drop_conditions(x, keep)
    assert y[0, 3].eq(0).all() and y[0, 6].eq(1).all()  # sample 0: depth dropped, normal kept
    assert y[1, 3].eq(1).all() and y[1, 4:].eq(0).all()  # sample 1: depth kept, normal dropped


def test_robust_conditioning_rates(sdxl):
    cfg = Stage2LossConfig(pose_dropout=0.5, depth_dropout=0.3, normal_dropout=0.5, text_dropout=0.5, all_dropout=0.1)
    obj = Stage2Objective(sdxl, cfg)
    keeps, texts = [], []
    for step in range(1500):
        k, t = obj.draw_dropout(8, torch.Generator().manual_seed(step))
        keeps.append(k), texts.append(t)
    keep, text = torch.cat(keeps).float(), torch.cat(texts).float()
    n = keep.shape[0]
    want = {"pose": 0.1 + 0.9 * 0.5, "depth": 0.1 + 0.9 * 0.3, "normal": 0.1 + 0.9 * 0.5}
    for j, c in enumerate(CONDITIONS):
        rate = 1 - float(keep[:, j].mean())
        assert abs(rate - want[c]) < 4 * (want[c] * (1 - want[c]) / n) ** 0.5, (c, rate)
    assert abs(float(text.mean()) - 0.55) < 4 * (0.55 * 0.45 / n) ** 0.5
    all_dropped = float(((keep.sum(1) == 0) & (text == 1)).float().mean())
    expect = 0.1 + 0.9 * 0.5 * 0.3 * 0.5 * 0.5  # the explicit case plus independent coincidences
    assert abs(all_dropped - expect) < 4 * (expect * (1 - expect) / n) ** 0.5
    with pytest.raises(ValueError, match="text_dropout must be a probability"):
        Stage2LossConfig(text_dropout=1.5)


def test_stage2_overfits_a_tiny_set(tiny_zoo, data_root, tmp_path):
    """No dropout, no flips, a fixed crop, one batch: the ε-loss must fall well below its start."""
    cfg = _cfg(max_steps=150, checkpoint_every=1000, ema_decay=None, optim=OptimConfig(lr=2e-3),
               loss=Stage2LossConfig(pose_dropout=0, depth_dropout=0, normal_dropout=0, text_dropout=0, all_dropout=0),
               data=TrainDataConfig(resolution=RES, crop="center", flip_prob=0.0, shuffle_buffer=0,
                                    where="source_index < 2 AND source_shard = 's0'"))
    hist = [h["loss"] for h in train_loop(cfg, str(data_root), str(tmp_path / "run"), "tiny")["history"]]
    first, last = sum(hist[:10]) / 10, sum(hist[-30:]) / 30
    assert last < 0.75 * first, (first, last)
    assert (tmp_path / "run" / "samples" / "step-00000150.png").is_file()
    assert (tmp_path / "run" / "checkpoints" / "step-00000150" / "refiner" / "config.json").is_file()


def test_stage2_sigkill_and_resume_is_step_exact(tiny_zoo, data_root, tmp_path):
    straight = tmp_path / "straight"
    train_loop(_cfg(max_steps=9, checkpoint_every=3), str(data_root), str(straight), "tiny")
    ref = loss_history(straight)
    run = tmp_path / "killed"
    train_and_kill_at(["stage2", "--data", str(data_root), "--models", "tiny", "--max-steps", "9",
                       "--set", "scaling.use_ray=false", "--set", "batch_size=2", "--set", "checkpoint_every=3",
                       "--set", "validate_every=10000", "--set", f"data.resolution={RES}",
                       "--set", "data.shuffle_buffer=8", "--set", "optim.lr=0.001", "--set", "ema_decay=0.99",
                       "--set", "sample_steps=2", "--set", "log_every=3",
                       "--set", "validation_prompts=['a person']"], run, 3, tiny_zoo)
    assert not (run / "history.jsonl").exists() or 9 not in loss_history(run)
    resumed = train_loop(_cfg(max_steps=9, checkpoint_every=3), str(data_root), str(run), "tiny", resume=True)
    steps = [h["step"] for h in resumed["history"]]
    assert steps[0] in (4, 7) and steps[-1] == 9
    for h in resumed["history"]:  # bit-identical to the run that was never interrupted
        assert h["loss"] == ref[h["step"]], (h["step"], h["loss"], ref[h["step"]])
    state = json.loads((run / "checkpoints" / "step-00000009" / "trainer_state.json").read_text())
    assert state["stage"] == "stage2"
    from model.training.loop import Stage1TrainConfig

    with pytest.raises(ValueError, match="holds a stage2 run"):
        train_loop(Stage1TrainConfig(data=TrainDataConfig(resolution=32), scaling=ScalingConfig(use_ray=False),
                                     max_steps=10), str(data_root), str(run), "tiny", resume=True)


def test_stage2_rejects_a_latent_cache_and_bad_config(tmp_path):
    from model.training.loop import load_train_config, run_training

    with pytest.raises(ValueError, match="stage-1"):
        run_training(_cfg(), "unused", str(tmp_path / "r"), "tiny", latents="some/cache")
    with pytest.raises(ValueError, match="conditions must be"):
        load_train_config(None, {"conditions": ["pose", "edges"]}, "stage2")
