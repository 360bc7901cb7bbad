"""Reruns with nothing to do: ``humanverse build`` and ``humanverse latents`` on their own finished
output, each a fresh process (imports included), as a user runs them. Prints JSON.

A finished rerun checks the input, the commit log or the cache's records, and ends without starting
Ray or loading a model; what remains is Python start-up and imports (torch for ``latents``). The
load average is reported beside the timings: on this shared 2-core machine it varies a lot.

    python bench/noop_rerun.py [--runs 3] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import machine, make_tiny_zoo  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def timed(argv: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "humanverse.cli", *argv], check=True, cwd=REPO, capture_output=True)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", help="scratch folder (default: a temporary one)")
    args = ap.parse_args()
    tmp = Path(args.out or tempfile.mkdtemp(prefix="hv-noop-"))
    make_tiny_zoo(tmp / "zoo")
    ds, cache = tmp / "ds", tmp / "latents"
    build = ["build", str(REPO / "pipelines" / "sample_images"), str(ds), "--config",
             str(REPO / "pipelines" / "presets" / "demo.yaml"), "--models", "tiny"]
    latents = ["latents", str(ds), str(cache), "--models", "tiny", "--resolution", "64", "--no-ray"]
    first = {"build_s": timed(build), "latents_s": timed(latents)}
    import_torch = [sys.executable, "-c", "import torch"]
    t0 = time.perf_counter()
    subprocess.run(import_torch, check=True)
    torch_s = time.perf_counter() - t0
    reruns = {"build_s": [], "latents_s": [], "latents_with_ray_flag_s": []}
    for _ in range(args.runs):
        reruns["build_s"].append(timed(build))
        reruns["latents_s"].append(timed(latents))
        reruns["latents_with_ray_flag_s"].append(timed(latents[:-1]))  # Ray would start only for work
    print(json.dumps({
        "benchmark": "noop_rerun", "machine": machine(), "load_average": os.getloadavg(),
        "first_run": {k: round(v, 2) for k, v in first.items()},
        "rerun_median": {k: round(sorted(v)[len(v) // 2], 2) for k, v in reruns.items()},
        "reruns": {k: [round(x, 2) for x in v] for k, v in reruns.items()},
        "python_import_torch_s": round(torch_s, 2),
    }, indent=2))


if __name__ == "__main__":
    main()
