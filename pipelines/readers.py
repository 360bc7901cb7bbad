"""Source readers: image folders, webdataset tars and Parquet files as *source shards* (DESIGN.md §2, §5).

A :class:`SourceShard` is the unit of work and of resume: the builder reads one shard at a time, and a
shard is done once the rows it committed add up to :attr:`SourceShard.size`. So discovery is
deterministic (everything sorted) and a row's ``source_index`` (its position in the shard) never
changes between runs.

Three input kinds, detected by :func:`discover_shards`:

* **parquet**: ``*.parquet`` files (img2dataset's ``--output_format parquet``, HF datasets exports or any
  table with an image-bytes column); one shard per file.
* **webdataset**: ``*.tar`` files in img2dataset's layout (``key.jpg`` + ``key.txt`` + ``key.json``);
  one shard per file, a sample is the group of members sharing a key. img2dataset writes a metadata
  ``NNNNN.parquet`` beside each ``NNNNN.tar`` that lists every URL of the shard, the failed downloads
  included (those are not in the tar). When that sidecar is there the shard's rows are the sidecar's
  rows, in its order, with the image bytes taken from the tar: every URL ends up as a row (failures
  carry ``source_error``) and the shard size comes from the Parquet footer, not a scan of the tar.
* **folder**: any other directory, read recursively for image files; each directory's sorted files are
  chunked into shards of ``folder_shard_size``, named ``<dir relative to the input>#<chunk:05d>``
  (``#00000`` for files directly in the input folder).

In img2dataset output folders (recognised by ``NNNNN_stats.json`` files), a shard without its
``_stats.json`` is still being written, or was cut off by a killed download: it is skipped with a
warning (re-running ``humanverse download`` completes it). Names starting with ``.`` or ``_`` are
ignored at every level, as pyarrow datasets do (this also hides img2dataset's ``_tmp``).

All file access goes through :mod:`pyarrow.fs` (:func:`humanverse.fs.resolve_root`), so inputs may be
local paths or ``s3://``, ``gs://``, ``hdfs://`` and fsspec URLs.
"""

from __future__ import annotations

import io
import json
import logging
import posixpath
import re
import tarfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from humanverse.fs import Root, resolve_root
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
SUCCESS = "success"

_STATS_RE = re.compile(r"^(\d+)_stats\.json$")
_NUMBERED_RE = re.compile(r"^(\d+)\.(tar|parquet)$")
_DISCOVERY_THREADS = 16
_TAR_BUFFER = 1 << 16
_ROW_KEYS = ["source_shard", "source_index", "source_key", "source_url", "alt_text", "source_bytes", "source_error"]
if _ROW_KEYS != SOURCE_SCHEMA.names:  # the row contract moved: update _row()
    raise ImportError(f"pipelines.readers builds rows with {_ROW_KEYS} but SOURCE_SCHEMA is {SOURCE_SCHEMA.names}.")


class SourceShardError(RuntimeError):
    """A whole source shard cannot be read (missing, truncated or not in the expected format)."""


@dataclass(frozen=True)
class SourceShard:
    """One unit of work and of resume.

    ``name`` is stable and unique within an input: the shard file's path relative to the input root
    (``00000.tar``, ``sub/part-3.parquet``) or, for folders, ``<dir>#<chunk>`` (``images/dirA#00000``).
    ``uri`` is the shard file (or, for folder shards, the folder) as a path or URL that
    :func:`humanverse.fs.resolve_root` understands. ``size`` is the exact number of rows the shard
    yields. ``members`` (folder shards only) are the image file names, relative to ``uri``, sorted.
    """

    name: str
    uri: str
    kind: str
    size: int
    members: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.members, tuple):  # e.g. a list after a JSON round trip
            object.__setattr__(self, "members", tuple(self.members))
        if self.kind not in KINDS:
            raise ValueError(f"source shard kind {self.kind!r} is not one of {list(KINDS)}.")
        if self.size < 0:
            raise ValueError(f"source shard {self.name!r} has a negative size {self.size}.")
        if self.kind == FOLDER and len(self.members) != self.size:
            raise ValueError(f"folder shard {self.name!r} lists {len(self.members)} members but has size {self.size}.")


