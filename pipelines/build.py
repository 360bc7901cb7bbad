"""``humanverse build`` / ``python -m pipelines.build``: the HumanVerse builder on Ray Data.

HyperHuman §4's funnel, cheapest stage first so expensive models only see survivors, then the
annotators on the survivors::

    read shards -> decode (CPU tasks) -> resolution -> detect (actors) -> person filter
      -> aesthetic -> outpaint -> pose -> depth -> normal -> caption -> write (exactly-once commits)

Resume: the unit of work is the source shard. On start the sink fences earlier runs and recovers
(:mod:`humanverse.shards`); shards whose committed rows add up to their size are skipped, and
for partly done shards the committed ``source_index`` values are skipped by the reader. Re-run the
same command after any crash: every source row ends exactly once in ``data/`` or ``rejects/``.

This is the ``ray job submit`` entrypoint: ``ray job submit --working-dir . -- python -m
pipelines.build INPUT OUTPUT --config FILE.yaml``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from pipelines.configs import ConfigError, check, load_yaml, to_dict
from pipelines.cores import WORKER_CORES_ENV, SpawnWatcher, child_pids, cores_value, set_process_affinity
from pipelines.geometry import MapsConfig
from pipelines.stages.aesthetic import AestheticConfig, AestheticScorer, clip_embed_dim
from pipelines.stages.base import worker_logging
from pipelines.stages.caption import CaptionConfig, Captioner
from pipelines.stages.decode import DecodeConfig, DecodeStage
from pipelines.stages.depth import DepthConfig, DepthEstimator
from pipelines.stages.detect import DetectConfig, PersonDetector
from pipelines.stages.normal import NormalConfig, NormalEstimator
from pipelines.stages.outpaint import OutpaintConfig, Outpainter
from pipelines.stages.person_filter import PersonFilter, PersonFilterConfig
from pipelines.stages.pose import PoseConfig, PoseEstimator
from pipelines.stages.resolution import ResolutionConfig, ResolutionStage

log = logging.getLogger("pipelines.build")

#: Stage order (cheapest first). ``decode`` always runs; the others can be left out by config.
STAGE_ORDER = ("decode", "resolution", "detect", "person_filter", "aesthetic", "outpaint", "pose", "depth",
               "normal", "caption")
#: Model stages: (actor class, config attribute). Each gets ``resources.<stage>``.
MODEL_STAGES = {"detect": PersonDetector, "aesthetic": AestheticScorer, "outpaint": Outpainter,
                "pose": PoseEstimator, "depth": DepthEstimator, "normal": NormalEstimator, "caption": Captioner}
PRESETS = Path(__file__).parent / "presets"


@dataclass(frozen=True)
class Resources:
    """Ray resources of one stage. Model stages run as actor pools of ``concurrency`` actors.

    ``batch_size`` is the model batch of a model stage; ``resources.decode`` sets the CPU stages
    (decode, resolution, person filter: tasks, one per block, ``batch_size`` rows at a time).
    ``dedicated_cores`` (model stages, local clusters on Linux): see :func:`core_plan`.
    """

    batch_size: int = 16
    concurrency: int = 1
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    #: cores of their own for this stage's actors when ``build()`` starts a local cluster (a CPU-only
    #: machine's bottleneck stage): they run there alone; Ray, the driver and every other stage run on
    #: the remaining cores. 0: share every core (the default; ignored when attaching to a cluster).
    dedicated_cores: int = 0

    def __post_init__(self):
        check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}.")
        check(self.concurrency >= 1, f"concurrency must be >= 1, got {self.concurrency}.")
        check(self.num_cpus >= 0 and self.num_gpus >= 0, "num_cpus and num_gpus must be >= 0.")
        check(self.dedicated_cores >= 0, f"dedicated_cores must be >= 0, got {self.dedicated_cores}.")


@dataclass(frozen=True)
class ResourcesConfig:
    """Defaults for a GPU node (see presets/gpu-node.yaml); presets/cpu.yaml for laptops and CI."""

    read: Resources = Resources(batch_size=1, concurrency=8, num_cpus=0.5)
    decode: Resources = Resources(batch_size=64, concurrency=8, num_cpus=1.0)
    detect: Resources = Resources(batch_size=16, concurrency=2, num_cpus=1.0, num_gpus=0.25)
    aesthetic: Resources = Resources(batch_size=64, concurrency=2, num_cpus=1.0, num_gpus=0.25)
    outpaint: Resources = Resources(batch_size=4, concurrency=4, num_cpus=1.0, num_gpus=1.0)
    pose: Resources = Resources(batch_size=16, concurrency=2, num_cpus=1.0, num_gpus=0.5)
    depth: Resources = Resources(batch_size=16, concurrency=1, num_cpus=1.0, num_gpus=0.25)
    normal: Resources = Resources(batch_size=16, concurrency=1, num_cpus=1.0, num_gpus=0.25)
    caption: Resources = Resources(batch_size=16, concurrency=2, num_cpus=1.0, num_gpus=0.5)
    #: write tasks (batch_size unused: see write.rows_per_file). Fractional CPUs, so writes are
    #: never starved by actor pools holding every CPU (then nothing commits until the end).
    write: Resources = Resources(batch_size=1, concurrency=4, num_cpus=0.25)


@dataclass(frozen=True)
class InputConfig:
    #: image-bytes column of Parquet inputs (default: jpg/png/webp/image/image_bytes/bytes)
    image_column: str | None = None
    #: images per source shard for image folders
    folder_shard_size: int = 1000
    #: rows per block leaving the reader: the unit that flows between stages (an actor call gets
    #: whole blocks, bundled up to its batch_size). Small enough that the stages overlap (a block
    #: per source shard made them run one after the other), large enough to amortise per-block cost.
    batch_rows: int = 64

    def __post_init__(self):
        check(self.folder_shard_size >= 1, f"input.folder_shard_size must be >= 1, got {self.folder_shard_size}.")
        check(self.batch_rows >= 1, f"input.batch_rows must be >= 1, got {self.batch_rows}.")


@dataclass(frozen=True)
class WriteConfig:
    #: rows gathered per write call (one data file + one rejects file each): larger files read
    #: faster; smaller ones commit progress more often (less work redone after a crash)
    rows_per_file: int = 256

    def __post_init__(self):
        check(self.rows_per_file >= 1, f"write.rows_per_file must be >= 1, got {self.rows_per_file}.")


@dataclass(frozen=True)
class RayConfig:
    #: logical CPUs of a local cluster (None: all); ignored when attaching to a cluster
    num_cpus: int | None = None
    progress_bars: bool = True
    #: Ray's session folder for a local cluster (keep it short: socket paths are limited)
    temp_dir: str | None = None
    #: the cluster adds nodes on demand (KubeRay / cluster-launcher autoscaling, e.g. a GPU group with
    #: minReplicas 0): GPUs or CPUs it lacks at submission only warn instead of refusing the config
    autoscaling: bool = False
    #: Ray Data's target block size in MiB (None: Ray's default, 128): an upper bound on the bytes of
    #: a block. Rows per block are set by ``input.batch_rows``; this only matters for very large images.
    target_max_block_mb: int | None = None
    #: nice value of the worker processes of a local cluster (None: Ray's default, 15, which yields the
    #: CPU to everything else on a shared machine; 0 runs them like the driver); ignored when attaching
    worker_niceness: int | None = None

    def __post_init__(self):
        check(self.worker_niceness is None or 0 <= self.worker_niceness <= 19,
              f"ray.worker_niceness must be in [0, 19] or null, got {self.worker_niceness}.")


@dataclass(frozen=True)
class BuildConfig:
    stages: tuple[str, ...] = STAGE_ORDER
    input: InputConfig = InputConfig()
    decode: DecodeConfig = DecodeConfig()
    resolution: ResolutionConfig = ResolutionConfig()
    detect: DetectConfig = DetectConfig()
    person_filter: PersonFilterConfig = PersonFilterConfig()
    aesthetic: AestheticConfig = AestheticConfig()
    outpaint: OutpaintConfig = OutpaintConfig()
    pose: PoseConfig = PoseConfig()
    depth: DepthConfig = DepthConfig()
    normal: NormalConfig = NormalConfig()
    caption: CaptionConfig = CaptionConfig()
    maps: MapsConfig = MapsConfig()
    write: WriteConfig = WriteConfig()
    resources: ResourcesConfig = ResourcesConfig()
    ray: RayConfig = RayConfig()

    def __post_init__(self):
        unknown = [s for s in self.stages if s not in STAGE_ORDER]
        check(not unknown, f"stages: unknown stage(s) {unknown}; known stages are {list(STAGE_ORDER)}.")
        check("decode" in self.stages, "stages: 'decode' cannot be left out (it hashes, validates and stores images).")
        check("person_filter" not in self.stages or "detect" in self.stages,
              "stages: 'person_filter' needs 'detect'.")
        check("pose" not in self.stages or "detect" in self.stages, "stages: 'pose' needs 'detect' (top-down pose).")
        check(len(set(self.stages)) == len(self.stages), f"stages: {list(self.stages)} lists a stage twice.")
        for name in ("read", "decode", "write"):
            n = getattr(self.resources, name).dedicated_cores
            check(n == 0, f"resources.{name}.dedicated_cores is {n}, but only model stages (actor pools) can "
                          f"have cores of their own.")

    @property
    def ordered_stages(self) -> list[str]:
        return [s for s in STAGE_ORDER if s in self.stages]


#: Config sections that may change between a run and its resume (they change how, not what).
RESUMABLE_SECTIONS = ("write", "resources", "ray")


def load_config(path: str | Path | None, overrides: dict | None = None) -> BuildConfig:
    return load_yaml(BuildConfig, path, overrides)


def config_fingerprint(cfg: BuildConfig, models: str) -> dict:
    """What must not change between a run and its resume: the config (minus resources) and models."""
    d = to_dict(cfg)
    for k in RESUMABLE_SECTIONS:
        d.pop(k)
    return {**d, "models": models}


def _diff(a, b, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else k)
        return out
    return [] if a == b else [f"{prefix}: {a!r} -> {b!r}"]


@dataclass
class BuildReport:
    output: str
    shards_total: int
    shards_skipped: int
    rows_written: int
    rejects_written: int
    seconds: float
    funnel: dict = field(default_factory=dict)
    #: Ray Data's per-operator execution stats of this run (``Dataset.stats()``), "" if nothing ran
    ray_stats: str = ""


# -- the graph's functions (module level so Ray can pickle them) ------------------------------------


def _read_shards(batch: pa.Table, input_cfg: InputConfig, clip_dim: int | None):
    from pipelines import readers
    from pipelines.rows import from_source_rows

    for item in batch.to_pylist():
        shard = readers.SourceShard(**json.loads(item["shard"]))
        skip = frozenset(json.loads(item["skip"]))
        for rows in readers.read_shard(shard, skip=skip, batch_rows=input_cfg.batch_rows,
                                       image_column=input_cfg.image_column):
            if rows:
                yield from_source_rows(rows, clip_dim)


def _in_sub_batches(stage, block: pa.Table, batch_size: int) -> pa.Table:
    """``stage`` called on ``block`` ``batch_size`` rows at a time: its outputs as one table whose
    columns are one chunk each.

    Ray serialises a block that leaves a task column by column and chunk by chunk, in Python
    (``ray._private.arrow_serialization``), and the next stage's batcher combines the chunks again:
    a 64-row in-flight block made of 8 batch outputs took 22 ms to serialise, against 3 ms plus 2 ms
    to combine as one chunk (BENCHMARKS.md, builder, session 8), ~45 ms of Ray Data's per-block time
    in the slowest stage's actor.
    """
    if block.num_rows <= batch_size:
        return stage(block)
    outs = [stage(block.slice(off, batch_size)) for off in range(0, block.num_rows, batch_size)]
    return pa.concat_tables(outs).combine_chunks()


def _cpu_stage(batch: pa.Table, factory, batch_size: int) -> pa.Table:
    """Run a CPU stage over one block, ``batch_size`` rows at a time.

    The CPU stages are mapped with ``batch_size=None`` (one call per block) and cut the block here:
    a ``map_batches(batch_size=N)`` fused after the reader makes Ray Data bundle N *input items*
    (N whole source shards) into one read task, which serialised the whole run (BENCHMARKS.md).
    """
    return _in_sub_batches(factory(), batch, batch_size)


def _whole_blocks(cls, batch_size: int):
    """``cls`` called by Ray Data on whole blocks (``map_batches(batch_size >= input.batch_rows)``) that
    calls the stage itself ``batch_size`` rows at a time and returns one chunk per column
    (:func:`_in_sub_batches`); same name, so Ray Data's stats still say ``cls.__name__``."""

    class WholeBlocks(cls):
        def __call__(self, block: pa.Table) -> pa.Table:
            return _in_sub_batches(super().__call__, block, batch_size)

    WholeBlocks.__name__, WholeBlocks.__qualname__ = cls.__name__, cls.__qualname__
    return WholeBlocks


