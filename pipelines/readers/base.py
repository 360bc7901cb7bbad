"""What every reader shares: the source shard, the row it yields, and file helpers.

A reader yields plain dicts with the :data:`pipelines.rows.SOURCE_SCHEMA` keys (:func:`source_row`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import posixpath
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from humanverse.fs import Root
from pipelines.rows import SOURCE_SCHEMA

log = logging.getLogger(__name__)

FOLDER = "folder"
WEBDATASET = "webdataset"
PARQUET = "parquet"
KINDS = (FOLDER, WEBDATASET, PARQUET)

#: File extensions read as images (compared lower-case).
IMAGE_EXTENSIONS = frozenset({"jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff"})
#: Parquet image columns tried in this order when ``image_column`` is not given.
IMAGE_COLUMNS = ("jpg", "png", "webp", "image", "image_bytes", "bytes")
#: Parquet alt-text columns; a row takes the first non-null one (``TEXT``: LAION, ``text``: COYO and HF datasets).
ALT_TEXT_COLUMNS = ("txt", "caption", "alt_text", "TEXT", "text")
URL_COLUMNS = ("url", "URL")
#: img2dataset's ``status`` of a downloaded sample.
SUCCESS = "success"

#: ``source_row``'s ``reason`` when the source says it has no image (img2dataset status, no bytes)
DOWNLOAD_FAILED = "download_failed"
#: ``source_row``'s ``reason`` when the bytes are there but could not be read (a damaged tar, an I/O error)
UNREADABLE = "undecodable"

_ROW_KEYS = ["source_shard", "source_index", "source_key", "source_url", "alt_text", "source_bytes", "source_error",
             "source_reason"]
if _ROW_KEYS != SOURCE_SCHEMA.names:  # the row contract moved: update source_row()
    raise ImportError(f"pipelines.readers builds rows with {_ROW_KEYS} but SOURCE_SCHEMA is {SOURCE_SCHEMA.names}.")


class SourceShardError(RuntimeError):
    """A whole source shard cannot be read (missing, truncated or not in the expected format)."""


@dataclass(frozen=True)
class SourceShard:
    """One unit of work and of resume.

    ``name`` is stable and unique within an input: the shard file's path relative to the input root
    (``00000.tar``, ``sub/part-3.parquet``) or, for folders, ``<dir>#<first file>`` (``images/dirA#0001.jpg``:
    see :mod:`pipelines.readers.folder`). ``uri`` is the shard file (or, for folder shards, the folder)
    as a path or URL that :func:`humanverse.fs.resolve_root` understands. ``size`` is the exact number
    of rows the shard yields. ``members`` (folder shards only) are the image file names, relative to
    ``uri``, sorted; ``span`` (folder shards only) is the (first, last) file name range the shard owns,
    which never changes once recorded. ``fingerprint`` changes when the shard's content may have:
    the file's size and modification time (tars with their sidecar, Parquet files), a hash of the
    member names (folder shards).

    A row of a shard is identified by its *key* (``source_key``), unique within the shard: the file
    name relative to the input root (folders), the sample key (tars), the ``key`` column or else the
    row number (Parquet). ``source_index`` is only the row's position in the shard as read.
    """

    name: str
    uri: str
    kind: str
    size: int
    members: tuple[str, ...] = ()
    fingerprint: str = ""
    span: tuple[str, str] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.members, tuple):  # e.g. a list after a JSON round trip
            object.__setattr__(self, "members", tuple(self.members))
        if self.span is not None and not isinstance(self.span, tuple):
            object.__setattr__(self, "span", tuple(self.span))
        if self.kind not in KINDS:
            raise ValueError(f"source shard kind {self.kind!r} is not one of {list(KINDS)}.")
        if self.size < 0:
            raise ValueError(f"source shard {self.name!r} has a negative size {self.size}.")
        if self.kind == FOLDER and len(self.members) != self.size:
            raise ValueError(f"folder shard {self.name!r} lists {len(self.members)} members but has size {self.size}.")


class ShardKeys:
    """The keys of one shard's rows as a reader meets them: made unique, checked against the keys
    already committed, and remembered, so that :attr:`vanished` says which committed keys the shard
    no longer holds (a changed shard: reported, never deleted).

    A key that repeats in its shard (a Parquet ``key`` column with duplicates) becomes ``<key>#<index>``,
    a missing one ``#<index>``: the row number stands in, which is stable while the shard is unchanged.
    """

    def __init__(self, committed: frozenset[str] | set[str] = frozenset()):
        self.committed = frozenset(committed)
        self.seen: set[str] = set()

    def unique(self, key: str | None, index: int) -> str:
        """The row's key: ``key`` itself unless it is missing or taken by an earlier row of the shard."""
        if key is None or key in self.seen:
            key = f"{key or ''}#{index}"
            while key in self.seen:  # pathological keys that already look like this: stay unique
                key += "'"
        self.seen.add(key)
        return key

    def skips(self, key: str) -> bool:
        """True when the row with this (unique) key is committed already."""
        return key in self.committed

    @property
    def vanished(self) -> list[str]:
        """Committed keys the shard did not yield (valid once it has been read to its end)."""
        return sorted(self.committed - self.seen)


