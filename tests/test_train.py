"""The stage-1 trainer on a small synthetic HumanVerse dataset with the tiny zoo: it learns, it
resumes step-exactly after a SIGKILL, its dropout rates are right, and a two-worker Ray Train run
completes with loadable checkpoints."""

from __future__ import annotations

import json
import os

import pytest
import torch

import humanverse
from humanverse.testing.synthetic import synthetic_table
from model.training.data import TrainDataConfig
from model.training.stage1 import Stage1LossConfig, Stage1Objective
from model.training.loop import OptimConfig, ScalingConfig, Stage1TrainConfig, train_loop
from helpers import loss_history, train_and_kill_at



@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("s1") / "ds"
    sink = humanverse.ShardSink.open(root)
    for s in range(4):  # 4 files of 8 rows: 32 rows
        sink.write(synthetic_table(8, shard=f"s{s}", seed=s, width=96, height=128), "data", f"s{s}")
    sink.close()
    return root


def _cfg(**kw) -> Stage1TrainConfig:
    base = dict(data=TrainDataConfig(resolution=32, shuffle_buffer=8), scaling=ScalingConfig(use_ray=False),
                batch_size=4, max_steps=8, checkpoint_every=4, validate_every=10_000, log_every=4,
                sample_steps=2, latent_stats_samples=16, optim=OptimConfig(lr=2e-3), ema_decay=0.99)
    base.update(kw)
    return Stage1TrainConfig(**base)


def test_dropout_rates_over_many_steps(tiny_zoo):
    """Independent text/pose drops plus the explicit all-dropped case: the marginal rates are
    a + (1 - a) p_text, a + (1 - a) p_pose and a + (1 - a) p_text p_pose over many draws."""
    obj = Stage1Objective.__new__(Stage1Objective)  # only the dropout draw is exercised here
    for a in (0.0, 0.1):
        obj.cfg = Stage1LossConfig(text_dropout=0.15, pose_dropout=0.3, all_dropout=a)
        texts, poses, both = [], [], []
        for step in range(2000):
            t, p = obj.draw_dropout(8, torch.Generator().manual_seed(step))
            texts.append(t.float().mean()), poses.append(p.float().mean()), both.append((t & p).float().mean())
        n = 2000 * 8
        for got, want in ((texts, a + (1 - a) * 0.15), (poses, a + (1 - a) * 0.3), (both, a + (1 - a) * 0.045)):
            rate = float(torch.stack(got).mean())
            assert abs(rate - want) < 4 * (want * (1 - want) / n) ** 0.5, (a, rate, want)
    with pytest.raises(ValueError, match="all_dropout"):
        Stage1LossConfig(all_dropout=1.5)


def test_overfits_a_small_set(tiny_zoo, data_root, tmp_path):
    """No dropout, no flips, a fixed crop: the summed v-loss must fall well below its start."""
    cfg = _cfg(max_steps=300, checkpoint_every=1000, loss=Stage1LossConfig(text_dropout=0.0, pose_dropout=0.0),
               data=TrainDataConfig(resolution=32, crop="center", flip_prob=0.0, shuffle_buffer=8), ema_decay=None,
               optim=OptimConfig(lr=3e-3))
    hist = [h["loss"] for h in train_loop(cfg, str(data_root), str(tmp_path / "run"), "tiny")["history"]]
    first, last = sum(hist[:20]) / 20, sum(hist[-50:]) / 50  # v-losses at random t are noisy: average
    assert last < 0.75 * first, (first, last)  # measured: ~1.0 -> ~0.65 (tiny model, 32 px)
    grid = tmp_path / "run" / "samples" / "step-00000300.png"
    assert grid.is_file()  # the validation grid of the last step (RGB | depth | normal | pose)
    assert (tmp_path / "run" / "tensorboard").is_dir()


