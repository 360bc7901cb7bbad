"""Exactly-once Parquet commits for a HumanVerse dataset (docs/format.md, the commit protocol).

The protocol uses only what every store offers: whole-object writes, reads, deletes, listings that
see every finished write, and one-object renames (a local ``rename``, an object store's copy). It
never renames a folder, so it runs unchanged on local disks, NFS, S3 and GCS.

Layout under the dataset root::

    humanverse.json                      format version, pipeline config, model table (the manifest)
    data/part-<run>-<name>.parquet       accepted rows      (visible only once committed)
    rejects/part-<run>-<name>.parquet    rejected rows
    held/part-<run>-<name>.parquet       full rows a refilter moved to rejects (kept to undo it)
    _log/runs/<run>.json                 one record per run: command, config, models, code, start, end
    _log/records/<run>/<kind>-<name>.json  one commit object per published file (the commit point)
    _log/fences/<run>                    written before a run is sealed: its writers stop
    _log/seals/<run>/<seq>.parquet       a run's commits, columnar (checkpoints, then ``final``)
    _log/snapshot-<run>.parquet          every sealed run's commits, compacted (one read at open)
    _lease/<run>.json                    who writes the root now
    _staging/<run>/                      files being written by a live run (never read)

Protocol, per file (:meth:`ShardWriter.write`):

1. stop if the run is fenced; write the Parquet file into ``_staging/<run>/`` (outside ``data/``,
   so no glob ever sees a partial file);
2. write its commit object into ``_log/records/<run>/``: **the commit point**;
3. unless the run was fenced meanwhile, move the file into ``data/`` or ``rejects/`` (publish).

Sealing a run (:func:`_seal`: by the run itself when it closes, or by the next writer when the run
was killed) writes the fence marker first, then lists the run's commit objects and writes them as
one Parquet ``final`` seal; later commit objects of that run (a killed driver's Ray tasks live on
for seconds) are never read. A writer that finds its run fenced after its commit object landed
does not publish: if the seal lists its file, the sealer rolls it forward from staging, so a file
reaches ``data/`` only once committed.

A live run checkpoints its commit objects into numbered seals (:meth:`ShardSink.checkpoint`), so a
reader of a live build reads a few Parquet files and the newest objects, never millions. Writers
compact every finished seal into one snapshot at start. Readers (:func:`read_log`) read snapshot,
seals and live objects, and retry when a compaction ran under them.

One writer per root: each writer writes its own lease object, then lists the leases; it goes on
only when it is the sole live one (two racing writers both back off), and renews its lease in the
background. A lease lapses ``lease_seconds`` after its last renewal, at once when its holder was a
process on this host that no longer exists, so a killed build never locks its output.

The log of earlier versions (``_log/<run>/`` folders renamed to ``sealed-<run>`` and JSON
snapshots) is still read; the first writer folds it into a Parquet snapshot.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import re
import socket
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from humanverse import fs as hfs
from humanverse.schema import FORMAT_NAME, FORMAT_VERSION, validate_data, validate_rejects

log = logging.getLogger(__name__)

#: The kinds readers see. ``held`` files keep the full rows a refilter rejected, for undoing it.
KINDS = ("data", "rejects")
HELD = "held"
COMMIT_KINDS = (*KINDS, HELD)
MANIFEST = "humanverse.json"
LOG_DIR = "_log"
RUNS_DIR = "_log/runs"
RECORDS_DIR = "_log/records"
FENCES_DIR = "_log/fences"
SEALS_DIR = "_log/seals"
SNAPSHOT = "snapshot-"
FINAL = "final"
LEASE_DIR = "_lease"
STAGING_DIR = "_staging"
#: Prefix of the folders the first log version renamed its runs to (read for old datasets).
SEALED = "sealed-"
#: Seconds a writer's lease stays valid after its last renewal (renewed every third of that).
LEASE_SECONDS = 60.0
#: A live run writes a checkpoint seal once this many commit objects are not yet in one.
CHECKPOINT_EVERY = 1024

RECORD_SCHEMA = pa.schema([
    pa.field("file", pa.string(), nullable=False),
    pa.field("kind", pa.string(), nullable=False),
    pa.field("rows", pa.int64(), nullable=False),
    pa.field("run", pa.string(), nullable=False),
    pa.field("created", pa.float64(), nullable=False),
    pa.field("shard_rows", pa.list_(pa.struct([("shard", pa.string()), ("rows", pa.int64())]))),
    # "add": the file counts from now on; "retire": a refilter replaced it (its rows live elsewhere).
    pa.field("op", pa.string(), nullable=False),
])


class DatasetError(ValueError):
    """A dataset's log, manifest or files are damaged, inconsistent or not what they claim to be."""


class DataLossError(DatasetError):
    """A logged file can be found neither in place nor in staging, or counts do not add up."""


class RunFencedError(DatasetError):
    """A writer of a run that a later writer has sealed (a killed build's straggling task)."""


#: A run name or a file's base name: one path component, no ``..``, no separator.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+=-]*$")


def _checked_name(value: object, what: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value) or ".." in value:
        raise DatasetError(f"the commit log names {what} {value!r}, which is not a plain file name; "
                           "the log is damaged or was crafted, so nothing was read, moved or deleted.")
    return value


def _checked_file(file: object, kind: object) -> str:
    """``<kind>/<plain name>.parquet``: every path the log names stays inside the root."""
    k, _, base = file.partition("/") if isinstance(file, str) else ("", "", "")
    if kind not in COMMIT_KINDS or k != kind or not base.endswith(".parquet"):
        raise DatasetError(f"the commit log names file {file!r} of kind {kind!r}, outside data/, rejects/ and held/; "
                           "the log is damaged or was crafted, so nothing was read, moved or deleted.")
    _checked_name(base, "file")
    return file


