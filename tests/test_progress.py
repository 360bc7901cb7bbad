"""The one progress display and the quiet-by-default output (humanverse.progress), and the build's
progress line, end-of-build report and GPU-less default."""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import pty
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from humanverse import progress
from humanverse.progress import NoiseFilter, Progress, format_duration, keep_worker_line

REPO = Path(__file__).resolve().parents[1]
OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "YOLO_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1",
           "RAY_USAGE_STATS_ENABLED": "0", "TOKENIZERS_PARALLELISM": "false"}


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def quiet():
    before = progress.verbose()
    progress.set_verbose(False)
    yield
    progress.set_verbose(before)


def test_format_duration():
    assert format_duration(0) == "0:00"
    assert format_duration(75) == "1:15"
    assert format_duration(3725) == "1:02:05"
    assert format_duration(None) == format_duration(float("inf")) == format_duration(-1) == "?"


def test_log_mode_rate_eta_counts_and_final_line(caplog):
    clock = Clock()
    logger = logging.getLogger("test.progress")
    caplog.set_level(logging.INFO, logger="test.progress")
    p = Progress("build", total=100, unit="rows", counts=("accepted", "rejected"), interval=10, stream=io.StringIO(),
                 logger=logger, clock=clock)
    assert p.mode == "log"  # not a terminal
    clock.t = 5
    p.update(done=10, accepted=6, rejected=4)
    assert not caplog.records  # at most one line per interval
    clock.t = 10
    p.update(done=20, accepted=12, rejected=8)
    assert caplog.messages == ["build: 20/100 rows (20%), 12 accepted, 8 rejected, 2 rows/s, elapsed 0:10, ETA 0:40"]
    clock.t = 12
    p.update(advance=500)  # clipped to the total
    assert p.done == 100
    clock.t = 50
    final = p.close()
    assert final == "build: 100/100 rows (100%), 12 accepted, 8 rejected, 2 rows/s, in 0:50"
    assert caplog.messages[-1] == final
    p.update(done=1)  # after close: ignored
    assert p.done == 100 and p.close() == final


def test_eta_unknown_until_something_is_done_and_slow_rates():
    clock = Clock()
    p = Progress("train", total=10, unit="steps", stream=io.StringIO(), mode="log", clock=clock)
    clock.t = 30
    assert p.eta() is None and "ETA ?" in p.line()
    p.update(done=1)
    assert p.eta() == pytest.approx(270) and "30 s/step" in p.line()
    resumed = Progress("train", total=10, unit="steps", initial=8, stream=io.StringIO(), mode="log", clock=clock)
    clock.t = 40
    resumed.update(done=9)  # the rate counts this run's steps only
    assert resumed.eta() == pytest.approx(10)
    with pytest.raises(ValueError, match="progress mode"):
        Progress("x", 1, mode="fancy")


def test_tty_mode_draws_one_line_in_place():
    class Term(io.StringIO):
        def isatty(self):
            return True

    term = Term()
    p = Progress("build", total=4, unit="rows", counts=("accepted",), stream=term)
    assert p.mode == "tty"
    for i in range(1, 5):
        p.update(done=i, accepted=i)
    p.close()
    text = term.getvalue()
    assert "\r" in text and text.count("\n") <= 1  # redrawn in place, one line kept at the end
    assert "build: 4/4 rows 100%" in text and "4 accepted" in text


def test_tty_line_is_redrawn_at_most_five_times_a_second():
    """A fast loop (a training step, a block of rows) must not pay a terminal redraw per update."""
    class Term(io.StringIO):
        def isatty(self):
            return True

    now = [0.0]
    p = Progress("train", total=10_000, unit="steps", stream=Term(), mode="tty", clock=lambda: now[0])
    draws = []
    real = p._draw
    p._draw = lambda: (draws.append(p.done), real())
    for i in range(1, 10_001):
        now[0] += 0.001  # 1 ms a step: 10 s in all
        p.update(done=i)
    assert 45 <= len(draws) <= 51  # every 0.2 s
    p.close()
    assert draws[-1] == 10_000  # the final state is drawn


def test_poller_reads_elsewhere_work_into_one_display(caplog):
    """The driver's view of work done elsewhere: reads every ``every`` s, a failing read is skipped,
    one last read and the final line at the end."""
    from humanverse.progress import Poller

    caplog.set_level(logging.INFO, logger="test.poller")
    state = {"n": 0}

    def read():
        state["n"] += 1
        if state["n"] == 2:
            raise ConnectionError("the tally is busy")
        return {"done": min(state["n"], 5), "accepted": state["n"]}

    show = Progress("job", total=5, unit="rows", counts=("accepted",), stream=io.StringIO(),
                    logger=logging.getLogger("test.poller"))
    with Poller(show, read, every=0.01):
        deadline = time.time() + 10
        while state["n"] < 6 and time.time() < deadline:
            time.sleep(0.01)
    assert show.done == 5 and caplog.messages[-1].startswith("job: 5/5 rows (100%), ")
    assert sum("job: " in m for m in caplog.messages) == 1  # the log mode's interval (10 s) was not reached


