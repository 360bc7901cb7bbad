"""Source readers: image folders, webdataset tars and Parquet files as *source shards* (HyperHuman §4's
web images, read as img2dataset writes them; the shard contract is in ``docs/format.md``).

A :class:`SourceShard` is the unit of work and of resume: the builder reads one shard at a time.
A source row is identified by its shard and its *key* within the shard (the file name relative to
the input root, the tar sample key, the Parquet ``key`` column or else the row number), never by its
position in a listing that can change, so a shard that grows or changes is reconciled row by row
against the keys already committed (:class:`ShardKeys`). Each shard carries a ``fingerprint`` that
tells the planner whether it may have changed since it was recorded.

Three input kinds, detected by :func:`discover`, one module each:

* **parquet** (:mod:`.parquet`): ``*.parquet`` files with an image-bytes column; one shard per file.
* **webdataset** (:mod:`.webdataset`): ``*.tar`` files in img2dataset's layout, with its metadata
  Parquet beside each tar when there; one shard per file.
* **folder** (:mod:`.folder`): any other directory, read recursively for image files, in shards that
  own fixed ranges of a directory's file names (``folder_shard_size`` names when first chunked).

A shard that cannot be counted (a truncated tar, a Parquet file with a damaged footer) is listed by
:func:`discover` as failed, with one sentence, instead of stopping discovery.

In img2dataset output folders (recognised by ``NNNNN_stats.json`` files), a shard without its
``_stats.json`` is still being written, or was cut off by a killed download: it is skipped with a
warning (re-running ``humanverse download`` completes it). Names starting with ``.`` or ``_`` are
ignored at every level, as pyarrow datasets do (this also hides img2dataset's ``_tmp``).

All file access goes through :mod:`pyarrow.fs` (:func:`humanverse.fs.resolve_root`), so inputs may be
local paths or ``s3://``, ``gs://``, ``hdfs://`` and fsspec URLs.
"""

from __future__ import annotations

import logging
import posixpath
import re
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

import pyarrow.fs as pafs

from humanverse.fs import Root, resolve_root
from pipelines.readers.base import (
    ALT_TEXT_COLUMNS,
    FOLDER,
    IMAGE_COLUMNS,
    IMAGE_EXTENSIONS,
    KINDS,
    PARQUET,
    WEBDATASET,
    ShardKeys,
    SourceShard,
    SourceShardError,
    file_fingerprint,
    join_uri,
    split_ext,
)
from pipelines.readers.folder import folder_rows, folder_shards
from pipelines.readers.parquet import parquet_rows, parquet_size
from pipelines.readers.webdataset import tar_size, webdataset_rows

log = logging.getLogger(__name__)

_STATS_RE = re.compile(r"^(\d+)_stats\.json$")
_NUMBERED_RE = re.compile(r"^(\d+)\.(tar|parquet)$")
_DISCOVERY_THREADS = 16
_T = TypeVar("_T")


# -- discovery ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Discovery:
    """What :func:`discover` found: the shards it can read, sorted by name, and those it cannot."""

    shards: list[SourceShard]
    #: shard name -> one sentence saying why it cannot be read (a damaged tar, a corrupt Parquet footer)
    failed: dict[str, str] = field(default_factory=dict)


