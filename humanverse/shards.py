"""Exactly-once Parquet commits for a HumanVerse dataset (docs/format.md, the commit protocol).

Layout under the dataset root::

    humanverse.json            format version, pipeline config, model table (the manifest)
    data/part-<run>-<name>.parquet      accepted rows      (visible only once logged)
    rejects/part-<run>-<name>.parquet   rejected rows
    _log/<run>/<kind>-<name>.json       one commit record per published file (live run)
    _log/sealed-<run>/...               records of finished or killed runs
    _log/snapshot-<run>.json            compacted records of earlier runs
    _staging/<run>/                     files being written by a live run (never read)

Protocol, per file (:meth:`ShardWriter.write`):

1. write the Parquet file into ``_staging/<run>/`` (outside ``data/``, so no glob ever sees a
   partial file) and fsync it;
2. write its commit record into ``_log/<run>/`` (temp + rename + fsync): **the commit point**;
3. rename the file into ``data/`` or ``rejects/`` (publish).

On start (:meth:`ShardSink.open`) the previous runs are *fenced*: their ``_log/<run>`` and
``_staging/<run>`` folders are renamed to sealed names, so a killed run's straggling writer (Ray
tasks outlive a SIGKILLed driver by seconds) fails with ``FileNotFoundError`` instead of committing
behind our back. Then logged-but-unpublished files are rolled forward from sealed staging, files
in ``data/``/``rejects/`` that no record lists are deleted, and sealed staging is removed.
A record is the only thing that makes a file count: readers (:func:`humanverse.open`) read the
log, never a directory listing alone.

One writer per root: :meth:`ShardSink.open` takes a lease (``_lease.json``: host, process, run,
expiry) that the open sink renews in the background and :meth:`ShardSink.close` gives back. A
second writer is refused with one sentence naming the holder while the lease is live; a lease
lapses ``lease_seconds`` after its last renewal, at once when its holder was a process on this
host that no longer exists, so a killed build never locks its output.

The fence relies on atomic directory renames (local disks, HDFS, NFS). Object stores have none:
there, run a single writer per root at a time (the commit point still holds) — documented in
README.
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
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq
import pyarrow.fs as pafs

from humanverse import fs as hfs
from humanverse.schema import FORMAT_NAME, FORMAT_VERSION, validate_data, validate_rejects

log = logging.getLogger(__name__)

KINDS = ("data", "rejects")
MANIFEST = "humanverse.json"
LOG_DIR = "_log"
STAGING_DIR = "_staging"
SEALED = "sealed-"
SNAPSHOT = "snapshot-"
LEASE = "_lease.json"
#: Seconds a writer's lease stays valid after its last renewal (renewed every third of that).
LEASE_SECONDS = 60.0
#: Compact the log into one snapshot at start once it holds more record files than this.
COMPACT_AFTER = 256


class DatasetError(ValueError):
    """A dataset's log, manifest or files are damaged, inconsistent or not what they claim to be."""


class DataLossError(DatasetError):
    """A logged file can be found neither in place nor in staging, or counts do not add up."""


#: A run name or a file's base name: one path component, no ``..``, no separator.
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+=-]*$")


def _checked_name(value: object, what: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value) or ".." in value:
        raise DatasetError(f"the commit log names {what} {value!r}, which is not a plain file name; "
                           "the log is damaged or was crafted, so nothing was read, moved or deleted.")
    return value


@dataclass(frozen=True)
class CommitRecord:
    """One committed file: where it is, how many rows, and how many came from each source shard."""

    file: str  # relative to the root, e.g. "data/part-<run>-<name>.parquet"
    kind: str  # "data" | "rejects"
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
        kind, _, base = rec.file.partition("/") if isinstance(rec.file, str) else ("", "", "")
        if rec.kind not in KINDS or kind != rec.kind or not base.endswith(".parquet"):
            raise DatasetError(f"the commit log names file {rec.file!r} of kind {rec.kind!r}, outside data/ and "
                               "rejects/; the log is damaged or was crafted, so nothing was read, moved or deleted.")
        _checked_name(base, "file")
        _checked_name(rec.run, "run")
        return rec


@dataclass(frozen=True)
class CommitState:
    """What the log says is committed: per file and per source shard."""

    records: tuple[CommitRecord, ...]

    def files(self, kind: str | None = None) -> list[str]:
        return [r.file for r in self.records if kind is None or r.kind == kind]

    def rows(self, kind: str | None = None) -> int:
        return sum(r.rows for r in self.records if kind is None or r.kind == kind)

    def rows_per_shard(self, kind: str | None = None) -> dict[str, int]:
        c: Counter[str] = Counter()
        for r in self.records:
            if kind is None or r.kind == kind:
                c.update(r.shard_rows)
        return dict(c)

    def complete_shards(self, shard_sizes: Mapping[str, int]) -> set[str]:
        """Source shards whose committed rows (data + rejects) add up to their size."""
        got = self.rows_per_shard()
        over = {s: (got[s], n) for s, n in shard_sizes.items() if got.get(s, 0) > n}
        if over:
            raise DataLossError(f"source shards hold more committed rows than their size: {over}.")
        return {s for s, n in shard_sizes.items() if got.get(s, 0) == n}