@dataclass(frozen=True)
class CommitRecord:
    """One committed file: where it is, how many rows, and how many came from each source shard."""

    file: str  # relative to the root, e.g. "data/part-<run>-<name>.parquet"
    kind: str  # "data" | "rejects" | "held"
    rows: int
    shard_rows: dict[str, int]
    run: str
    created: float = field(default_factory=time.time)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_dict(cls, d: Mapping) -> "CommitRecord":
        """A record read from the log. Every path it names must stay inside the root: ``file`` is
        ``<kind>/<plain name>.parquet`` and ``run`` a plain name (it names a staging folder)."""
        try:
            rec = cls(file=d["file"], kind=d["kind"], rows=int(d["rows"]),
                      shard_rows={str(k): int(v) for k, v in d["shard_rows"].items()},
                      run=d["run"], created=float(d["created"]))
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise DatasetError(f"a commit record is malformed ({type(e).__name__}: {e}); the log is damaged.") from None
        _checked_file(rec.file, rec.kind)
        _checked_name(rec.run, "run")
        return rec


@dataclass(frozen=True)
class Commit:
    """One commit object: files that count from now on and files they replace, atomically."""

    run: str
    adds: tuple[CommitRecord, ...]
    retires: tuple[CommitRecord, ...] = ()
    created: float = field(default_factory=time.time)

    def to_json(self) -> bytes:
        return json.dumps({"version": 2, "run": self.run, "created": self.created,
                           "adds": [asdict(r) for r in self.adds],
                           "retires": [asdict(r) for r in self.retires]}, sort_keys=True).encode()

    @classmethod
    def from_json(cls, d: object, where: str) -> "Commit":
        if not isinstance(d, dict):
            raise DatasetError(f"commit record {where} is not a JSON object; the log is damaged.")
        if "version" not in d:  # the first log version: one record per object
            rec = CommitRecord.from_dict(d)
            return cls(rec.run, (rec,), (), rec.created)
        try:
            adds = tuple(CommitRecord.from_dict(r) for r in d["adds"])
            retires = tuple(CommitRecord.from_dict(r) for r in d["retires"])
            return cls(_checked_name(d["run"], "run"), adds, retires, float(d["created"]))
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, DatasetError):
                raise
            raise DatasetError(f"commit record {where} is malformed ({type(e).__name__}: {e}); the log is "
                               "damaged.") from None

    def table(self) -> pa.Table:
        return _records_table([(r, "add") for r in self.adds] + [(r, "retire") for r in self.retires])


def _records_table(records: Iterable[tuple[CommitRecord, str]]) -> pa.Table:
    cols: dict[str, list] = {f.name: [] for f in RECORD_SCHEMA}
    for r, op in records:
        cols["file"].append(r.file)
        cols["kind"].append(r.kind)
        cols["rows"].append(r.rows)
        cols["run"].append(r.run)
        cols["created"].append(r.created)
        cols["shard_rows"].append([{"shard": s, "rows": n} for s, n in r.shard_rows.items()])
        cols["op"].append(op)
    return pa.table(cols, schema=RECORD_SCHEMA)


class CommitState:
    """What the log says is committed, as one Arrow table (a row per live file), per source shard.

    Columnar so that a log of millions of files opens in one Parquet read and a few vectorised
    operations, without a Python object per file.
    """

    def __init__(self, table: pa.Table | None = None):
        t = table if table is not None else RECORD_SCHEMA.empty_table()
        self.table = t.select([f.name for f in RECORD_SCHEMA if f.name in t.schema.names])

    @classmethod
    def combine(cls, tables: list[pa.Table]) -> "CommitState":
        """Live files of several record tables: first ``add`` of each file, minus retired files."""
        tables = [t for t in tables if t.num_rows]
        if not tables:
            return cls()
        names = set.intersection(*(set(t.schema.names) for t in tables))
        schema = pa.schema([f for f in RECORD_SCHEMA if f.name in names])
        t = pa.concat_tables([t.select(schema.names).cast(schema) for t in tables])
        retire = pc.equal(t["op"], "retire")
        if len(tables) > 1 or pc.any(retire).as_py():
            retired = pc.filter(t["file"], retire)
            adds = t.filter(pc.invert(retire))
            if retired.length():
                adds = adds.filter(pc.invert(pc.is_in(adds["file"], value_set=retired)))
            if len(tables) > 1:
                idx = adds.append_column("_i", pa.array(range(adds.num_rows), pa.int64()))
                first = idx.group_by("file", use_threads=False).aggregate([("_i", "min")])["_i_min"]
                adds = adds.take(pc.take(first, pc.sort_indices(first)))  # each file's first row, in order
            t = adds
        return cls(t)

    @property
    def records(self) -> tuple[CommitRecord, ...]:
        """The live files as records, oldest first (a Python object each: for small logs and tests)."""
        t = self.table.take(pc.sort_indices(self.table, [("created", "ascending"), ("file", "ascending")]))
        return tuple(CommitRecord(file=d["file"], kind=d["kind"], rows=d["rows"],
                                  shard_rows={s["shard"]: s["rows"] for s in d.get("shard_rows") or []},
                                  run=d["run"], created=d["created"]) for d in t.to_pylist())

    def __len__(self) -> int:
        return self.table.num_rows

    def _mask(self, kind: str | None) -> pa.Array:
        """The live files of ``kind`` (None: data and rejects)."""
        k = self.table["kind"]
        return pc.is_in(k, value_set=pa.array(KINDS)) if kind is None else pc.equal(k, kind)

    def _of(self, kind: str | None) -> pa.Table:
        return self.table.filter(self._mask(kind))

    def files(self, kind: str | None = None) -> list[str]:
        return self._of(kind)["file"].to_pylist()

    def rows(self, kind: str | None = None) -> int:
        return int(pc.sum(pc.if_else(self._mask(kind), self.table["rows"], 0)).as_py() or 0)

    def runs(self) -> list[str]:
        """Runs that built the live files."""
        return sorted(pc.unique(self.table["run"]).to_pylist())

    def rows_per_shard(self, kind: str | None = None) -> dict[str, int]:
        if "shard_rows" not in self.table.schema.names:
            raise ValueError("this commit state was read without per-shard counts (read_log(..., shard_rows=True)).")
        flat = pc.list_flatten(self._of(kind)["shard_rows"])
        if not len(flat):
            return {}
        t = pa.table({"shard": pc.struct_field(flat, "shard"), "rows": pc.struct_field(flat, "rows")})
        g = t.group_by("shard", use_threads=False).aggregate([("rows", "sum")])
        return dict(zip(g["shard"].to_pylist(), g["rows_sum"].to_pylist()))

    def complete_shards(self, shard_sizes: Mapping[str, int]) -> set[str]:
        """Source shards whose committed rows (data + rejects) add up to their size."""
        got = self.rows_per_shard()
        over = {s: (got[s], n) for s, n in shard_sizes.items() if got.get(s, 0) > n}
        if over:
            raise DataLossError(f"source shards hold more committed rows than their size: {over}.")
        return {s for s, n in shard_sizes.items() if got.get(s, 0) == n}

    def with_commit(self, commit: Commit) -> "CommitState":
        new = commit.table()
        if commit.retires or pc.any(pc.is_in(self.table["file"], value_set=new["file"])).as_py():
            return CommitState.combine([self.table, new])
        return CommitState(pa.concat_tables([self.table, new]))