@dataclass(frozen=True)
class CorePlan:
    """Which cores of this machine each model stage with ``dedicated_cores`` gets, and the rest."""

    #: cores left for Ray's processes, the driver, the CPU tasks and the other model stages
    shared: tuple[int, ...]
    #: model stage -> its cores (shared by that stage's actors)
    stages: dict[str, tuple[int, ...]]


def core_plan(cfg: BuildConfig, available: set[int] | None = None) -> CorePlan | None:
    """The cores of ``resources.<stage>.dedicated_cores`` (None when no stage asks for any).

    For CPU-only machines, where the slowest model stage shares its cores with everything else: on
    2 cores its actor waited ~7 % of its compute time for a core that another process held, although
    the machine was only ~85 % busy, and no nice value helped; a core of its own brought that to
    ~1.7 % (BENCHMARKS.md, builder). The highest-numbered ``available`` cores (default: those this
    process may run on) go to the stages in stage order; at least one core stays shared.
    """
    want = {s: getattr(cfg.resources, s).dedicated_cores for s in cfg.ordered_stages
            if s in MODEL_STAGES and getattr(cfg.resources, s).dedicated_cores > 0}
    if not want:
        return None
    if not hasattr(os, "sched_setaffinity"):
        raise ConfigError("resources.<stage>.dedicated_cores needs Linux (CPU affinity); set it to 0 on this system.")
    cores = sorted(available if available is not None else os.sched_getaffinity(0))
    need = sum(want.values())
    if need >= len(cores):
        raise ConfigError(
            f"resources.<stage>.dedicated_cores ask for {need} cores ({', '.join(f'{s}: {n}' for s, n in want.items())}) "
            f"but this process may run on {len(cores)} (CPUs {cores}), and at least one must stay for Ray, the "
            f"driver and the other stages; lower them.")
    stages, end = {}, len(cores)
    for stage, n in want.items():
        stages[stage] = tuple(cores[end - n:end])
        end -= n
    return CorePlan(shared=tuple(cores[:end]), stages=stages)