# ---------------------------------------------------------------------------------------------
# The log


def _read_json(root: hfs.Root, path: str) -> object:
    try:
        return json.loads(hfs.read_bytes(root, path))
    except json.JSONDecodeError as e:
        raise DataLossError(f"commit log file {path} is not valid JSON ({e}); the log is damaged.") from e


def read_log(root: "str | hfs.Root", attempts: int = 20) -> CommitState:
    """Read every commit record (snapshots, sealed runs and live runs), deduplicated by file.

    A writer starting up renames run folders (fencing) and compacts them into snapshots while
    readers may be reading; the read is retried until the top of ``_log/`` is unchanged across
    it, so a reader never sees a log with a run folder missing.
    """
    root = hfs.resolve_root(root)
    for _ in range(attempts):
        before = sorted(e.base_name for e in hfs.list_dir(root, root.join(LOG_DIR)))
        try:
            state = _read_log_once(root)
        except FileNotFoundError:
            time.sleep(0.01)
            continue
        if before == sorted(e.base_name for e in hfs.list_dir(root, root.join(LOG_DIR))):
            return state
        time.sleep(0.01)
    raise RuntimeError(f"the commit log of {root.path} kept changing during {attempts} reads; retry later.")


def _read_log_once(root: hfs.Root) -> CommitState:
    by_file: dict[str, CommitRecord] = {}
    log_dir = root.join(LOG_DIR)
    entries = hfs.list_dir(root, log_dir)
    snaps = sorted(e.path for e in entries if e.type == pafs.FileType.File
                   and e.base_name.startswith(SNAPSHOT) and e.base_name.endswith(".json"))
    for p in snaps:
        snap = _read_json(root, p)
        if not isinstance(snap, dict) or not isinstance(snap.get("records"), list):
            raise DatasetError(f"commit log snapshot {p} holds no record list; the log is damaged.")
        for d in snap["records"]:
            rec = CommitRecord.from_dict(d)
            by_file[rec.file] = rec
    for e in entries:
        if e.type != pafs.FileType.Directory:
            continue
        for f in hfs.list_dir(root, e.path):
            if f.type == pafs.FileType.File and f.base_name.endswith(".json"):
                d = _read_json(root, f.path)
                if not isinstance(d, dict):
                    raise DatasetError(f"commit record {f.path} is not a JSON object; the log is damaged.")
                rec = CommitRecord.from_dict(d)
                by_file[rec.file] = rec
    return CommitState(tuple(sorted(by_file.values(), key=lambda r: (r.created, r.file))))


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
    """Write ``humanverse.json`` atomically, stamping the format name and version."""
    root = hfs.resolve_root(root)
    m = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **manifest}
    hfs.write_bytes_atomic(root, root.join(MANIFEST), json.dumps(m, indent=2, sort_keys=True).encode(),
                           tmp_suffix=uuid.uuid4().hex)


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
        if self.options.validate:
            (validate_data if kind == "data" else validate_rejects)(table)
        name = name or uuid.uuid4().hex
        root = hfs.resolve_root(self.root_uri)
        rel = self.file_name(kind, name)
        base = posixpath.basename(rel)
        staged = root.join(STAGING_DIR, self.run, base)
        # 1. stage (the run's staging folder must exist: if it was sealed, this raises).
        if root.is_local:
            import os

            with open(staged, "wb") as f:
                pq.write_table(table, f, compression=self.options.compression,
                               row_group_size=self.options.row_group_size)
                if self.options.fsync:
                    f.flush()
                    os.fsync(f.fileno())
        else:
            with root.fs.open_output_stream(staged) as f:
                pq.write_table(table, f, compression=self.options.compression,
                               row_group_size=self.options.row_group_size)
        # 2. commit
        shard_rows = Counter(table.column("source_shard").to_pylist())
        rec = CommitRecord(file=rel, kind=kind, rows=table.num_rows, shard_rows=dict(shard_rows), run=self.run)
        hfs.write_bytes_atomic(root, root.join(LOG_DIR, self.run, f"{kind}-{name}.json"), rec.to_json(),
                               tmp_suffix=uuid.uuid4().hex, fsync=self.options.fsync)
        # 3. publish (no fsync needed: if the rename is lost in a crash, recovery rolls it forward)
        root.fs.move(staged, root.join(rel))
        return rec


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


