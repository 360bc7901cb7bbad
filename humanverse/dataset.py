"""Reading a HumanVerse dataset: only files the commit log lists are ever seen.

>>> ds = humanverse.open("out/demo/dataset")
>>> ds.query("SELECT num_persons, count(*) FROM hv GROUP BY 1").fetchall()
>>> ds.query("SELECT reason, count(*) FROM rejects GROUP BY 1")
"""

from __future__ import annotations

import logging
import os
import posixpath
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.fs as pafs

from humanverse import fs as hfs
from humanverse.schema import REJECT_SCHEMA, data_schema
from humanverse.shards import KINDS, CommitState, read_log, read_manifest

log = logging.getLogger(__name__)


@dataclass
class HumanVerseDataset:
    """A read-only view of the committed files of a dataset root."""

    root: hfs.Root
    manifest: dict
    state: CommitState
    _published: dict[str, list[str]]

    # -- files --------------------------------------------------------------------------------
    def files(self, kind: str = "data") -> list[str]:
        """Absolute paths (on :attr:`root`'s filesystem) of committed, published files."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}.")
        return list(self._published[kind])

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
        return self.state.rows(kind)

    # -- SQL ----------------------------------------------------------------------------------
    def connect(self):
        """A DuckDB connection with views ``hv`` (accepted rows) and ``rejects``."""
        import duckdb

        con = duckdb.connect()
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
        """Run SQL over ``hv`` and ``rejects``; returns an Arrow table."""
        con = self.connect()
        try:
            return con.sql(sql).to_arrow_table()
        finally:
            con.close()

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

        return compute_stats(self)

    def __repr__(self) -> str:
        return (f"HumanVerseDataset({self.root.path!r}, rows={self.num_rows('data')}, "
                f"rejects={self.num_rows('rejects')}, files={len(self.state.records)})")


def open(root: "str | os.PathLike[str]") -> HumanVerseDataset:  # noqa: A001 - mirrors io.open
    """Open a dataset root (local path or URL) for reading."""
    r = hfs.resolve_root(root)
    manifest = read_manifest(r)
    if manifest is None:
        raise FileNotFoundError(f"{r.path} is not a HumanVerse dataset: it has no humanverse.json.")
    state = read_log(r)
    published: dict[str, list[str]] = {}
    for kind in KINDS:
        present = {e.base_name for e in hfs.list_dir(r, r.join(kind)) if e.type == pafs.FileType.File}
        # A record whose file is not yet renamed into place is committed but not yet visible;
        # the writer (or the next ShardSink.open) publishes it.
        published[kind] = [r.join(f) for f in state.files(kind) if posixpath.basename(f) in present]
    return HumanVerseDataset(r, manifest, state, published)
