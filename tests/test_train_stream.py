"""The trainer's ``data.reader: ray``: each Ray Train worker streams its own share through a Ray
Data pipeline (model.training.data.iter_ray_examples, model.training.loop.DataStream). Its batches are the local
reader's, bit for bit; two workers see disjoint shares whose union is the selection every epoch;
a run stopped at step k and resumed continues with exactly the batches (and losses) of the run
that was never stopped; ranks with unequal file shares cross epochs together."""

from __future__ import annotations

import json
import os
import shutil
import sys
import uuid
from pathlib import Path

import pytest

import humanverse
from humanverse.config import ConfigError
from humanverse.testing.synthetic import synthetic_table
from model.training import data as D
from model.training.loop import DataStream, OptimConfig, ScalingConfig, Stage1TrainConfig, load_train_config, train_loop
from helpers import assert_batches_equal

R = 32


def _write(root: Path, sizes: list[int]) -> Path:
    sink = humanverse.ShardSink.open(root)
    start = 0
    for s, n in enumerate(sizes):
        sink.write(synthetic_table(n, shard=f"s{s}", start=start, seed=s, width=96, height=128), "data", f"s{s}")
        start += n
    sink.close()
    return root


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return _write(tmp_path_factory.mktemp("stream") / "ds", [8, 8, 8, 8])  # 32 rows, 16 per rank of 2


@pytest.fixture(scope="module")
def uneven_root(tmp_path_factory):
    return _write(tmp_path_factory.mktemp("uneven") / "ds", [8, 4, 6])  # rank shares differ by epoch


@pytest.fixture(scope="module")
def trace_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("trace")


@pytest.fixture(scope="module")
def ray_cluster(tiny_zoo, trace_dir):
    """One local Ray for the module (start-up is the slow part); fractional CPUs only (whole CPUs can starve the reader)."""
    ray = pytest.importorskip("ray")
    env = {"HUMANVERSE_TINY_ZOO": str(tiny_zoo), "HF_HUB_OFFLINE": "1", "HV_STREAM_TRACE": str(trace_dir),
           "OMP_NUM_THREADS": "1"}
    temp = f"/tmp/rts-{uuid.uuid4().hex[:6]}"  # short: Ray's socket paths live under it
    for attempt in range(2):  # the raylet can time out at start-up on a loaded 2-core machine
        try:
            ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, _temp_dir=temp,
                     runtime_env={"env_vars": env})
            break
        except Exception:  # noqa: BLE001
            if attempt:
                raise
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


def _cfg(**kw) -> Stage1TrainConfig:
    data = kw.pop("data", {})
    base = dict(data=D.TrainDataConfig(**{"resolution": R, "shuffle_buffer": 8, **data}),
                scaling=ScalingConfig(use_ray=False), batch_size=4, max_steps=8, checkpoint_every=3,
                validate_every=10_000, log_every=4, sample_steps=2, latent_stats_samples=16,
                optim=OptimConfig(lr=2e-3), ema_decay=0.99)
    base.update(kw)
    return Stage1TrainConfig(**base)



def _history(run: Path) -> dict[int, float]:
    return {h["step"]: h["loss"] for h in map(json.loads, (run / "history.jsonl").read_text().splitlines())}


# ---------------------------------------------------------------------------------------------
# Config


@pytest.mark.parametrize("kw, match", [
    ({"reader": "spark"}, "reader must be 'local' .* or 'ray'"),
    ({"ray_num_cpus": 0}, "ray_num_cpus must be a positive number"),
    ({"ray_num_cpus": float("nan")}, "ray_num_cpus must be a positive number"),
    ({"ray_num_cpus": True}, "ray_num_cpus must be a positive number"),
    ({"ray_concurrency": 0}, "ray_concurrency must be a positive integer or None"),
    ({"ray_concurrency": 1.5}, "ray_concurrency must be a positive integer or None"),
])
def test_bad_reader_config_is_one_sentence(kw, match):
    with pytest.raises(ValueError, match=match) as e:
        D.TrainDataConfig(**kw)
    assert "\n" not in str(e.value) and str(e.value).endswith(".")


def test_reader_from_yaml_overrides():
    assert load_train_config(None, {"data.reader": "ray", "data.ray_num_cpus": 0.5}).data.reader == "ray"
    with pytest.raises(ConfigError, match=r"data.reader: 'spark' is not one of \['local', 'ray'\]") as e:
        load_train_config(None, {"data.reader": "spark"})
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="reader must be 'local' or 'ray', got 'dask'"):
        DataStream("unused", None, _cfg(), 0, 1, reader="dask")


# ---------------------------------------------------------------------------------------------
# The reader


