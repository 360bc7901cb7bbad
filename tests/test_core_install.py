"""Packaging that matches the rooms: the core (``pip install humanverse``, no extras) reads a
HumanVerse dataset without torch, Ray, diffusers or transformers installed.

Slow (a fresh virtual environment and a wheel build, ~25 s): run by ``make test-core`` (CI).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import humanverse
from humanverse.testing.synthetic import synthetic_table

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_core_install_queries_a_dataset_without_torch_or_ray(tmp_path):
    data = tmp_path / "ds"
    sink = humanverse.ShardSink.open(data, manifest={})
    sink.write(synthetic_table(5, shard="a"), "data", "a")
    sink.close()

    # a copy of the sources: building the wheel in place would leave build/ in the checkout
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv", "out", "build", "*.egg-info",
                                                             "__pycache__", ".pytest_cache", "docs", "tests"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py, exe = venv / "bin" / "python", venv / "bin" / "humanverse"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    subprocess.run([str(py), "-m", "pip", "install", "-q", str(src)], check=True, env=env, cwd=tmp_path)

    probe = ("import importlib.util as u; "
             "print([m for m in ('torch', 'ray', 'transformers', 'diffusers') if u.find_spec(m)])")
    missing = subprocess.run([str(py), "-c", probe], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert missing.stdout.strip() == "[]", "the core install pulled in a heavy library"

    out = subprocess.run([str(exe), "query", str(data), "SELECT count(*) AS n FROM hv", "--format", "csv"],
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["n", "5"]
    stats = subprocess.run([str(exe), "stats", str(data)], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert stats.returncode == 0 and "5" in stats.stdout, stats.stderr
