"""``humanverse build`` / ``python -m pipelines.build``: the HumanVerse builder on Ray Data.

HyperHuman §4's funnel, cheapest stage first so expensive models only see survivors, then the
annotators on the survivors::

    read shards -> decode (CPU tasks) -> dedup -> resolution -> detect (actors) -> person filter
      -> aesthetic -> outpaint -> pose -> depth -> normal -> caption -> write (exactly-once commits)

:mod:`pipelines.plan` decides the work before Ray starts (shards, resume, manifest);
:mod:`pipelines.steps` turns the config into the list of stage steps; :func:`build` runs them as one
Ray Data graph (data flow: ``docs/architecture.md``).

Resume: the unit of work is the source shard, and a source row is identified by its shard and its
key in the shard. Shards recorded unchanged whose committed rows add up to their size are skipped;
the others are read, skipping the keys already committed, so a partly done or changed shard gets
exactly its missing rows (:mod:`pipelines.plan`). A shard that cannot be read is reported and left
to do; the other shards are built. Re-run the same command after any crash: every source row ends
exactly once in ``data/`` or ``rejects/``.

This is the ``ray job submit`` entrypoint: ``ray job submit --working-dir . -- python -m
pipelines.build INPUT OUTPUT --config FILE.yaml``.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import pyarrow as pa

from humanverse.config import ConfigError, to_dict
from humanverse.shards import ShardSink
from pipelines.config import PRESETS, BuildConfig, InputConfig, ResourcesConfig, load_config
from pipelines.plan import BuildPlan, finish_manifest, open_build, read_item
from pipelines.steps import Step, plan_steps

log = logging.getLogger("pipelines.build")

#: ``load_config``, ``BuildConfig`` and ``PRESETS`` live in :mod:`pipelines.config` and are handed on
#: here, so that ``from pipelines.build import build, load_config`` is the whole builder API.
__all__ = ["PRESETS", "BuildConfig", "BuildReport", "ConfigError", "RowTally", "build", "cpu_layout", "cpu_shortfall",
           "default_layout", "load_config"]


@dataclass
class BuildReport:
    output: str
    shards_total: int
    shards_skipped: int
    rows_written: int
    rejects_written: int
    seconds: float
    funnel: dict = field(default_factory=dict)
    #: Ray Data's per-operator execution stats of this run (``Dataset.stats()``: rows, tasks and
    #: time per stage), "" if nothing ran
    ray_stats: str = ""
    #: source shards that could not be read (name -> why), at discovery or while being read: not
    #: done, so a rerun retries them; the other shards were built
    failed_shards: dict[str, str] = field(default_factory=dict)
    #: source shard -> how many of its committed rows it no longer holds (found when a changed shard
    #: was read this run); those rows stay in the dataset
    vanished_rows: dict[str, int] = field(default_factory=dict)
    #: the dataset's statistics after the run (:meth:`humanverse.HumanVerseDataset.stats`)
    stats: dict = field(default_factory=dict)


def _read_shards(batch: pa.Table, input_cfg: InputConfig, clip_dim: int | None, ledger, tally=None):
    """The read step: the rows of each source shard item (:meth:`pipelines.plan.WorkPlan.items`) in
    blocks of ``input.batch_rows`` (module level so Ray can pickle it).

    A shard that cannot be read to its end (:class:`~pipelines.readers.SourceShardError`) is logged
    and reported to ``ledger`` (a :class:`~pipelines.ledger.ReadLedger` actor); the rows read before
    the failure go on, and the task goes on with its next shard. Rows read are counted into ``tally``
    (a :class:`RowTally` actor) for the progress line.
    """
    import ray

    from pipelines import readers
    from pipelines.rows import from_source_rows

    for item in batch.to_pylist():
        shard, skip = read_item(item)
        keys = readers.ShardKeys(skip)
        try:
            for rows in readers.read_shard(shard, skip=keys, batch_rows=input_cfg.batch_rows,
                                           image_column=input_cfg.image_column):
                if rows:
                    if tally is not None:
                        tally.read.remote(len(rows))
                    yield from_source_rows(rows, clip_dim)
        except readers.SourceShardError as e:
            log.warning("source shard %s failed while being read and stays to do (a rerun retries it): %s",
                        shard.name, e)
            ray.get(ledger.failed.remote(shard.name, str(e)))
            continue
        ray.get(ledger.finished.remote(shard.name, keys.vanished))


def _init_ray(cfg: BuildConfig, address: str | None) -> bool:
    """Connect to Ray (:func:`humanverse.progress.init_ray`: the given cluster, ``RAY_ADDRESS``, or a
    new local one with the config's CPUs and temp dir) and set Ray Data's options; True when this
    call started a local cluster."""
    from ray.data import DataContext

    from humanverse.progress import init_ray, quiet_ray, verbose

    started_local = init_ray(address, num_cpus=cfg.ray.num_cpus, _temp_dir=cfg.ray.temp_dir)
    quiet_ray()  # Ray Data's own progress bars and issue detectors, now that ray.data is imported
    ctx = DataContext.get_current()
    ctx.enable_progress_bars = cfg.ray.progress_bars or verbose()
    if cfg.ray.target_max_block_mb is not None:
        ctx.target_max_block_size = cfg.ray.target_max_block_mb * 1024 * 1024
    return started_local


def _check_gpus(cfg: BuildConfig, steps: Sequence[Step]) -> None:
    """Refuse steps that ask for GPUs on a cluster without any (a warning when it autoscales)."""
    import ray

    have = ray.cluster_resources().get("GPU", 0)
    for step in steps:
        need = step.num_gpus
        if need > 0 and have == 0:
            msg = (f"resources.{step.name}.num_gpus is {need} but the Ray cluster has no GPUs; set it to 0 "
                   f"(e.g. --config {PRESETS / 'cpu.yaml'}) or attach to a GPU cluster with --address")
            if cfg.ray.autoscaling:  # GPU nodes may still be added (minReplicas 0)
                log.warning("%s (waiting for the autoscaler to add GPU nodes: ray.autoscaling is true).", msg)
                return
            raise ConfigError(msg + ".")


def default_layout(cfg: BuildConfig) -> bool:
    """Whether ``cfg`` leaves every stage's resources at the defaults (the GPU-node layout): no
    ``--config`` or ``--set resources...`` chose them."""
    return cfg.resources == ResourcesConfig()


def cpu_layout(cfg: BuildConfig, models: str, clip_dim: int | None, cluster_cpus: float) -> BuildConfig:
    """``cfg`` with the resources of ``presets/cpu.yaml`` (every stage on CPUs), the model stages'
    actor CPUs lowered where needed so that their pools and one task fit a ``cluster_cpus`` cluster
    (see :func:`cpu_shortfall`): what a build on a cluster without GPUs uses when no config chose
    resources."""
    res = load_config(PRESETS / "cpu.yaml").resources
    fitted = dataclasses.replace(cfg, resources=res)
    steps = plan_steps(fitted, models, clip_dim)
    held = sum(step.held_cpus for step in steps)
    task = max(RAY_DATA_TASK_CPUS, res.read.num_cpus, res.decode.num_cpus, res.write.num_cpus)
    if held > 0 and held + task > cluster_cpus:
        scale = max(cluster_cpus - task, 0.0) / held
        pools = {step.name for step in steps if step.held_cpus > 0}
        res = dataclasses.replace(res, **{
            name: dataclasses.replace(getattr(res, name), num_cpus=math.floor(getattr(res, name).num_cpus * scale
                                                                               * 1000) / 1000)
            for name in pools})
        fitted = dataclasses.replace(cfg, resources=res)
    return fitted


#: CPUs one of Ray Data's own tasks asks for (the repartition into ``input.batch_rows`` blocks).
RAY_DATA_TASK_CPUS = 1.0


def cpu_shortfall(cfg: BuildConfig, steps: Sequence[Step], cluster_cpus: float) -> str | None:
    """Why ``steps``' actor pools would leave no CPU for the tasks of a ``cluster_cpus`` cluster, or None.

    Actors hold their CPUs for the whole run; Ray then never schedules a task that does not fit in
    what is left and the build waits forever (Ray only logs a warning), so this is checked first.
    """
    res = cfg.resources
    actors = sum(step.held_cpus for step in steps)
    task = max(RAY_DATA_TASK_CPUS, res.read.num_cpus, res.decode.num_cpus, res.write.num_cpus)
    if actors + task <= cluster_cpus:
        return None
    return (f"the model stages' actor pools hold {actors:g} CPUs (resources.<stage>.concurrency x num_cpus) and "
            f"the read, decode, repartition and write tasks need {task:g} more, but the Ray cluster has "
            f"{cluster_cpus:g} CPUs, so the build would wait forever; lower resources.<stage>.num_cpus (fractions "
            f"work, as in {PRESETS / 'cpu.yaml'}) or give the cluster more CPUs (ray.num_cpus for a local cluster).")


def build(input: str, output: str, cfg: BuildConfig, *, models: str = "paper", address: str | None = None,  # noqa: A002
          force_new_config: bool = False, add_input: bool = False) -> BuildReport:
    """Run the builder from ``input`` (folder, webdataset tars, Parquet) into dataset ``output``.

    ``force_new_config``: continue a dataset built with another config. ``add_input``: build an input
    that shares no source shard with the dataset's recorded input(s) into it (refused otherwise).
    """
    import humanverse
    from humanverse.shards import write_manifest

    t0 = time.perf_counter()
    sink, plan = open_build(input, output, cfg, models=models, force_new_config=force_new_config,
                            add_input=add_input)
    work = plan.work
    run = _GraphRun()
    status = "failed"
    try:
        if work.todo:
            run = _run_graph(cfg, plan, sink, models, address)
            for name, keys in sorted(run.vanished.items()):
                log.warning("source shard %s no longer holds %d of its committed rows (e.g. %s); they stay in the "
                            "dataset", name, len(keys), ", ".join(keys[:3]))
            if run.cfg is not None and run.cfg.resources != cfg.resources:  # the CPU layout: recorded as run
                plan.manifest["config"]["resources"] = to_dict(run.cfg.resources)
                sink.record["config"] = plan.manifest["config"]
            # every write committed: the shards read to their end are recorded as they are now
            write_manifest(sink.root, finish_manifest(plan.manifest, list(work.todo), run.finished, run.vanished,
                                                      input))
        status = "finished"
    finally:
        sink.close(status=status, data_rows=run.data_rows, reject_rows=run.reject_rows,
                   failed_shards=sorted({**work.failed, **run.failed}))
    failed = {**work.failed, **run.failed}
    ds_read = humanverse.open(output)
    stats = ds_read.stats()
    report = BuildReport(output=output, shards_total=len(work.shards) + len(work.failed),
                         shards_skipped=len(work.done), rows_written=run.data_rows,
                         rejects_written=run.reject_rows, seconds=time.perf_counter() - t0,
                         funnel=stats.get("funnel", {}), ray_stats=run.ray_stats, failed_shards=failed,
                         vanished_rows={k: len(v) for k, v in run.vanished.items()}, stats=stats)
    log.info("build finished in %.1f s: this run wrote %d rows and %d rejects; dataset now %d rows, %d rejects%s",
             report.seconds, run.data_rows, run.reject_rows, ds_read.num_rows("data"), ds_read.num_rows("rejects"),
             _failed_note(failed))
    return report


@dataclass
class _GraphRun:
    """What one run of the Ray Data graph did."""

    data_rows: int = 0
    reject_rows: int = 0
    ray_stats: str = ""
    failed: dict[str, str] = field(default_factory=dict)
    finished: set[str] = field(default_factory=set)
    vanished: dict[str, list[str]] = field(default_factory=dict)
    #: the config the graph ran with (its resources may be the CPU layout: :func:`cpu_layout`)
    cfg: BuildConfig | None = None


def _run_graph(cfg: BuildConfig, plan: BuildPlan, sink: ShardSink, models: str, address: str | None) -> _GraphRun:
    """Start (or join) Ray, check the resources, and run read -> steps -> write over the shards to do."""
    import ray
    from ray.data import DataContext

    from pipelines.ledger import ReadLedger
    from pipelines.sink import make_datasink
    from pipelines.stages.dedup import start_id_sets

    steps = plan_steps(cfg, models, plan.clip_dim)
    started_local = _init_ray(cfg, address)
    cluster = ray.cluster_resources()
    if default_layout(cfg) and not cluster.get("GPU", 0) and not cfg.ray.autoscaling and any(
            step.num_gpus for step in steps):
        cfg = cpu_layout(cfg, models, plan.clip_dim, cluster.get("CPU", 0))
        steps = plan_steps(cfg, models, plan.clip_dim)
        log.info("the Ray cluster has no GPU: every stage runs on CPUs, with the resources of %s fitted to its %g "
                 "CPUs (give --config to choose them)", PRESETS / "cpu.yaml", cluster.get("CPU", 0))
    _check_gpus(cfg, steps)
    shortfall = cpu_shortfall(cfg, steps, ray.cluster_resources().get("CPU", 0))
    if shortfall and started_local and not cfg.ray.autoscaling:
        raise ConfigError(shortfall)
    if shortfall:  # an existing cluster may still add nodes (autoscaling)
        log.warning("%s (unless the cluster adds nodes)", shortfall)
    res = cfg.resources
    items = plan.work.items()
    ledger = ray.remote(num_cpus=0)(ReadLedger).remote()
    actors = [ledger]
    ctx = DataContext.get_current()
    preserve_order = ctx.execution_options.preserve_order
    try:
        if any(step.name == "dedup" for step in steps):
            # the first copy of an image wins: rows must reach the dedup actor in (shard, index) order
            ctx.execution_options.preserve_order = True
            cols = ["id", "source_shard", "source_key"]  # and for rejects their stage (kept ones count)
            committed = sink.committed_tables({"data": cols, "rejects": cols + ["stage"]})
            owners = start_id_sets(cfg.dedup, (table for _, table in committed))
            actors += owners
            steps = [step.with_kwargs(owners=owners) if step.name == "dedup" else step for step in steps]
        tally = ray.remote(num_cpus=0)(RowTally).remote()
        actors.append(tally)
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        ds = ds.map_batches(_read_shards, fn_kwargs={"input_cfg": cfg.input, "clip_dim": plan.clip_dim,
                                                     "ledger": ledger, "tally": tally},
                            batch_size=1, batch_format="pyarrow", num_cpus=res.read.num_cpus,
                            compute=ray.data.TaskPoolStrategy(size=res.read.concurrency))
        # Blocks of input.batch_rows rows from here on. A read task's output is otherwise coalesced up
        # to Ray's target block size (128 MiB): a whole source shard of small images would become one
        # block, and each stage would wait for the previous one to finish it. A streaming
        # repartition: no barrier, no shuffle.
        ds = ds.repartition(target_num_rows_per_block=cfg.input.batch_rows)
        for step in steps:
            ds = step.apply(ds, cfg.input.batch_rows)
        datasink = make_datasink(sink.writer(), plan.clip_dim, cfg.write.rows_per_file, tally)
        with _progress(tally, plan.work):
            ds.write_datasink(datasink, ray_remote_args={"num_cpus": res.write.num_cpus},
                              concurrency=res.write.concurrency)
        read = ray.get(ledger.report.remote())
    finally:
        ctx.execution_options.preserve_order = preserve_order
        for actor in actors:
            ray.kill(actor)
    written = getattr(ds, "_write_ds", None)  # what write_datasink executed (holds the stats)
    ray_stats = written.stats() if written is not None else ""
    log.debug("Ray Data stats:\n%s", ray_stats)
    return _GraphRun(datasink.summary.data_rows, datasink.summary.reject_rows, ray_stats, read.failed,
                     read.finished, read.vanished, cfg)


class RowTally:
    """Rows read, and rows committed, accepted and rejected (a Ray actor of no CPU during a build;
    the read tasks and the datasink add to it): what the progress line shows. A retried task may
    count its rows twice; the line is clipped to the run's total and the end-of-build numbers come
    from the commits."""

    def __init__(self) -> None:
        self.rows_read = self.accepted = self.rejected = 0

    def read(self, rows: int) -> None:
        self.rows_read += rows

    def add(self, accepted: int, rejected: int) -> None:
        self.accepted += accepted
        self.rejected += rejected

    def counts(self) -> tuple[int, int, int]:
        return self.rows_read, self.accepted, self.rejected


def rows_to_do(work) -> int:
    """Source rows a run has to build: the shards to do, less their rows already committed."""
    return sum(max(s.size - len(work.skip.get(s.name, ())), 0) for s in work.todo)


def _progress(tally, work):
    """The build's progress display, fed from the :class:`RowTally` every half second: rows of the
    run's total, read, accepted, rejected, rate and ETA (:class:`humanverse.progress.Progress`)."""
    import ray

    from humanverse.progress import Poller, Progress

    def read() -> dict:
        rows_read, accepted, rejected = ray.get(tally.counts.remote(), timeout=10)
        return {"done": accepted + rejected, "read": rows_read, "accepted": accepted, "rejected": rejected}

    show = Progress("build", total=rows_to_do(work), unit="rows", counts=("read", "accepted", "rejected"), logger=log)
    return Poller(show, read)


def _failed_note(failed: dict[str, str]) -> str:
    """The end-of-build line's note on the shards that could not be read ("" when none)."""
    if not failed:
        return ""
    names = sorted(failed)
    shown = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
    return f"; {len(names)} source shard(s) could not be read and stay to do (rerun to retry them): {shown}"


# -- the ``ray job submit`` entrypoint --------------------------------------------------------------

if __name__ == "__main__":
    from humanverse.cli import main

    sys.exit(main(["build", *sys.argv[1:]]))
