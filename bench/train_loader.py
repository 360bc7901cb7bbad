"""Training-reader throughput per CPU core: raw decode path vs the VAE-latent cache path.

Prints one JSON object. Target: >= 50 samples/s per core on the raw path at 512² (HyperHuman §4
trains stage 1 at 512²; a GPU step of batch 8-16 must not wait on one or two loader cores).

* raw: :func:`model.training.data.iter_examples` over a synthetic dataset of realistic rows (JPEG images
  512-768 px on the short side and up to 1024 on the long one, 16-bit depth and 8-bit normal PNGs
  at the image size, 1-3 persons with 133 keypoints), random crop + flip, collated batches. The
  stage breakdown (decode + resize + crop of every modality, flip + skeleton, to float) times
  the steps of :func:`model.training.data.make_example` per sample (``to_float_b1``: the float
  conversion of a batch of one; iter_examples converts whole batches).
* raw, malloc tuned: the same in a subprocess with glibc's mmap/trim thresholds raised (env vars),
  so freed multi-MB tensors are reused instead of page-faulted in anew (~2-4 ms/sample of system
  time here otherwise).
* raw, maps without PNG row filters: the same rows with depth/normal re-encoded with PNG filter
  "None" (PIL always picks adaptive filters, mostly Paeth, whose unfiltering dominates decode):
  what a codec change in :mod:`humanverse.codecs` would buy.
* latent: :func:`model.training.latents.iter_latent_batches` (posterior sampling) over a cache of the same
  rows (4×64×64 float16 mean+std for 4 modalities). The cache is built with the tiny VAE: reading
  cost depends only on the latent shape, not on the weights.
* ray: the trainer's ``data.reader: ray`` (:func:`model.training.data.iter_ray_examples`, one rank) over
  the same rows and config as raw: a local Ray with every core as a logical CPU, decode tasks of
  ``--ray-num-cpus`` CPUs. Its samples/s per core counts the CPU seconds of this process (the
  consumer: copies out of the blocks, shuffle buffer, collate) plus those of every Ray process it
  started (decode workers, and raylet/GCS/agents as "system"), measured with psutil; start-up
  (``ray.init``, first batch of a warm-up epoch) is reported apart.

Local paths run in one process, one torch thread: samples/s per core = samples / process CPU
seconds; wall-clock rates are reported too (they also count time other processes took from this
one). ``--sections`` picks what to run (default: all).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet  # noqa: F401 - pa.parquet
import torch

import humanverse
from humanverse.testing.synthetic import synthetic_table

log = logging.getLogger("bench.train_loader")

#: (width, height) of the stored images: 512-768 px on the short side, portrait and landscape.
SIZES = [(512, 640), (576, 768), (768, 576), (640, 640), (768, 1024), (640, 512), (720, 960), (600, 800)]


def make_dataset(root: Path, rows: int, files: int) -> None:
    sink = humanverse.ShardSink.open(root)
    per = -(-rows // files)
    for f in range(files):
        tables = [synthetic_table(1, shard=f"bench-{f}", start=f * per + i, seed=f * per + i,
                                  width=SIZES[(f * per + i) % len(SIZES)][0],
                                  height=SIZES[(f * per + i) % len(SIZES)][1])
                  for i in range(min(per, rows - f * per))]
        sink.write(pa.concat_tables(tables), "data", f"bench-{f}")
    sink.close()


def _png_unfiltered(arr: np.ndarray) -> bytes:
    """Maps as the codec writes them since it stopped using Pillow's adaptive row filters."""
    from humanverse.codecs import png_unfiltered

    return png_unfiltered(arr)


def make_unfiltered_copy(src: Path, dst: Path) -> None:
    """The dataset again, depth and normal re-encoded without PNG row filters (same pixels)."""
    import io

    from PIL import Image

    sink = humanverse.ShardSink.open(dst)
    for k, f in enumerate(humanverse.open(src).files()):
        t = pa.parquet.read_table(f)
        for col in ("depth", "normal"):
            vals = [_png_unfiltered(np.asarray(Image.open(io.BytesIO(b)))) for b in t.column(col).to_pylist()]
            t = t.set_column(t.schema.get_field_index(col), col, pa.array(vals, pa.binary()))
        sink.write(t, "data", f"unfiltered-{k}")
    sink.close()


def _rate(n: int, cpu: float, wall: float) -> dict:
    return {"samples": n, "cpu_s": round(cpu, 3), "wall_s": round(wall, 3),
            "samples_per_s_per_core": round(n / cpu, 1), "samples_per_s_wall": round(n / wall, 1)}