@contextlib.contextmanager
def _thread_on_cores(cores):
    """Run the block with this thread on ``cores`` (None: unchanged); what it starts inherits them."""
    if cores is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cores)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def _on_cores(cls, cores: tuple[int, ...], dedicated: bool, threads: int | None):
    """``cls`` whose actor first moves onto ``cores`` (and, given ``threads``, sets torch's intra-op
    threads to it) and logs where it runs; same name, so Ray Data's stats still say ``cls.__name__``."""

    class OnCores(cls):
        def __init__(self, *args, **kwargs):
            worker_logging()
            since_start = os.sched_getaffinity(0) == set(cores)  # moved as it started (SpawnWatcher, worker_setup)
            set_process_affinity(cores)
            if threads is not None:
                import torch

                torch.set_num_threads(threads)
            log.info("%s actor (pid %d) runs on CPUs %s (%s, %s), nice %d", cls.__name__, os.getpid(), list(cores),
                     "dedicated" if dedicated else "shared",
                     "since its process started" if since_start else "moved there now", os.nice(0))
            super().__init__(*args, **kwargs)

    OnCores.__name__, OnCores.__qualname__ = cls.__name__, cls.__qualname__
    return OnCores


#: (node id, core plan) of the local cluster ``_init_ray`` started with ``dedicated_cores``: its GCS,
#: raylet and agents run on the plan's shared cores (inherited from the thread that started them), and
#: each worker moves onto the cores its runtime env names as soon as the raylet starts it
#: (``pipelines.cores``: a watcher in this process, and each worker's setup hook as the fallback).
_LOCAL_CLUSTER_CORES: tuple[str, CorePlan] | None = None
#: The watchers of that cluster's raylet (they end with it).
_SPAWN_WATCHERS: list[SpawnWatcher] = []