# ---------------------------------------------------------------------------------------------
# Reading the log


def _read_json(root: hfs.Root, path: str) -> object:
    try:
        return json.loads(hfs.read_bytes(root, path))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DataLossError(f"commit log file {path} is not valid JSON ({e}); the log is damaged.") from e


def _read_parquet(root: hfs.Root, path: str, shard_rows: bool = True) -> pa.Table:
    columns = None if shard_rows else [n for n in RECORD_SCHEMA.names if n != "shard_rows"]
    try:
        t = pq.read_table(path, filesystem=root.fs, columns=columns)
    except (pa.ArrowInvalid, OSError) as e:
        if isinstance(e, FileNotFoundError):
            raise
        raise DataLossError(f"commit log file {path} cannot be read ({e}); the log is damaged.") from e
    schema = pa.schema([f for f in RECORD_SCHEMA if columns is None or f.name in columns])
    if set(t.schema.names) != set(schema.names):
        raise DatasetError(f"commit log file {path} is not a table of commit records; the log is damaged.")
    t = t.select(schema.names).cast(schema)
    if t.num_rows and not pc.all(pc.is_in(t["op"], value_set=pa.array(["add", "retire"]))).as_py():
        raise DatasetError(f"commit log file {path} holds an unknown operation; the log is damaged.")
    return t


def _check_table(t: pa.Table) -> pa.Table:
    """The record path checks over a whole table, vectorised (names a bad file): every ``file`` is
    ``<kind>/<name>.parquet`` with one separator, so it stays inside its kind's folder; every
    ``run`` (few distinct values) is a plain name."""
    if not t.num_rows:
        return t
    for run in pc.unique(t["run"]).to_pylist():
        _checked_name(run, "run")
    f, kind = t["file"], t["kind"]
    ok = pc.and_(pc.ends_with(f, ".parquet"), pc.equal(pc.count_substring(f, "/"), 1))
    in_folder = pc.and_(pc.equal(kind, COMMIT_KINDS[0]), pc.starts_with(f, COMMIT_KINDS[0] + "/"))
    for k in COMMIT_KINDS[1:]:
        in_folder = pc.or_(in_folder, pc.and_(pc.equal(kind, k), pc.starts_with(f, k + "/")))
    ok = pc.and_(ok, in_folder)
    if not pc.all(ok).as_py():
        bad = t.filter(pc.invert(ok)).slice(0, 1).to_pylist()[0]
        _checked_file(bad["file"], bad["kind"])
        _checked_name(bad["run"], "run")
        raise DatasetError(f"the commit log names file {bad['file']!r} of kind {bad['kind']!r}; the log is damaged "
                           "or was crafted, so nothing was read, moved or deleted.")
    return t


def _names(root: hfs.Root, path: str, kind: pafs.FileType | None = None) -> list[str]:
    return sorted(e.base_name for e in hfs.list_dir(root, path) if kind is None or e.type == kind)


def _signature(root: hfs.Root) -> tuple:
    """What a compaction or a seal changes: the snapshots and every run's seal files."""
    runs = _names(root, root.join(SEALS_DIR), pafs.FileType.Directory)
    return (tuple(_names(root, root.join(LOG_DIR))),
            tuple((r, tuple(_names(root, root.join(SEALS_DIR, r)))) for r in runs))


def _commit_names(root: hfs.Root, run: str, skip: set[str] = frozenset()) -> list[str]:
    """Names of a run's commit objects, except those in ``skip`` (one listing, nothing read)."""
    return [n for n in _names(root, root.join(RECORDS_DIR, run), pafs.FileType.File)
            if n.endswith(".json") and n not in skip]


def _read_commits(root: hfs.Root, run: str, skip: set[str] = frozenset(),
                  names: list[str] | None = None) -> list[tuple[str, Commit]]:
    """A run's commit objects (name, commit), except the names in ``skip``, read in parallel."""
    folder = root.join(RECORDS_DIR, run)
    names = _commit_names(root, run, skip) if names is None else names

    def one(name: str) -> tuple[str, Commit] | None:
        path = posixpath.join(folder, name)
        try:
            return name, Commit.from_json(_read_json(root, path), path)
        except FileNotFoundError:  # checkpointed and removed since the listing: the seal holds it
            return None

    return [g for g in hfs.map_ordered(one, names, hfs.readers(root, len(names))) if g is not None]


@dataclass
class _RunLog:
    """One run's part of the log: its seal files and (while it is live) its commit objects."""

    name: str
    seals: list[str]
    final: bool
    fenced: bool


def _run_logs(root: hfs.Root) -> dict[str, _RunLog]:
    runs: dict[str, _RunLog] = {}
    fences = set(_names(root, root.join(FENCES_DIR), pafs.FileType.File))
    for run in _names(root, root.join(SEALS_DIR), pafs.FileType.Directory):
        seals = [n for n in _names(root, root.join(SEALS_DIR, run), pafs.FileType.File) if n.endswith(".parquet")]
        runs[run] = _RunLog(run, seals, f"{FINAL}.parquet" in seals, run in fences)
    for run in _names(root, root.join(RECORDS_DIR), pafs.FileType.Directory):
        runs.setdefault(run, _RunLog(run, [], False, run in fences))
    for run in runs:
        _checked_name(run, "run")
    return runs