def bench_raw(root: Path, resolution: int, reps: int, batch_size: int) -> dict:
    from model.training import data as D

    cfg = D.TrainDataConfig(resolution=resolution, crop="random", flip_prob=0.5, shuffle_buffer=32)
    runs = []
    for rep in range(reps):
        c0, w0 = time.process_time(), time.perf_counter()
        n = sum(len(b["id"]) for b in D.iter_examples(root, cfg, epoch=rep, batch_size=batch_size, drop_last=False))
        runs.append(_rate(n, time.process_time() - c0, time.perf_counter() - w0))
    best = max(runs, key=lambda r: r["samples_per_s_per_core"])

    # stage breakdown over the same rows, per sample
    rows = humanverse.open(root).to_arrow(columns=list(D.ROW_COLUMNS)).to_pylist()
    prof: dict[str, float] = {}
    n = 0
    c0 = time.process_time()
    for rep in range(reps):
        for row in rows:
            rng = D.sample_rng(cfg.seed, rep, row["source_shard"], row["source_index"])
            t0 = time.perf_counter()
            dec = D._decode_row(row, cfg, rng)  # decode, resize, crop
            t1 = time.perf_counter()
            ex = D._finish(dec, cfg, dec.flip)  # flip, skeleton
            t2 = time.perf_counter()
            D._collate_examples_compact([ex])
            t3 = time.perf_counter()
            for stage, s in (("decode_resize_crop", t1 - t0), ("flip_skeleton", t2 - t1), ("to_float_b1", t3 - t2)):
                prof[stage] = prof.get(stage, 0.0) + s
            n += 1
    cpu = time.process_time() - c0
    stages_ms = {k: round(v / n * 1e3, 3) for k, v in sorted(prof.items(), key=lambda kv: -kv[1])}
    return {"runs": runs, "best": best, "make_example_samples_per_s_per_core": round(n / cpu, 1),
            "stage_ms_per_sample": stages_ms, "stage_ms_total": round(sum(prof.values()) / n * 1e3, 3)}


def bench_latent(root: Path, out: Path, resolution: int, reps: int, batch_size: int) -> dict:
    from model.training import latents as L

    cfg = L.LatentCacheConfig(resolution=resolution, batch_size=8, files_per_chunk=64)
    t = time.perf_counter()
    rep_build = L.build_latent_cache(root, out, cfg, "tiny", use_ray=False)
    build_s = time.perf_counter() - t
    runs = []
    for rep in range(reps):
        c0, w0 = time.process_time(), time.perf_counter()
        n = sum(len(b["id"]) for b in L.iter_latent_batches(out, batch_size=batch_size, epoch=rep, drop_last=False,
                                                            shuffle_buffer=32))
        runs.append(_rate(n, time.process_time() - c0, time.perf_counter() - w0))
    best = max(runs, key=lambda r: r["samples_per_s_per_core"])
    size = sum(p.stat().st_size for p in (out / "data").glob("*.parquet"))
    return {"runs": runs, "best": best, "cache_rows": rep_build.rows,
            "cache_bytes_per_row": round(size / rep_build.rows), "build_s_tiny_vae": round(build_s, 1)}


def _ray_process_cpu() -> dict[int, tuple[str, float]]:
    """{pid: (kind, user+system CPU seconds)} of every live process this one started (Ray's)."""
    import psutil

    out = {}
    for p in psutil.Process().children(recursive=True):
        try:
            t = p.cpu_times()
            cmd = p.cmdline()
            kind = "workers" if cmd and cmd[0].startswith("ray::") else "system"
            out[p.pid] = (kind, t.user + t.system)
        except psutil.Error:
            pass
    return out


def bench_ray(root: Path, resolution: int, reps: int, batch_size: int, num_cpus: float) -> dict:
    import ray
    from ray.data import DataContext

    from model.training import data as D

    cfg = D.TrainDataConfig(resolution=resolution, crop="random", flip_prob=0.5, shuffle_buffer=32, reader="ray",
                            ray_num_cpus=num_cpus)
    temp = tempfile.mkdtemp(prefix="hv-bench-ray-", dir="/tmp")
    t = time.perf_counter()
    ray.init(address="local", num_cpus=max(2, os.cpu_count() or 1), include_dashboard=False, log_to_driver=False,
             _temp_dir=temp)
    init_s = time.perf_counter() - t
    DataContext.get_current().enable_progress_bars = False
    try:
        t = time.perf_counter()  # warm-up epoch: starts the decode workers (they import torch)
        it = D.iter_ray_examples(root, cfg, epoch=1000, batch_size=batch_size, drop_last=False)
        next(it)
        first_batch_s = time.perf_counter() - t
        for _ in it:
            pass
        runs = []
        for rep in range(reps):
            before = _ray_process_cpu()
            c0, w0 = time.process_time(), time.perf_counter()
            n = sum(len(b["id"]) for b in D.iter_ray_examples(root, cfg, epoch=rep, batch_size=batch_size,
                                                                drop_last=False))
            wall, driver = time.perf_counter() - w0, time.process_time() - c0
            cpu = {"workers": 0.0, "system": 0.0}
            for pid, (kind, v) in _ray_process_cpu().items():
                cpu[kind] += v - before.get(pid, (kind, 0.0))[1]
            runs.append({**_rate(n, driver + cpu["workers"] + cpu["system"], wall),
                         "consumer_cpu_s": round(driver, 3), "decode_workers_cpu_s": round(cpu["workers"], 3),
                         "ray_system_cpu_s": round(cpu["system"], 3)})
    finally:
        ray.shutdown()
        shutil.rmtree(temp, ignore_errors=True)
    best = max(runs, key=lambda r: r["samples_per_s_per_core"])
    return {"runs": runs, "best": best, "ray_num_cpus": num_cpus, "logical_cpus": max(2, os.cpu_count() or 1),
            "ray_init_s": round(init_s, 1), "first_batch_s": round(first_batch_s, 1),
            "decode_only_samples_per_s_per_core": round(best["samples"] / best["decode_workers_cpu_s"], 1)}