def _init_ray(cfg: BuildConfig, address: str | None, plan: CorePlan | None = None) -> bool:
    """Connect to Ray (or start a local cluster laid out on ``plan``'s cores, see
    ``_LOCAL_CLUSTER_CORES``); True when this call started a local cluster."""
    global _LOCAL_CLUSTER_CORES, _SPAWN_WATCHERS
    import ray

    started_local = False
    if not ray.is_initialized():
        if address or os.environ.get("RAY_ADDRESS"):
            ray.init(address=address, log_to_driver=True)
        else:
            system = {"worker_niceness": cfg.ray.worker_niceness} if cfg.ray.worker_niceness is not None else None
            # with dedicated cores, every worker moves onto the cores its runtime env names: the shared
            # ones, or its stage's (map_model_stage sets WORKER_CORES_ENV in its runtime env)
            env = ({"worker_process_setup_hook": "pipelines.cores.worker_setup",
                    "env_vars": {WORKER_CORES_ENV: cores_value(plan.shared)}} if plan else None)
            with _thread_on_cores(plan.shared if plan else None):
                ray.init(address="local", num_cpus=cfg.ray.num_cpus, include_dashboard=False,
                         _temp_dir=cfg.ray.temp_dir, log_to_driver=True, _system_config=system, runtime_env=env)
                if plan:  # the raylet starts the workers on the shared cores: a dedicated stage's actor
                    # moves onto its own as soon as it is started, not queued behind the first tasks
                    _SPAWN_WATCHERS = [SpawnWatcher(pid) for pid in child_pids("raylet")]
            started_local = True
            node = ray.get_runtime_context().get_node_id()
            _LOCAL_CLUSTER_CORES = (node, plan) if plan else None
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = cfg.ray.progress_bars
    if cfg.ray.target_max_block_mb is not None:
        ctx.target_max_block_size = cfg.ray.target_max_block_mb * 1024 * 1024
    return started_local


