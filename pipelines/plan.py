"""Planning a build: what to do, decided before Ray starts (no Ray here).

* the source shards of the input (:func:`pipelines.readers.discover`), and those that cannot be read;
* the config fingerprint, compared with the one the dataset was started with: a resume must run
  the same config (:data:`RESUMABLE_SECTIONS` may change: they change how, not what);
* the manifest (``humanverse.json``: config, models, CLIP width, source shards);
* per shard, done or to do, and for partly done shards the ``source_index`` values already
  committed, which the reader skips.

Resume works per source shard (the commit protocol is in ``docs/format.md``): opening the sink
fences earlier runs and recovers their commits; shards whose committed rows add up to their size
are done. Re-running the same command after any crash ends every source row exactly once in
``data/`` or ``rejects/``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass

from humanverse.config import ConfigError, to_dict
from humanverse.shards import ShardSink, read_manifest
from pipelines.config import BuildConfig
from pipelines.readers import SourceShard, discover
from pipelines.stages.aesthetic import clip_embed_dim

log = logging.getLogger(__name__)

#: Config sections that may change between a run and its resume (they change how, not what).
RESUMABLE_SECTIONS = ("write", "resources", "ray")


def config_fingerprint(cfg: BuildConfig, models: str) -> dict:
    """What must not change between a run and its resume: the config (minus resources) and models."""
    d = to_dict(cfg)
    for k in RESUMABLE_SECTIONS:
        d.pop(k)
    return {**d, "models": models}


def config_diff(a, b, prefix: str = "") -> list[str]:
    """The differences between two JSON-like values, one ``key.path: old -> new`` line each."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += config_diff(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else k)
        return out
    return [] if a == b else [f"{prefix}: {a!r} -> {b!r}"]


def check_resumable(existing: dict | None, fingerprint: dict, output: str, force_new_config: bool) -> None:
    """Refuse to continue dataset ``output`` (its manifest ``existing``) with a different config."""
    if existing is None or existing.get("fingerprint") in (None, fingerprint) or force_new_config:
        return
    changes = config_diff(existing["fingerprint"], fingerprint)
    raise ConfigError(
        f"{output} was built with a different config ({'; '.join(changes[:5])}); re-run with the "
        f"recorded config (humanverse.json) or pass --force-new-config to continue with the new one."
    )


def stored_clip_dim(cfg: BuildConfig, models: str) -> int | None:
    """The width of the ``clip_embedding`` column, or None when the config stores no embedding."""
    if "aesthetic" in cfg.stages and cfg.aesthetic.store_embedding:
        return clip_embed_dim(cfg.aesthetic, models)
    return None


def zoo_models(cfg: BuildConfig) -> list[tuple[str, str]]:
    """(stage, zoo entry) of every pretrained model this config's stages load."""
    out = [("aesthetic", "clip-vit-l14"), ("aesthetic", "aesthetic-mlp"), ("outpaint", "sd2-inpainting"),
           ("normal", "omnidata-normal"), ("caption", "blip2-opt-2.7b")]
    if cfg.detect.backend == "yolos":
        out.append(("detect", "yolos-tiny"))
    if cfg.pose.backend == "vitpose":
        out.append(("pose", "vitpose-wholebody"))
    out.append(("depth", "midas-dpt-hybrid" if cfg.depth.backend == "midas" else "omnidata-depth"))
    return [(stage, name) for stage, name in out if stage in cfg.stages]


def model_tags(cfg: BuildConfig, models: str) -> dict[str, str]:
    """Zoo entry -> the tag of the model it resolves to (what ``humanverse.json`` records)."""
    from humanverse.zoo import resolve
    from pipelines.annotators.omnidata import TINY_BUILDERS  # imports torch: only here, on the driver

    overrides = {"clip-vit-l14": cfg.aesthetic.clip_model, "aesthetic-mlp": cfg.aesthetic.mlp_model}
    tags = {}
    for stage, name in zoo_models(cfg):
        spec = overrides.get(name, getattr(getattr(cfg, stage), "model", None)) or models
        tags[name] = resolve(name, spec, builders=TINY_BUILDERS).tag
    return tags