def read_log(root: "str | hfs.Root", attempts: int = 20, shard_rows: bool = True) -> CommitState:
    """Read every committed file: snapshots, seals and live runs' commit objects. ``shard_rows``:
    read the per-shard counts too (writers need them; readers counting rows do not).

    A writer seals, checkpoints and compacts while readers read; the read is retried until the
    snapshot and seal listings are unchanged across it, so a reader never misses a run.
    """
    root = hfs.resolve_root(root)
    for _ in range(attempts):
        before = _signature(root)
        try:
            state = _read_log_once(root, shard_rows)
        except FileNotFoundError:
            time.sleep(0.01)
            continue
        if before == _signature(root):
            return state
        time.sleep(0.01)
    raise RuntimeError(f"the commit log of {root.path} kept changing during {attempts} reads; retry later.")


def _read_log_once(root: hfs.Root, shard_rows: bool = True) -> CommitState:
    tables: list[pa.Table] = []
    top = hfs.list_dir(root, root.join(LOG_DIR))
    for name in sorted(e.base_name for e in top if e.type == pafs.FileType.File):
        if name.startswith(SNAPSHOT) and name.endswith(".parquet"):
            tables.append(_read_parquet(root, root.join(LOG_DIR, name), shard_rows))
    tables += _read_legacy(root, top)
    for run in _run_logs(root).values():
        for s in run.seals:
            tables.append(_read_parquet(root, root.join(SEALS_DIR, run.name, s), shard_rows))
        if not run.final:  # live, or killed and not yet sealed: its commit objects count too
            tables += [c.table() for _, c in _read_commits(root, run.name, _checkpointed(root, run))]
    return CommitState.combine([_check_table(t) for t in tables])


def _checkpointed(root: hfs.Root, run: _RunLog) -> set[str]:
    """Names of the commit objects a live run's checkpoint seals already hold (in their metadata)."""
    names: set[str] = set()
    for s in run.seals:
        meta = pq.read_schema(root.join(SEALS_DIR, run.name, s), filesystem=root.fs).metadata or {}
        names.update(json.loads(meta.get(b"humanverse_commits", b"[]")))
    return names


def _read_legacy(root: hfs.Root, top: list[pafs.FileInfo]) -> list[pa.Table]:
    """The first log version: JSON snapshots and one folder of JSON records per run."""
    tables = []
    for e in sorted(top, key=lambda e: e.base_name):
        if e.type == pafs.FileType.File and e.base_name.startswith(SNAPSHOT) and e.base_name.endswith(".json"):
            snap = _read_json(root, e.path)
            if not isinstance(snap, dict) or not isinstance(snap.get("records"), list):
                raise DatasetError(f"commit log snapshot {e.path} holds no record list; the log is damaged.")
            tables.append(_records_table((CommitRecord.from_dict(d), "add") for d in snap["records"]))
        elif e.type == pafs.FileType.Directory and e.base_name not in ("runs", "records", "fences", "seals"):
            recs = []
            for f in hfs.list_dir(root, e.path):
                if f.type == pafs.FileType.File and f.base_name.endswith(".json"):
                    recs += [(r, "add") for r in Commit.from_json(_read_json(root, f.path), f.path).adds]
            tables.append(_records_table(recs))
    return tables


def read_runs(root: "str | hfs.Root") -> list[dict]:
    """Every run's record (command, config, models, code version, start, end, status), oldest first."""
    root = hfs.resolve_root(root)
    out = []
    for name in _names(root, root.join(RUNS_DIR), pafs.FileType.File):
        if name.endswith(".json"):
            d = _read_json(root, root.join(RUNS_DIR, name))
            if isinstance(d, dict):
                out.append(d)
    return sorted(out, key=lambda d: (d.get("started") or 0, d.get("run") or ""))


def read_manifest(root: "str | hfs.Root") -> dict | None:
    root = hfs.resolve_root(root)
    path = root.join(MANIFEST)
    if not hfs.exists(root, path):
        return None
    try:
        m = json.loads(hfs.read_bytes(root, path))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path} is not valid JSON ({e}); restore it (the builder rewrites it on its next run "
                           "with the same config).") from None
    if not isinstance(m, dict) or m.get("format") != FORMAT_NAME:
        raise DatasetError(f"{path} is not a HumanVerse manifest (format="
                           f"{m.get('format') if isinstance(m, dict) else type(m).__name__!r}).")
    if int(m.get("format_version", 0)) > FORMAT_VERSION:
        raise ValueError(
            f"{path} has format_version {m['format_version']}, newer than this library's "
            f"{FORMAT_VERSION}; upgrade humanverse to read it."
        )
    return m


def write_manifest(root: "str | hfs.Root", manifest: Mapping) -> None:
    """Write ``humanverse.json`` atomically, stamping the format name and version, and the dataset
    card (``README.md``, :mod:`humanverse.card`) that describes it."""
    from humanverse.card import write_card

    root = hfs.resolve_root(root)
    m = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **manifest}
    _put(root, root.join(MANIFEST), json.dumps(m, indent=2, sort_keys=True).encode())
    write_card(root, m)


_put = hfs.put_bytes


def _write_parquet(root: hfs.Root, path: str, table: pa.Table, metadata: Mapping[bytes, bytes] | None = None) -> None:
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), **metadata})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    _put(root, path, sink.getvalue().to_pybytes())


# ---------------------------------------------------------------------------------------------
# Writers


@dataclass(frozen=True)
class ParquetWriteOptions:
    """How files are written. Images are already compressed, so snappy costs little and helps maps."""

    compression: str = "snappy"
    row_group_size: int = 128
    validate: bool = True
    #: fsync each data file before its commit record (and the record before publishing). Needed to
    #: survive an OS crash or power loss on a local disk; process kills (the usual failure in a
    #: Ray job) are safe either way, since renames are atomic. Costs disk bandwidth: see BENCHMARKS.md.
    fsync: bool = True


def _fenced(root: hfs.Root, run: str) -> bool:
    return hfs.exists(root, root.join(FENCES_DIR, run))