def _active_core_plan(plan: CorePlan | None) -> CorePlan | None:
    """``plan`` if the Ray cluster now connected was started on it by this process, else None (and a
    warning: an existing cluster's processes cannot be moved)."""
    import ray

    if plan is None:
        return None
    if _LOCAL_CLUSTER_CORES == (ray.get_runtime_context().get_node_id(), plan):
        return plan
    log.warning("resources.<stage>.dedicated_cores %s ignored: it applies only to a local cluster that this "
                "process starts (it places that cluster's processes itself), not to one already running.",
                {s: len(c) for s, c in plan.stages.items()})
    return None


def _zoo_models(cfg: BuildConfig) -> list[tuple[str, str]]:
    """(stage, zoo entry) of every pretrained model this config loads."""
    out = [("aesthetic", "clip-vit-l14"), ("aesthetic", "aesthetic-mlp"), ("outpaint", "sd2-inpainting"),
           ("normal", "omnidata-normal"), ("caption", "blip2-opt-2.7b")]
    if cfg.detect.backend == "yolos":
        out.append(("detect", "yolos-tiny"))
    if cfg.pose.backend == "vitpose":
        out.append(("pose", "vitpose-wholebody"))
    out.append(("depth", "midas-dpt-hybrid" if cfg.depth.backend == "midas" else "omnidata-depth"))
    return out


