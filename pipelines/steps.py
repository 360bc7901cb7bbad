"""The builder's stages as a plain list of steps (HyperHuman §4's funnel, cheapest stage first so the
expensive models only see survivors)::

    decode -> dedup -> resolution -> detect -> person filter -> aesthetic -> outpaint -> pose
      -> depth -> normal -> caption

:func:`plan_steps` turns a config into that list, leaving out the stages the config does not run.
Each step says how Ray Data runs it and with what resources (``resources.<stage>``):

* :class:`TaskStep`: a CPU stage (decode, resolution, person filter) as Ray tasks, one call per
  block; all three take ``resources.decode``;
* :class:`ActorStep`: a model stage as a pool of ``resources.<stage>.concurrency`` actors, each
  loading its model once; also the dedup stage, one actor that rows reach in order, whose id sets
  (Ray actors) the build starts and hands it (:meth:`Step.with_kwargs`).

Either way the stage object is called on whole blocks and works through them ``batch_size`` rows at
a time (:meth:`pipelines.stages.base.Stage.__call__`). Adding a stage: ``docs/extending.md``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from pipelines.config import BuildConfig, Resources
from pipelines.stages.aesthetic import AestheticScorer
from pipelines.stages.base import ModelStage, RowFilter, Stage
from pipelines.stages.caption import Captioner
from pipelines.stages.decode import DecodeStage
from pipelines.stages.dedup import DedupStage
from pipelines.stages.depth import DepthEstimator
from pipelines.stages.detect import PersonDetector
from pipelines.stages.normal import NormalEstimator
from pipelines.stages.outpaint import Outpainter
from pipelines.stages.person_filter import PersonFilter
from pipelines.stages.pose import PoseEstimator
from pipelines.stages.resolution import ResolutionStage


@dataclass(frozen=True)
class Step:
    """One stage of the funnel: its class, the keyword arguments that construct it, its resources."""

    name: str
    stage: type[Stage]
    kwargs: Mapping[str, Any]
    resources: Resources

    def apply(self, ds, block_rows: int):
        """``ds`` (a Ray dataset of in-flight blocks of ``block_rows`` rows) followed by this step."""
        raise NotImplementedError

    def with_kwargs(self, **kwargs: Any) -> Step:
        """This step with more constructor keyword arguments (e.g. actor handles made once Ray is up)."""
        return dataclasses.replace(self, kwargs={**self.kwargs, **kwargs})

    @property
    def held_cpus(self) -> float:
        """CPUs this step holds for the whole run (actors keep theirs; tasks give theirs back)."""
        return 0.0

    @property
    def num_gpus(self) -> float:
        """GPUs each of this step's workers asks for."""
        return 0.0


def _cpu_stage(block: pa.Table, stage: type[Stage], kwargs: Mapping[str, Any], batch_size: int) -> pa.Table:
    """A CPU stage over one block (module level so Ray can pickle it)."""
    return stage(**kwargs)(block, batch_size)


@dataclass(frozen=True)
class TaskStep(Step):
    """A CPU stage run as Ray tasks, one call per block, ``resources.batch_size`` rows at a time.

    Mapped with ``batch_size=None`` (whole blocks): a ``map_batches(batch_size=N)`` fused after the
    reader would make Ray Data bundle N *input items* (N whole source shards) into one read task.
    """

    def apply(self, ds, block_rows: int):
        import ray

        r = self.resources
        return ds.map_batches(_cpu_stage, fn_kwargs={"stage": self.stage, "kwargs": dict(self.kwargs),
                                                     "batch_size": r.batch_size},
                              batch_size=None, batch_format="pyarrow", num_cpus=r.num_cpus,
                              compute=ray.data.TaskPoolStrategy(size=r.concurrency))


@dataclass(frozen=True)
class ActorStep(Step):
    """A model stage run as a pool of ``resources.concurrency`` actors (each loads its model once, on
    its worker), given whole blocks, or several where ``resources.batch_size`` is larger than a block."""

    def apply(self, ds, block_rows: int):
        import ray

        r = self.resources
        return ds.map_batches(self.stage, fn_constructor_kwargs=dict(self.kwargs),
                              fn_kwargs={"batch_size": r.batch_size}, batch_size=max(r.batch_size, block_rows),
                              batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=r.concurrency),
                              num_cpus=r.num_cpus, num_gpus=r.num_gpus)

    @property
    def held_cpus(self) -> float:
        return self.resources.concurrency * self.resources.num_cpus

    @property
    def num_gpus(self) -> float:
        return self.resources.num_gpus


def plan_steps(cfg: BuildConfig, models: str, clip_dim: int | None) -> list[Step]:
    """The steps of ``cfg``'s stages, in funnel order; model stages load ``models`` (a zoo spec).

    ``clip_dim``: the width of the stored CLIP embedding (None: not stored), which fixes the
    in-flight schema every stage reads and writes.
    """
    res = cfg.resources

    def row_filter(name: str, stage: type[RowFilter]) -> Step:
        return TaskStep(name, stage, {"config": getattr(cfg, name), "clip_dim": clip_dim}, res.decode)

    def model(name: str, stage: type[ModelStage], **extra: Any) -> Step:
        kwargs = {"config": getattr(cfg, name), "models": models, "clip_dim": clip_dim, **extra}
        return ActorStep(name, stage, kwargs, getattr(res, name))

    steps = [
        row_filter("decode", DecodeStage),
        ActorStep("dedup", DedupStage, {"config": cfg.dedup, "clip_dim": clip_dim, "owners": ()}, res.dedup),
        row_filter("resolution", ResolutionStage),
        model("detect", PersonDetector),
        row_filter("person_filter", PersonFilter),
        model("aesthetic", AestheticScorer),
        model("outpaint", Outpainter),
        model("pose", PoseEstimator),
        model("depth", DepthEstimator, maps=cfg.maps),
        model("normal", NormalEstimator, maps=cfg.maps),
        model("caption", Captioner),
    ]
    return [s for s in steps if s.name in cfg.stages]


__all__ = ["ActorStep", "Step", "TaskStep", "plan_steps"]
