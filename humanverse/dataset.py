"""Reading a HumanVerse dataset: only files the commit log lists are ever seen.

>>> ds = humanverse.open("out/demo/dataset")
>>> ds.query("SELECT num_persons, count(*) FROM hv GROUP BY 1").fetchall()
>>> ds.query("SELECT reason, count(*) FROM rejects GROUP BY 1")
"""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath
from dataclasses import dataclass, field
from typing import Literal

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from humanverse import fs as hfs
from humanverse.errors import first_line
from humanverse.schema import REJECT_SCHEMA, data_schema
from humanverse.shards import KINDS, CommitState, DatasetError, read_log, read_manifest, staged_paths

log = logging.getLogger(__name__)

#: Logs of up to this many files are checked for missing files at open (one listing per kind).
EAGER_CHECK_FILES = 20_000


@dataclass
class HumanVerseDataset:
    """A read-only view of the committed files of a dataset root."""

    root: hfs.Root
    manifest: dict
    state: CommitState
    missing: str = "raise"
    #: kind -> committed files not in place: file -> rows (lost), or None (still in staging: a live
    #: writer publishes it in a moment, or the next writer rolls it forward)
    _absent: dict = field(default_factory=dict)

    # -- files --------------------------------------------------------------------------------
    def files(self, kind: str = "data") -> list[str]:
        """Absolute paths (on :attr:`root`'s filesystem) of committed, published files."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}.")
        absent = self._check(kind)
        return [self.root.join(f) for f in self.state.files(kind) if f not in absent]

    def _check(self, kind: str) -> dict[str, int | None]:
        """Committed files of ``kind`` that are not in place, found by one listing of the kind's
        folder the first time its files are needed: a file still in its run's staging folder is
        left out quietly; a lost one raises, or (``missing="skip"``) is warned about once and left out."""
        if kind in self._absent:
            return self._absent[kind]
        import pyarrow.compute as pc

        present = {e.base_name for e in hfs.list_dir(self.root, self.root.join(kind))
                   if e.type == pafs.FileType.File}
        t = self.state.table
        t = t.filter(pc.equal(t["kind"], kind))
        absent: dict[str, int | None] = {}
        for f, run, n in zip(t["file"].to_pylist(), t["run"].to_pylist(), t["rows"].to_pylist()):
            if posixpath.basename(f) not in present:
                absent[f] = None if _staged(self.root, f, run) else n
        lost = {f: n for f, n in absent.items() if n is not None}
        if lost:
            first = next(iter(lost))
            msg = (f"{self.root.path}: the commit log lists {len(lost)} {kind} file(s) that are missing "
                   f"({sum(lost.values())} rows), e.g. {first}")
            if self.missing == "raise":
                raise DatasetError(msg + "; restore them, or read what remains with missing='skip' (--skip-missing).")
            log.warning("%s; reading what remains (missing='skip').", msg)
        self._absent[kind] = absent
        return absent

    def _schema(self, kind: str) -> pa.Schema:
        if kind == "rejects":
            return REJECT_SCHEMA
        return data_schema(self.manifest.get("clip_dim"))

    def arrow_dataset(self, kind: str = "data", widen_float16: bool = False) -> pads.Dataset:
        """An Arrow dataset over the committed files; ``widen_float16`` reads half floats as float32
        (DuckDB has no half-float Arrow type; its own Parquet reader widens them the same way)."""
        schema = self._schema(kind)
        if widen_float16:
            schema = pa.schema([f.with_type(pa.list_(pa.float32(), f.type.list_size))
                                if pa.types.is_fixed_size_list(f.type) and pa.types.is_float16(f.type.value_type)
                                else f for f in schema], metadata=schema.metadata)
        files = self.files(kind)
        if not files:
            return pads.dataset(schema.empty_table())
        return pads.dataset(files, format="parquet", filesystem=self.root.fs,
                            schema=schema if widen_float16 else None)

    def to_arrow(self, kind: str = "data", columns: list[str] | None = None) -> pa.Table:
        return self.arrow_dataset(kind).to_table(columns=columns)

    def num_rows(self, kind: str = "data") -> int:
        """Committed rows of ``kind``, from the log (no data file is read). With ``missing="skip"``,
        rows of lost files are left out."""
        absent = self._check(kind) if self.missing == "skip" else {}
        return self.state.rows(kind) - sum(n for n in absent.values() if n is not None)

    # -- SQL ----------------------------------------------------------------------------------
    def connect(self):
        """A DuckDB connection with views ``hv`` (accepted rows) and ``rejects``, and the keypoint
        macros of :func:`humanverse.sql.register_keypoint_macros`."""
        import duckdb

        from humanverse.sql import register_keypoint_macros

        con = duckdb.connect()
        register_keypoint_macros(con)  # kp(person, 'left_wrist'), kp_visible(person, 'left_hand'), ...
        with self.loud_reads():  # creating a view reads the files' footers
            for name, kind in (("hv", "data"), ("rejects", "rejects")):
                files = self.files(kind)
                if files and self.root.is_local:
                    listing = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
                    con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet([{listing}])")
                else:  # remote filesystems and empty datasets go through Arrow (lazy, projected scans)
                    con.register(f"_{name}_arrow", self.arrow_dataset(kind, widen_float16=True))
                    con.execute(f"CREATE VIEW {name} AS SELECT * FROM _{name}_arrow")
        return con

    def query(self, sql: str) -> pa.Table:
        """Run SQL over ``hv`` and ``rejects``; returns an Arrow table. A committed file that cannot
        be read raises :class:`~humanverse.shards.DatasetError` naming it."""
        con = self.connect()
        try:
            with self.loud_reads():
                return con.sql(sql).to_arrow_table()
        finally:
            con.close()

    @contextlib.contextmanager
    def loud_reads(self):
        """Turn a read error that names one of the committed files (truncated, corrupt, not Parquet)
        into one sentence naming that file; other errors pass unchanged."""
        import duckdb

        try:
            yield
        except (duckdb.Error, pa.ArrowInvalid, OSError) as e:
            text = str(e)
            bad = next((f for k in KINDS for f in self.files(k) if f in text), None)
            if bad is None:
                raise
            raise DatasetError(f"the committed file {bad} cannot be read ({first_line(e)}); restore it from a backup "
                               "or rebuild its source shard.") from None

    # -- other front ends ---------------------------------------------------------------------
    def to_ray(self, kind: str = "data", **read_kwargs):
        """A ``ray.data.Dataset`` over the committed files (Ray imported lazily)."""
        import ray.data

        files = self.files(kind)
        if not files:
            return ray.data.from_arrow(self._schema(kind).empty_table())
        return ray.data.read_parquet(files, filesystem=self.root.fs, **read_kwargs)

    def stats(self) -> dict:
        """Counts, the reject funnel and distributions (see :mod:`humanverse.stats`)."""
        from humanverse.stats import compute_stats

        with self.loud_reads():
            return compute_stats(self)

    def __repr__(self) -> str:
        return (f"HumanVerseDataset({self.root.path!r}, rows={self.num_rows('data')}, "
                f"rejects={self.num_rows('rejects')}, files={len(self.state)})")


def open(root: "str | os.PathLike[str]", *, missing: Literal["raise", "skip"] = "raise") -> HumanVerseDataset:  # noqa: A001
    """Open a dataset root (local path or URL) for reading.

    Opening reads the commit log (one Parquet snapshot, plus any live run's records), not the data
    files. Whether every committed file is in place is checked at open for logs of up to
    ``EAGER_CHECK_FILES`` files, otherwise by one listing of a kind's folder the first time its
    files are read.

    Only files the commit log lists are read. A listed file that is not in place is either still
    being published by a live writer (it is then in that run's staging folder, and is left out
    until it lands) or lost: a lost file raises :class:`~humanverse.shards.DatasetError` naming
    it, unless ``missing="skip"``, which logs a warning and reads what remains.
    """
    if missing not in ("raise", "skip"):
        raise ValueError(f"missing must be 'raise' or 'skip', got {missing!r}.")
    r = hfs.resolve_root(root)
    manifest = read_manifest(r)
    if manifest is None:
        raise FileNotFoundError(f"{r.path} is not a HumanVerse dataset: it has no humanverse.json.")
    state = read_log(r, shard_rows=False)
    ds = HumanVerseDataset(r, manifest, state, missing)
    if len(state) <= EAGER_CHECK_FILES:
        for kind in KINDS:
            ds._check(kind)
    return ds


def _staged(root: hfs.Root, file: str, run: str) -> bool:
    """Whether a logged file that is not in place is still in its run's staging folder (published
    by the writer in a moment, or rolled forward by the next writer)."""
    return any(hfs.exists(root, p) for p in staged_paths(root, run, file))