def _check_gpus(cfg: BuildConfig) -> None:
    import ray

    have = ray.cluster_resources().get("GPU", 0)
    for stage in MODEL_STAGES:
        need = getattr(cfg.resources, stage).num_gpus
        if stage in cfg.stages and need > 0 and have == 0:
            msg = (f"resources.{stage}.num_gpus is {need} but the Ray cluster has no GPUs; set it to 0 "
                   f"(e.g. --config {PRESETS / 'cpu.yaml'}) or attach to a GPU cluster with --address")
            if cfg.ray.autoscaling:  # GPU nodes may still be added (minReplicas 0)
                log.warning("%s (waiting for the autoscaler to add GPU nodes: ray.autoscaling is true).", msg)
                return
            raise ConfigError(msg + ".")


#: CPUs one of Ray Data's own tasks asks for (the repartition into ``input.batch_rows`` blocks).
RAY_DATA_TASK_CPUS = 1.0


def cpu_shortfall(cfg: BuildConfig, cluster_cpus: float) -> str | None:
    """Why ``cfg``'s actor pools would leave no CPU for the tasks of a ``cluster_cpus`` cluster, or None.

    Actors hold their CPUs for the whole run; Ray then never schedules a task that does not fit in
    what is left and the build waits forever (Ray only logs a warning), so this is checked first.
    """
    res = cfg.resources
    actors = sum(getattr(res, s).concurrency * getattr(res, s).num_cpus for s in MODEL_STAGES if s in cfg.stages)
    task = max(RAY_DATA_TASK_CPUS, res.read.num_cpus, res.decode.num_cpus, res.write.num_cpus)
    if actors + task <= cluster_cpus:
        return None
    return (f"the model stages' actor pools hold {actors:g} CPUs (resources.<stage>.concurrency x num_cpus) and "
            f"the read, decode, repartition and write tasks need {task:g} more, but the Ray cluster has "
            f"{cluster_cpus:g} CPUs, so the build would wait forever; lower resources.<stage>.num_cpus (fractions "
            f"work, as in {PRESETS / 'cpu.yaml'}) or give the cluster more CPUs (ray.num_cpus for a local cluster).")


def map_model_stage(ds, cfg: BuildConfig, stage: str, models: str, clip_dim: int | None,
                    plan: CorePlan | None = None):
    """``ds`` followed by model stage ``stage`` as an actor pool sized by ``resources.<stage>``
    (each actor loads its model once, on its worker), called on whole blocks and running the model
    ``resources.<stage>.batch_size`` rows at a time (:func:`_whole_blocks`). With a core ``plan``
    (:func:`core_plan`) the actors first move onto their stage's dedicated cores, or the shared ones."""
    import ray

    r = getattr(cfg.resources, stage)
    kwargs = {"config": getattr(cfg, stage), "models": models, "clip_dim": clip_dim}
    if stage in ("depth", "normal"):
        kwargs["maps"] = cfg.maps
    cls = _whole_blocks(MODEL_STAGES[stage], r.batch_size)
    remote = {}
    if plan is not None:
        own = plan.stages.get(stage)
        # torch follows the cores a dedicated stage's actors share (Ray's OMP_NUM_THREADS follows num_cpus)
        threads = max(1, len(own) // r.concurrency) if own and len(own) > 1 else None
        cls = _on_cores(cls, own or plan.shared, own is not None, threads)
        if own:  # the actor's process moves there as soon as it is started (SpawnWatcher, worker_setup)
            remote["runtime_env"] = {"env_vars": {WORKER_CORES_ENV: cores_value(own)}}
    # whole blocks per call, or batches of several blocks where the stage's batch is larger
    return ds.map_batches(cls, fn_constructor_kwargs=kwargs, batch_size=max(r.batch_size, cfg.input.batch_rows),
                          batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=r.concurrency),
                          num_cpus=r.num_cpus, num_gpus=r.num_gpus, **remote)


