"""Builder throughput: end-to-end rows/s (Ray Data, tiny models) against the slowest stage run alone
on the same rows, plus the per-image CPU cost of decode. Prints one JSON object.

Target (issue 3): end-to-end >= 0.9 x the slowest stage alone. Stages alone run in this process on
one worker each, exactly as an actor/task would call them (model loaded before the clock starts)
and with the torch threads Ray gives that worker (``OMP_NUM_THREADS`` = max(1, floor(num_cpus)):
1 for the demo preset's 0.25-CPU actors); the pipeline uses the demo preset with one actor per
model stage, so the comparison is like for like. (Unpinned, torch in this process would use every
core and the "stage alone" would get resources its actor never has: ``--all-cores`` prints that
number for information.) A second reference runs the slowest stage alone as its own Ray Data job
(its actor pool as ``build()`` makes it, over its input rows already in the object store): that
one, like the pipeline, pays the actor's start-up (process, imports, model load) and Ray Data's
per-batch path, so ``ratio_end_to_end_vs_slowest_as_ray_job`` isolates what the rest of the
pipeline costs the slowest stage. Both are printed; the in-process one is the stricter.

Method (this machine's cores are shared with other work, so everything is measured side by side):

* the stages alone are timed first; the slowest one again after each pipeline run, and each run's
  ratio uses the mean of the two measurements either side of it (medians over ``--repeat`` runs);
  the 1-minute load average is printed beside each phase;
* Ray runs its worker processes at its default nice value (15), below this process: on a shared
  machine the pipeline's actors can lose the CPU to other work that the stages alone (timed here)
  do not, which the load averages beside each phase show;
* a warm-up build on one source shard starts Ray's task workers (imports); Ray start-up is excluded;
  before anything is timed, the actors of the previous run have exited (one tearing down would slow
  the next one's start-up, which a single build never sees);
* ``--batch-rows``: ``input.batch_rows``, the rows of a block between stages (one actor task each);
* ``end_to_end``: rows / wall time of ``build()``, which *includes* starting the model actors
  (process start, ``import torch``/``transformers``, model load: seconds, amortised by a real run);
* ``steady_state``: rows committed after the first commit / time between the first and the last
  commit (from the dataset's own commit log), i.e. throughput once the actors are up, including the
  drain at the end. ``write.rows_per_file`` is set small (default 64) so commits are frequent enough
  to time; ``time_to_first_commit_s`` is the start-up + pipeline-fill cost it leaves out;
* ``slowest_busy_s``: total time the slowest stage's actor spent in its calls (Ray Data's
  ``Dataset.stats()``); ``ratio_while_busy`` = rows / that time vs alone (CPU share and per-call
  overhead), ``not_busy_s`` = the rest of the wall time (start-up, idle gaps, drain);
* ``pipeline_cpu_ms_per_row``: CPU time per row of each Ray Data operator (``Dataset.stats()``),
  to compare with ``stage_alone_cpu_ms_per_row``: equal numbers mean the pipeline adds no per-row
  work to that stage and any gap is CPU share or start-up;
* ``slowest_calls``: where the slowest stage's wall time went, from its own actor: in the pipeline
  runs (and the Ray-job reference) its class is replaced by a subclass that records every call
  (start on the system-wide monotonic clock, wall, the calling thread's CPU time, and its run-queue
  wait from ``/proc/thread-self/schedstat``, Linux). ``first_call_s`` is the start-up (actor process,
  imports, model load, pipeline fill; ``start_up_s`` splits it, from the first actor's process
  start time (psutil) and its constructor's clock, and the main thread's time on CPU and in
  the run queue in each part), ``gaps_s`` the time between calls (``gaps_over_10ms``: those between
  blocks, Ray Data's per-block path),
  ``run_queue_wait_s`` the time the stage was ready to compute but another process had its core,
  ``drain_s`` the time from its last call to the end of ``build()``; ``loss_vs_alone_s`` splits
  ``end_to_end_s - rows / slowest_alone_rows_per_s`` into those parts plus ``slower_compute`` (time
  in calls, less the run-queue wait, beyond what the stage alone took).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import re
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine, make_tiny_zoo  # noqa: E402

#: The filter stages; nothing is filtered after detect so every stage sees every row.
STAGES = ["decode", "resolution", "detect", "person_filter", "aesthetic"]


def _inputs(src: Path, n: int, size: tuple[int, int], shards: int = 4) -> None:
    from humanverse.testing.synthetic import make_sample

    for i in range(n):
        d = src / f"d{i % shards}"
        d.mkdir(parents=True, exist_ok=True)
        make_sample(*size, num_persons=1 + i % 3, seed=i).image.save(d / f"{i:04d}.jpg", quality=90)


def ray_threads(num_cpus: float) -> int:
    """The intra-op threads (``OMP_NUM_THREADS``, which torch follows) Ray gives a worker holding
    ``num_cpus`` CPUs: ``max(1, floor(num_cpus))`` (``ray._private.utils.set_omp_num_threads_if_unset``)."""
    return max(1, math.floor(num_cpus))


def _in_batches(stage, table, batch: int) -> list:
    """``stage`` called on ``table`` in slices of ``batch`` rows, as its worker calls it: the outputs."""
    return [stage(table.slice(off, batch)) for off in range(0, table.num_rows, batch)]


def _stages_alone(stages: dict, table, batches: dict, threads: dict, chunk: int,
                  only: str | None = None) -> tuple[dict, dict]:
    """(rows/s, CPU ms per row) of each stage run alone over all of ``table`` in batches of
    ``batches[name]`` with torch limited to ``threads[name]`` intra-op threads (as in its Ray worker).

    The rows go through the stages ``chunk`` rows at a time, so memory stays bounded (holding
    every stage's whole input and output ran the bench out of 24 GiB at 19,200 images); each
    stage's clock runs only around its own calls. With ``only``, just that stage is timed and the
    stages before it run untimed to make its input.
    """
    import pyarrow as pa
    import torch

    wall = dict.fromkeys(stages, 0.0)
    cpu = dict.fromkeys(stages, 0.0)
    before = torch.get_num_threads()
    try:
        for start in range(0, table.num_rows, chunk):
            t = table.slice(start, chunk)
            for name, stage in stages.items():
                torch.set_num_threads(threads[name])
                c0, t0 = time.process_time(), time.perf_counter()
                outs = _in_batches(stage, t, batches[name])
                if only in (None, name):
                    wall[name] += time.perf_counter() - t0
                    cpu[name] += time.process_time() - c0
                t = pa.concat_tables(outs)
                if name == only:
                    break
    finally:
        torch.set_num_threads(before)
    timed = [only] if only else list(stages)
    return ({k: table.num_rows / wall[k] for k in timed}, {k: cpu[k] / table.num_rows * 1e3 for k in timed})


def _stage_input(stages: dict, table, batches: dict, chunk: int, name: str):
    """The rows stage ``name`` receives: the stages before it applied to ``table`` (untimed, chunked)."""
    import pyarrow as pa

    outs = []
    for start in range(0, table.num_rows, chunk):
        t = table.slice(start, chunk)
        for n, stage in stages.items():
            if n == name:
                break
            t = pa.concat_tables(_in_batches(stage, t, batches[n]))
        outs.append(t)
    return pa.concat_tables(outs)


def _recording_class(cls, log_dir: str):
    """``cls`` with every ``__call__`` recorded to ``log_dir/calls-<pid>.jsonl`` (see ``slowest_calls``
    in the module docstring); same name, so Ray Data's stats still call the operator ``cls.__name__``.
    Defined here, it travels to the actor by value."""

    def schedstat() -> tuple[float, float] | None:
        try:  # on-CPU time and run-queue wait of this thread, ns (Linux)
            cpu, wait, _ = open("/proc/thread-self/schedstat").read().split()
            return int(cpu) / 1e9, int(wait) / 1e9
        except OSError:
            return None

    def process_started() -> float | None:
        import psutil

        try:  # this process's start on the monotonic clock (psutil: wall-clock start, 10 ms resolution)
            return time.perf_counter() - (time.time() - psutil.Process().create_time())
        except psutil.Error:
            return None

    class Recording(cls):
        def __init__(self, *args, **kwargs):
            t_init = time.perf_counter()  # the class (and its module's imports) is loaded by now
            s_init, c_init = schedstat(), time.process_time()
            super().__init__(*args, **kwargs)
            s_ready, c_ready = schedstat(), time.process_time()
            main = threading.current_thread() is threading.main_thread()
            with open(os.path.join(log_dir, f"init-{os.getpid()}.json"), "w") as f:
                json.dump({"process": process_started(), "init": t_init, "ready": time.perf_counter(),
                           # CPU of the whole process, and the main thread's on-CPU time and run-queue
                           # wait, until the constructor and until ready
                           "process_cpu": [c_init, c_ready], "thread_sched": [s_init, s_ready] if main else None}, f)

        def __call__(self, batch, batch_size=None):
            if not hasattr(self, "_calls_log"):
                self._calls_log = open(os.path.join(log_dir, f"calls-{os.getpid()}.jsonl"), "a")
            s0, c0, t0 = schedstat(), time.thread_time(), time.perf_counter()
            out = super().__call__(batch, batch_size)
            wall, cpu, s1 = time.perf_counter() - t0, time.thread_time() - c0, schedstat()
            wait = s1[1] - s0[1] if s0 and s1 else None
            self._calls_log.write(json.dumps({"start": t0, "wall": wall, "cpu": cpu, "wait": wait,
                                              "rows": batch.num_rows}) + "\n")
            self._calls_log.flush()
            return out

    Recording.__name__, Recording.__qualname__ = cls.__name__, cls.__qualname__
    return Recording


class _RecordCalls:
    """Within the block, the steps ``build()`` plans (``pipelines.build.plan_steps``) run ``stage`` as a
    recording subclass; ``summary(t0, t1)`` then decomposes the wall time ``t0..t1``
    (``time.perf_counter()`` of this process: on Linux the same monotonic clock as the actor's) from
    what the actor recorded. Only an actor stage is recorded (a CPU stage is constructed per block)."""

    def __init__(self, stage: str, log_dir: Path):
        self.stage, self.dir = stage, log_dir

    def __enter__(self):
        from pipelines import build as B
        from pipelines.steps import ActorStep

        self.dir.mkdir(parents=True, exist_ok=True)
        self._plan_steps = plan = B.plan_steps

        def recording_steps(*args, **kwargs):
            return [dataclasses.replace(s, stage=_recording_class(s.stage, str(self.dir)))
                    if s.name == self.stage and isinstance(s, ActorStep) else s for s in plan(*args, **kwargs)]

        B.plan_steps = recording_steps
        return self

    def __exit__(self, *exc):
        from pipelines import build as B

        B.plan_steps = self._plan_steps

    def wait_for_exit(self, timeout: float = 60.0) -> float:
        """Wait until the actor processes recorded here have exited (seconds waited): an actor that
        tears down (torch, transformers) while the next run's actor starts would slow that one's
        start-up, which a single build never sees."""
        import psutil

        pids = [int(f.stem.split("-")[1]) for f in self.dir.glob("init-*.json")]
        t = time.perf_counter()
        while time.perf_counter() - t < timeout:
            alive = []
            for pid in pids:
                try:
                    if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                        alive.append(pid)
                except psutil.NoSuchProcess:
                    continue
            if not alive:
                break
            time.sleep(0.05)
        return time.perf_counter() - t

    def summary(self, t0: float, t1: float) -> dict | None:
        logs = list(self.dir.glob("calls-*.jsonl"))
        calls = sorted((json.loads(line) for f in logs for line in f.read_text().splitlines()),
                       key=lambda c: c["start"])
        if not calls:
            return None
        first, last = calls[0]["start"], max(c["start"] + c["wall"] for c in calls)
        in_call = sum(c["wall"] for c in calls)
        cpu = sum(c["cpu"] for c in calls)
        waits = [c["wait"] for c in calls if c["wait"] is not None]
        wait = sum(waits) if len(waits) == len(calls) else None
        rows = sum(c["rows"] for c in calls)
        # the start-up, split: until the actor's process started, until its class was loaded (Ray's
        # and the stage module's imports), its constructor (model load), then waiting for input
        inits = [json.loads(f.read_text()) for f in self.dir.glob("init-*.json")]
        start_up = None
        if inits and all(i["process"] is not None for i in inits):
            i = min(inits, key=lambda i: i["ready"])
            start_up = {"process_start": round(i["process"] - t0, 2), "imports": round(i["init"] - i["process"], 2),
                        "constructor": round(i["ready"] - i["init"], 2), "wait_for_input": round(first - i["ready"], 2)}
            if i.get("thread_sched") and all(i["thread_sched"]):  # on CPU / waiting for a core / neither
                (c0, w0), (c1, w1) = i["thread_sched"]
                start_up["main_thread_on_cpu"] = {"imports": round(c0, 2), "constructor": round(c1 - c0, 2)}
                start_up["main_thread_run_queue_wait"] = {"imports": round(w0, 2), "constructor": round(w1 - w0, 2)}
                start_up["process_cpu"] = {"imports": round(i["process_cpu"][0], 2),
                                           "constructor": round(i["process_cpu"][1] - i["process_cpu"][0], 2)}
        # gaps between consecutive calls: the long ones are between blocks (Ray Data's per-task path),
        # the short ones between the batches of one block
        ends = [c["start"] + c["wall"] for c in calls]
        gaps = [b["start"] - e for e, b in zip(ends, calls[1:])]
        long_gaps = [g for g in gaps if g > 0.01]
        return {"first_call_s": round(first - t0, 2), "start_up_s": start_up, "in_calls_s": round(in_call, 2),
                "gaps_s": round(last - first - in_call, 2), "drain_s": round(t1 - last, 2),
                "gaps_over_10ms": {"count": len(long_gaps), "total_s": round(sum(long_gaps), 2),
                                   "median_ms": round(statistics.median(long_gaps) * 1e3, 1) if long_gaps else None},
                "on_cpu_s": round(cpu, 2), "run_queue_wait_s": round(wait, 2) if wait is not None else None,
                "other_in_calls_s": round(in_call - cpu - (wait or 0.0), 2),
                "on_cpu_share_of_calls": round(cpu / in_call, 3), "cpu_ms_per_row": round(cpu / rows * 1e3, 2),
                "calls": len(calls), "actors": len(logs)}


def _stage_alone_ray(cfg, name: str, source, clip_dim) -> float:
    """rows/s of model stage ``name`` run alone as its own Ray Data job over ``source`` (a dataset
    already materialised in the object store), with the actor pool ``build()`` gives it: like the
    pipeline, this includes starting the actor (process, imports, model load) and Ray Data's
    per-batch path; the in-process measurement includes neither."""
    from pipelines import build as B  # its plan_steps: recorded within _RecordCalls

    (step,) = [s for s in B.plan_steps(cfg, "tiny", clip_dim) if s.name == name]
    t = time.perf_counter()
    ds = step.apply(source, cfg.input.batch_rows)
    n = sum(b.num_rows for b in ds.iter_batches(batch_size=None, batch_format="pyarrow"))
    return n / (time.perf_counter() - t)


def _make_stages(cfg, clip_dim) -> tuple[dict, dict, dict]:
    """The stages as their actors/tasks build them (models loaded before any clock starts), with
    each one's batch size and the torch threads Ray would give its worker."""
    from pipelines.stages.aesthetic import AestheticScorer
    from pipelines.stages.decode import DecodeStage
    from pipelines.stages.detect import PersonDetector
    from pipelines.stages.person_filter import PersonFilter
    from pipelines.stages.resolution import ResolutionStage

    res = cfg.resources
    make = {"decode": (lambda: DecodeStage(cfg.decode, clip_dim), res.decode),
            "resolution": (lambda: ResolutionStage(cfg.resolution, clip_dim), res.decode),
            "detect": (lambda: PersonDetector(cfg.detect, "tiny", clip_dim), res.detect),
            "person_filter": (lambda: PersonFilter(cfg.person_filter, clip_dim), res.decode),
            "aesthetic": (lambda: AestheticScorer(cfg.aesthetic, "tiny", clip_dim), res.aesthetic)}
    stages = {name: make[name][0]() for name in STAGES}
    return (stages, {name: make[name][1].batch_size for name in STAGES},
            {name: ray_threads(make[name][1].num_cpus) for name in STAGES})


def _operator_totals(ray_stats: str) -> dict[str, dict[str, float]]:
    """Per operator of ``Dataset.stats()``: total remote wall and CPU seconds of its tasks."""
    unit = {"us": 1e-6, "ms": 1e-3, "s": 1.0}
    out = {}
    for block in re.split(r"\n(?=Operator \d+ )", ray_stats):
        head = re.match(r"Operator \d+ (.+?): \d+ tasks", block)
        if not head:
            continue
        name = re.sub(r"MapBatches\((\w+)\)", r"\1", head.group(1))
        out[name] = {}
        for key, label in (("wall_s", "Remote wall time"), ("cpu_s", "Remote cpu time")):
            m = re.search(label + r": .*?([\d.]+)(us|ms|s) total", block)
            if m:
                out[name][key] = float(m.group(1)) * unit[m.group(2)]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=960)
    ap.add_argument("--shards", type=int, default=4, help="source shards (folders) the images are spread over")
    ap.add_argument("--size", type=int, nargs=2, default=(384, 480))
    ap.add_argument("--rows-per-file", type=int, default=64, help="write.rows_per_file (commit granularity)")
    ap.add_argument("--batch-rows", type=int, default=64,
                    help="input.batch_rows: rows per block between the stages (one actor task per block)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="pipeline runs (the slowest stage alone is timed between them)")
    ap.add_argument("--all-cores", action="store_true",
                    help="also time the slowest stage alone with torch on every core (information only: "
                         "not what its actor gets, so not the reference of the ratios)")
    ap.add_argument("--chunk", type=int, default=960,
                    help="rows taken through the stages alone at a time (bounds the bench's memory)")
    ap.add_argument("--stats", action="store_true", help="also print Ray Data's Dataset.stats() to stderr")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

    with tempfile.TemporaryDirectory(prefix="hv-bench-builder-") as scratch:
        tmp = Path(scratch)
        make_tiny_zoo(tmp / "zoo")
        src = tmp / "in"
        _inputs(src, args.images, tuple(args.size), args.shards)

        from humanverse.shards import read_log
        from pipelines import readers
        from pipelines.build import PRESETS, build, load_config
        from pipelines.rows import from_source_rows
        from pipelines.stages.aesthetic import clip_embed_dim
        from pipelines.steps import ActorStep, plan_steps

        # bench config: the demo thresholds (tiny models) but nothing filtered after detect, so
        # every stage sees every row and "slowest stage alone" is well defined
        cfg = load_config(PRESETS / "demo.yaml", {"stages": STAGES,
                                                  "person_filter.min_area": 0.0, "person_filter.max_persons": 100,
                                                  "aesthetic.threshold": -1e9, "detect.score_threshold": 0.5,
                                                  "write.rows_per_file": args.rows_per_file,
                                                  "input.batch_rows": args.batch_rows,
                                                  "ray.temp_dir": f"/tmp/rb-{uuid.uuid4().hex[:6]}"})
        clip_dim = clip_embed_dim(cfg.aesthetic, "tiny")
        rows = [r for sh in readers.discover_shards(str(src)) for b in readers.read_shard(sh) for r in b]
        table = from_source_rows(rows, clip_dim)
        del rows

        stages, batches, threads = _make_stages(cfg, clip_dim)
        alone_all, alone_cpu = _stages_alone(stages, table, batches, threads, args.chunk)
        slowest = min(alone_all, key=alone_all.get)
        alone_slowest = [alone_all[slowest]]  # measured before, between and after the pipeline runs
        loads = [os.getloadavg()[0]]
        all_cores = (_stages_alone(stages, table, batches, {**threads, slowest: os.cpu_count()}, args.chunk,
                                   only=slowest)[0][slowest] if args.all_cores else None)
        (slowest_step,) = [s for s in plan_steps(cfg, "tiny", clip_dim) if s.name == slowest]
        actor = isinstance(slowest_step, ActorStep)

        import ray

        from pipelines.build import _init_ray

        # a local cluster; a warm-up build starts Ray's task workers (imports)
        _init_ray(cfg, None)
        with _RecordCalls(slowest, tmp / "calls-warm") as warm:
            build(str(src / "d0"), str(tmp / "warm"), cfg, models="tiny")
        warm.wait_for_exit()
        ray_source = None
        if actor:  # the slowest stage's input, in the object store in build()'s blocks
            rows_in = _stage_input(stages, table, batches, args.chunk, slowest)
            step = cfg.input.batch_rows
            ray_source = ray.data.from_arrow([rows_in.slice(o, step) for o in range(0, rows_in.num_rows, step)])
            ray_source = ray_source.materialize()
            del rows_in

        ray_job_calls: list = []
        alone_ray: list = []

        def ray_job_reference(tag: str) -> float:
            with _RecordCalls(slowest, tmp / f"calls-ray-job-{tag}") as rec:
                t = time.perf_counter()
                rate = _stage_alone_ray(cfg, slowest, ray_source, clip_dim)
                ray_job_calls.append(rec.summary(t, time.perf_counter()))
            rec.wait_for_exit()
            return rate

        if ray_source is not None:  # the Ray-job reference before the first run
            alone_ray.append(ray_job_reference("start"))
        runs = []
        for r in range(args.repeat):
            out = tmp / f"out{r}"
            load0, wall0, t0 = os.getloadavg()[0], time.time(), time.perf_counter()
            with _RecordCalls(slowest, tmp / f"calls-{r}") as rec:  # records nothing for a CPU stage
                rep = build(str(src), str(out), cfg, models="tiny")
            e2e_s = time.perf_counter() - t0
            calls = rec.summary(t0, t0 + e2e_s)
            rec.wait_for_exit()  # before the slowest stage is timed alone again
            if args.stats:
                sys.stderr.write(rep.ray_stats + "\n")
            n_rows = rep.rows_written + rep.rejects_written
            ops = _operator_totals(rep.ray_stats)
            # how long the slowest stage's actor was busy in its calls: the rest of the wall time is
            # start-up (actor process, imports, model load), idle gaps and the drain after its last batch
            busy = ops.get(slowest_step.stage.__name__, {}).get("wall_s") if actor else None
            recs = sorted((c for c in read_log(str(out)).records if c.rows), key=lambda c: c.created)
            span = recs[-1].created - recs[0].created if recs else 0.0
            steady = (sum(c.rows for c in recs) - recs[0].rows) / span if span > 0 else float("nan")
            alone_slowest.append(_stages_alone(stages, table, batches, threads, args.chunk, only=slowest)[0][slowest])
            ref_ray = None
            if ray_source is not None:  # the Ray-job reference either side of this run
                alone_ray.append(ray_job_reference(str(r)))
                ref_ray = (alone_ray[-2] + alone_ray[-1]) / 2
            loads.append(os.getloadavg()[0])
            ref = (alone_slowest[-2] + alone_slowest[-1]) / 2  # the slowest stage alone, either side
            if calls:  # e2e - rows/alone, split into its parts (they add up to it by construction)
                calls["loss_vs_alone_s"] = {
                    "start_up": calls["first_call_s"], "gaps": calls["gaps_s"], "drain": calls["drain_s"],
                    "run_queue_wait": calls["run_queue_wait_s"],
                    "slower_compute": round(calls["in_calls_s"] - (calls["run_queue_wait_s"] or 0.0) - n_rows / ref, 2)}
            runs.append({
                "rows": n_rows, "load_avg_1min": round(load0, 1), "slowest_alone_rows_per_s": round(ref, 1),
                "end_to_end_s": round(e2e_s, 2), "end_to_end_rows_per_s": round(n_rows / e2e_s, 1),
                "ratio_end_to_end": round(n_rows / e2e_s / ref, 3),
                "slowest_alone_ray_job_rows_per_s": round(ref_ray, 1) if ref_ray else None,
                "ratio_end_to_end_vs_ray_job": round(n_rows / e2e_s / ref_ray, 3) if ref_ray else None,
                "time_to_first_commit_s": round(recs[0].created - wall0, 2) if recs else None,
                "commits": len(recs),
                "steady_state_rows_per_s": round(steady, 1), "ratio_steady_state": round(steady / ref, 3),
                "slowest_busy_s": round(busy, 2) if busy else None,
                "ratio_while_busy": round(n_rows / busy / ref, 3) if busy else None,
                "not_busy_s": round(e2e_s - busy, 2) if busy else None,
                "pipeline_cpu_ms_per_row": {k: round(v["cpu_s"] / n_rows * 1e3, 2)
                                            for k, v in ops.items() if "cpu_s" in v and n_rows},
                "slowest_calls": calls,
            })
        ray.shutdown()

        def med(key):
            vals = [x[key] for x in runs if x[key] is not None]
            return round(statistics.median(vals), 3) if vals else None

        print(json.dumps({
            "benchmark": "builder.end_to_end_vs_slowest_stage",
            "images": args.images, "source_shards": args.shards, "image_size": list(args.size), "models": "tiny",
            "write_rows_per_file": args.rows_per_file, "input_batch_rows": args.batch_rows,
            "this_process_niceness": os.nice(0),
            "stage_alone_rows_per_s": {k: round(v, 1) for k, v in alone_all.items()},
            "stage_alone_cpu_ms_per_row": {k: round(v, 2) for k, v in alone_cpu.items()},
            "stage_alone_torch_threads": threads,
            "slowest_stage_alone_all_cores_rows_per_s": round(all_cores, 1) if all_cores else None,
            "slowest_stage": slowest,
            "slowest_stage_alone_rows_per_s_each_time": [round(v, 1) for v in alone_slowest],
            "load_avg_1min_each_alone": [round(v, 1) for v in loads],
            "slowest_stage_alone_ray_job_rows_per_s_each_time": [round(v, 1) for v in alone_ray],
            "slowest_calls_in_ray_job_reference": ray_job_calls,
            "ratio_end_to_end_vs_slowest": med("ratio_end_to_end"),
            "ratio_end_to_end_vs_slowest_as_ray_job": med("ratio_end_to_end_vs_ray_job"),
            "ratio_steady_state_vs_slowest": med("ratio_steady_state"),
            "ratio_while_busy_vs_slowest": med("ratio_while_busy"),
            "time_to_first_commit_s": med("time_to_first_commit_s"),
            "target_ratio": 0.9,
            "runs": runs,
            "decode_cpu_ms_per_image": round(alone_cpu["decode"], 2),
            "note": "ratios are medians over runs, each against the slowest stage alone measured just "
                    "before and after it; end_to_end includes actor start-up and model loading; "
                    "steady_state is measured between the first and the last commit of the commit log.",
            "machine": machine(),
        }, indent=2))


if __name__ == "__main__":
    main()