def _read_lease(root: hfs.Root) -> Lease | None:
    path = root.join(LEASE)
    try:
        d = json.loads(hfs.read_bytes(root, path))
        return Lease(str(d["host"]), int(d["pid"]), str(d["run"]), float(d["renewed"]), float(d["expires"]))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):  # a torn or foreign file: nobody holds the root
        return None


def _write_lease(root: hfs.Root, lease: Lease) -> None:
    hfs.write_bytes_atomic(root, root.join(LEASE), json.dumps(asdict(lease)).encode(),
                           tmp_suffix=uuid.uuid4().hex, fsync=False)


def _acquire_lease(root: hfs.Root, run: str, seconds: float) -> Lease:
    """Take the root's lease, or raise :class:`DatasetError` naming the live holder."""
    held = _read_lease(root)
    if held is not None and held.is_live() and not held.is_mine():
        raise DatasetError(
            f"{root.path} is being written by another build (run {held.run}, process {held.pid} on {held.host}, "
            f"lease renewed {max(0.0, time.time() - held.renewed):.0f} s ago); wait for it to finish, or, if that "
            f"process is gone, retry once its lease lapses at "
            f"{time.strftime('%H:%M:%S', time.localtime(held.expires))}.")
    lease = Lease.mine(run, seconds)
    _write_lease(root, lease)
    got = _read_lease(root)  # two writers racing: the last write wins, the other backs off here
    if got is None or got.run != run:
        raise DatasetError(f"{root.path} was taken by another build (run {got.run if got else '?'}) at the same "
                           "moment; run one build per output at a time.")
    return lease


class _LeaseKeeper:
    """Renews a lease every third of its lifetime until stopped, then gives it back."""

    def __init__(self, root: hfs.Root, lease: Lease, seconds: float):
        self.root, self.run, self.seconds = root, lease.run, seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name=f"lease-{lease.run}", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            held = _read_lease(self.root)
            if held is not None and held.run != self.run:
                log.warning("the lease of %s was taken by run %s; this run no longer holds it", self.root.path,
                            held.run)
                return
            try:
                _write_lease(self.root, Lease.mine(self.run, self.seconds))
            except OSError as e:  # the root went away (a test's temp folder), or a transient error
                log.debug("lease renewal failed: %s", e)

    def release(self) -> None:
        self._stop.set()
        self._thread.join()
        held = _read_lease(self.root)
        if held is not None and held.run == self.run:
            try:
                self.root.fs.delete_file(self.root.join(LEASE))
            except OSError:
                pass


class ShardSink:
    """A writing session on a dataset root: fences earlier runs, recovers, then hands out writers.

    >>> sink = ShardSink.open("out/ds", manifest={"config": {...}})
    >>> done = sink.state.complete_shards({"shard-0": 100})
    >>> sink.write(table, "data", name="shard-0-0")
    """

    def __init__(self, root: hfs.Root, run: str, state: CommitState, options: ParquetWriteOptions,
                 lease: "_LeaseKeeper | None" = None):
        self.root = root
        self.run = run
        self._state = state
        self.options = options
        self._lease = lease

    @classmethod
    def open(cls, root: "str | hfs.Root", *, manifest: Mapping | None = None, run: str | None = None,
             options: ParquetWriteOptions = ParquetWriteOptions(),
             lease_seconds: float = LEASE_SECONDS) -> "ShardSink":
        """Take the root's lease (refused while another writer holds it), write the manifest, fence
        earlier runs, recover, and start run ``run``."""
        root = hfs.resolve_root(root)
        run = _checked_name(run, "run") if run else time.strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]
        info = root.fs.get_file_info(root.path)
        if info.type == pafs.FileType.File:
            raise DatasetError(f"the output {root.path} is a file, not a folder; give a new or existing dataset "
                               "folder.")
        for d in (root.path, root.join("data"), root.join("rejects"), root.join(LOG_DIR), root.join(STAGING_DIR)):
            root.fs.create_dir(d, recursive=True)
        lease = _acquire_lease(root, run, lease_seconds)
        return cls._open(root, run, manifest, options, _LeaseKeeper(root, lease, lease_seconds))

    @classmethod
    def _open(cls, root: hfs.Root, run: str, manifest: Mapping | None, options: ParquetWriteOptions,
              keeper: "_LeaseKeeper") -> "ShardSink":
        try:
            existing = read_manifest(root)
            if manifest is not None:
                write_manifest(root, manifest)
            elif existing is None:
                write_manifest(root, {})
            _fence(root)
            state = _recover(root)
            _compact(root, state, run)
            root.fs.create_dir(root.join(LOG_DIR, run), recursive=False)
            root.fs.create_dir(root.join(STAGING_DIR, run), recursive=False)
        except BaseException:
            keeper.release()
            raise
        log.info("opened %s as run %s: %d committed files, %d rows", root.path, run,
                 len(state.records), state.rows())
        return cls(root, run, state, options, keeper)

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
            self._state = CommitState(self._state.records + (rec,))
        return rec

    def committed_tables(self, columns: Mapping[str, list[str]],
                         shards: Iterable[str] | None = None) -> "Iterator[tuple[CommitRecord, pa.Table]]":
        """Each committed file of a kind in ``columns`` (kind -> the columns to read), one at a time,
        with its record; only files holding rows of ``shards`` when given. Paths come from records,
        which :meth:`CommitRecord.from_dict` has checked to lie inside the root."""
        want = None if shards is None else set(shards)
        for rec in self._state.records:
            if rec.kind in columns and (want is None or want & rec.shard_rows.keys()):
                yield rec, pq.read_table(self.root.join(rec.file), columns=list(columns[rec.kind]),
                                         filesystem=self.root.fs)

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

    def close(self) -> None:
        """Seal this run's log, remove its (now empty) staging folder and give the lease back."""
        log_dir = self.root.join(LOG_DIR, self.run)
        if hfs.exists(self.root, log_dir):
            self.root.fs.move(log_dir, self.root.join(LOG_DIR, SEALED + self.run))
        staging = self.root.join(STAGING_DIR, self.run)
        if hfs.exists(self.root, staging):
            self.root.fs.delete_dir(staging)
        if self._lease is not None:
            self._lease.release()
            self._lease = None