def build(input: str, output: str, cfg: BuildConfig, *, models: str = "paper", address: str | None = None,
          force_new_config: bool = False) -> BuildReport:
    """Run the builder from ``input`` (folder, webdataset tars, Parquet) into dataset ``output``."""
    import ray

    import humanverse
    from humanverse.shards import ShardSink, read_manifest
    from humanverse.zoo import resolve
    from pipelines import readers
    from pipelines.annotators.omnidata import TINY_BUILDERS as OMNIDATA_TINY_BUILDERS  # imports torch
    from pipelines.sink import make_datasink

    t0 = time.perf_counter()
    plan = core_plan(cfg)  # before any work: too many dedicated cores is a config error
    shards = readers.discover_shards(input, image_column=cfg.input.image_column,
                                     folder_shard_size=cfg.input.folder_shard_size)
    clip_dim = clip_embed_dim(cfg.aesthetic, models) if ("aesthetic" in cfg.stages and cfg.aesthetic.store_embedding) else None
    fingerprint = config_fingerprint(cfg, models)
    existing = read_manifest(output)
    if existing is not None and existing.get("fingerprint") not in (None, fingerprint) and not force_new_config:
        changes = _diff(existing["fingerprint"], fingerprint)
        raise ConfigError(
            f"{output} was built with a different config ({'; '.join(changes[:5])}); re-run with the "
            f"recorded config (humanverse.json) or pass --force-new-config to continue with the new one."
        )
    model_tags = {}
    overrides = {"clip-vit-l14": cfg.aesthetic.clip_model, "aesthetic-mlp": cfg.aesthetic.mlp_model}
    for stage, name in _zoo_models(cfg):
        if stage in cfg.stages:
            spec = overrides.get(name, getattr(getattr(cfg, stage), "model", None)) or models
            model_tags[name] = resolve(name, spec, builders=OMNIDATA_TINY_BUILDERS).tag
    manifest = {
        "fingerprint": fingerprint, "config": to_dict(cfg), "models": model_tags, "clip_dim": clip_dim,
        "input": input, "source_shards": {s.name: s.size for s in shards},
        "banner": ("Annotations from tiny random models: meaningless; only the mechanics are real."
                   if models == "tiny" else None),
    }
    if existing and existing.get("source_shards"):
        manifest["source_shards"] = {**existing["source_shards"], **manifest["source_shards"]}
    sink = ShardSink.open(output, manifest=manifest)
    sizes = {s.name: s.size for s in shards}
    done = sink.state.complete_shards(sizes)
    todo = [s for s in shards if s.name not in done]
    committed = sink.state.rows_per_shard()
    partial = [s.name for s in todo if committed.get(s.name)]
    keys = sink.committed_keys(partial) if partial else set()
    log.info("%d source shards (%d rows): %d complete, %d to do (%d partly done)", len(shards),
             sum(sizes.values()), len(done), len(todo), len(partial))
    summary_rows, ray_stats = (0, 0), ""
    if todo:
        started_local = _init_ray(cfg, address, plan)
        plan = _active_core_plan(plan)
        _check_gpus(cfg)
        shortfall = cpu_shortfall(cfg, ray.cluster_resources().get("CPU", 0))
        if shortfall and started_local and not cfg.ray.autoscaling:
            raise ConfigError(shortfall)
        if shortfall:  # an existing cluster may still add nodes (autoscaling)
            log.warning("%s (unless the cluster adds nodes)", shortfall)
        with _thread_on_cores(plan.shared if plan else None):  # Ray Data's executor threads inherit it
            items = [{"shard": json.dumps(dataclasses.asdict(s)),
                      "skip": json.dumps(sorted(i for sh, i in keys if sh == s.name))} for s in todo]
            res = cfg.resources
            ds = ray.data.from_items(items, override_num_blocks=len(items))
            ds = ds.map_batches(_read_shards, fn_kwargs={"input_cfg": cfg.input, "clip_dim": clip_dim},
                                batch_size=1, batch_format="pyarrow", num_cpus=res.read.num_cpus,
                                compute=ray.data.TaskPoolStrategy(size=res.read.concurrency))
            # Blocks of input.batch_rows rows from here on. A read task's output is otherwise coalesced
            # up to Ray's target block size (128 MiB): a whole source shard of small images became one
            # block, so each stage saw a few large blocks and waited for the previous one to finish
            # them (BENCHMARKS.md). A streaming repartition: no barrier, no shuffle.
            ds = ds.repartition(target_num_rows_per_block=cfg.input.batch_rows)
            cpu = {"batch_format": "pyarrow", "batch_size": None, "num_cpus": res.decode.num_cpus,
                   "compute": ray.data.TaskPoolStrategy(size=res.decode.concurrency)}
            cpu_factories = {"decode": functools.partial(DecodeStage, cfg.decode, clip_dim),
                             "resolution": functools.partial(ResolutionStage, cfg.resolution, clip_dim),
                             "person_filter": functools.partial(PersonFilter, cfg.person_filter, clip_dim)}
            for stage in cfg.ordered_stages:
                if stage in cpu_factories:
                    ds = ds.map_batches(_cpu_stage, fn_kwargs={"factory": cpu_factories[stage],
                                                               "batch_size": res.decode.batch_size}, **cpu)
                else:
                    ds = map_model_stage(ds, cfg, stage, models, clip_dim, plan)
            datasink = make_datasink(sink.writer(), clip_dim, cfg.write.rows_per_file)
            ds.write_datasink(datasink, ray_remote_args={"num_cpus": res.write.num_cpus},
                              concurrency=res.write.concurrency)
            summary_rows = (datasink.summary.data_rows, datasink.summary.reject_rows)
            written = getattr(ds, "_write_ds", None)  # what write_datasink executed (holds the stats)
            ray_stats = written.stats() if written is not None else ""
        log.debug("Ray Data stats:\n%s", ray_stats)
    sink.close()
    ds_read = humanverse.open(output)
    stats = ds_read.stats()
    report = BuildReport(output=output, shards_total=len(shards), shards_skipped=len(done),
                         rows_written=summary_rows[0], rejects_written=summary_rows[1],
                         seconds=time.perf_counter() - t0, funnel=stats.get("funnel", {}),
                         ray_stats=ray_stats)
    log.info("build finished in %.1f s: this run wrote %d rows and %d rejects; dataset now %d rows, %d rejects",
             report.seconds, summary_rows[0], summary_rows[1], ds_read.num_rows("data"), ds_read.num_rows("rejects"))
    return report