@dataclass(frozen=True)
class ShardWriter:
    """Picklable per-worker writer for one run: cheap to construct, ships to Ray workers."""

    root_uri: str
    run: str
    options: ParquetWriteOptions = ParquetWriteOptions()

    def file_name(self, kind: str, name: str) -> str:
        return f"{kind}/part-{self.run}-{name}.parquet"

    def write(self, table: pa.Table, kind: str, name: str | None = None) -> CommitRecord | None:
        """Commit ``table`` as one file of ``kind`` ("data" or "rejects"); returns its record.

        ``name`` must be deterministic per unit of work (e.g. task and block index) so a retried
        task overwrites its own file instead of adding a second copy. Empty tables write nothing.
        """
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}.")
        if table.num_rows == 0:
            return None
        commit = self.commit({kind: table}, name or uuid.uuid4().hex)
        return commit.adds[0]

    def commit(self, tables: Mapping[str, pa.Table], name: str, retires: Iterable[CommitRecord] = ()) -> Commit:
        """Commit one file per kind in ``tables`` (and retire ``retires``) in one commit object."""
        for kind, table in tables.items():
            if kind not in COMMIT_KINDS:
                raise ValueError(f"kind must be one of {COMMIT_KINDS}, got {kind!r}.")
            if self.options.validate:
                (validate_rejects if kind == "rejects" else validate_data)(table)
        _checked_name(name, "file")
        root = hfs.resolve_root(self.root_uri)
        if _fenced(root, self.run):
            raise RunFencedError(f"run {self.run} was sealed by a later writer of {root.path}; this late task "
                                 "committed nothing.")
        adds, staged = [], []
        for kind, table in tables.items():
            rel = self.file_name(kind, name)
            path = staged_paths(root, self.run, rel)[0]
            self._stage(root, table, path)
            staged.append((path, root.join(rel)))
            shard_rows: dict[str, int] = {}
            for s, n in zip(*pc.value_counts(table["source_shard"]).flatten()):
                shard_rows[s.as_py()] = n.as_py()
            adds.append(CommitRecord(file=rel, kind=kind, rows=table.num_rows, shard_rows=shard_rows, run=self.run))
        commit = Commit(self.run, tuple(adds), tuple(retires))
        kinds = "+".join(sorted(tables)) or "retire"
        path = root.join(RECORDS_DIR, self.run, f"{kinds}-{name}.json")
        _put(root, path, commit.to_json(), fsync=self.options.fsync)  # the commit point
        if _fenced(root, self.run) and not _in_final_seal(root, self.run, path):
            raise RunFencedError(f"run {self.run} was sealed by a later writer of {root.path} while this task "
                                 "committed; its files were not published.")
        for src, dst in staged:  # publish (a crash here is rolled forward from staging at the next open)
            _publish(root, src, dst)
        return commit

    def _stage(self, root: hfs.Root, table: pa.Table, path: str) -> None:
        opts = self.options
        if root.is_local:  # the run's staging folder must exist: a sealed run's was removed, so this raises
            with open(path, "wb") as f:
                pq.write_table(table, f, compression=opts.compression, row_group_size=opts.row_group_size)
                if opts.fsync:
                    f.flush()
                    os.fsync(f.fileno())
        else:
            with root.fs.open_output_stream(path) as f:
                pq.write_table(table, f, compression=opts.compression, row_group_size=opts.row_group_size)


def _in_final_seal(root: hfs.Root, run: str, record_path: str) -> bool:
    """Whether the final seal of a fenced ``run`` holds the commit object at ``record_path``."""
    seal = root.join(SEALS_DIR, run, f"{FINAL}.parquet")
    try:
        meta = pq.read_schema(seal, filesystem=root.fs).metadata or {}
    except FileNotFoundError:
        return False
    return posixpath.basename(record_path) in json.loads(meta.get(b"humanverse_commits", b"[]"))


def staged_paths(root: hfs.Root, run: str, file: str) -> tuple[str, ...]:
    """Where committed ``file`` of ``run`` is staged before it is published: ``_staging/<run>/<kind>-<name>``
    (one run stages a file of each kind under the same name), then the first log version's places."""
    kind, _, base = file.partition("/")
    return (root.join(STAGING_DIR, run, f"{kind}-{base}"), root.join(STAGING_DIR, run, base),
            root.join(STAGING_DIR, SEALED + run, base))


def _publish(root: hfs.Root, src: str, dst: str) -> None:
    """Move a staged file to its place; a file already there (rolled forward by a sealer) is fine."""
    try:
        root.fs.move(src, dst)
    except FileNotFoundError:
        if not hfs.exists(root, dst):
            raise


# ---------------------------------------------------------------------------------------------
# One writer per root


@dataclass(frozen=True)
class Lease:
    """Who writes a dataset root: ``host``/``pid`` of the process, its ``run``, and when it lapses."""

    host: str
    pid: int
    run: str
    renewed: float
    expires: float

    @classmethod
    def mine(cls, run: str, seconds: float) -> "Lease":
        now = time.time()
        return cls(socket.gethostname(), os.getpid(), run, now, now + seconds)

    def is_mine(self) -> bool:
        return self.host == socket.gethostname() and self.pid == os.getpid()

    def is_live(self) -> bool:
        """Not lapsed, and (on this host) its process still exists."""
        if time.time() >= self.expires:
            return False
        if self.host == socket.gethostname():
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return False
            except PermissionError:  # another user's live process
                return True
        return True


def lease_path(root: hfs.Root, run: str) -> str:
    return root.join(LEASE_DIR, f"{run}.json")


def _read_leases(root: hfs.Root) -> list[Lease]:
    out = []
    for e in hfs.list_dir(root, root.join(LEASE_DIR)):
        if e.type != pafs.FileType.File or not e.base_name.endswith(".json"):
            continue
        try:
            d = json.loads(hfs.read_bytes(root, e.path))
            out.append(Lease(str(d["host"]), int(d["pid"]), str(d["run"]), float(d["renewed"]), float(d["expires"])))
        except FileNotFoundError:
            continue
        except (ValueError, KeyError, TypeError):  # a torn or foreign file: nobody holds the root with it
            continue
    return out


def write_lease(root: hfs.Root, lease: Lease) -> None:
    _put(root, lease_path(root, _checked_name(lease.run, "run")), json.dumps(asdict(lease)).encode(), fsync=False)