def test_sigkill_and_resume_is_step_exact(tiny_zoo, data_root, tmp_path):
    straight = tmp_path / "straight"
    train_loop(_cfg(max_steps=12, checkpoint_every=3), str(data_root), str(straight), "tiny")
    ref = loss_history(straight)
    run = tmp_path / "killed"
    train_and_kill_at(["stage1", "--data", str(data_root), "--models", "tiny", "--max-steps", "12",
                       "--set", "scaling.use_ray=false", "--set", "batch_size=4", "--set", "checkpoint_every=3",
                       "--set", "validate_every=10000", "--set", "latent_stats_samples=16",
                       "--set", "data.resolution=32", "--set", "data.shuffle_buffer=8", "--set", "optim.lr=0.002",
                       "--set", "ema_decay=0.99", "--set", "sample_steps=2", "--set", "log_every=4"],
                      run, 6, tiny_zoo)
    assert not (run / "history.jsonl").exists() or 12 not in loss_history(run)
    resumed = train_loop(_cfg(max_steps=12, checkpoint_every=3), str(data_root), str(run), "tiny", resume=True)
    steps = [h["step"] for h in resumed["history"]]
    assert steps[0] in (7, 10) and steps[-1] == 12
    for h in resumed["history"]:  # bit-identical to the run that was never interrupted
        assert h["loss"] == ref[h["step"]], (h["step"], h["loss"], ref[h["step"]])


def test_two_worker_ray_train_run_and_checkpoint_loads(tiny_zoo, data_root, tmp_path):
    import ray

    from model.models.lsdm import LatentStructuralUNet
    from model.training.loop import run_training

    cfg = _cfg(max_steps=4, checkpoint_every=2, scaling=ScalingConfig(use_ray=True, num_workers=2, cpus_per_worker=0.5))
    ray.init(address="local", num_cpus=2, include_dashboard=False, _temp_dir=f"/tmp/rt-{os.getpid()}",
             runtime_env={"env_vars": {"HUMANVERSE_TINY_ZOO": str(tiny_zoo), "HF_HUB_OFFLINE": "1"}})
    try:
        metrics = run_training(cfg, str(data_root), str(tmp_path / "run"), "tiny")
    finally:
        ray.shutdown()
    assert metrics["step"] == 4
    ck = tmp_path / "run" / "checkpoints" / "step-00000004"
    assert (ck / "COMPLETE").is_file() and json.loads((ck / "trainer_state.json").read_text())["world_size"] == 2
    unet = LatentStructuralUNet.from_pretrained(ck / "lsdm")
    assert sum(p.numel() for p in unet.parameters()) > 0


def test_training_from_the_latent_cache(tiny_zoo, data_root, tmp_path):
    from model.training.latents import LatentCacheConfig, StaleCacheError, build_latent_cache

    cache = tmp_path / "latents"
    build_latent_cache(str(data_root), str(cache), LatentCacheConfig(resolution=32, batch_size=8), models="tiny",
                       use_ray=False)
    from model.training.loop import run_training

    out = run_training(_cfg(max_steps=3, checkpoint_every=3), str(data_root), str(tmp_path / "run"), "tiny",
                       latents=str(cache))
    assert [h["step"] for h in out["history"]] == [1, 2, 3]
    assert all(h["loss"] == h["loss"] and h["loss"] > 0 for h in out["history"])  # finite
    with pytest.raises(StaleCacheError, match="resolution"):  # a cache built at another size is refused
        run_training(_cfg(max_steps=1, data=TrainDataConfig(resolution=64)), str(data_root),
                     str(tmp_path / "run2"), "tiny", latents=str(cache))