# -- command line ---------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", help="image folder, folder of webdataset .tar shards, or of .parquet files")
    p.add_argument("output", help="dataset root (local path or URL)")
    p.add_argument("--config", help=f"YAML config (presets in {PRESETS})")
    p.add_argument("--models", default="paper", help="tiny | paper | DIR (one sub-folder per zoo entry)")
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local cluster)")
    p.add_argument("--image-column", help="image-bytes column of Parquet inputs")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value, e.g. --set detect.score_threshold=0.7 (YAML value)")
    p.add_argument("--force-new-config", action="store_true",
                   help="continue an existing dataset with a config that differs from humanverse.json")


def run_from_args(args: argparse.Namespace) -> int:
    import yaml

    from humanverse.stats import format_stats

    overrides = {}
    for kv in args.set:
        if "=" not in kv:
            raise ConfigError(f"--set expects KEY=VALUE, got {kv!r}.")
        k, v = kv.split("=", 1)
        overrides[k] = yaml.safe_load(v)
    if args.image_column:
        overrides["input.image_column"] = args.image_column
    cfg = load_config(args.config, overrides)
    if not Path(args.input).exists() and "://" not in args.input:
        raise ConfigError(f"input {args.input} does not exist.")
    if args.models not in ("tiny", "paper") and not Path(args.models).is_dir():
        raise ConfigError(f"--models must be 'tiny', 'paper' or an existing directory, got {args.models!r}.")
    build(args.input, args.output, cfg, models=args.models, address=args.address,
          force_new_config=args.force_new_config)
    import humanverse

    sys.stdout.write(format_stats(humanverse.open(args.output).stats()) + "\n")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.build", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    try:
        return run_from_args(args)
    except (ValueError, FileNotFoundError) as e:  # ConfigError, bad model specs, missing inputs
        log.debug("details", exc_info=True)
        log.error("%s", e)
        return 2


if __name__ == "__main__":
    sys.exit(main())