def _fence(root: hfs.Root) -> None:
    """Seal every live run's log and staging folder so straggling writers cannot commit."""
    for parent in (LOG_DIR, STAGING_DIR):
        for e in hfs.list_dir(root, root.join(parent)):
            if e.type == pafs.FileType.Directory and not e.base_name.startswith(SEALED):
                root.fs.move(e.path, root.join(parent, SEALED + e.base_name))
                log.info("sealed %s/%s of an earlier run", parent, e.base_name)
        hfs.fsync_dir(root, root.join(parent))


def _recover(root: hfs.Root) -> CommitState:
    """Roll logged files forward from sealed staging; delete unlogged files; drop sealed staging."""
    state = read_log(root)
    present = {k: {e.base_name for e in hfs.list_dir(root, root.join(k))} for k in KINDS}
    for rec in state.records:
        base = posixpath.basename(rec.file)
        if base in present[rec.kind]:
            continue
        staged = root.join(STAGING_DIR, SEALED + rec.run, base)
        if not hfs.exists(root, staged):
            raise DataLossError(
                f"commit log lists {rec.file} ({rec.rows} rows) but the file is neither in place nor in "
                f"staging; restore it or remove its record from {LOG_DIR}/."
            )
        root.fs.move(staged, root.join(rec.file))
        present[rec.kind].add(base)
        log.info("rolled forward %s", rec.file)
    listed = {posixpath.basename(r.file) for r in state.records}
    for k in KINDS:
        for e in hfs.list_dir(root, root.join(k)):
            if e.base_name not in listed:
                if e.type == pafs.FileType.Directory:
                    root.fs.delete_dir(e.path)
                else:
                    root.fs.delete_file(e.path)
                log.info("removed uncommitted %s/%s", k, e.base_name)
        hfs.fsync_dir(root, root.join(k))
    for e in hfs.list_dir(root, root.join(STAGING_DIR)):
        if e.type == pafs.FileType.Directory and e.base_name.startswith(SEALED):
            root.fs.delete_dir(e.path)
    return state


def _compact(root: hfs.Root, state: CommitState, run: str) -> None:
    """Merge sealed record folders into one snapshot once there are many record files."""
    sealed = [e for e in hfs.list_dir(root, root.join(LOG_DIR))
              if e.type == pafs.FileType.Directory and e.base_name.startswith(SEALED)]
    n_files = sum(len(hfs.list_dir(root, e.path)) for e in sealed)
    if n_files <= COMPACT_AFTER:
        return
    old_snaps = [e for e in hfs.list_dir(root, root.join(LOG_DIR))
                 if e.type == pafs.FileType.File and e.base_name.startswith(SNAPSHOT)]
    body = json.dumps({"records": [asdict(r) for r in state.records]}).encode()
    # Write the snapshot first: until the old folders are gone, records are duplicated, and
    # read_log deduplicates by file, so a crash at any point leaves a correct log.
    hfs.write_bytes_atomic(root, root.join(LOG_DIR, f"{SNAPSHOT}{run}.json"), body, tmp_suffix=uuid.uuid4().hex)
    for e in sealed:
        root.fs.delete_dir(e.path)
    for e in old_snaps:
        root.fs.delete_file(e.path)
    log.info("compacted %d commit records into %s%s.json", len(state.records), SNAPSHOT, run)