def test_noise_filter_and_worker_lines(quiet):
    def rec(name, level, msg):
        return logging.LogRecord(name, level, __file__, 1, msg, None, None)

    f = NoiseFilter()
    assert not f.filter(rec("ray._private.worker", logging.INFO, "Started a local Ray instance."))
    assert not f.filter(rec("ray._private.authentication.authentication_token_setup", logging.WARNING,
                            "Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled"))
    assert not f.filter(rec("ray.data._internal.issue_detection.issue_detector_manager", logging.WARNING,
                            "\n\nOperator 'MapBatches(PersonDetector)' uses 632.3MiB of memory per\nworker on average"))
    assert f.filter(rec("ray.data", logging.WARNING, "Cluster resources are not enough to run any task"))
    assert f.filter(rec("pipelines.build", logging.INFO, "build finished"))
    for noise in ("Loading weights: 100%|██████████| 51/51 [00:00<00:00, 15036.52it/s]",
                  "Loading pipeline components...:  40%|████      | 2/5 [00:00<00:00, 18.60it/s]",
                  "05:12:01 INFO pipelines.stages.depth: depth: midas backend",
                  "INFO:pipelines.stages.aesthetic:aesthetic: tiny:clip-vit-l14",
                  "2026-12-07 05:11:21,371\tINFO streaming_executor.py:215 -- Starting execution",
                  "WARNING: 8 PYTHON worker processes have been started on node: 18577ca with address: 192.0.2.2",
                  "Reporting training result 3: TrainingReport(...) from rank 0", "", "\x1b[A"):
        assert not keep_worker_line(noise), noise
    assert not keep_worker_line("Traceback (most recent call last):", actor="PlacementGroupCleaner")
    assert not keep_worker_line("Requesting resources: {'CPU': 0.5} * 1", actor="TrainController")
    assert keep_worker_line("Training failed: worker group crashed", actor="TrainController")
    assert not keep_worker_line("[2026-12-07 05:51:07,906 E 1101 1233] core_worker.cc:2465: Actor with class name: "
                                "'PreemptionWatcher' and ID: 'e4' has constructor arguments in the object store and "
                                "max_restarts > 0.")
    assert keep_worker_line("stage1 step 2 validation loss 1.3020")  # a Train worker's record (no level shown)
    for kept in ("05:12:01 WARNING pipelines.build: source shard x failed while being read",
                 "Traceback (most recent call last):", "ValueError: bad image", "a print from a stage"):
        assert keep_worker_line(kept), kept
    progress.set_verbose(True)
    assert keep_worker_line("Loading weights: 100%|█| 5/5") and f.filter(rec("ray", logging.INFO, "x"))


def test_verbose_on_every_command():
    import argparse

    from humanverse.cli import build_parser

    p = build_parser()
    assert p.parse_args(["--verbose", "stats", "r"]).verbose is True
    assert p.parse_args(["stats", "r", "--verbose"]).verbose is True
    assert p.parse_args(["stats", "r"]).verbose is False
    sub = next(a for a in p._actions if isinstance(a, argparse._SubParsersAction))
    parsers = dict(sub.choices)
    for name in ("zoo", "testset"):  # and their sub-commands
        inner = next(a for a in parsers[name]._actions if isinstance(a, argparse._SubParsersAction))
        parsers.update({f"{name} {k}": v for k, v in inner.choices.items()})
    missing = [name for name, sp in parsers.items() if "--verbose" not in sp.format_help()]
    assert not missing, missing


def test_cpu_layout_fits_the_cluster():
    from pipelines.build import cpu_layout, cpu_shortfall, default_layout, load_config
    from pipelines.config import PRESETS
    from pipelines.steps import plan_steps

    cfg = load_config(None)
    assert default_layout(cfg) and not default_layout(load_config(PRESETS / "cpu.yaml"))
    assert not default_layout(load_config(None, {"resources.detect.num_gpus": 0.5}))
    for cpus in (2, 4, 64):
        cpu = cpu_layout(cfg, "tiny", None, cpus)
        steps = plan_steps(cpu, "tiny", None)
        assert all(step.num_gpus == 0 for step in steps)
        assert cpu_shortfall(cpu, steps, cpus) is None, cpus
        assert {k: v for k, v in vars(cpu).items() if k != "resources"} == \
            {k: v for k, v in vars(cfg).items() if k != "resources"}  # only the resources change
    preset = load_config(PRESETS / "cpu.yaml").resources
    assert cpu_layout(cfg, "tiny", None, 64).resources == preset  # room enough: the preset as it is
    assert cpu_layout(cfg, "tiny", None, 2).resources.detect.num_cpus < preset.detect.num_cpus


