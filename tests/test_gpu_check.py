"""bench/gpu_check.py at reduced size on the CPU: the same code a GPU machine runs at full size.

The numbers mean nothing here (shrunk configs, a shared CPU); the test proves every section builds
its model from the real configuration data, runs, and reports in the one JSON object.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

STAGES = {"detect", "pose", "depth", "normal", "aesthetic", "caption", "outpaint"}


def _gpu_check():
    path = Path(__file__).resolve().parent.parent / "bench" / "gpu_check.py"
    spec = importlib.util.spec_from_file_location("gpu_check", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(capsys, *args: str) -> dict:
    report = _gpu_check().main(["--reduced", *args])
    printed = json.loads(capsys.readouterr().out)  # exactly one JSON object on stdout
    assert printed == json.loads(json.dumps(report))
    assert report["reduced"] and report["device"] == "cpu" and "REDUCED" in report["note"]
    assert report["errors"] == {} and report["skipped"] == []
    return report


def test_reduced_check_builds_every_builder_model_and_keeps_the_sd2_identity(capsys):
    report = _run(capsys, "--only", "identity,stages")
    assert set(report["stages"]) == STAGES
    for name, stage in report["stages"].items():
        assert stage["images_per_s"] > 0 and stage["params"] > 0 and stage["batch"] >= 1, name
    checks = report["checks"]
    assert checks["lsdm_sd2_identity_ok"] and checks["lsdm_sd2_identity_max_abs_diff"] < 1e-4
    assert all(checks["finite_outputs"].values()) and STAGES <= set(checks["finite_outputs"])


@pytest.mark.slow
def test_reduced_check_runs_every_section(capsys):
    report = _run(capsys)
    for section in ("train_stage1", "train_stage2"):
        step = report[section]
        assert step["step_s"] > 0 and step["tflop_per_step"] >= 0 and step["trainable_params"] > 0, section
    assert report["sample_stage1"]["s_per_image"] > 0
    assert all(report["checks"]["finite_outputs"].values())


def test_preset_batches_come_from_the_gpu_preset():
    batches = _gpu_check().preset_batches()
    assert {"detect", "pose", "depth", "normal", "aesthetic", "caption", "outpaint"} <= set(batches)
    assert all(b >= 1 for b in batches.values())
