"""The offline demo behind ``make demo``: everything that exists, end to end, on this machine.

Chain: build the tiny model zoo -> ``humanverse build`` on the sample images shipped in
``pipelines/sample_images`` with ``--models tiny`` and the demo preset (a local Ray cluster) ->
query -> stats (+ plot) -> gallery (HTML + PNG). The models are tiny and randomly initialised, so
every annotation is meaningless; only the mechanics are real (the gallery says so in a banner).
Re-running resumes: finished source shards are skipped.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)

BANNER = ("DEMO - annotations come from TINY RANDOMLY-INITIALISED models run offline on synthetic "
          "images: boxes, keypoints, depth, normals, scores and captions are meaningless. Only the "
          "mechanics (stages, formats, coordinates, commits) are real.")


def run_demo(out: Path) -> dict[str, Path]:
    import humanverse
    from humanverse import zoo
    from humanverse.cli import extra_tiny_builders
    from humanverse.show import GalleryStyle, render_gallery
    from humanverse.stats import format_stats, plot_stats
    from pipelines.build import PRESETS, build, load_config

    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}

    tiny_dir = (out / "tiny-zoo").resolve()
    os.environ["HUMANVERSE_TINY_ZOO"] = str(tiny_dir)  # --models tiny finds it (workers inherit it)
    log.info("building the tiny model zoo (random weights, offline) in %s", tiny_dir)
    zoo.make_tiny(tiny_dir, seed=0, builders=extra_tiny_builders())
    paths["tiny zoo"] = tiny_dir

    samples = Path(__file__).resolve().parent.parent / "pipelines" / "sample_images"
    ds_dir = out / "dataset"
    cfg = load_config(PRESETS / "demo.yaml")
    log.info("building a HumanVerse dataset from %s with the demo preset %s", samples, PRESETS / "demo.yaml")
    build(str(samples), str(ds_dir), cfg, models="tiny")
    paths["dataset"] = ds_dir

    ds = humanverse.open(ds_dir)
    q = ds.query("SELECT num_persons, count(*) AS images, round(avg(aesthetic), 3) AS mean_aesthetic "
                 "FROM hv GROUP BY 1 ORDER BY 1")
    log.info("query: persons per image -> %s", q.to_pylist())
    stats = ds.stats()
    sys.stdout.write(format_stats(stats) + "\n")
    plot_stats(stats, out / "stats.png")
    paths["stats plot"] = out / "stats.png"
    # Tiny random pose models score every keypoint ~0.05-0.11: draw from 0.05 (not the 0.3 default)
    # so the skeleton mechanics are visible. Relaxed for the demo only.
    style = GalleryStyle(keypoint_threshold=0.05)
    paths["gallery (html)"] = render_gallery(ds, out / "gallery.html", banner=BANNER, style=style)
    paths["gallery (png)"] = render_gallery(ds, out / "gallery.png", limit=6, banner=BANNER, style=style)

    lines = [f"demo finished in {time.perf_counter() - t0:.0f} s ({BANNER.split(' - ')[1][:60]}...); outputs:"]
    lines += [f"  {k:15s} {os.path.relpath(v)}" for k, v in paths.items()]
    lines.append(f"  try: .venv/bin/humanverse query {os.path.relpath(ds_dir)} "
                 "\"SELECT reason, count(*) FROM rejects GROUP BY 1\"")
    sys.stdout.write("\n".join(lines) + "\n")
    return paths