# -- whole builds (slow): the demo input on a terminal and in a log, a rerun, no GPUs ---------------


def _build_argv(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "humanverse.cli", "build", str(REPO / "pipelines" / "sample_images"), str(out),
            "--models", "tiny", *extra]


def _run_on_a_terminal(argv: list[str], env: dict, timeout: float = 600) -> str:
    """Run ``argv`` with a pseudo-terminal as stdout and stderr: what a user sees."""
    import fcntl
    import struct
    import termios

    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))  # a 120 x 40 terminal
    proc = subprocess.Popen(argv, stdout=slave, stderr=slave, stdin=subprocess.DEVNULL, env=env, cwd=REPO,
                            start_new_session=True)
    os.close(slave)
    chunks, deadline = [], time.time() + timeout
    while time.time() < deadline:
        try:
            data = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=max(deadline - time.time(), 1))
    os.close(master)
    return b"".join(chunks).decode(errors="replace")


@pytest.mark.slow
def test_demo_build_on_a_terminal_and_in_a_log(tmp_path, tiny_zoo):
    env = {**os.environ, **OFFLINE, "HUMANVERSE_TINY_ZOO": str(tiny_zoo)}
    env.pop("HUMANVERSE_VERBOSE", None)
    demo = str(REPO / "pipelines" / "presets" / "demo.yaml")

    screen = _run_on_a_terminal(_build_argv(tmp_path / "tty", "--config", demo), env)
    screen = re.sub(r"\x1b\[[0-9;]*m", "", screen)  # colour codes (Ray resets the colour at exit)
    lines = screen.replace("\r\n", "\n").split("\n")
    # one live line redrawn in place (\r), with the run's total and an ETA
    live = [ln for ln in lines if "\r" in ln]
    assert live and all(ln.count("build: ") >= 1 for ln in live), screen[-3000:]
    assert re.search(r"build: \d+/42 rows .*\| \d+ read, \d+ accepted, \d+ rejected, .* ETA ", screen), screen[-3000:]
    assert "Reject funnel" in screen and screen.rstrip().splitlines()[-1].startswith("config (")
    assert len([ln for ln in lines if ln.strip()]) < 40, screen
    for noise in ("Token authentication", "Loading weights", "issue_detector", "UserWarning", "PYTHON worker",
                  "config.detect"):
        assert noise not in screen, noise

    out = subprocess.run(_build_argv(tmp_path / "log", "--config", demo), env=env, capture_output=True, text=True,
                         timeout=600, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    text = out.stdout + out.stderr
    assert "\r" not in text
    assert re.search(r"INFO pipelines.build: build: 42/42 rows \(100%\), 42 read, 21 accepted, 21 rejected, .* in ",
                     text), text
    assert len(text.strip().splitlines()) < 40, text
    assert "Reject funnel" in out.stdout and "Manifest" not in out.stdout

    t0 = time.perf_counter()  # a rerun with nothing to do: no Ray, no model
    again = subprocess.run(_build_argv(tmp_path / "log", "--config", demo), env=env, capture_output=True, text=True,
                           timeout=120, cwd=REPO)
    took = time.perf_counter() - t0
    assert again.returncode == 0 and "0 to do" in again.stderr
    assert took < 10, took  # < 5 s on an idle machine (README); slack for a loaded CI box


@pytest.mark.slow
def test_build_without_gpus_uses_cpus_by_itself(tmp_path, tiny_zoo, caplog):
    """No --config on a cluster without GPUs: the CPU layout, said in one line, and the build runs."""
    sys.path.insert(0, str(Path(__file__).parent))
    from fixtures_sources import image_bytes
    from pipelines.build import build, load_config

    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        (src / f"{i}.jpg").write_bytes(image_bytes(i))
    env = {**os.environ, **OFFLINE, "HUMANVERSE_TINY_ZOO": str(tiny_zoo)}
    out = subprocess.run([sys.executable, "-m", "humanverse.cli", "build", str(src), str(tmp_path / "out"),
                          "--models", "tiny"], env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    said = [ln for ln in out.stderr.splitlines() if "has no GPU" in ln]
    assert len(said) == 1 and "presets/cpu.yaml" in said[0], out.stderr
    assert re.search(r"source rows\s+3\s", out.stdout), out.stdout
    import json

    recorded = json.loads((tmp_path / "out" / "humanverse.json").read_text())["config"]["resources"]
    assert recorded["detect"]["num_gpus"] == 0  # the manifest records the layout that ran
    assert load_config(None).resources.detect.num_gpus > 0 and callable(build)


# -- training you can watch: validation loss, reporters, readable grids -----------------------------


@pytest.fixture(scope="module")
def train_root(tmp_path_factory):
    import humanverse
    from humanverse.testing.synthetic import synthetic_table

    root = tmp_path_factory.mktemp("watch") / "ds"
    sink = humanverse.ShardSink.open(root)
    for s in range(2):
        sink.write(synthetic_table(8, shard=f"s{s}", seed=s, width=96, height=128), "data", f"s{s}")
    sink.close()
    return root


def test_report_to_is_checked_before_anything_runs(tmp_path, caplog):
    from humanverse.cli import main as cli_main
    from model.training.report import parse_report_to

    assert parse_report_to("none") == () and parse_report_to("tensorboard, wandb") == ("tensorboard", "wandb")
    with pytest.raises(ValueError, match="is not a list of"):
        parse_report_to("comet")
    with pytest.raises(ValueError, match="cannot be combined"):
        parse_report_to("none,wandb")
    import importlib.util

    if importlib.util.find_spec("mlflow") is None:
        t0 = time.perf_counter()
        code = cli_main(["train", "stage1", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "run"),
                         "--report-to", "mlflow"])
        assert code == 2 and "pip install mlflow" in caplog.text
        assert time.perf_counter() - t0 < 5 and not (tmp_path / "run").exists()


def test_validation_loss_reporters_and_a_readable_grid(tiny_zoo, train_root, tmp_path, monkeypatch):
    """val/* on a fixed batch every validate_every steps, to TensorBoard and W&B (offline), and a
    validation grid with labelled columns and the prompts, tiles of at least 256 px."""
    pytest.importorskip("wandb")
    from PIL import Image
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from model.training.data import TrainDataConfig
    from model.training.loop import ScalingConfig, Stage1TrainConfig, train_loop

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    cfg = Stage1TrainConfig(data=TrainDataConfig(resolution=32, shuffle_buffer=8), scaling=ScalingConfig(use_ray=False),
                            batch_size=4, max_steps=4, checkpoint_every=4, validate_every=2, log_every=2,
                            sample_steps=2, latent_stats_samples=8, ema_decay=None,
                            report_to=("tensorboard", "wandb"))
    run = tmp_path / "run"
    out = train_loop(cfg, str(train_root), str(run), "tiny")
    vals = {h["step"]: h["val_loss"] for h in out["history"] if "val_loss" in h}
    assert sorted(vals) == [2, 4] and all(v > 0 for v in vals.values())

    acc = EventAccumulator(str(run / "tensorboard"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"val/loss", "val/rgb", "val/depth", "val/normal", "train/loss"} <= set(tags), tags
    assert [e.step for e in acc.Scalars("val/loss")] == [2, 4]
    assert [e.value for e in acc.Scalars("val/loss")] == pytest.approx([vals[2], vals[4]])
    assert acc.Tags()["images"] == ["validation"]

    (record,) = (run / "wandb").glob("offline-run-*/run-*.wandb")  # the offline run's record log
    assert b"val/loss" in record.read_bytes() and b"train/loss" in record.read_bytes()
    assert len(list(record.parent.glob("files/media/images/validation_*.png"))) == 2

    grid = Image.open(run / "samples" / "step-00000004.png")
    n = len(cfg.validation_prompts)
    assert grid.width >= 4 * 256 and grid.height >= n * 256 + 40, grid.size  # 32-px samples scaled up
    with (run / "history.jsonl").open() as f:
        assert any("val_loss" in json.loads(line) for line in f)


def test_train_checks_its_inputs_and_work_first(tiny_zoo, train_root, tmp_path, caplog):
    """A missing dataset is one sentence, and --resume of a run at max_steps ends at once (no Ray, no model)."""
    from humanverse.cli import main as cli_main
    from model.training.data import TrainDataConfig
    from model.training.loop import ScalingConfig, Stage1TrainConfig, run_training

    assert cli_main(["train", "stage1", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r0"),
                     "--models", "tiny"]) == 2
    assert not (tmp_path / "r0").exists()
    cfg = Stage1TrainConfig(data=TrainDataConfig(resolution=32, shuffle_buffer=8), scaling=ScalingConfig(use_ray=False),
                            batch_size=4, max_steps=2, checkpoint_every=2, validate_every=10, log_every=2,
                            sample_steps=1, latent_stats_samples=8, ema_decay=None, report_to=())
    run = tmp_path / "run"
    run_training(cfg, str(train_root), str(run), "tiny")
    caplog.clear()
    t0 = time.perf_counter()
    out = run_training(dataclasses.replace(cfg, scaling=ScalingConfig(use_ray=True)), str(train_root), str(run),
                       "tiny", resume=True)
    assert out == {"step": 2, "trained": 0} and time.perf_counter() - t0 < 5
    assert "nothing to train" in caplog.text