def discover(
    input: str, *, image_column: str | None = None, folder_shard_size: int = 1000,  # noqa: A002 - the CLI's name
    known_spans: Mapping[str, tuple[str, str]] | None = None,
) -> Discovery:
    """List the source shards of ``input`` (a folder, a ``.tar``/``.parquet`` file, local or a URL).

    A shard that cannot be read (its size cannot be counted) is listed in :attr:`Discovery.failed`
    and the others are returned, so one bad file never stops a build. ``known_spans``: the file name
    ranges of folder shards recorded earlier (shard name -> (first, last)), which keep their names
    and ranges (:mod:`pipelines.readers.folder`). Raises ``ValueError`` for a missing input, an
    empty one, a folder mixing ``.tar`` and ``.parquet`` shards, or Parquet files without a usable
    image column.
    """
    if folder_shard_size < 1:
        raise ValueError(f"folder_shard_size must be at least 1, got {folder_shard_size}.")
    root = resolve_root(input)
    info = root.fs.get_file_info(root.path)
    if info.type == pafs.FileType.NotFound:
        raise ValueError(f"input {input} does not exist.")
    if info.type == pafs.FileType.File:
        return _single_file_shard(root, image_column)

    listing = root.fs.get_file_info(pafs.FileSelector(root.path, recursive=True))
    infos = {rel: f for rel, f in ((_relpath(root, f.path), f) for f in listing if f.type == pafs.FileType.File)
             if not any(part.startswith((".", "_")) for part in rel.split("/"))}
    rel_names = sorted(infos)
    names = set(rel_names)
    dirs = {a for rel in rel_names for a in _ancestors(rel)}

    tars, parquets, images = [], [], []
    for rel in rel_names:
        stem, ext = split_ext(rel)
        if ext == "tar":
            tars.append(rel)
        elif ext == "parquet":
            # img2dataset writes a metadata parquet beside each tar (webdataset) or folder (files output):
            # it is read with its tar (see webdataset_rows), never as a shard of its own.
            if (stem + ".tar") not in names and stem not in dirs:
                parquets.append(rel)
        elif ext in IMAGE_EXTENSIONS:
            images.append(rel)

    if tars and parquets:
        raise ValueError(
            f"input {input} mixes .tar and .parquet shards ({tars[0]}, {parquets[0]}); give one kind per input."
        )
    if tars or parquets:
        if images:
            log.warning("input %s: reading its %s shards and ignoring %d loose image files (e.g. %s)",
                        input, "webdataset" if tars else "parquet", len(images), images[0])
        shard_files = _complete_img2dataset_shards(tars or parquets, names)
        if not shard_files:
            raise ValueError(f"no complete .tar or .parquet shards under {input} (img2dataset has not finished any).")
        sizer = tar_size if tars else (lambda r, p: parquet_size(r, p, image_column))
        uris = [join_uri(root, rel) for rel in shard_files]
        roots = [Root(root.fs, root.join(rel), uri) for rel, uri in zip(shard_files, uris)]  # one client for all
        sizes = _parallel(lambda i: _attempt(sizer, roots[i], shard_files[i]), range(len(shard_files)))
        kind = WEBDATASET if tars else PARQUET

        def fingerprint(rel: str) -> str:
            sidecar = infos.get(rel[: -len(".tar")] + ".parquet") if kind == WEBDATASET else None
            return file_fingerprint(infos[rel], *([sidecar] if sidecar else []))

        return Discovery(
            [SourceShard(rel, uri, kind, size, fingerprint=fingerprint(rel))
             for rel, uri, size in zip(shard_files, uris, sizes) if not isinstance(size, SourceShardError)],
            {rel: str(size) for rel, size in zip(shard_files, sizes) if isinstance(size, SourceShardError)})

    if not images:
        raise ValueError(f"no images, .tar or .parquet files found under {input}.")
    return Discovery(folder_shards(root, images, folder_shard_size, known_spans))


def discover_shards(
    input: str, *, image_column: str | None = None, folder_shard_size: int = 1000  # noqa: A002 - the CLI's name
) -> list[SourceShard]:
    """The shards of ``input`` as :func:`discover` lists them, strictly: a shard that cannot be read raises
    :class:`SourceShardError` (the first by name) instead of being left out."""
    found = discover(input, image_column=image_column, folder_shard_size=folder_shard_size)
    if found.failed:
        raise SourceShardError(found.failed[min(found.failed)])
    return found.shards


def _attempt(sizer: Callable[[Root, str], int], root: Root, name: str) -> int | SourceShardError:
    """The shard's size, or the error saying why it cannot be counted."""
    try:
        return sizer(root, name)
    except SourceShardError as e:
        return e


def _single_file_shard(root: Root, image_column: str | None) -> Discovery:
    name = posixpath.basename(root.path)
    _, ext = split_ext(name)
    if ext not in ("tar", "parquet"):
        raise ValueError(
            f"input {root.uri} is a file but not a .tar or .parquet shard; give a folder, a .tar or a .parquet."
        )
    kind, sizer = (WEBDATASET, tar_size) if ext == "tar" else (PARQUET, lambda r, n: parquet_size(r, n, image_column))
    size = _attempt(sizer, root, name)
    if isinstance(size, SourceShardError):
        return Discovery([], {name: str(size)})
    paths = [root.path] + ([root.path[: -len(".tar")] + ".parquet"] if kind == WEBDATASET else [])
    infos = [i for i in root.fs.get_file_info(paths) if i.type == pafs.FileType.File]
    return Discovery([SourceShard(name, root.uri, kind, size, fingerprint=file_fingerprint(*infos))])