@pytest.mark.parametrize("world, ranks, skips", [
    (1, [0], [0, 3, 5]),  # 18 rows: 4 batches of 4; skip into the buffer's final flush
    (2, [0, 1], [0, 1]),  # file-level shards of unequal size
    (5, [0, 4], [0, 1]),  # fewer files than ranks: row striding
])
def test_ray_reader_equals_the_local_reader(uneven_root, ray_cluster, world, ranks, skips):
    """Same batches, bit for bit, for every rank, from the start or from a resume point (random
    crops, flips and a selection included: draws are keyed by the row)."""
    cfg = D.TrainDataConfig(resolution=R, shuffle_buffer=5, seed=4, where="num_persons >= 1")
    for rank in ranks:
        full = list(D.iter_examples(uneven_root, cfg, epoch=1, batch_size=3, rank=rank, world_size=world))
        assert full
        for skip in skips:
            got = list(D.iter_ray_examples(uneven_root, cfg, epoch=1, batch_size=3, rank=rank, world_size=world,
                                           skip_batches=skip))
            assert_batches_equal(got, full[skip:])
    got = list(D.iter_ray_examples(uneven_root, cfg, epoch=1, batch_size=3, rank=ranks[-1], world_size=world,
                                   skip_batches=1, max_batches=2))
    assert_batches_equal(got, full[1:2])


