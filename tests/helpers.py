"""Helpers shared by several test modules (``tests/`` is on ``sys.path`` while pytest runs)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def tiny_zoo_env(root):
    """``HUMANVERSE_TINY_ZOO`` points at ``root`` inside the block, so that ``resolve(name, "tiny")``
    (also in Ray workers and subprocesses started meanwhile) finds the tiny models there."""
    old = os.environ.get("HUMANVERSE_TINY_ZOO")
    os.environ["HUMANVERSE_TINY_ZOO"] = str(root)
    try:
        yield root
    finally:
        if old is None:
            os.environ.pop("HUMANVERSE_TINY_ZOO", None)
        else:
            os.environ["HUMANVERSE_TINY_ZOO"] = old


def assert_batches_equal(a: list[dict], b: list[dict]) -> None:
    """Two lists of collated batches hold the same keys, tensors and values, in order."""
    import torch

    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            if isinstance(x[k], torch.Tensor):
                assert torch.equal(x[k], y[k]), k
            else:
                assert x[k] == y[k], k


def loss_history(run: Path) -> dict[int, float]:
    """step -> loss of a training run's ``history.jsonl``."""
    return {h["step"]: h["loss"] for h in map(json.loads, (Path(run) / "history.jsonl").read_text().splitlines())}


def train_and_kill_at(argv: list[str], run: Path, step: int, tiny_zoo: Path, timeout: float = 300) -> None:
    """Run ``humanverse train ARGV --out RUN`` in its own process group and SIGKILL the group as
    soon as checkpoint ``step`` is complete (a crash at an arbitrary point after it)."""
    cmd = [sys.executable, "-m", "humanverse.cli", "train", *argv, "--out", str(run)]
    env = {**os.environ, "HUMANVERSE_TINY_ZOO": str(tiny_zoo)}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.time() + timeout
    while not (Path(run) / "checkpoints" / f"step-{step:08d}" / "COMPLETE").exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@contextlib.contextmanager
def local_ray(env_vars: dict | None = None, num_cpus: int = 2):
    """A local Ray cluster of ``num_cpus`` logical CPUs for the block, without progress bars; shut down
    after it. The raylet can time out at start-up on a loaded 2-core machine: one retry."""
    import uuid

    import ray
    from ray.data import DataContext

    temp = f"/tmp/rt-{uuid.uuid4().hex[:6]}"  # short: Ray's socket paths live under it
    for attempt in range(2):
        try:
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                     _temp_dir=temp, runtime_env={"env_vars": env_vars} if env_vars else None)
            break
        except Exception:  # noqa: BLE001
            if attempt:
                raise
    DataContext.get_current().enable_progress_bars = False
    try:
        yield ray
    finally:
        ray.shutdown()
