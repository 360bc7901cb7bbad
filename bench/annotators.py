"""Annotator stages alone: images/s and seconds/image for outpaint, pose, depth, normal and caption
with the tiny zoo on this machine (each stage run as its Ray actor would run it, in-process, one
worker, on the same rows). Prints one JSON object, plus the projection to the paper's scale.

Projection: GPU-days for 340M images = 340e6 x sum(seconds/image) / 86400, to set beside the
paper's 640 V100 x 14 days = 8,960 GPU-days (HyperHuman §4). Meaningful only with ``--models
paper`` (or full-size random stand-ins) on a GPU; with the tiny zoo on a CPU it shows the
mechanics and the relative cost of the stages, nothing more.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine, make_tiny_zoo  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--size", type=int, nargs=2, default=(384, 480))
    ap.add_argument("--models", default="tiny")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory(prefix="hv-bench-ann-") as tmp:
        if args.models == "tiny":
            make_tiny_zoo(Path(tmp) / "zoo")
        import io

        import pyarrow as pa

        from humanverse.testing.synthetic import make_sample
        from pipelines import rows as R
        from pipelines.build import PRESETS, load_config
        from pipelines.stages.caption import Captioner
        from pipelines.stages.depth import DepthEstimator
        from pipelines.stages.normal import NormalEstimator
        from pipelines.stages.outpaint import Outpainter
        from pipelines.stages.pose import PoseEstimator

        cfg = load_config(PRESETS / "demo.yaml", {"outpaint.policy": "always"})
        schema = R.inflight_schema(None)
        rows = []
        for i in range(args.images):
            s = make_sample(*args.size, num_persons=1 + i % 3, seed=i)
            buf = io.BytesIO()
            s.image.save(buf, format="JPEG", quality=90)
            r = R.empty_row(schema)
            r.update(source_shard="b", source_index=i, id=f"{i:064x}", image=buf.getvalue(), width=args.size[0],
                     height=args.size[1], orig_width=args.size[0], orig_height=args.size[1], alt_text="a person",
                     persons=[{"bbox": b.tolist(), "score": 0.9, "keypoints": None} for b in s.boxes],
                     num_persons=len(s.boxes))
            rows.append(r)
        table = pa.Table.from_pylist(rows, schema=schema)
        stages = [("outpaint", Outpainter(cfg.outpaint, args.models)), ("pose", PoseEstimator(cfg.pose, args.models)),
                  ("depth", DepthEstimator(cfg.depth, args.models, maps=cfg.maps)),
                  ("normal", NormalEstimator(cfg.normal, args.models, maps=cfg.maps)),
                  ("caption", Captioner(cfg.caption, args.models))]
        res = {}
        for name, stage in stages:
            bs = getattr(cfg.resources, name).batch_size
            t0 = time.perf_counter()
            outs = [stage(table.slice(o, bs)) for o in range(0, table.num_rows, bs)]
            dt = time.perf_counter() - t0
            table = pa.concat_tables(outs)
            res[name] = {"images_per_s": round(args.images / dt, 2), "s_per_image": round(dt / args.images, 4)}
        total = sum(v["s_per_image"] for v in res.values())
        print(json.dumps({
            "benchmark": "annotators.stage_alone", "models": args.models, "images": args.images,
            "image_size": list(args.size), "outpaint": {"working_size": cfg.outpaint.working_size,
                                                        "steps": cfg.outpaint.steps},
            "stages": res, "s_per_image_all_annotators": round(total, 4),
            "projected_device_days_for_340M": round(340e6 * total / 86400, 1),
            "paper_gpu_days": 640 * 14,
            "note": "tiny random models on a CPU: relative stage costs only; the projection needs the "
                    "paper's models on a GPU",
            "machine": machine(),
        }, indent=2))


if __name__ == "__main__":
    main()