def _acquire_lease(root: hfs.Root, run: str, seconds: float) -> Lease:
    """Take the root's lease, or raise :class:`DatasetError` naming the live holder.

    Write our lease object, then list: go on only if no other live lease is there. Of two writers
    racing, each sees the other's object (written before its own listing), so both back off;
    never do both go on. Lapsed leases are removed.
    """
    def others() -> list[Lease]:
        live = []
        for held in _read_leases(root):
            if held.run == run:
                continue
            if held.is_live() and not held.is_mine():  # this process's own older session: a killed driver
                live.append(held)
            else:
                with _quiet_missing():
                    root.fs.delete_file(lease_path(root, held.run))
        return live

    def refuse(held: Lease) -> DatasetError:
        return DatasetError(
            f"{root.path} is being written by another build (run {held.run}, process {held.pid} on {held.host}, "
            f"lease renewed {max(0.0, time.time() - held.renewed):.0f} s ago); wait for it to finish, or, if that "
            f"process is gone, retry once its lease lapses at "
            f"{time.strftime('%H:%M:%S', time.localtime(held.expires))}.")

    live = others()
    if live:
        raise refuse(live[0])
    lease = Lease.mine(run, seconds)
    write_lease(root, lease)
    live = others()
    if live:
        with _quiet_missing():
            root.fs.delete_file(lease_path(root, run))
        raise DatasetError(f"{root.path} was taken by another build (run {live[0].run}) at the same moment; run one "
                           "build per output at a time.")
    return lease


class _quiet_missing:
    def __enter__(self):
        return self

    def __exit__(self, typ, value, tb):
        return typ is not None and issubclass(typ, FileNotFoundError)


class _LeaseKeeper:
    """Renews a lease every third of its lifetime, and runs a periodic task, until stopped."""

    def __init__(self, root: hfs.Root, lease: Lease, seconds: float, tick=None):
        self.root, self.run, self.seconds, self.tick = root, lease.run, seconds, tick
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name=f"lease-{lease.run}", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            try:
                write_lease(self.root, Lease.mine(self.run, self.seconds))
                if self.tick is not None:
                    self.tick()
            except OSError as e:  # the root went away (a test's temp folder), or a transient error
                log.debug("lease renewal failed: %s", e)
            except Exception as e:  # noqa: BLE001 - the thread must go on renewing the lease
                log.warning("checkpointing the commit log failed: %s", e)

    def release(self) -> None:
        self._stop.set()
        self._thread.join()
        with _quiet_missing():
            self.root.fs.delete_file(lease_path(self.root, self.run))


# ---------------------------------------------------------------------------------------------
# A writing session


def code_version() -> str:
    """The library version and, when run from a git checkout, its commit."""
    from humanverse import __version__

    head = None
    try:
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        ref = open(os.path.join(here, ".git", "HEAD")).read().strip()  # noqa: SIM115
        if ref.startswith("ref: "):
            ref_path = os.path.join(here, ".git", *ref[5:].split("/"))
            head = open(ref_path).read().strip() if os.path.exists(ref_path) else None  # noqa: SIM115
        else:
            head = ref
    except OSError:
        pass
    return f"{__version__}+git.{head[:12]}" if head else __version__