def test_latent_cache_ranks_cross_epochs_together(tiny_zoo, tmp_path):
    """Uneven cache files: with two ranks, both epochs end at the same step (rank 0's saved position
    is every rank's), at the fewest batches any rank has."""
    from model.training.data import split_counts
    from model.training.latents import LatentCacheConfig, build_latent_cache, cache_counts
    from model.training.loop import DataStream

    root = tmp_path / "ds"
    sink = humanverse.ShardSink.open(root)
    for s, n in enumerate((12, 4, 4)):
        sink.write(synthetic_table(n, shard=f"u{s}", seed=20 + s, width=64, height=64), "data", f"u{s}")
    sink.close()
    cache = tmp_path / "latents"
    build_latent_cache(str(root), str(cache), LatentCacheConfig(resolution=32, batch_size=8, files_per_chunk=1),
                       models="tiny", use_ray=False)
    counts = cache_counts(str(cache))
    assert sum(counts.values()) == 20
    cfg = _cfg(batch_size=2)
    for epoch in (0, 1):
        rows = split_counts(counts, seed=cfg.data.seed, epoch=epoch, world_size=2)
        steps = []
        for rank in (0, 1):
            st = DataStream(str(root), str(cache), cfg, rank, 2, epoch=epoch)
            n = 0
            while st.epoch == epoch:
                st.next()
                n += 1
            steps.append(n - 1)  # the last call opened the next epoch
        assert steps[0] == steps[1] == min(rows) // 2, (rows, steps)


@pytest.mark.parametrize("damage", ["optimizer.pt", "lsdm", "trainer_state.json"])
def test_resume_falls_back_past_a_damaged_newest_checkpoint(tiny_zoo, data_root, tmp_path, damage, caplog):
    """A truncated optimizer state, weights file or trainer state in the newest checkpoint: --resume
    warns, naming the file, and continues from the previous checkpoint, step-exact."""
    run = tmp_path / "run"
    train_loop(_cfg(max_steps=6, checkpoint_every=3), str(data_root), str(run), "tiny")
    newest = run / "checkpoints" / "step-00000006"
    target = next(p for p in sorted(newest.rglob("*")) if p.is_file() and (p.name == damage or p.parent.name == damage)
                  and p.suffix in (".pt", ".safetensors", ".json"))
    target.write_bytes(target.read_bytes()[: max(1, target.stat().st_size // 2)])
    ref = train_loop(_cfg(max_steps=9, checkpoint_every=3), str(data_root), str(tmp_path / "again"), "tiny")
    resumed = train_loop(_cfg(max_steps=9, checkpoint_every=3), str(data_root), str(run), "tiny", resume=True)
    assert "step-00000006 is damaged" in caplog.text and target.name in caplog.text
    assert [h["step"] for h in resumed["history"]][0] == 4  # from step 3, the previous checkpoint
    want = {h["step"]: h["loss"] for h in ref["history"]}
    for h in resumed["history"]:
        assert h["loss"] == want[h["step"]]


def test_ablation_layout_trains_and_records_its_conditioning(tiny_zoo, data_root, tmp_path):
    """A Table-2 ablation (half-block experts, RGB + depth) trains, validates (samples) and records
    what it was trained on beside every checkpoint; the sampler would refuse another pose style."""
    from model.training.stage1 import LSDMLayout

    run = tmp_path / "abl"
    cfg = _cfg(max_steps=2, checkpoint_every=2, validate_every=2, lsdm=LSDMLayout("half", ("rgb", "depth")),
               loss=Stage1LossConfig(all_dropout=0.5))
    out = train_loop(cfg, str(data_root), str(run), "tiny")
    h = out["history"][-1]
    assert h["normal"] == 0.0 and h["rgb"] > 0 and h["depth"] > 0 and "all_dropped" in h
    rec = json.loads((run / "checkpoints" / "step-00000002" / "conditioning.json").read_text())
    assert rec == {"stage": "stage1", "pose_style": "humansd", "skeleton_threshold": 0.3, "depth": "midas",
                   "all_dropout": 0.5, "expert_depth": "half", "modalities": ["rgb", "depth"]}
    assert json.loads((run / "conditioning.json").read_text()) == rec
    assert (run / "samples" / "step-00000002.png").is_file()