# -- discovery ------------------------------------------------------------------------------------


def discover_shards(
    input: str, *, image_column: str | None = None, folder_shard_size: int = 1000  # noqa: A002 - the CLI's name
) -> list[SourceShard]:
    """List the source shards of ``input`` (a folder, a ``.tar``/``.parquet`` file, local or a URL), sorted by name.

    Raises ``ValueError`` for a missing input, an empty one, a folder mixing ``.tar`` and ``.parquet``
    shards, or Parquet files without a usable image column.
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
    rel_names = sorted(
        rel for rel in (_relpath(root, f.path) for f in listing if f.type == pafs.FileType.File)
        if not any(part.startswith((".", "_")) for part in rel.split("/"))
    )
    names = set(rel_names)
    dirs = {a for rel in rel_names for a in _ancestors(rel)}

    tars, parquets, images = [], [], []
    for rel in rel_names:
        stem, ext = _split_ext(rel)
        if ext == "tar":
            tars.append(rel)
        elif ext == "parquet":
            # img2dataset writes a metadata parquet beside each tar (webdataset) or folder (files output):
            # it is read with its tar (see _webdataset_rows), never as a shard of its own.
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
        sizer = _tar_size if tars else (lambda r, p: _parquet_size(r, p, image_column))
        uris = [_join_uri(root, rel) for rel in shard_files]
        roots = [Root(root.fs, root.join(rel), uri) for rel, uri in zip(shard_files, uris)]  # one client for all
        sizes = _parallel(lambda i: sizer(roots[i], shard_files[i]), range(len(shard_files)))
        kind = WEBDATASET if tars else PARQUET
        return [SourceShard(rel, uri, kind, size) for rel, uri, size in zip(shard_files, uris, sizes)]

    if not images:
        raise ValueError(f"no images, .tar or .parquet files found under {input}.")
    return _folder_shards(root, images, folder_shard_size)


def _single_file_shard(root: Root, image_column: str | None) -> list[SourceShard]:
    name = posixpath.basename(root.path)
    _, ext = _split_ext(name)
    if ext == "tar":
        return [SourceShard(name, root.uri, WEBDATASET, _tar_size(root, name))]
    if ext == "parquet":
        return [SourceShard(name, root.uri, PARQUET, _parquet_size(root, name, image_column))]
    raise ValueError(
        f"input {root.uri} is a file but not a .tar or .parquet shard; give a folder, a .tar or a .parquet."
    )


def _folder_shards(root: Root, images: list[str], shard_size: int) -> list[SourceShard]:
    by_dir: dict[str, list[str]] = {}
    for rel in images:
        by_dir.setdefault(posixpath.dirname(rel), []).append(posixpath.basename(rel))
    shards = []
    for d in sorted(by_dir):
        members = sorted(by_dir[d])
        uri = _join_uri(root, d) if d else root.uri
        for c, start in enumerate(range(0, len(members), shard_size)):
            chunk = tuple(members[start:start + shard_size])
            shards.append(SourceShard(f"{d}#{c:05d}", uri, FOLDER, len(chunk), chunk))
    return shards


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


def _tar_size(root: Root, name: str) -> int:
    sidecar = _img2dataset_sidecar(root)
    if sidecar is not None:
        return _open_parquet(sidecar, name, lambda pf: pf.metadata.num_rows)
    return len(_scan_tar(root, name))


def _parquet_size(root: Root, name: str, image_column: str | None) -> int:
    def size(pf: pq.ParquetFile) -> int:
        _image_column(pf.schema_arrow, image_column, name)
        return pf.metadata.num_rows

    return _open_parquet(root, name, size)


# -- reading --------------------------------------------------------------------------------------


def read_shard(
    shard: SourceShard,
    *,
    skip: frozenset[int] = frozenset(),
    batch_rows: int = 64,
    image_column: str | None = None,
) -> Iterator[list[dict]]:
    """Yield the rows of ``shard`` in lists of at most ``batch_rows`` dicts with the :data:`SOURCE_SCHEMA` keys.

    Rows whose ``source_index`` is in ``skip`` (committed by an earlier run) are left out, without
    reading their image bytes where the format allows (folders, tars, whole Parquet row groups); the
    other rows keep their indices. A row that cannot be read becomes a row with ``source_bytes=None``
    and ``source_error`` set; a shard that cannot be opened at all raises :class:`SourceShardError`.
    """
    if batch_rows < 1:
        raise ValueError(f"batch_rows must be at least 1, got {batch_rows}.")
    if shard.kind == FOLDER:
        rows = _folder_rows(shard, skip)
    elif shard.kind == WEBDATASET:
        rows = _webdataset_rows(shard, skip)
    else:
        rows = _parquet_rows(shard, skip, image_column, batch_rows)
    batch: list[dict] = []
    for row in rows:
        batch.append(row)
        if len(batch) == batch_rows:
            yield batch
            batch = []
    if batch:
        yield batch


def _row(shard: SourceShard, index: int, key: str | None, url: str | None, alt_text: str | None,
         data: bytes | None, error: str | None) -> dict:
    return {"source_shard": shard.name, "source_index": index, "source_key": key, "source_url": url,
            "alt_text": alt_text, "source_bytes": data if error is None else None, "source_error": error}


def _check_size(shard: SourceShard, seen: int) -> None:
    if seen != shard.size:
        raise SourceShardError(
            f"source shard {shard.name} has {seen} rows but was discovered with {shard.size}; "
            "it changed since discovery, so re-run discovery (resume depends on stable shards)."
        )


def _folder_rows(shard: SourceShard, skip: frozenset[int]) -> Iterator[dict]:
    root = resolve_root(shard.uri)
    try:
        listing = {posixpath.basename(f.path) for f in root.fs.get_file_info(pafs.FileSelector(root.path))}
    except (OSError, pa.ArrowException) as e:
        raise SourceShardError(f"cannot list folder shard {shard.name} at {shard.uri}: {e}") from e
    prefix = shard.name.rsplit("#", 1)[0]
    for index, member in enumerate(shard.members):
        if index in skip:
            continue
        key = posixpath.join(prefix, member) if prefix else member
        stem = member.rsplit(".", 1)[0]
        alt_text = url = None
        try:
            data = _read_all(root, root.join(member))
        except (OSError, pa.ArrowException) as e:
            yield _row(shard, index, key, None, None, None, f"cannot read {key}: {e}")
            continue
        try:
            if stem + ".txt" in listing:
                alt_text = _read_all(root, root.join(stem + ".txt")).decode("utf-8", "replace").strip()
            if stem + ".json" in listing:
                url = _json_url(_read_all(root, root.join(stem + ".json")), key)
        except (OSError, pa.ArrowException) as e:
            log.warning("cannot read the sidecar of %s: %s", key, e)
        yield _row(shard, index, key, url, alt_text, data, None)
    _check_size(shard, len(shard.members))


# -- webdataset tars ------------------------------------------------------------------------------


@dataclass
class _TarSample:
    """The members of one webdataset sample (``TarInfo`` of each, ``None`` when absent)."""

    key: str
    image: tarfile.TarInfo | None = None
    text: tarfile.TarInfo | None = None
    meta: tarfile.TarInfo | None = None


def _tar_key(member_name: str) -> tuple[str, str] | None:
    """``dir/abc.seg.png`` -> (``dir/abc``, ``seg.png``), as webdataset splits names; None without a suffix."""
    d, base = posixpath.split(member_name)
    if base.startswith(".") or "." not in base:
        return None
    stem, ext = base.split(".", 1)
    return (posixpath.join(d, stem) if d else stem), ext.lower()


def _scan_tar(root: Root, name: str) -> list[_TarSample]:
    """Read the tar headers only (seeking over the data); group members into samples in order of first appearance."""
    samples: dict[str, _TarSample] = {}
    try:
        with root.fs.open_input_file(root.path) as raw, tarfile.open(
            fileobj=io.BufferedReader(raw, buffer_size=_TAR_BUFFER), mode="r:"
        ) as tar:
            for m in tar:
                if not m.isreg():
                    continue
                split = _tar_key(m.name)
                if split is None:
                    continue
                key, ext = split
                s = samples.get(key)
                if s is None:
                    s = samples[key] = _TarSample(key)
                if ext in IMAGE_EXTENSIONS and s.image is None:
                    s.image = m
                elif ext == "txt" and s.text is None:
                    s.text = m
                elif ext == "json" and s.meta is None:
                    s.meta = m
    except (OSError, tarfile.TarError, pa.ArrowException) as e:
        raise SourceShardError(f"cannot read the tar shard {name} ({root.uri}): {e}") from e
    return list(samples.values())


def _img2dataset_sidecar(tar_root: Root) -> Root | None:
    """The ``NNNNN.parquet`` img2dataset writes beside ``NNNNN.tar``, if there (with ``key`` and ``status``)."""
    path = tar_root.path[: -len(".tar")] + ".parquet"
    if tar_root.fs.get_file_info(path).type != pafs.FileType.File:
        return None
    uri = tar_root.uri[: -len(".tar")] + ".parquet" if tar_root.uri.endswith(".tar") else path
    side = Root(tar_root.fs, path, uri)
    names = set(_open_parquet(side, path, lambda pf: pf.schema_arrow.names))
    if {"key", "status"} <= names:
        return side
    log.warning("ignoring %s beside %s: it has no key/status columns, so it is not img2dataset metadata",
                uri, tar_root.uri)
    return None


def _webdataset_rows(shard: SourceShard, skip: frozenset[int]) -> Iterator[dict]:
    root = resolve_root(shard.uri)
    samples = _scan_tar(root, shard.name)
    sidecar = _img2dataset_sidecar(root)
    try:
        f = root.fs.open_input_file(root.path)
    except (OSError, pa.ArrowException) as e:
        raise SourceShardError(f"cannot open the tar shard {shard.name} ({shard.uri}): {e}") from e
    with f:
        def member(m: tarfile.TarInfo | None) -> bytes | None:
            if m is None:
                return None
            f.seek(m.offset_data)
            data = f.read(m.size)
            if len(data) != m.size:
                raise OSError(f"member {m.name} is truncated ({len(data)} of {m.size} bytes)")
            return data

        if sidecar is None:
            for index, s in enumerate(samples):
                if index not in skip:
                    yield _tar_row(shard, index, s, member, None)
            _check_size(shard, len(samples))
        else:
            by_key: dict[str, _TarSample] = {}
            for s in samples:
                by_key.setdefault(posixpath.basename(s.key), s)
            seen = 0
            for index, meta in _sidecar_rows(sidecar, shard.name):
                seen += 1
                if index in skip:
                    continue
                key = meta["key"]
                s = by_key.get(key)
                if meta["status"] not in (None, SUCCESS):
                    yield _row(shard, index, key, meta["url"], meta["caption"], None,
                               f"{meta['status']}: {meta['error_message']}")
                elif s is None or s.image is None:
                    yield _row(shard, index, key, meta["url"], meta["caption"], None,
                               f"the image of key {key} is missing from {shard.name}")
                else:
                    yield _tar_row(shard, index, s, member, meta)
            _check_size(shard, seen)


def _tar_row(shard: SourceShard, index: int, s: _TarSample, member: Callable[[tarfile.TarInfo | None], bytes | None],
             sidecar: dict | None) -> dict:
    key = posixpath.basename(s.key) if sidecar is not None else s.key
    try:
        text = member(s.text)
        meta_bytes = member(s.meta)
        data = member(s.image)
    except (OSError, pa.ArrowException) as e:
        return _row(shard, index, key, sidecar and sidecar["url"], sidecar and sidecar["caption"], None,
                    f"cannot read sample {s.key}: {e}")
    meta = _json_dict(meta_bytes, s.key) if meta_bytes is not None else {}
    alt_text = text.decode("utf-8", "replace") if text is not None else None
    if alt_text is None:
        alt_text = (sidecar or {}).get("caption") or _str_or_none(meta.get("caption"))
    url = (sidecar or {}).get("url") or _str_or_none(meta.get("url"))
    status = meta.get("status")
    if data is None:
        error = f"{status}: {meta.get('error_message')}" if status not in (None, SUCCESS) else "no image in sample"
        return _row(shard, index, key, url, alt_text, None, error)
    return _row(shard, index, key, url, alt_text, data, None)


def _sidecar_rows(side: Root, name: str) -> Iterator[tuple[int, dict]]:
    """(index, {key, status, error_message, url, caption}) for each row of an img2dataset metadata parquet."""
    def batches(pf: pq.ParquetFile) -> Iterator[dict]:
        names = pf.schema_arrow.names
        wanted = {"key": "key", "status": "status", "error_message": "error_message",
                  "url": _first(names, URL_COLUMNS), "caption": _first(names, ("caption", "txt", "TEXT"))}
        cols = sorted({c for c in wanted.values() if c is not None and c in names})
        for b in pf.iter_batches(batch_size=1024, columns=cols):
            data = {c: b.column(c).to_pylist() for c in cols}
            for i in range(b.num_rows):
                yield {k: (_str_or_none(data[c][i]) if c in data else None) for k, c in wanted.items()}

    index = 0
    for row in _iter_parquet(side, name, batches):
        yield index, row
        index += 1


# -- parquet --------------------------------------------------------------------------------------


def _image_column(schema: pa.Schema, image_column: str | None, name: str) -> str:
    """The image column of a Parquet schema (``image_column`` if given), validated; ``ValueError`` otherwise."""
    names = schema.names
    if image_column is not None:
        if image_column not in names:
            raise ValueError(
                f"{name} has no image column {image_column!r} (from --image-column); its columns are {names}."
            )
        col = image_column
    else:
        col = _first(names, IMAGE_COLUMNS)
        if col is None:
            raise ValueError(
                f"{name} has none of the image columns {list(IMAGE_COLUMNS)}; its columns are {names}: "
                "name the image-bytes column with --image-column."
            )
    t = schema.field(col).type
    if not (_is_binary(t) or (pa.types.is_struct(t) and t.get_field_index("bytes") >= 0
                              and _is_binary(t.field("bytes").type))):
        raise ValueError(
            f"column {col!r} of {name} has type {t}, not image bytes (binary, or a struct with a binary 'bytes' field)."
        )
    return col


def _parquet_rows(shard: SourceShard, skip: frozenset[int], image_column: str | None,
                  batch_rows: int) -> Iterator[dict]:
    root = resolve_root(shard.uri)

    def rows(pf: pq.ParquetFile) -> Iterator[dict]:
        schema = pf.schema_arrow
        names = schema.names
        img = _image_column(schema, image_column, shard.name)
        is_struct = pa.types.is_struct(schema.field(img).type)
        alts = [c for c in ALT_TEXT_COLUMNS if c in names]
        url_col, key_col = _first(names, URL_COLUMNS), ("key" if "key" in names else None)
        status_col = "status" if "status" in names else None
        err_col = "error_message" if "error_message" in names else None
        cols = list(dict.fromkeys([img, *alts] + [c for c in (url_col, key_col, status_col, err_col) if c]))
        md = pf.metadata
        start = 0
        for rg in range(md.num_row_groups):
            n = md.row_group(rg).num_rows
            first = start
            start += n
            if n == 0 or all(i in skip for i in range(first, first + n)):
                continue  # a committed row group: not even read
            index = first
            for b in pf.iter_batches(batch_size=batch_rows, row_groups=[rg], columns=cols):
                data = {c: b.column(c) for c in cols}
                keep = [j for j in range(b.num_rows) if index + j not in skip]
                if keep:
                    if len(keep) < b.num_rows:
                        data = {c: a.take(pa.array(keep, pa.int64())) for c, a in data.items()}
                    lists = {c: a.to_pylist() for c, a in data.items()}
                    for k, j in enumerate(keep):
                        i = index + j
                        yield _parquet_row(shard, i, lists, k, img, is_struct, alts, url_col, key_col, status_col,
                                           err_col)
                index += b.num_rows
        _check_size(shard, start)

    yield from _iter_parquet(root, shard.name, rows)


def _parquet_row(shard: SourceShard, i: int, lists: dict[str, list], k: int, img: str, is_struct: bool,
                 alts: Sequence[str], url_col: str | None, key_col: str | None, status_col: str | None,
                 err_col: str | None) -> dict:
    key = _str_or_none(lists[key_col][k]) if key_col else None
    if key is None:
        key = str(i)
    url = _str_or_none(lists[url_col][k]) if url_col else None
    alt_text = next((str(v) for v in (lists[c][k] for c in alts) if v is not None), None)
    status = lists[status_col][k] if status_col else None
    if status is not None and status != SUCCESS:
        err = lists[err_col][k] if err_col else None
        return _row(shard, i, key, url, alt_text, None, f"{status}: {err}")
    value = lists[img][k]
    if is_struct:
        path = value.get("path") if value else None
        value = value.get("bytes") if value else None
        if value is None:
            where = f" (it names the file {path}, which is not embedded)" if path else ""
            return _row(shard, i, key, url, alt_text, None, f"no image bytes in column {img!r}{where}")
    if value is None:
        return _row(shard, i, key, url, alt_text, None, f"no image bytes in column {img!r}")
    return _row(shard, i, key, url, alt_text, bytes(value), None)


# -- helpers --------------------------------------------------------------------------------------


def _open_parquet(root: Root, name: str, fn: Callable[[pq.ParquetFile], object]):
    """Call ``fn`` on the opened Parquet file; opening errors become :class:`SourceShardError`."""
    try:
        f = root.fs.open_input_file(root.path)
        pf = pq.ParquetFile(f)
    except (OSError, pa.ArrowException) as e:
        raise SourceShardError(f"cannot open the parquet shard {name} ({root.uri}): {e}") from e
    with f:
        return fn(pf)


def _iter_parquet(root: Root, name: str, gen: Callable[[pq.ParquetFile], Iterator]) -> Iterator:
    try:
        f = root.fs.open_input_file(root.path)
        pf = pq.ParquetFile(f)
    except (OSError, pa.ArrowException) as e:
        raise SourceShardError(f"cannot open the parquet shard {name} ({root.uri}): {e}") from e
    with f:
        try:
            yield from gen(pf)
        except (OSError, pa.ArrowException) as e:
            raise SourceShardError(f"cannot read the parquet shard {name} ({root.uri}): {e}") from e


def _read_all(root: Root, path: str) -> bytes:
    with root.fs.open_input_stream(path) as f:
        return f.read()


def _json_dict(data: bytes, where: str) -> dict:
    try:
        meta = json.loads(data)
    except ValueError as e:
        log.warning("ignoring the unparsable json of %s: %s", where, e)
        return {}
    return meta if isinstance(meta, dict) else {}


def _json_url(data: bytes, where: str) -> str | None:
    return _str_or_none(_json_dict(data, where).get("url"))


def _str_or_none(v: object) -> str | None:
    return None if v is None else str(v)


def _first(names: Sequence[str], candidates: Iterable[str]) -> str | None:
    return next((c for c in candidates if c in names), None)


def _is_binary(t: pa.DataType) -> bool:
    return (pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t)
            or pa.types.is_binary_view(t))


def _split_ext(rel: str) -> tuple[str, str]:
    """``a/b.JPG`` -> (``a/b``, ``jpg``); no extension -> (rel, "")."""
    base = posixpath.basename(rel)
    if "." not in base:
        return rel, ""
    stem, ext = rel.rsplit(".", 1)
    return stem, ext.lower()


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


def _join_uri(root: Root, rel: str) -> str:
    return root.uri.rstrip("/") + "/" + rel


def _parallel(fn: Callable[[int], int], items: range) -> list[int]:
    """Map ``fn`` over ``items`` with a few threads (footers and tar headers on object stores are slow one by one)."""
    if len(items) <= 1:
        return [fn(i) for i in items]
    with ThreadPoolExecutor(max_workers=min(_DISCOVERY_THREADS, len(items))) as pool:
        return list(pool.map(fn, items))


__all__ = ["ALT_TEXT_COLUMNS", "IMAGE_COLUMNS", "IMAGE_EXTENSIONS", "KINDS", "SourceShard", "SourceShardError",
           "discover_shards", "read_shard"]