class ShardSink:
    """A writing session on a dataset root: seals earlier runs, recovers, then hands out writers.

    >>> sink = ShardSink.open("out/ds", manifest={"config": {...}}, provenance={"command": "build"})
    >>> done = sink.state.complete_shards({"shard-0": 100})
    >>> sink.write(table, "data", name="shard-0-0")
    >>> sink.close()
    """

    def __init__(self, root: hfs.Root, run: str, state: CommitState, options: ParquetWriteOptions,
                 record: dict, lease: "_LeaseKeeper | None" = None):
        self.root = root
        self.run = run
        self._state = state
        self.options = options
        self.record = record
        self._lease = lease
        self._lock = threading.Lock()

    @classmethod
    def open(cls, root: "str | hfs.Root", *, manifest: Mapping | None = None, run: str | None = None,
             options: ParquetWriteOptions = ParquetWriteOptions(), lease_seconds: float = LEASE_SECONDS,
             provenance: Mapping | None = None) -> "ShardSink":
        """Take the root's lease (refused while another writer holds it), write the manifest, seal
        earlier runs, recover, and start run ``run``, recording ``provenance`` (command, config,
        models) with the code version and start time in ``_log/runs/<run>.json``."""
        root = hfs.resolve_root(root)
        run = _checked_name(run, "run") if run else time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
        info = root.fs.get_file_info(root.path)
        if info.type == pafs.FileType.File:
            raise DatasetError(f"the output {root.path} is a file, not a folder; give a new or existing dataset "
                               "folder.")
        for d in (root.path, *(root.join(k) for k in COMMIT_KINDS), root.join(STAGING_DIR), root.join(LEASE_DIR),
                  root.join(RUNS_DIR), root.join(RECORDS_DIR), root.join(FENCES_DIR), root.join(SEALS_DIR)):
            root.fs.create_dir(d, recursive=True)
        lease = _acquire_lease(root, run, lease_seconds)
        sink: ShardSink | None = None
        keeper = _LeaseKeeper(root, lease, lease_seconds, tick=lambda: sink is not None and sink.checkpoint())
        try:
            existing = read_manifest(root)
            if manifest is not None:
                write_manifest(root, manifest)
            elif existing is None:
                write_manifest(root, {})
            state = _recover(root, run)
            for d in (root.join(RECORDS_DIR, run), root.join(STAGING_DIR, run)):
                root.fs.create_dir(d, recursive=True)
            record = {"run": run, "status": "running", "started": time.time(), "host": socket.gethostname(),
                      "pid": os.getpid(), "code_version": code_version(), "format_version": FORMAT_VERSION,
                      **(provenance or {})}
            _put(root, root.join(RUNS_DIR, f"{run}.json"), json.dumps(record, sort_keys=True, default=str).encode())
        except BaseException:
            keeper.release()
            raise
        log.info("opened %s as run %s: %d committed files, %d rows", root.path, run, len(state), state.rows())
        sink = cls(root, run, state, options, record, keeper)
        return sink

    @property
    def state(self) -> CommitState:
        """The committed state as of :meth:`open` plus this session's own writes."""
        return self._state

    def refresh(self) -> CommitState:
        self._state = read_log(self.root)
        return self._state

    def writer(self) -> ShardWriter:
        return ShardWriter(self.root.uri, self.run, self.options)

    def write(self, table: pa.Table, kind: str, name: str | None = None) -> CommitRecord | None:
        rec = self.writer().write(table, kind, name)
        if rec is not None:
            self._state = self._state.with_commit(Commit(self.run, (rec,)))
        return rec

    def commit(self, tables: Mapping[str, pa.Table], name: str, retires: Iterable[CommitRecord] = ()) -> Commit:
        """Several files and retirements as one commit (see :meth:`ShardWriter.commit`)."""
        commit = self.writer().commit(tables, name, retires)
        self._state = self._state.with_commit(commit)
        return commit

    def committed_tables(self, columns: Mapping[str, list[str]],
                         shards: Iterable[str] | None = None) -> "Iterator[tuple[CommitRecord, pa.Table]]":
        """Each committed file of a kind in ``columns`` (kind -> the columns to read), in log order,
        with its record; only files holding rows of ``shards`` when given. Paths come from the log,
        whose records were checked to lie inside the root. On an object store up to
        :data:`humanverse.fs.OBJECT_STORE_READERS` files are read at once."""
        t = self._state.table
        t = t.filter(pc.is_in(t["kind"], value_set=pa.array(list(columns), pa.string())))
        if shards is not None:  # files holding rows of these shards, found without a Python object per file
            lists = t["shard_rows"].combine_chunks()
            hit = pc.is_in(pc.struct_field(pc.list_flatten(lists), "shard"), value_set=pa.array(list(shards), pa.string()))
            parents = pc.filter(pc.list_parent_indices(lists), hit)
            t = t.take(pc.unique(parents))
        records = CommitState(t).records

        def read(rec: CommitRecord) -> tuple[CommitRecord, pa.Table]:
            return rec, pq.read_table(self.root.join(rec.file), columns=list(columns[rec.kind]), filesystem=self.root.fs)

        # on an object store each file read waits out a round trip: several in flight, in order
        yield from hfs.map_ordered(read, records, hfs.readers(self.root, len(records)))

    def committed_keys(self, shards: Iterable[str]) -> dict[str, set[str]]:
        """Shard name -> the ``source_key`` values of its rows committed so far (data and rejects):
        a source row's identity within its shard."""
        want = set(shards)
        out: dict[str, set[str]] = {name: set() for name in want}
        cols = ["source_shard", "source_key"]
        for _, t in self.committed_tables({kind: cols for kind in KINDS}, want):
            for shard, key in zip(t.column(0).to_pylist(), t.column(1).to_pylist()):
                if shard in want and key is not None:
                    out[shard].add(key)
        return out

    def built_by(self) -> dict[str, list[str]]:
        """Config digest (``config_sha`` of the run records) -> the runs whose files are committed,
        this run included: which configs built the rows (each run's full config is its record)."""
        digests = {r.get("run"): r.get("config_sha") or "unrecorded" for r in read_runs(self.root)}
        out: dict[str, list[str]] = {}
        for run in [*self._state.runs(), self.run]:
            runs = out.setdefault(digests.get(run, "unrecorded"), [])
            if run not in runs:
                runs.append(run)
        return out

    def checkpoint(self, every: int = CHECKPOINT_EVERY) -> bool:
        """Fold this run's commit objects into a numbered seal once ``every`` are not in one yet, so
        readers of a live build read Parquet, not millions of objects. Returns whether it wrote one."""
        with self._lock:
            return _checkpoint(self.root, self.run, every)

    def close(self, status: str = "finished", **summary) -> None:
        """Seal this run, remove its staging folder, record its end and give the lease back."""
        if self._lease is not None:
            self._lease._stop.set()  # no checkpoint may run while the run is sealed
            self._lease._thread.join()
        with self._lock:
            _seal(self.root, self.run, verify=False)
            staging = self.root.join(STAGING_DIR, self.run)
            if hfs.exists(self.root, staging):
                self.root.fs.delete_dir(staging)
            self.record.update(status=status, ended=time.time(), **summary)
            _put(self.root, self.root.join(RUNS_DIR, f"{self.run}.json"),
                 json.dumps(self.record, sort_keys=True, default=str).encode())
        if self._lease is not None:
            self._lease.release()
            self._lease = None


def _checkpoint(root: hfs.Root, run: str, every: int) -> bool:
    logs = _run_logs(root)
    me = logs.get(run) or _RunLog(run, [], False, False)
    names = _commit_names(root, run, _checkpointed(root, me))
    if len(names) < max(1, every):  # counted from the listing: nothing is read until there is enough
        return False
    commits = _read_commits(root, run, names=names)
    seq = len([s for s in me.seals if s != f"{FINAL}.parquet"])
    root.fs.create_dir(root.join(SEALS_DIR, run), recursive=True)
    table = pa.concat_tables([c.table() for _, c in commits])
    _write_parquet(root, root.join(SEALS_DIR, run, f"{seq:06d}.parquet"), table,
                   {b"humanverse_commits": json.dumps(sorted(n for n, _ in commits)).encode()})
    for n, _ in commits:  # the seal holds them now; readers that listed them tolerate the removal
        with _quiet_missing():
            root.fs.delete_file(root.join(RECORDS_DIR, run, n))
    return True


