"""The builder's config: one typed section per stage, plus input, write, resources and Ray settings.

Loaded from YAML (presets in ``pipelines/presets/``) with :func:`load_config` and validated before any
work starts: unknown keys, wrong types and bad values are refused with one sentence naming the key
(:mod:`humanverse.config`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from humanverse.config import ConfigError, check, load_yaml
from pipelines.geometry import MapsConfig
from pipelines.stages.aesthetic import AestheticConfig
from pipelines.stages.caption import CaptionConfig
from pipelines.stages.decode import DecodeConfig
from pipelines.stages.dedup import DedupConfig
from pipelines.stages.depth import DepthConfig
from pipelines.stages.detect import DetectConfig
from pipelines.stages.normal import NormalConfig
from pipelines.stages.outpaint import OutpaintConfig
from pipelines.stages.person_filter import PersonFilterConfig
from pipelines.stages.pose import PoseConfig
from pipelines.stages.resolution import ResolutionConfig

#: The stages ``stages:`` may list, in the order they run (HyperHuman §4's funnel, cheapest first);
#: :func:`pipelines.steps.plan_steps` says how each one runs.
STAGES = ("decode", "dedup", "resolution", "detect", "person_filter", "aesthetic", "outpaint", "pose", "depth",
          "normal", "caption")
PRESETS = Path(__file__).parent / "presets"


@dataclass(frozen=True)
class Resources:
    """Ray resources of one stage. Model stages run as actor pools of ``concurrency`` actors.

    ``batch_size`` is the model batch of a model stage; ``resources.decode`` sets the CPU stages
    (decode, resolution, person filter: tasks, one per block, ``batch_size`` rows at a time).
    """

    batch_size: int = 16
    concurrency: int = 1
    num_cpus: float = 1.0
    num_gpus: float = 0.0

    def __post_init__(self):
        check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}.")
        check(self.concurrency >= 1, f"concurrency must be >= 1, got {self.concurrency}.")
        check(self.num_cpus >= 0 and self.num_gpus >= 0, "num_cpus and num_gpus must be >= 0.")


@dataclass(frozen=True)
class ResourcesConfig:
    """Defaults for a GPU node (see presets/gpu-node.yaml); presets/cpu.yaml for laptops and CI."""

    read: Resources = Resources(batch_size=1, concurrency=8, num_cpus=0.5)
    decode: Resources = Resources(batch_size=64, concurrency=8, num_cpus=1.0)
    #: the dedup stage's one actor (concurrency must stay 1: rows reach it in order). It only routes
    #: ids to the id sets, so it holds no CPU a task could use; batch_size is rows per call.
    dedup: Resources = Resources(batch_size=256, concurrency=1, num_cpus=0.0)
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
    #: Ray Data's own per-operator progress bars (also on with --verbose); the builder always draws
    #: its one progress line (rows of the run's total, accepted, rejected, rate, ETA)
    progress_bars: bool = False
    #: Ray's session folder for a local cluster (keep it short: socket paths are limited)
    temp_dir: str | None = None
    #: the cluster adds nodes on demand (KubeRay / cluster-launcher autoscaling, e.g. a GPU group with
    #: minReplicas 0): GPUs or CPUs it lacks at submission only warn instead of refusing the config
    autoscaling: bool = False
    #: Ray Data's target block size in MiB (None: Ray's default, 128): an upper bound on the bytes of
    #: a block. Rows per block are set by ``input.batch_rows``; this only matters for very large images.
    target_max_block_mb: int | None = None


@dataclass(frozen=True)
class BuildConfig:
    stages: tuple[str, ...] = STAGES
    input: InputConfig = InputConfig()
    decode: DecodeConfig = DecodeConfig()
    dedup: DedupConfig = DedupConfig()
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
        unknown = [s for s in self.stages if s not in STAGES]
        check(not unknown, f"stages: unknown stage(s) {unknown}; known stages are {list(STAGES)}.")
        check("decode" in self.stages, "stages: 'decode' cannot be left out (it hashes, validates and stores images).")
        check("person_filter" not in self.stages or "detect" in self.stages,
              "stages: 'person_filter' needs 'detect'.")
        check("pose" not in self.stages or "detect" in self.stages, "stages: 'pose' needs 'detect' (top-down pose).")
        check(len(set(self.stages)) == len(self.stages), f"stages: {list(self.stages)} lists a stage twice.")
        check(self.resources.dedup.concurrency == 1,
              f"resources.dedup.concurrency must be 1, got {self.resources.dedup.concurrency}: the dedup stage keeps "
              "the first copy of an image, which needs one actor seeing the rows in order (dedup.id_sets spreads "
              "its memory).")


def load_config(path: str | Path | None, overrides: dict | None = None) -> BuildConfig:
    """The config in YAML file ``path`` (None: the defaults) with dotted-key ``overrides`` applied."""
    return load_yaml(BuildConfig, path, overrides)


__all__ = ["PRESETS", "STAGES", "BuildConfig", "ConfigError", "InputConfig", "RayConfig", "Resources",
           "ResourcesConfig", "WriteConfig", "load_config"]
