"""Re-apply the builder's thresholds to the scores a dataset already stores, as one committed run.

``humanverse refilter ROOT --set aesthetic.threshold=5.0`` moves the accepted rows that fail the new
thresholds to ``rejects/`` (a reject row with the stage's reason) and keeps each moved row whole in
``held/``, so a later refilter with looser thresholds moves it back. Every changed file is replaced
by one commit object that adds its successors and retires it (:meth:`humanverse.shards.ShardSink.commit`),
so each row is in ``data/`` or ``rejects/`` exactly once at every moment, and a killed refilter
resumes by running again. Rows the *build* rejected at a threshold were never annotated by the
later stages and cannot be promoted: they are counted and named in the report.

The thresholds are those of the filter stages, applied as the stages apply them
(:class:`pipelines.stages.aesthetic.AestheticStage`, :class:`pipelines.stages.person_filter.PersonFilter`):
``aesthetic.threshold`` (reject when ``aesthetic < threshold``) and ``person_filter.min_persons``,
``max_persons`` and ``min_area`` (on ``num_persons`` and ``person_area``).
"""

from __future__ import annotations

import hashlib
import logging
import posixpath
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from humanverse.config import ConfigError, from_dict, get_dotted, set_dotted, to_dict
from humanverse.schema import REJECT_SCHEMA
from humanverse.shards import HELD, CommitRecord, CommitState, ShardSink, read_manifest, write_manifest
from pipelines.config import BuildConfig
from pipelines.plan import REFILTERABLE, check_format, config_sha
from pipelines.stages.aesthetic import aesthetic_verdict
from pipelines.stages.person_filter import person_verdict

log = logging.getLogger(__name__)


@dataclass
class RefilterReport:
    """What a refilter did."""

    run: str
    changes: dict[str, tuple]
    moved_to_rejects: int = 0
    moved_back: int = 0
    files_replaced: int = 0
    #: rows the build rejected at a changed threshold that would pass now (never annotated further)
    not_promotable: int = 0


def _verdicts(t: pa.Table, cfg: BuildConfig) -> tuple[pa.Array, list[tuple[str, str, str] | None]]:
    """Per row: passes, and (stage, reason, detail) of the first failed filter, as the stages order
    them and with their own verdicts (:func:`person_verdict`, :func:`aesthetic_verdict`)."""
    stages = set(cfg.stages)
    out: list[tuple[str, str, str] | None] = []
    pf, ae = cfg.person_filter, cfg.aesthetic
    n_persons = t["num_persons"].to_pylist()
    area = t["person_area"].to_pylist()
    score = t["aesthetic"].to_pylist()
    for n, a, s in zip(n_persons, area, score):
        why = None
        if "person_filter" in stages and n is not None and (reject := person_verdict(n, a, pf)) is not None:
            why = ("person_filter", reject.reason, reject.detail)
        if why is None and "aesthetic" in stages and s is not None and \
                (reject := aesthetic_verdict(s, ae.threshold)) is not None:
            why = ("aesthetic", reject.reason, reject.detail)
        out.append(why)
    return pa.array([w is None for w in out], pa.bool_()), out


def _reject_rows(t: pa.Table, why: list[tuple[str, str, str]], run: str) -> pa.Table:
    cols = {f.name: t[f.name] for f in REJECT_SCHEMA if f.name in t.schema.names}
    cols["stage"] = pa.array([w[0] for w in why], pa.string())
    cols["reason"] = pa.array([w[1] for w in why], pa.string())
    cols["detail"] = pa.array([f"refilter {run}: {w[2]}" for w in why], pa.string())
    return pa.table({f.name: cols.get(f.name, pa.nulls(t.num_rows, f.type)) for f in REJECT_SCHEMA},
                    schema=REJECT_SCHEMA)


def parse_changes(overrides: dict) -> dict:
    bad = sorted(set(overrides) - set(REFILTERABLE))
    if bad:
        raise ConfigError(f"refilter re-applies thresholds to stored scores and cannot change {', '.join(bad)}; "
                          f"it takes {', '.join(REFILTERABLE)} (other changes need a rebuild into a new output).")
    if not overrides:
        raise ConfigError(f"refilter needs at least one --set of {', '.join(REFILTERABLE)}.")
    return overrides