def make_manifest(cfg: BuildConfig, models: str, input: str, shards: list[SourceShard],  # noqa: A002
                  clip_dim: int | None, existing: dict | None) -> dict:
    """The dataset's ``humanverse.json``; source shards of earlier runs stay listed."""
    manifest = {
        "fingerprint": config_fingerprint(cfg, models), "config": to_dict(cfg), "models": model_tags(cfg, models),
        "clip_dim": clip_dim, "input": input, "source_shards": {s.name: s.size for s in shards},
        "banner": ("Annotations from tiny random models: meaningless; only the mechanics are real."
                   if models == "tiny" else None),
    }
    if existing and existing.get("source_shards"):
        manifest["source_shards"] = {**existing["source_shards"], **manifest["source_shards"]}
    return manifest


@dataclass(frozen=True)
class WorkPlan:
    """The source shards of a run: which are done, which to do, and what to skip in each."""

    shards: tuple[SourceShard, ...]
    #: names of the shards whose committed rows add up to their size
    done: frozenset[str]
    #: the other shards, in discovery order
    todo: tuple[SourceShard, ...]
    #: shard name -> the ``source_index`` values already committed (partly done shards only)
    skip: dict[str, tuple[int, ...]]
    #: shard name -> why it cannot be read (found at discovery): left out of this run, not done
    failed: dict[str, str] = dataclasses.field(default_factory=dict)

    @classmethod
    def of(cls, shards: list[SourceShard], sink: ShardSink, failed: dict[str, str] | None = None) -> WorkPlan:
        """The plan for ``shards`` given what ``sink``'s dataset has committed."""
        done = sink.state.complete_shards({s.name: s.size for s in shards})
        todo = tuple(s for s in shards if s.name not in done)
        committed = sink.state.rows_per_shard()
        partial = [s.name for s in todo if committed.get(s.name)]
        skip: dict[str, list[int]] = {name: [] for name in partial}
        for name, index in sink.committed_keys(partial) if partial else ():
            skip[name].append(index)
        return cls(tuple(shards), frozenset(done), todo, {k: tuple(sorted(v)) for k, v in skip.items()},
                   dict(failed or {}))

    @property
    def rows(self) -> int:
        return sum(s.size for s in self.shards)

    def items(self) -> list[dict]:
        """One item per shard to do, as the read step takes them (:func:`read_item`)."""
        return [{"shard": json.dumps(dataclasses.asdict(s)), "skip": json.dumps(list(self.skip.get(s.name, ())))}
                for s in self.todo]


def read_item(item: dict) -> tuple[SourceShard, frozenset[int]]:
    """A :meth:`WorkPlan.items` entry back as (shard, indices to skip)."""
    return SourceShard(**json.loads(item["shard"])), frozenset(json.loads(item["skip"]))


@dataclass(frozen=True)
class BuildPlan:
    """Everything :func:`pipelines.build.build` decides before it starts Ray."""

    manifest: dict
    #: width of the stored CLIP embedding (None: not stored); fixes the in-flight schema
    clip_dim: int | None
    work: WorkPlan


def open_build(input: str, output: str, cfg: BuildConfig, *, models: str,  # noqa: A002 - the CLI's name
               force_new_config: bool = False) -> tuple[ShardSink, BuildPlan]:
    """Discover the input's shards, check the config against the dataset's, open (or create) the
    dataset with its manifest and plan the work. The caller closes the sink."""
    found = discover(input, image_column=cfg.input.image_column, folder_shard_size=cfg.input.folder_shard_size)
    shards = found.shards
    for name, reason in sorted(found.failed.items()):
        log.warning("source shard %s is left out of this run and stays to do (a rerun retries it): %s", name, reason)
    clip_dim = stored_clip_dim(cfg, models)
    existing = read_manifest(output)
    check_resumable(existing, config_fingerprint(cfg, models), output, force_new_config)
    manifest = make_manifest(cfg, models, input, shards, clip_dim, existing)
    sink = ShardSink.open(output, manifest=manifest)
    work = WorkPlan.of(shards, sink, found.failed)
    log.info("%d source shards (%d rows): %d complete, %d to do (%d partly done), %d unreadable", len(shards),
             work.rows, len(work.done), len(work.todo), len(work.skip), len(found.failed))
    return sink, BuildPlan(manifest, clip_dim, work)


__all__ = ["RESUMABLE_SECTIONS", "BuildPlan", "WorkPlan", "check_resumable", "config_diff", "config_fingerprint",
           "make_manifest", "model_tags", "open_build", "read_item", "stored_clip_dim", "zoo_models"]
