"""Builder throughput: end-to-end rows/s (Ray Data, tiny models) against the slowest stage run alone
on the same rows, plus the per-image CPU cost of decode. Prints one JSON object.

Target (issue 3): end-to-end >= 0.9 x the slowest stage alone. Stages alone run in this process on
one worker each, exactly as an actor/task would call them; the pipeline uses the CPU preset with
one actor per model stage, so the comparison is like for like. Ray start-up is excluded.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _inputs(src: Path, n: int, size: tuple[int, int]) -> None:
    from humanverse.synthetic import make_sample

    for i in range(n):
        d = src / f"d{i % 4}"
        d.mkdir(parents=True, exist_ok=True)
        make_sample(*size, num_persons=1 + i % 3, seed=i).image.save(d / f"{i:04d}.jpg", quality=90)


def _stage_alone(name: str, stage, table, batch: int) -> tuple[float, object]:
    """rows/s of one stage over ``table`` in batches of ``batch`` (its own output feeds the next)."""
    import pyarrow as pa

    outs = []
    t = time.perf_counter()
    for off in range(0, table.num_rows, batch):
        outs.append(stage(table.slice(off, batch)))
    dt = time.perf_counter() - t
    return table.num_rows / dt, pa.concat_tables(outs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=160)
    ap.add_argument("--size", type=int, nargs=2, default=(384, 480))
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    from humanverse import zoo
    from humanverse.cli import extra_tiny_builders

    tmp = Path(tempfile.mkdtemp(prefix="hv-bench-builder-"))
    os.environ["HUMANVERSE_TINY_ZOO"] = str(tmp / "zoo")
    zoo.make_tiny(tmp / "zoo", builders=extra_tiny_builders())
    try:
        src = tmp / "in"
        _inputs(src, args.images, tuple(args.size))

        from pipelines import readers
        from pipelines.build import PRESETS, build, load_config
        from pipelines.rows import from_source_rows
        from pipelines.stages.aesthetic import AestheticScorer, clip_embed_dim
        from pipelines.stages.decode import DecodeStage
        from pipelines.stages.detect import PersonDetector
        from pipelines.stages.person_filter import PersonFilter
        from pipelines.stages.resolution import ResolutionStage

        # bench config: the demo thresholds (tiny models) but nothing filtered after detect, so
        # every stage sees every row and "slowest stage alone" is well defined
        cfg = load_config(PRESETS / "demo.yaml", {"stages": ["decode", "resolution", "detect", "person_filter", "aesthetic"],
                                                  "person_filter.min_area": 0.0, "person_filter.max_persons": 100,
                                                  "aesthetic.threshold": -1e9, "detect.score_threshold": 0.5})
        clip_dim = clip_embed_dim(cfg.aesthetic, "tiny")
        rows = [r for sh in readers.discover_shards(str(src)) for b in readers.read_shard(sh) for r in b]
        table = from_source_rows(rows, clip_dim)

        alone = {}
        cpu0 = time.process_time()
        alone["decode"], t = _stage_alone("decode", DecodeStage(cfg.decode, clip_dim), table, cfg.resources.decode.batch_size)
        decode_cpu_ms = (time.process_time() - cpu0) / table.num_rows * 1e3
        alone["resolution"], t = _stage_alone("resolution", ResolutionStage(cfg.resolution, clip_dim), t, 64)
        alone["detect"], t = _stage_alone("detect", PersonDetector(cfg.detect, "tiny", clip_dim), t, cfg.resources.detect.batch_size)
        alone["person_filter"], t = _stage_alone("person_filter", PersonFilter(cfg.person_filter, clip_dim), t, 64)
        alone["aesthetic"], t = _stage_alone("aesthetic", AestheticScorer(cfg.aesthetic, "tiny", clip_dim), t, cfg.resources.aesthetic.batch_size)
        slowest = min(alone, key=alone.get)

        import ray

        ray.init(address="local", num_cpus=cfg.ray.num_cpus, include_dashboard=False,
                 _temp_dir=f"/tmp/rb-{uuid.uuid4().hex[:6]}", log_to_driver=False)
        build(str(src), str(tmp / "warm"), cfg, models="tiny")  # warm-up: worker processes, imports
        t0 = time.perf_counter()
        rep = build(str(src), str(tmp / "out"), cfg, models="tiny")
        e2e_s = time.perf_counter() - t0
        ray.shutdown()
        n = rep.rows_written + rep.rejects_written
        e2e = n / e2e_s
        # steady state: rows committed between the first and the last commit record (excludes
        # actor start-up and model loading, which a long run amortises)
        from humanverse.shards import read_log

        recs = sorted(read_log(str(tmp / "out")).records, key=lambda r: r.created)
        span = recs[-1].created - recs[0].created
        steady = (sum(r.rows for r in recs) - recs[0].rows) / span if span > 0 else float("nan")
        print(json.dumps({
            "benchmark": "builder.end_to_end_vs_slowest_stage",
            "images": n, "image_size": list(args.size), "models": "tiny",
            "stage_alone_rows_per_s": {k: round(v, 1) for k, v in alone.items()},
            "slowest_stage": slowest,
            "end_to_end_rows_per_s": round(e2e, 1),
            "ratio_end_to_end_vs_slowest": round(e2e / alone[slowest], 3),
            "steady_state_rows_per_s": round(steady, 1),
            "ratio_steady_state_vs_slowest": round(steady / alone[slowest], 3),
            "target_ratio": 0.9,
            "decode_cpu_ms_per_image": round(decode_cpu_ms, 2),
            "note": "end-to-end = build() wall time after Ray is up (includes actor start-up and model "
                    "loading); steady state = rows committed between the first and last commit.",
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "gpu": None},
        }, indent=2))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
