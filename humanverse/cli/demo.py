"""``humanverse demo``: the offline demo behind ``make demo``, everything that exists, end to end.

Chain: build the tiny model zoo -> ``humanverse build`` on the sample images shipped in
``pipelines/sample_images`` with ``--models tiny`` and the demo preset (a local Ray cluster) ->
query -> stats (+ plot) -> gallery (HTML + PNG) -> train stage 1 (the LSDM) and
stage 2 (the refiner) for a few steps on Ray Train -> a test set from the dataset's rows -> ``humanverse
sample`` (stage 1 then the refiner, with the trained weights) on it -> ``humanverse eval``
(FID, KID, FID-CLIP, CLIP score, pose AP/AR beside the paper's Table 1). The models are tiny and
randomly initialised, so every annotation, image and number is meaningless; only the mechanics are
real (the gallery, the sample sheets and the report say so). Every relaxed setting is in the
visible demo configs ``pipelines/presets/demo.yaml`` and ``model/presets/demo.yaml``. Re-running
resumes the build (finished source shards are skipped) and starts the training runs afresh.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)

NAME = "demo"
HELP = "the offline demo on tiny random models (make demo)"
REPO = Path(__file__).resolve().parents[2]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="out/demo", help="output folder (default: out/demo)")


def run(args: argparse.Namespace) -> int:
    run_demo(Path(args.out))
    return 0

BANNER = ("DEMO - annotations come from TINY RANDOMLY-INITIALISED models run offline on synthetic "
          "images: boxes, keypoints, depth, normals, scores and captions are meaningless. Only the "
          "mechanics (stages, formats, coordinates, commits) are real.")


def run_demo(out: Path) -> dict[str, Path]:
    import humanverse
    from humanverse import zoo
    from humanverse.cli.zoo import tiny_builders
    from humanverse.show import GalleryStyle, render_gallery
    from humanverse.stats import format_stats, plot_stats
    from pipelines.build import PRESETS, build, load_config

    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}

    tiny_dir = (out / "tiny-zoo").resolve()
    os.environ["HUMANVERSE_TINY_ZOO"] = str(tiny_dir)  # --models tiny finds it (workers inherit it)
    log.info("building the tiny model zoo (random weights, offline) in %s", tiny_dir)
    zoo.make_tiny(tiny_dir, seed=0, builders=tiny_builders())
    paths["tiny zoo"] = tiny_dir

    samples = REPO / "pipelines" / "sample_images"
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

    paths.update(_model_chain(out, ds_dir))

    lines = [f"demo finished in {time.perf_counter() - t0:.0f} s ({BANNER.split(' - ')[1][:60]}...); outputs:"]
    lines += [f"  {k:15s} {os.path.relpath(v)}" for k, v in paths.items()]
    lines.append(f"  try: .venv/bin/humanverse query {os.path.relpath(ds_dir)} "
                 "\"SELECT reason, count(*) FROM rejects GROUP BY 1\"")
    sys.stdout.write("\n".join(lines) + "\n")
    return paths


MODEL_DEMO = REPO / "model" / "presets" / "demo.yaml"


def _model_chain(out: Path, ds_dir: Path) -> dict[str, Path]:
    """Train both stages for a few steps, sample a test set made from the dataset, evaluate it."""
    import shutil

    import yaml

    from humanverse.cli import main as cli_main
    from humanverse.config import from_dict
    from model.evaluation.hv_testset import HVTestsetConfig, build_hv_testset
    from model.training.loop import Stage1TrainConfig, Stage2TrainConfig, run_training

    demo = yaml.safe_load(MODEL_DEMO.read_text())
    paths: dict[str, Path] = {}
    runs = out / "runs"
    for stage, cls in (("stage1", Stage1TrainConfig), ("stage2", Stage2TrainConfig)):
        cfg = from_dict(cls, demo[stage])
        run = runs / stage
        shutil.rmtree(run, ignore_errors=True)  # a demo run starts afresh (`--resume` would continue it)
        log.info("training %s for %d steps with %s (tiny models)", stage, cfg.max_steps, MODEL_DEMO)
        run_training(cfg, str(ds_dir), str(run), "tiny")
        paths[f"{stage} run"] = run
        paths[f"{stage} samples"] = run / "samples" / f"step-{cfg.max_steps:08d}.png"

    ts = out / "testset"
    t = demo["testset"]
    build_hv_testset(HVTestsetConfig(str(ds_dir), str(ts), limit=t["limit"],
                                     keypoint_threshold=t["keypoint_threshold"]))
    paths["test set"] = ts / "testset.jsonl"
    gen = out / "generated"
    sets = [a for k, v in demo["sample"].items() for a in ("--set", f"{k}={v}")]
    code = cli_main(["sample", "--models", "tiny", "--testset", str(ts / "testset.jsonl"),
                     "--stage1", str(runs / "stage1"), "--stage2", str(runs / "stage2"), "--out", str(gen), *sets])
    if code:
        raise RuntimeError("the demo's sampling step failed (see the log above).")
    paths["generated"] = gen
    paths["sample sheets"] = gen / "sheets"
    ev = demo["eval"]
    code = cli_main(["eval", "--real", str(ts / "real"), "--generated", str(gen), "--poses", str(ts / "testset.jsonl"),
                      "--models", "tiny", "--out", str(out / "eval" / "report.json"),
                      "--batch-size", str(ev["batch_size"])])
    if code:
        raise RuntimeError("the demo's evaluation step failed (see the log above).")
    paths["eval report"] = out / "eval" / "report.md"
    return paths
