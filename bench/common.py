"""What the builder benchmarks share: the tiny model zoo in a scratch folder, and the machine they ran on."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def make_tiny_zoo(root: Path) -> None:
    """Build the tiny zoo into ``root`` and point ``resolve(name, "tiny")`` at it (in this process and
    the Ray workers and subprocesses it starts)."""
    from humanverse import zoo
    from humanverse.cli.zoo import tiny_builders

    os.environ["HUMANVERSE_TINY_ZOO"] = str(root)
    zoo.make_tiny(root, builders=tiny_builders())


def machine() -> dict:
    """The ``machine`` entry of a benchmark's JSON report."""
    return {"cpus": os.cpu_count(), "platform": platform.platform(), "gpu": None}