def _seal(root: hfs.Root, run: str, *, verify: bool = True, run_log: _RunLog | None = None,
          present: set[str] | None = None) -> None:
    """Fence ``run``, put every file it committed in place, and write its final seal: the commit
    objects there now, and no later one. Idempotent. ``verify``, ``present``: see
    :func:`_roll_forward`; ``run_log``: the run's part of the log when the caller has read it.

    Files are rolled forward before the final seal is written, so a sealed run's files are all
    in place; until then readers treat the run as live and look for its files in staging."""
    _put(root, root.join(FENCES_DIR, run), b"")
    final = root.join(SEALS_DIR, run, f"{FINAL}.parquet")
    if not hfs.exists(root, final):
        me = run_log or _run_logs(root).get(run) or _RunLog(run, [], False, True)
        commits = _read_commits(root, run, _checkpointed(root, me))
        table = pa.concat_tables([RECORD_SCHEMA.empty_table()] + [c.table() for _, c in commits])
        earlier = [_read_parquet(root, root.join(SEALS_DIR, run, s)) for s in me.seals]
        _roll_forward(root, CommitState.combine([*earlier, _check_table(table)]).table, verify=verify,
                      present=present)
        root.fs.create_dir(root.join(SEALS_DIR, run), recursive=True)
        _write_parquet(root, final, table, {b"humanverse_commits": json.dumps(sorted(n for n, _ in commits)).encode()})
    records = root.join(RECORDS_DIR, run)
    if hfs.exists(root, records):
        root.fs.delete_dir(records)


def _roll_forward(root: hfs.Root, table: pa.Table, *, verify: bool = True, present: set[str] | None = None) -> None:
    """Move the committed files that are still staged into place (one listing of each run's staging
    folder). With ``verify``, also check that every other committed file is in place (``present``:
    the ``<kind>/<name>`` files in place, else one listing of each kind's folder, minutes on an
    object store with a million files): a committed file found nowhere is data loss. A writer
    sealing its own run skips that check, since it published every file it committed itself, and
    readers check that files are in place when they open."""
    if not table.num_rows:
        return
    runs = set(table["run"].to_pylist())
    staged = {posixpath.join(folder, e.base_name)
              for run in runs for folder in (root.join(STAGING_DIR, run), root.join(STAGING_DIR, SEALED + run))
              for e in hfs.list_dir(root, folder)}
    for file, run, rows in zip(table["file"].to_pylist(), table["run"].to_pylist(), table["rows"].to_pylist()):
        src = next((p for p in staged_paths(root, run, file) if p in staged), None)
        if src is not None:
            root.fs.create_dir(root.join(file.partition("/")[0]), recursive=True)
            _publish(root, src, root.join(file))
            log.info("rolled forward %s", file)
            continue
        if not verify:
            continue
        if present is None:
            present = {f"{k}/{e.base_name}" for k in COMMIT_KINDS for e in hfs.list_dir(root, root.join(k))}
        if file not in present and not hfs.exists(root, root.join(file)):
            raise DataLossError(f"commit log lists {file} ({rows} rows) but the file is neither in place nor in "
                                f"staging; restore it or remove its record from {LOG_DIR}/.")


def _recover(root: hfs.Root, me: str) -> CommitState:
    """Seal runs that were killed (rolling their logged files forward from staging), remove what
    no record lists, compact the log into one snapshot, and clean staging."""
    logs = _run_logs(root)
    top = hfs.list_dir(root, root.join(LOG_DIR))
    legacy = _read_legacy(root, top)
    killed = [r for r in logs.values() if not r.final and r.name != me]
    # The files in place, listed once (on object stores, where a listing of millions of files costs
    # minutes, only after a killed run): every seal below checks its committed files against this
    # listing (a file it rolls forward is committed, so its absence here changes nothing), and files
    # in it that no record lists (a killed writer's, or a foreign one's) are removed.
    placed = {k: hfs.list_dir(root, root.join(k)) for k in COMMIT_KINDS} if killed or legacy or root.is_local else {}
    present = {f"{k}/{e.base_name}" for k, entries in placed.items() for e in entries}
    for run in killed:
        _seal(root, run.name, run_log=run, present=present)
        log.info("sealed run %s, which ended without closing", run.name)
    state = read_log(root)
    if legacy:
        _roll_forward(root, CommitState.combine(legacy).table, present=present)
    if placed:
        listed = set(state.table["file"].to_pylist())
        for k, entries in placed.items():
            for e in entries:
                if f"{k}/{e.base_name}" not in listed:
                    (root.fs.delete_dir if e.type == pafs.FileType.Directory else root.fs.delete_file)(e.path)
                    log.info("removed uncommitted %s/%s", k, e.base_name)
    _compact(root, state, me, legacy=bool(legacy))  # the snapshot it writes holds exactly `state`
    for e in hfs.list_dir(root, root.join(STAGING_DIR)):
        if e.base_name != me:
            (root.fs.delete_dir if e.type == pafs.FileType.Directory else root.fs.delete_file)(e.path)
    return state


def _compact(root: hfs.Root, state: CommitState, me: str, legacy: bool) -> None:
    """Fold every finished run's seals (and an old-version log) into one Parquet snapshot, delete
    the files refilters retired, and remove what the snapshot replaces. A crash at any point leaves
    a correct log: the snapshot is written first and readers drop duplicates."""
    logs = [r for r in _run_logs(root).values() if r.final and r.name != me]
    old = [e for e in hfs.list_dir(root, root.join(LOG_DIR)) if e.type == pafs.FileType.File
           and e.base_name.startswith(SNAPSHOT)]
    if not logs and not legacy and len(old) <= 1:
        return
    retired = _retired(root, logs)
    _write_parquet(root, root.join(LOG_DIR, f"{SNAPSHOT}{me}.parquet"), state.table)
    for file in retired:
        with _quiet_missing():
            root.fs.delete_file(root.join(file))
    for r in logs:  # (fence markers stay: a straggler of a compacted run must still stop)
        root.fs.delete_dir(root.join(SEALS_DIR, r.name))
    for e in old:
        if e.base_name != f"{SNAPSHOT}{me}.parquet":
            root.fs.delete_file(e.path)
    for e in hfs.list_dir(root, root.join(LOG_DIR)):  # the old version's run folders
        if e.type == pafs.FileType.Directory and e.base_name not in ("runs", "records", "fences", "seals"):
            root.fs.delete_dir(e.path)
    log.info("compacted the commit log: %d live files in %s%s.parquet", len(state), SNAPSHOT, me)


def _retired(root: hfs.Root, logs: list[_RunLog]) -> list[str]:
    out = []
    for r in logs:
        for s in r.seals:
            t = _read_parquet(root, root.join(SEALS_DIR, r.name, s))
            out += pc.filter(t["file"], pc.equal(t["op"], "retire")).to_pylist()
    return out
