"""The offline demo behind ``make demo``: everything that exists, end to end, on this machine.

Current chain: build the tiny model zoo -> write a small HumanVerse dataset through the
exactly-once sink -> query it -> stats (+ plot) -> gallery (HTML + PNG). The rows are synthetic
mannequins with synthetic annotations (:mod:`humanverse.synthetic`), so the pictures are not
photographs; only the mechanics are real.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

log = logging.getLogger(__name__)

BANNER = ("DEMO DATA - synthetic mannequin images with synthetic annotations, made offline; "
          "they are not photographs and say nothing about model quality. Only the mechanics are real.")


def _demo_rejects(shard: str, start: int, n: int, seed: int) -> pa.Table:
    import hashlib

    from humanverse.schema import REJECT_SCHEMA

    rng = np.random.default_rng(seed)
    cases = [("decode", "undecodable", "cannot identify image file"),
             ("resolution", "too_small", "min side 120 < 200"),
             ("person_filter", "no_person", "0 persons with score >= 0.5"),
             ("person_filter", "too_many_persons", "5 persons > 3"),
             ("person_filter", "person_too_small", "person area 0.06 < 0.15"),
             ("aesthetic", "low_aesthetic", "aesthetic 3.9 < 4.5")]
    rows = []
    for i in range(start, start + n):
        stage, reason, detail = cases[int(rng.integers(len(cases)))]
        rows.append({"id": hashlib.sha256(f"{shard}/{i}".encode()).hexdigest(), "source_url": f"synthetic://{shard}/{i}",
                     "source_key": f"{i:09d}", "source_shard": shard, "source_index": i,
                     "orig_width": int(rng.integers(100, 800)), "orig_height": int(rng.integers(100, 800)),
                     "stage": stage, "reason": reason, "detail": detail})
    return pa.Table.from_pylist(rows, schema=REJECT_SCHEMA)


def run_demo(out: Path) -> dict[str, Path]:
    import humanverse
    from humanverse import zoo
    from humanverse.cli import extra_tiny_builders
    from humanverse.show import render_gallery
    from humanverse.stats import format_stats, plot_stats
    from humanverse.synthetic import synthetic_table

    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}

    tiny_dir = out / "tiny-zoo"
    log.info("building the tiny model zoo (random weights, offline) in %s", tiny_dir)
    zoo.make_tiny(tiny_dir, seed=0, builders=extra_tiny_builders())
    paths["tiny zoo"] = tiny_dir

    ds_dir = out / "dataset"
    if ds_dir.exists():
        shutil.rmtree(ds_dir)
    clip_dim = 32
    sink = humanverse.ShardSink.open(ds_dir, manifest={"banner": BANNER, "clip_dim": clip_dim,
                                                       "config": {"source": "humanverse.synthetic"}})
    for s in range(3):
        shard = f"synthetic-{s:05d}"
        sink.write(synthetic_table(12, shard=shard, seed=s, clip_dim=clip_dim), "data", name=f"{shard}-0")
        sink.write(_demo_rejects(shard, 12, 6, seed=s), "rejects", name=f"{shard}-0")
    sink.close()
    paths["dataset"] = ds_dir

    ds = humanverse.open(ds_dir)
    q = ds.query("SELECT num_persons, count(*) AS images, round(avg(aesthetic), 2) AS mean_aesthetic "
                 "FROM hv GROUP BY 1 ORDER BY 1")
    log.info("query: persons per image -> %s", q.to_pylist())
    stats = ds.stats()
    log.info("stats:\n%s", format_stats(stats))
    plot_stats(stats, out / "stats.png")
    paths["stats plot"] = out / "stats.png"
    paths["gallery (html)"] = render_gallery(ds, out / "gallery.html", banner=BANNER)
    paths["gallery (png)"] = render_gallery(ds, out / "gallery.png", limit=6, banner=BANNER)

    lines = [f"demo finished in {time.perf_counter() - t0:.0f} s; outputs:"]
    lines += [f"  {k:15s} {os.path.relpath(v)}" for k, v in paths.items()]
    lines.append(f"  try: .venv/bin/humanverse query {os.path.relpath(ds_dir)} "
                 "\"SELECT reason, count(*) FROM rejects GROUP BY 1\"")
    sys.stdout.write("\n".join(lines) + "\n")
    return paths