SECTIONS = ("raw", "raw_malloc_tuned", "raw_maps_without_png_filters", "latent", "ray")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=96)
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--keep", help="use/keep the dataset and cache under this folder")
    ap.add_argument("--ray-num-cpus", type=float, default=0.25, help="CPUs per Ray decode task (ray section)")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    ap.add_argument("--raw-only", help=argparse.SUPPRESS)  # internal: bench_raw on this dataset, JSON out
    args = ap.parse_args()
    sections = set(args.sections.split(","))
    if not sections <= set(SECTIONS):
        ap.error(f"--sections: unknown {sorted(sections - set(SECTIONS))}; choose from {list(SECTIONS)}.")
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    if args.raw_only:
        sys.stdout.write(json.dumps(bench_raw(Path(args.raw_only), args.resolution, args.reps, args.batch_size)))
        return
    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="hv-bench-loader-"))
    root, cache = tmp / "dataset", tmp / "latents"
    try:
        if not (root / "humanverse.json").exists():
            t = time.perf_counter()
            make_dataset(root, args.rows, args.files)
            log.warning("made %d rows in %.1f s", args.rows, time.perf_counter() - t)
        ds = humanverse.open(root)
        sizes = ds.query("SELECT avg(width) w, avg(height) h, avg(octet_length(image)) jpg, "
                         "avg(octet_length(depth)) d, avg(octet_length(normal)) n, avg(num_persons) p FROM hv")
        s = sizes.to_pylist()[0]
        result: dict = {
            "bench": "train_loader",
            "resolution": args.resolution,
            "rows": ds.num_rows(),
            "mean_stored_size": [round(s["w"]), round(s["h"])],
            "mean_bytes": {"jpeg": round(s["jpg"]), "depth_png": round(s["d"]), "normal_png": round(s["n"])},
            "mean_persons": round(s["p"], 2),
        }
        if "raw" in sections:
            raw = bench_raw(root, args.resolution, args.reps, args.batch_size)
            result.update(raw=raw, target_raw_samples_per_s_per_core=50,
                          raw_meets_target=raw["best"]["samples_per_s_per_core"] >= 50)
        if "raw_malloc_tuned" in sections:
            # the same in a process whose glibc malloc keeps freed multi-MB blocks (no page faults on
            # every new tensor): MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_ are plain env vars
            env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(256 << 20), "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}
            proc = subprocess.run([sys.executable, __file__, "--raw-only", str(root), "--resolution",
                                   str(args.resolution), "--reps", str(args.reps),
                                   "--batch-size", str(args.batch_size)],
                                  env=env, capture_output=True, text=True, check=True)
            raw_malloc = json.loads(proc.stdout)
            result["raw_malloc_tuned"] = {"env": {"MALLOC_MMAP_THRESHOLD_": str(256 << 20),
                                                  "MALLOC_TRIM_THRESHOLD_": str(1 << 30)},
                                          **{k: v for k, v in raw_malloc.items() if k != "runs"}}
        if "raw_maps_without_png_filters" in sections:
            unfiltered = tmp / "dataset-unfiltered-maps"
            if not (unfiltered / "humanverse.json").exists():
                make_unfiltered_copy(root, unfiltered)
            raw_unf = bench_raw(unfiltered, args.resolution, args.reps, args.batch_size)
            unf_bytes = humanverse.open(unfiltered).query(
                "SELECT avg(octet_length(depth)) d, avg(octet_length(normal)) n FROM hv").to_pylist()[0]
            result["raw_maps_without_png_filters"] = {
                "note": "same pixels; depth/normal PNGs re-encoded with row filter None (a codec option, "
                        "not the current format)",
                "mean_bytes": {"depth_png": round(unf_bytes["d"]), "normal_png": round(unf_bytes["n"])},
                **{k: v for k, v in raw_unf.items() if k != "runs"}}
        if "latent" in sections:
            result["latent"] = bench_latent(root, cache, args.resolution, args.reps, args.batch_size)
        if "ray" in sections:
            result["ray"] = bench_ray(root, args.resolution, args.reps, args.batch_size, args.ray_num_cpus)
        result.update({
            "torch_threads": torch.get_num_threads(),
            "loadavg_1m": round(os.getloadavg()[0], 2),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        })
        print(json.dumps(result, indent=1))  # the benchmark's output: one JSON object on stdout
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