def _complete_img2dataset_shards(shard_files: list[str], rel_names: set[str]) -> list[str]:
    """Drop numbered shards that img2dataset has not finished (no ``NNNNN_stats.json`` beside them).

    A shard is img2dataset's when its folder has ``_stats.json`` files, or when it is a tar with its
    metadata parquet beside it (the first shard of a download cut off before any finished).
    """
    dirs_with_stats = {posixpath.dirname(r) for r in rel_names if _STATS_RE.match(posixpath.basename(r))}
    out = []
    for rel in shard_files:
        d, base = posixpath.split(rel)
        m = _NUMBERED_RE.match(base)
        ours = m is not None and (d in dirs_with_stats or (m.group(2) == "tar" and rel[:-4] + ".parquet" in rel_names))
        if ours and posixpath.join(d, f"{m.group(1)}_stats.json") not in rel_names:
            log.warning("skipping %s: img2dataset has not finished it (no %s_stats.json); re-run the download "
                        "to complete it", rel, m.group(1))
            continue
        out.append(rel)
    return out


def _relpath(root: Root, path: str) -> str:
    prefix = root.path.rstrip("/") + "/"
    if not path.startswith(prefix):
        raise ValueError(f"listing {root.uri} returned {path}, which is outside it.")
    return path[len(prefix):]


def _ancestors(rel: str) -> list[str]:
    """``a/b/c.jpg`` -> [``a/b``, ``a``, ``""``]."""
    out = []
    while rel:
        rel = posixpath.dirname(rel)
        out.append(rel)
    return out


def _parallel(fn: Callable[[int], _T], items: range) -> list[_T]:
    """Map ``fn`` over ``items`` with a few threads (footers and tar headers on object stores are slow one by one)."""
    if len(items) <= 1:
        return [fn(i) for i in items]
    with ThreadPoolExecutor(max_workers=min(_DISCOVERY_THREADS, len(items))) as pool:
        return list(pool.map(fn, items))


# -- reading --------------------------------------------------------------------------------------


def read_shard(
    shard: SourceShard,
    *,
    skip: ShardKeys | frozenset[str] = frozenset(),
    batch_rows: int = 64,
    image_column: str | None = None,
) -> Iterator[list[dict]]:
    """Yield the rows of ``shard`` in lists of at most ``batch_rows`` dicts with the ``SOURCE_SCHEMA`` keys.

    Rows whose key (``source_key``) is in ``skip`` (committed by an earlier run) are left out,
    without reading their image bytes (folders, tars, whole Parquet row groups). Pass a
    :class:`ShardKeys` to learn afterwards which of those keys the shard no longer holds
    (:attr:`ShardKeys.vanished`). A row that cannot be read becomes a row with ``source_bytes=None``
    and ``source_error`` set; a shard that cannot be read on raises :class:`SourceShardError` after
    the rows read before the failure have been yielded.
    """
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be at least 1, got {batch_rows}.")
    keys = skip if isinstance(skip, ShardKeys) else ShardKeys(skip)
    if shard.kind == FOLDER:
        rows = folder_rows(shard, keys)
    elif shard.kind == WEBDATASET:
        rows = webdataset_rows(shard, keys)
    else:
        rows = parquet_rows(shard, keys, image_column, batch_rows)
    batch: list[dict] = []
    try:
        for row in rows:
            batch.append(row)
            if len(batch) == batch_rows:
                yield batch
                batch = []
    except SourceShardError:
        if batch:  # the rows read before the failure still go on
            yield batch
        raise
    if batch:
        yield batch


__all__ = ["ALT_TEXT_COLUMNS", "IMAGE_COLUMNS", "IMAGE_EXTENSIONS", "KINDS", "Discovery", "ShardKeys", "SourceShard",
           "SourceShardError", "discover", "discover_shards", "read_shard"]