def refilter(root: str, overrides: dict) -> RefilterReport:
    """Re-apply ``overrides`` (dotted keys of :data:`REFILTERABLE`) to dataset ``root`` as one run."""
    changes = parse_changes(overrides)
    manifest = read_manifest(root)
    if manifest is None:
        raise FileNotFoundError(f"{root} is not a HumanVerse dataset: it has no humanverse.json.")
    check_format(manifest, root, "be refiltered")
    built = from_dict(BuildConfig, manifest.get("config") or {})
    old, data = to_dict(built), to_dict(built)
    for key, value in changes.items():
        set_dotted(data, key, value)
    cfg = from_dict(BuildConfig, data)  # validates the new values
    new = to_dict(cfg)
    before = {k: get_dotted(old, k) for k in changes}
    after = {k: get_dotted(new, k) for k in changes}
    changed = {k: [before[k], after[k]] for k in changes}
    sink = ShardSink.open(root, provenance={"command": "refilter", "changes": changed, "config": data,
                                            "config_sha": config_sha(data)})
    report = RefilterReport(sink.run, {k: (before[k], after[k]) for k in changes})
    status = "failed"
    try:
        _refilter_files(sink, cfg, report)
        report.not_promotable = _not_promotable(sink, cfg)
        fingerprint = dict(manifest.get("fingerprint") or {})
        for key, value in after.items():
            section, _, name = key.partition(".")
            if isinstance(fingerprint.get(section), dict):
                fingerprint[section] = {**fingerprint[section], name: value}
        manifest = {**manifest, "config": data, "fingerprint": fingerprint}
        manifest["built_by"] = sink.built_by()
        manifest["refilters"] = [*(manifest.get("refilters") or []),
                                 {"run": sink.run, "changes": changed}]
        write_manifest(sink.root, {k: v for k, v in manifest.items() if k not in ("format", "format_version")})
        status = "finished"
    finally:
        sink.close(status=status, moved_to_rejects=report.moved_to_rejects, moved_back=report.moved_back,
                   files_replaced=report.files_replaced)
    log.info("refilter %s: %d rows moved to rejects, %d moved back to data, %d files replaced; %d rows the build "
             "rejected would pass now but were never annotated (rebuild them to include them)", sink.run,
             report.moved_to_rejects, report.moved_back, report.files_replaced, report.not_promotable)
    return report


#: The stored columns the thresholds apply to: read first, the whole file only when it changes.
SCORE_COLUMNS = ["num_persons", "person_area", "aesthetic"]


def _read(sink: ShardSink, rec: CommitRecord, columns: list[str] | None = None) -> pa.Table:
    return pq.read_table(sink.root.join(rec.file), columns=columns, filesystem=sink.root.fs)


def _name(rec: CommitRecord) -> str:
    """The successors' name: fixed by the file they replace, so a retried commit overwrites its own."""
    return hashlib.sha256(rec.file.encode()).hexdigest()[:20]


def _refilter_files(sink: ShardSink, cfg: BuildConfig, report: RefilterReport) -> None:
    """Replace each data file with rows that now fail, and each held file with rows that now pass:
    passing rows to ``data``, failing rows whole to ``held`` with a reject row each, in one commit
    that retires the file (and, for a held file, the rejects file written beside it).

    The score columns of every file are read first (several files at a time on an object store,
    :meth:`ShardSink.committed_tables`); a whole file only when its verdicts change."""
    for rec, scores in sink.committed_tables({"data": SCORE_COLUMNS, HELD: SCORE_COLUMNS}):
        ok, why = _verdicts(scores, cfg)
        unchanged = pc.all(ok) if rec.kind == "data" else pc.invert(pc.any(ok))
        if unchanged.as_py():
            continue
        t = _read(sink, rec)  # the same rows in the same order as ``scores``
        passed, failed = t.filter(ok), t.filter(pc.invert(ok))
        tables = {"data": passed, HELD: failed,
                  "rejects": _reject_rows(failed, [w for w in why if w is not None], sink.run)}
        retires = [rec]
        if rec.kind == HELD and (sibling := _record(sink, f"rejects/{posixpath.basename(rec.file)}")) is not None:
            retires.append(sibling)
        sink.commit({k: v for k, v in tables.items() if v.num_rows}, _name(rec), retires=retires)
        if rec.kind == "data":
            report.moved_to_rejects += failed.num_rows
        else:
            report.moved_back += passed.num_rows
        report.files_replaced += 1


def _record(sink: ShardSink, file: str) -> CommitRecord | None:
    """The live record of committed ``file``, or None."""
    t = sink.state.table
    found = CommitState(t.filter(pc.equal(t["file"], file))).records
    return found[0] if found else None


def _not_promotable(sink: ShardSink, cfg: BuildConfig) -> int:
    """Build-time rejects of the threshold filters that the new thresholds would accept."""
    n = 0
    for rec, t in sink.committed_tables({"rejects": ["reason", "detail"]}):
        if rec.run == sink.run:
            continue
        for reason, detail in zip(t["reason"].to_pylist(), t["detail"].to_pylist()):
            if (detail or "").startswith("refilter "):
                continue
            if reason == "low_aesthetic":
                try:
                    score = float((detail or "").split()[1])
                except (IndexError, ValueError):
                    continue
                n += score >= cfg.aesthetic.threshold
    return n


__all__ = ["REFILTERABLE", "RefilterReport", "parse_changes", "refilter"]
