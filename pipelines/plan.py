"""Planning a build: what to do, decided before Ray starts (no Ray here).

* the source shards of the input (:func:`pipelines.readers.discover`), and those that cannot be read;
* the config fingerprint, compared with the one the dataset was started with: a resume must run
  the same config (:data:`RESUMABLE_SECTIONS` may change: they change how, not what);
* the input, compared with the inputs the dataset was built from: a different input set is
  refused unless it is added on purpose (``add_input``);
* the manifest (``humanverse.json``: config, models, CLIP width, inputs, and per source shard its
  rows, fingerprint and, for folder shards, the file name range it owns);
* per shard, done or to do, and for shards with committed rows the keys already committed, which
  the reader skips.

Resume works per source shard and row identity is (shard, key) (the commit protocol is in
``docs/format.md``). A shard whose fingerprint is the recorded one and whose committed rows add up
to its size (plus the rows that disappeared from it earlier) is done. Any other shard is read, and
its rows whose keys are committed are skipped: a partly done shard goes on where it stopped, and a
shard that changed (files added to a folder, a tar replaced) is reconciled row by row: its new rows
are built, and committed rows it no longer holds are reported, never deleted. A changed shard's
recorded fingerprint is only replaced once it has been read to its end in a run whose writes all
committed (:func:`finish_manifest`), so a crash at any point leaves it to be reconciled again.
Re-running the same command after any crash ends every source row exactly once in ``data/`` or
``rejects/``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass

from humanverse.config import ConfigError, get_dotted, to_dict
from humanverse.schema import FORMAT_VERSION
from humanverse.shards import ShardSink, read_manifest, write_manifest
from pipelines.config import BuildConfig
from pipelines.readers import Discovery, SourceShard, discover
from pipelines.readers.base import FOLDER
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
    """Refuse to continue dataset ``output`` (its manifest ``existing``) with a different config, or
    one written in an older format (its files would not share one schema with this builder's)."""
    check_format(existing, output, "continue it")
    if existing is None or existing.get("fingerprint") in (None, fingerprint) or force_new_config:
        return
    changes = config_diff(existing["fingerprint"], fingerprint)
    keys = {c.partition(":")[0] for c in changes}
    if keys <= set(REFILTERABLE):
        sets = " ".join(f"--set {k}={json.dumps(get_dotted(fingerprint, k))}" for k in sorted(keys))
        raise ConfigError(
            f"{output} was built with other thresholds ({'; '.join(changes)}); apply them to the stored rows with "
            f"`humanverse refilter {output} {sets}`, then build again with the new config.")
    raise ConfigError(
        f"{output} was built with a different config ({'; '.join(changes[:5])}); re-run with the "
        f"recorded config (humanverse.json) or pass --force-new-config to continue with the new one (rows built "
        f"before keep their config: the manifest's built_by and _log/runs/ record which)."
    )


#: The config values ``humanverse refilter`` re-applies to stored scores (:mod:`pipelines.refilter`).
REFILTERABLE = ("aesthetic.threshold", "person_filter.min_persons", "person_filter.max_persons",
                "person_filter.min_area")


def config_sha(config: dict) -> str:
    """The short digest a run record keeps of the config it ran (``built_by`` groups runs by it)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def check_format(existing: dict | None, output: str, what: str) -> None:
    """Refuse to write files of this format version into a dataset of an older one."""
    version = int((existing or {}).get("format_version", FORMAT_VERSION))
    if version < FORMAT_VERSION:
        raise ConfigError(f"{output} is a format v{version} dataset and this version writes format v{FORMAT_VERSION} "
                          f"(new columns), so it cannot {what}; build into a new output (readers still read it).")


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


def same_input(a: str, b: str) -> bool:
    """Whether two input strings name the same place (local paths compared after resolving them)."""
    if "://" in a or "://" in b:
        return a.rstrip("/") == b.rstrip("/")
    return os.path.realpath(a) == os.path.realpath(b)


def recorded_inputs(existing: dict | None) -> list[str]:
    """The inputs a dataset was built from, oldest first (``inputs``, or the single ``input`` of older manifests)."""
    if not existing:
        return []
    return list(existing.get("inputs") or ([existing["input"]] if existing.get("input") else []))


def recorded_spans(existing: dict | None, input: str | None = None) -> dict[str, tuple[str, str]]:  # noqa: A002
    """Folder shard name -> the (first, last) file name range recorded for it (only the shards of
    ``input`` when given)."""
    out = {}
    for name, e in ((existing or {}).get("source_shards") or {}).items():
        if not (isinstance(e, dict) and e.get("span")):
            continue
        if input is None or e.get("input") is None or same_input(e["input"], input):
            out[name] = (e["span"][0], e["span"][1])
    return out


_POSITION_NAMED = re.compile(r"#\d{5}$")


def check_inputs(existing: dict | None, input: str, found: Discovery, output: str,  # noqa: A002
                 add_input: bool) -> None:
    """Refuse to build ``input`` into dataset ``output`` (its manifest ``existing``) when it is a
    different input set, unless ``add_input``; refuse shard names that would mix two inputs' rows."""
    recorded_shards = (existing or {}).get("source_shards") or {}
    if not recorded_shards:
        return
    names = {s.name for s in found.shards} | set(found.failed)
    if any(s.kind == FOLDER for s in found.shards) and any(
            not isinstance(e, dict) and _POSITION_NAMED.search(n) for n, e in recorded_shards.items()):
        raise ConfigError(
            f"{output} was built by an earlier builder that named folder shards by their position (e.g. "
            f"{next(n for n in recorded_shards if _POSITION_NAMED.search(n))}), which cannot be matched to "
            "today's shards; build into a new output.")
    inputs = recorded_inputs(existing)
    if any(same_input(r, input) for r in inputs):
        for name in sorted(names & set(recorded_shards)):
            e = recorded_shards[name]
            other = e.get("input") if isinstance(e, dict) else None
            if other is not None and not same_input(other, input) and any(same_input(other, r) for r in inputs):
                raise ConfigError(
                    f"source shard {name} of {input} has the name of a shard of {other}, also built into {output}; "
                    "shard names identify rows, so give the inputs distinct shard names or build into another output.")
        return
    overlap = names & set(recorded_shards)
    shown = " and ".join(inputs) or "another input"
    if not overlap and not add_input:
        raise ConfigError(
            f"{output} was built from {shown} and {input} shares no source shard with it; pass --add-input to "
            f"build {input} into it as well, or give another output.")
    if overlap and add_input:
        raise ConfigError(
            f"--add-input: {input} has source shards named like those of {shown} in {output} (e.g. "
            f"{min(overlap)}); shard names identify rows, so build it into another output.")
    if overlap:
        log.warning("input %s is not the recorded %s, but %d of its %d source shards have recorded names: it is "
                    "taken as the same input, moved, and its shards are matched by name", input, shown,
                    len(overlap), len(names))


def shard_entry(shard: SourceShard, input: str, vanished: int = 0) -> dict:  # noqa: A002
    """The manifest's record of a source shard: rows, fingerprint, committed rows it no longer holds,
    its input, and for folder shards the file name range it owns."""
    e = {"kind": shard.kind, "rows": shard.size, "fingerprint": shard.fingerprint, "vanished": vanished,
         "input": input}
    if shard.span is not None:
        e["span"] = list(shard.span)
    return e


def _trusted(entry: object, shard: SourceShard) -> bool:
    """Whether the recorded ``entry`` still describes ``shard`` (same fingerprint)."""
    return isinstance(entry, dict) and entry.get("fingerprint") is not None and (
        entry["fingerprint"] == shard.fingerprint)


def make_manifest(cfg: BuildConfig, models: str, input: str, shards: list[SourceShard],  # noqa: A002
                  clip_dim: int | None, existing: dict | None, committed: dict[str, int] | None = None,
                  tags: dict[str, str] | None = None) -> dict:
    """The dataset's ``humanverse.json`` at the start of a run; source shards of earlier runs stay listed.

    ``committed``: rows committed per shard. A shard with nothing committed is recorded as it is now;
    a shard whose fingerprint changed keeps its old record (its range included) until
    :func:`finish_manifest` records it reconciled. ``tags``: :func:`model_tags`, when already resolved.
    """
    committed = committed or {}
    entries = dict((existing or {}).get("source_shards") or {})
    for s in shards:
        old = entries.get(s.name)
        if _trusted(old, s):
            entries[s.name] = {**old, "input": input}
        elif not committed.get(s.name):
            entries[s.name] = shard_entry(s, input)
        elif not isinstance(old, dict):  # committed rows but no usable record: never trusted until reconciled
            entries[s.name] = {**shard_entry(s, input), "fingerprint": None}
    inputs = recorded_inputs(existing)
    if not any(same_input(r, input) for r in inputs):
        inputs.append(input)
    return {
        "fingerprint": config_fingerprint(cfg, models), "config": to_dict(cfg),
        "models": tags if tags is not None else model_tags(cfg, models),
        "clip_dim": clip_dim, "input": input, "inputs": inputs, "source_shards": entries,
        "banner": ("Annotations from tiny random models: meaningless; only the mechanics are real."
                   if models == "tiny" else None),
    }


def finish_manifest(manifest: dict, shards: list[SourceShard], finished: set[str],
                    vanished: dict[str, list[str]], input: str) -> dict:  # noqa: A002
    """``manifest`` with the shards read to their end in a run whose writes all committed recorded as
    they are now (fingerprint, rows, and how many committed rows they no longer hold)."""
    entries = dict(manifest["source_shards"])
    for s in shards:
        if s.name in finished:
            entries[s.name] = shard_entry(s, input, len(vanished.get(s.name, ())))
    return {**manifest, "source_shards": entries}


@dataclass(frozen=True)
class WorkPlan:
    """The source shards of a run: which are done, which to do, and what to skip in each."""

    shards: tuple[SourceShard, ...]
    #: names of the shards that are recorded unchanged and whose committed rows add up to their size
    done: frozenset[str]
    #: the other shards, in discovery order
    todo: tuple[SourceShard, ...]
    #: shard name -> the keys already committed (shards to do with committed rows only)
    skip: dict[str, tuple[str, ...]]
    #: shard name -> why it cannot be read (found at discovery): left out of this run, not done
    failed: dict[str, str] = dataclasses.field(default_factory=dict)
    #: names of the shards to do whose fingerprint is not the recorded one although rows of them are
    #: committed (they changed): reconciled by key
    changed: frozenset[str] = frozenset()

    @classmethod
    def of(cls, shards: list[SourceShard], sink: ShardSink, existing: dict | None = None,
           failed: dict[str, str] | None = None) -> WorkPlan:
        """The plan for ``shards`` given the dataset's manifest ``existing`` (as it was before this run)
        and what ``sink``'s dataset has committed."""
        recorded = (existing or {}).get("source_shards") or {}
        committed = sink.state.rows_per_shard()
        done, todo, changed = set(), [], set()
        for s in shards:
            entry, n = recorded.get(s.name), committed.get(s.name, 0)
            trusted = _trusted(entry, s)
            expected = s.size + (int(entry.get("vanished", 0)) if trusted else 0)
            if trusted and n == expected:
                done.add(s.name)
                continue
            if trusted and n > expected:
                log.warning("source shard %s has %d committed rows, more than the %d it accounts for; reconciling "
                            "it by key", s.name, n, expected)
            todo.append(s)
            if n and not trusted:
                changed.add(s.name)
        with_rows = [s.name for s in todo if committed.get(s.name)]
        keys = sink.committed_keys(with_rows) if with_rows else {}
        return cls(tuple(shards), frozenset(done), tuple(todo), {k: tuple(sorted(v)) for k, v in keys.items()},
                   dict(failed or {}), frozenset(changed))

    @property
    def rows(self) -> int:
        return sum(s.size for s in self.shards)

    def items(self) -> list[dict]:
        """One item per shard to do, as the read step takes them (:func:`read_item`)."""
        return [{"shard": json.dumps(dataclasses.asdict(s)), "skip": json.dumps(list(self.skip.get(s.name, ())))}
                for s in self.todo]


def read_item(item: dict) -> tuple[SourceShard, frozenset[str]]:
    """A :meth:`WorkPlan.items` entry back as (shard, keys to skip)."""
    return SourceShard(**json.loads(item["shard"])), frozenset(json.loads(item["skip"]))


@dataclass(frozen=True)
class BuildPlan:
    """Everything :func:`pipelines.build.build` decides before it starts Ray."""

    manifest: dict
    #: width of the stored CLIP embedding (None: not stored); fixes the in-flight schema
    clip_dim: int | None
    work: WorkPlan
    #: the input of this run, as given
    input: str = ""


def open_build(input: str, output: str, cfg: BuildConfig, *, models: str,  # noqa: A002 - the CLI's name
               force_new_config: bool = False, add_input: bool = False) -> tuple[ShardSink, BuildPlan]:
    """Discover the input's shards, check the config and the input against the dataset's, open (or
    create) the dataset, record the manifest and plan the work. The caller closes the sink.

    Nothing is written before both checks pass.
    """
    existing = read_manifest(output)
    check_resumable(existing, config_fingerprint(cfg, models), output, force_new_config)
    recorded = any(same_input(r, input) for r in recorded_inputs(existing))

    def find(spans: dict[str, tuple[str, str]]) -> Discovery:
        return discover(input, image_column=cfg.input.image_column, folder_shard_size=cfg.input.folder_shard_size,
                        known_spans=spans)

    found = find(recorded_spans(existing, input) if recorded else {})
    if not recorded and set((existing or {}).get("source_shards") or {}) & {s.name for s in found.shards}:
        found = find(recorded_spans(existing))  # the recorded input, moved: its folder shards keep their ranges
    check_inputs(existing, input, found, output, add_input)
    shards = found.shards
    for name, reason in sorted(found.failed.items()):
        log.warning("source shard %s is left out of this run and stays to do (a rerun retries it): %s", name, reason)
    clip_dim = stored_clip_dim(cfg, models)
    tags = model_tags(cfg, models)  # resolving the models may fail: before anything is written
    fingerprint = config_fingerprint(cfg, models)
    sink = ShardSink.open(output, provenance={
        "command": "build", "input": input, "models": tags, "config": to_dict(cfg),
        "config_sha": config_sha(fingerprint)})
    try:
        committed = sink.state.rows_per_shard()
        _log_gone(existing, input, found, committed)
        work = WorkPlan.of(shards, sink, existing, found.failed)
        manifest = make_manifest(cfg, models, input, shards, clip_dim, existing, committed, tags)
        manifest["built_by"] = sink.built_by()
        if len(manifest["built_by"]) > 1:
            log.warning("the dataset's rows are built under %d different configs (manifest built_by; each run's "
                        "config is in _log/runs/)", len(manifest["built_by"]))
        write_manifest(sink.root, manifest)
    except BaseException:
        sink.close()
        raise
    log.info("%d source shards (%d rows): %d complete, %d to do (%d with committed rows, %d of them changed), "
             "%d unreadable", len(shards), work.rows, len(work.done), len(work.todo), len(work.skip),
             len(work.changed), len(found.failed))
    return sink, BuildPlan(manifest, clip_dim, work, input)


def _log_gone(existing: dict | None, input: str, found: Discovery, committed: dict[str, int]) -> None:  # noqa: A002
    """Log the recorded shards of this input that it no longer has (their committed rows stay)."""
    here = {s.name for s in found.shards} | set(found.failed)
    gone = sorted(name for name, e in ((existing or {}).get("source_shards") or {}).items()
                  if name not in here and isinstance(e, dict) and e.get("input") is not None
                  and same_input(e["input"], input))
    if gone:
        rows = sum(committed.get(n, 0) for n in gone)
        log.warning("%d source shard(s) recorded for %s are gone from it (e.g. %s); their %d committed rows stay in "
                    "the dataset", len(gone), input, gone[0], rows)


__all__ = ["RESUMABLE_SECTIONS", "BuildPlan", "WorkPlan", "check_inputs", "check_resumable",
           "config_diff", "config_fingerprint", "finish_manifest", "make_manifest", "model_tags", "open_build",
           "read_item", "recorded_inputs", "recorded_spans", "same_input", "shard_entry", "stored_clip_dim",
           "zoo_models"]