def source_row(shard: SourceShard, index: int, *, key: str | None, url: str | None = None,
               alt_text: str | None = None, data: bytes | None = None, error: str | None = None,
               reason: str = DOWNLOAD_FAILED) -> dict:
    """One reader row; ``error`` set means the row carries no image (its bytes are dropped) and becomes
    a reject with ``reason`` (:data:`DOWNLOAD_FAILED` or :data:`UNREADABLE`) at decode."""
    return {"source_shard": shard.name, "source_index": index, "source_key": key, "source_url": url,
            "alt_text": alt_text, "source_bytes": data if error is None else None, "source_error": error,
            "source_reason": None if error is None else reason}


def check_size(shard: SourceShard, seen: int) -> None:
    """Refuse a shard whose row count changed since discovery (during this run): it stays to do, and
    the next run, which discovers it anew, reconciles it by key."""
    if seen != shard.size:
        raise SourceShardError(
            f"source shard {shard.name} has {seen} rows but was discovered with {shard.size}: it changed "
            "during this run, so it stays to do and the next run reconciles it."
        )


def file_fingerprint(*infos: pafs.FileInfo) -> str:
    """The fingerprint of a shard file (and its sidecar): size and modification time of each."""
    parts = []
    for info in infos:
        mtime = info.mtime_ns
        parts.append(f"{info.size}@{mtime}" if mtime is not None else f"{info.size}")
    return "file:" + ";".join(parts)


# -- Parquet files (shards of their own, and img2dataset's metadata beside tars) --------------------


@contextlib.contextmanager
def opened_parquet(root: Root, name: str) -> Iterator[pq.ParquetFile]:
    """The Parquet file at ``root``, open for the block; opening errors become :class:`SourceShardError`."""
    try:
        f = root.fs.open_input_file(root.path)
        pf = pq.ParquetFile(f)
    except (OSError, pa.ArrowException) as e:
        raise SourceShardError(f"cannot open the parquet shard {name} ({root.uri}): {e}") from e
    with f:
        yield pf


def open_parquet(root: Root, name: str, fn: Callable[[pq.ParquetFile], object]):
    """Call ``fn`` on the opened Parquet file."""
    with opened_parquet(root, name) as pf:
        return fn(pf)


def iter_parquet(root: Root, name: str, gen: Callable[[pq.ParquetFile], Iterator]) -> Iterator:
    """Yield from ``gen`` over the opened Parquet file; read errors become :class:`SourceShardError`."""
    with opened_parquet(root, name) as pf:
        try:
            yield from gen(pf)
        except (OSError, pa.ArrowException) as e:
            raise SourceShardError(f"cannot read the parquet shard {name} ({root.uri}): {e}") from e


# -- small helpers ----------------------------------------------------------------------------------


def read_all(root: Root, path: str) -> bytes:
    with root.fs.open_input_stream(path) as f:
        return f.read()


def json_dict(data: bytes, where: str) -> dict:
    """``data`` parsed as a JSON object; anything else is logged and read as ``{}``."""
    try:
        meta = json.loads(data)
    except ValueError as e:
        log.warning("ignoring the unparsable json of %s: %s", where, e)
        return {}
    return meta if isinstance(meta, dict) else {}


def str_or_none(v: object) -> str | None:
    return None if v is None else str(v)


def first_of(names: Sequence[str], candidates: Iterable[str]) -> str | None:
    """The first of ``candidates`` that is in ``names``."""
    return next((c for c in candidates if c in names), None)


def split_ext(rel: str) -> tuple[str, str]:
    """``a/b.JPG`` -> (``a/b``, ``jpg``); no extension -> (rel, "")."""
    base = posixpath.basename(rel)
    if "." not in base:
        return rel, ""
    stem, ext = rel.rsplit(".", 1)
    return stem, ext.lower()


def join_uri(root: Root, rel: str) -> str:
    return root.uri.rstrip("/") + "/" + rel