def test_resume_plan_decodes_none_of_the_skipped_rows(uneven_root):
    """The rows the skipped batches held are neither read nor decoded, every other row is, once;
    the selection is evaluated ahead only for the files the resume point reaches."""
    cfg = D.TrainDataConfig(resolution=R, shuffle_buffer=4, seed=1)
    ds = humanverse.open(uneven_root)
    for skip_rows in (0, 4, 8, 12, 18):
        plan = D._rank_plan(ds.root.fs, ds.files("data"), cfg, epoch=0, rank=0, world_size=1, skip_rows=skip_rows)
        skipped = int((~plan.template).sum())
        assert skipped == skip_rows  # exactly the rows the skipped batches hold
        decoded = sum(len(i["rows"]) // 8 for i in plan.items if i["given"])
        assert decoded + skipped == len(plan.template) and len(plan.template) <= skip_rows + 4 + 8  # + a file
    assert plan.items == []  # all 18 rows skipped: no file is opened


def test_unequal_shares_cross_epochs_together(uneven_root, ray_cluster):
    """Files of 8, 4 and 6 rows over 2 ranks: each epoch every rank is cut to the fewest batches,
    so both ranks hold the same (epoch, step_in_epoch) after every step (the position rank 0
    saves is every rank's), with either reader."""
    cfg = _cfg(data={"shuffle_buffer": 3}, batch_size=2)
    counts = D.selected_counts(uneven_root, cfg.data)
    for reader in ("local", "ray"):
        streams = [DataStream(str(uneven_root), None, cfg, r, 2, reader=reader) for r in range(2)]
        for _ in range(7):
            ids = [s.next()["id"] for s in streams]
            assert not set(ids[0]) & set(ids[1])
            assert streams[0].epoch == streams[1].epoch and streams[0].step_in_epoch == streams[1].step_in_epoch
        per_epoch = [min(D.batches_per_rank(uneven_root, cfg.data, epoch=e, world_size=2, batch_size=2,
                                            counts=counts)) for e in range(3)]
        assert per_epoch[0] != max(D.batches_per_rank(uneven_root, cfg.data, epoch=0, world_size=2, batch_size=2))
        e, k = streams[0].epoch, streams[0].step_in_epoch
        assert sum(per_epoch[:e]) + k == 7


# ---------------------------------------------------------------------------------------------
# The trainer


def test_train_loop_with_the_ray_reader_resumes_step_exactly(tiny_zoo, data_root, ray_cluster, tmp_path):
    """One process, Ray Data decoding beside it: stopped at step 5 (mid-epoch: 8 batches per
    epoch) and resumed, with the Ray reader or the local one, the losses are those of the
    uninterrupted local-reader run, bit for bit."""
    train_loop(_cfg(max_steps=11), str(data_root), str(tmp_path / "ref"), "tiny")
    ref = _history(tmp_path / "ref")
    run = tmp_path / "ray"
    train_loop(_cfg(max_steps=5, data={"reader": "ray"}), str(data_root), str(run), "tiny")
    assert json.loads((run / "checkpoints" / "step-00000005" / "trainer_state.json").read_text())[
        "step_in_epoch"] == 5
    assert {s: ref[s] for s in range(1, 6)} == _history(run)
    other = tmp_path / "local-after-ray"
    shutil.copytree(run / "checkpoints" / "step-00000005", other / "checkpoints" / "step-00000005")
    for r, reader in ((run, "ray"), (other, "local")):
        out = train_loop(_cfg(max_steps=11, data={"reader": reader}), str(data_root), str(r), "tiny", resume=True)
        assert [h["step"] for h in out["history"]] == list(range(6, 12))  # crosses into epoch 1
        for h in out["history"]:
            assert h["loss"] == ref[h["step"]], (reader, h["step"])


def _tracing_worker(config: dict) -> None:
    """model.training.loop._ray_worker, recording the ids of every batch the Ray reader hands the loop;
    after a fresh run, also a resume probe: the batches a stream reopened at (epoch 1, batch 2)
    gives on the same worker."""
    import ray.train

    import model.training.loop as T

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    base = Path(os.environ["HV_STREAM_TRACE"]) / Path(config["run"]).name
    plain_next = T.DataStream.next

    def record(name: str, stream, batch) -> None:
        with open(f"{base}-{name}-rank{rank}.jsonl", "a") as f:
            f.write(json.dumps({"epoch": stream.epoch, "step_in_epoch": stream.step_in_epoch,
                                "ids": batch["id"]}) + "\n")

    def next_(self):
        batch = plain_next(self)
        if self.reader == "ray":  # not the rank-0 latent-statistics stream (local reader)
            record("steps", self, batch)
        return batch

    T.DataStream.next = next_
    T._ray_worker(config)
    T.DataStream.next = plain_next
    if not config["resume"]:
        probe = T.DataStream(config["data_root"], None, config["cfg"], rank, world, epoch=1, step_in_epoch=2,
                             reader="ray")
        for _ in range(2):
            record("probe", probe, probe.next())


def _trace(trace_dir: Path, name: str) -> list[dict]:
    return [json.loads(x) for x in (trace_dir / name).read_text().splitlines()]


def _two_worker_cfg() -> Stage1TrainConfig:
    return _cfg(max_steps=8, data={"reader": "ray"},
                scaling=ScalingConfig(use_ray=True, num_workers=2, cpus_per_worker=0.5))


@pytest.fixture(scope="module")
def two_worker_run(tiny_zoo, data_root, ray_cluster, trace_dir, tmp_path_factory):
    """Two Ray Train workers (DDP, gloo), reader ray, 8 steps = 2 epochs of 4 batches per rank."""
    import ray.cloudpickle

    import model.training.loop as T

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the worker wrapper lives here
    mp = pytest.MonkeyPatch()
    mp.setattr(T, "_ray_worker", _tracing_worker)
    run = tmp_path_factory.mktemp("two") / "full"
    try:
        assert T.run_training(_two_worker_cfg(), str(data_root), str(run), "tiny")["step"] == 8
    finally:
        mp.undo()
    return run


def test_two_ray_train_workers_see_disjoint_shares_and_resume_in_place(data_root, two_worker_run, trace_dir):
    """Every epoch the workers' ids are disjoint and together the whole selection, and each
    worker's batches are the local reader's for its rank. A stream reopened on each worker at the
    step-6 position (epoch 1, batch 2) gives exactly the batches of steps 7 and 8."""
    cfg = _two_worker_cfg()
    every = {r["id"] for r in humanverse.open(data_root).to_arrow(columns=["id"]).to_pylist()}
    traces = [_trace(trace_dir, f"full-steps-rank{r}.jsonl") for r in range(2)]
    assert [len(t) for t in traces] == [8, 8]
    for epoch in range(2):
        ids = [[i for b in t if b["epoch"] == epoch for i in b["ids"]] for t in traces]
        assert len(ids[0]) == len(ids[1]) == 16 and not set(ids[0]) & set(ids[1])
        assert set(ids[0]) | set(ids[1]) == every
        for r in range(2):
            local = D.iter_examples(data_root, cfg.data, epoch=epoch, batch_size=4, rank=r, world_size=2)
            assert ids[r] == [i for b in local for i in b["id"]]
    for r in range(2):
        assert traces[r][5]["epoch"] == 1 and traces[r][5]["step_in_epoch"] == 2  # what step 6 checkpoints
        assert _trace(trace_dir, f"full-probe-rank{r}.jsonl") == traces[r][6:]


@pytest.mark.slow
def test_two_ray_train_workers_resume_step_exactly(data_root, two_worker_run, trace_dir, tmp_path, monkeypatch):
    """Resumed with Ray Train from the step-6 checkpoint alone (as if killed after step 6), both
    workers continue with exactly the batches, and rank 0 with exactly the losses, of the run that
    was never stopped."""
    import model.training.loop as T

    monkeypatch.setattr(T, "_ray_worker", _tracing_worker)
    resumed = tmp_path / "resumed"
    ck = "checkpoints/step-00000006"
    shutil.copytree(two_worker_run / ck, resumed / ck)
    assert T.run_training(_two_worker_cfg(), str(data_root), str(resumed), "tiny", resume=True)["step"] == 8
    for r in range(2):
        assert _trace(trace_dir, f"resumed-steps-rank{r}.jsonl") == _trace(trace_dir, f"full-steps-rank{r}.jsonl")[6:]
    full, again = _history(two_worker_run), _history(resumed)
    assert sorted(again) == [7, 8]
    assert all(again[s] == full[s] for s in again), (again, full)
