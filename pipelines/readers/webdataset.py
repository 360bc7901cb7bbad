"""Webdataset tars in img2dataset's layout (``key.jpg`` + ``key.txt`` + ``key.json``): one shard per tar.

A sample is the group of members sharing a key. img2dataset writes a metadata ``NNNNN.parquet``
beside each ``NNNNN.tar`` that lists every URL of the shard, the failed downloads included (those
are not in the tar). When that sidecar is there the shard's rows are the sidecar's rows, in its
order, with the image bytes taken from the tar: every URL ends up as a row (failures carry
``source_error``) and the shard size comes from the Parquet footer, not a scan of the tar.
"""

from __future__ import annotations

import io
import logging
import posixpath
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from humanverse.fs import Root, resolve_root
from pipelines.readers.base import (
    IMAGE_EXTENSIONS,
    SUCCESS,
    UNREADABLE,
    URL_COLUMNS,
    ShardKeys,
    SourceShard,
    SourceShardError,
    check_size,
    first_of,
    iter_parquet,
    json_dict,
    open_parquet,
    source_row,
    str_or_none,
)

log = logging.getLogger(__name__)

_TAR_BUFFER = 1 << 16


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
    samples, error = _scan_tar_partly(root, name)
    if error is not None:
        raise SourceShardError(error)
    return samples


def _scan_tar_partly(root: Root, name: str) -> tuple[list[_TarSample], str | None]:
    """:func:`_scan_tar`, but a damaged tar gives the samples before the damage and the error sentence."""
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
        return list(samples.values()), f"cannot read the tar shard {name} ({root.uri}): {e}"
    return list(samples.values()), None


def img2dataset_sidecar(tar_root: Root) -> Root | None:
    """The ``NNNNN.parquet`` img2dataset writes beside ``NNNNN.tar``, if there (with ``key`` and ``status``)."""
    path = tar_root.path[: -len(".tar")] + ".parquet"
    if tar_root.fs.get_file_info(path).type != pafs.FileType.File:
        return None
    uri = tar_root.uri[: -len(".tar")] + ".parquet" if tar_root.uri.endswith(".tar") else path
    side = Root(tar_root.fs, path, uri)
    names = set(open_parquet(side, path, lambda pf: pf.schema_arrow.names))
    if {"key", "status"} <= names:
        return side
    log.warning("ignoring %s beside %s: it has no key/status columns, so it is not img2dataset metadata",
                uri, tar_root.uri)
    return None


def tar_size(root: Root, name: str) -> int:
    """Rows of the tar shard at ``root``: its sidecar's row count, else its samples."""
    sidecar = img2dataset_sidecar(root)
    if sidecar is not None:
        return open_parquet(sidecar, name, lambda pf: pf.metadata.num_rows)
    return len(_scan_tar(root, name))


def webdataset_rows(shard: SourceShard, keys: ShardKeys) -> Iterator[dict]:
    """The rows of a tar shard, without reading the members of committed rows.

    With img2dataset's sidecar the rows are known without the tar, so a damaged tar gives rows with
    ``source_error`` (reason ``undecodable``) for the samples it no longer holds; without one a tar
    whose headers cannot be read raises :class:`SourceShardError`.
    """
    root = resolve_root(shard.uri)
    sidecar = img2dataset_sidecar(root)
    if sidecar is None:
        samples, damage = _scan_tar(root, shard.name), None
    else:
        samples, damage = _scan_tar_partly(root, shard.name)
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
                key = keys.unique(s.key, index)
                if not keys.skips(key):
                    yield _tar_row(shard, index, key, s, member, None)
            check_size(shard, len(samples))
        else:
            by_key: dict[str, _TarSample] = {}
            for s in samples:
                by_key.setdefault(posixpath.basename(s.key), s)
            seen = 0
            for index, meta in _sidecar_rows(sidecar, shard.name):
                seen += 1
                s = by_key.get(meta["key"]) if meta["key"] is not None else None
                key = keys.unique(meta["key"], index)
                if keys.skips(key):
                    continue
                if meta["status"] not in (None, SUCCESS):
                    yield source_row(shard, index, key=key, url=meta["url"], alt_text=meta["caption"],
                                     error=f"{meta['status']}: {meta['error_message']}")
                elif (s is None or s.image is None) and damage is not None:
                    yield source_row(shard, index, key=key, url=meta["url"], alt_text=meta["caption"],
                                     error=damage, reason=UNREADABLE)
                elif s is None or s.image is None:
                    yield source_row(shard, index, key=key, url=meta["url"], alt_text=meta["caption"],
                                     error=f"the image of key {key} is missing from {shard.name}")
                else:
                    yield _tar_row(shard, index, key, s, member, meta)
            check_size(shard, seen)


def _tar_row(shard: SourceShard, index: int, key: str, s: _TarSample,
             member: Callable[[tarfile.TarInfo | None], bytes | None], sidecar: dict | None) -> dict:
    try:
        text = member(s.text)
        meta_bytes = member(s.meta)
        data = member(s.image)
    except (OSError, pa.ArrowException) as e:
        return source_row(shard, index, key=key, url=sidecar and sidecar["url"],
                          alt_text=sidecar and sidecar["caption"], error=f"cannot read sample {s.key}: {e}",
                          reason=UNREADABLE)
    meta = json_dict(meta_bytes, s.key) if meta_bytes is not None else {}
    alt_text = text.decode("utf-8", "replace") if text is not None else None
    if alt_text is None:
        alt_text = (sidecar or {}).get("caption") or str_or_none(meta.get("caption"))
    url = (sidecar or {}).get("url") or str_or_none(meta.get("url"))
    status = meta.get("status")
    if data is None:
        error = f"{status}: {meta.get('error_message')}" if status not in (None, SUCCESS) else "no image in sample"
        return source_row(shard, index, key=key, url=url, alt_text=alt_text, error=error)
    return source_row(shard, index, key=key, url=url, alt_text=alt_text, data=data)


def _sidecar_rows(side: Root, name: str) -> Iterator[tuple[int, dict]]:
    """(index, {key, status, error_message, url, caption}) for each row of an img2dataset metadata parquet."""
    def batches(pf: pq.ParquetFile) -> Iterator[dict]:
        names = pf.schema_arrow.names
        wanted = {"key": "key", "status": "status", "error_message": "error_message",
                  "url": first_of(names, URL_COLUMNS), "caption": first_of(names, ("caption", "txt", "TEXT"))}
        cols = sorted({c for c in wanted.values() if c is not None and c in names})
        for b in pf.iter_batches(batch_size=1024, columns=cols):
            data = {c: b.column(c).to_pylist() for c in cols}
            for i in range(b.num_rows):
                yield {k: (str_or_none(data[c][i]) if c in data else None) for k, c in wanted.items()}

    for index, row in enumerate(iter_parquet(side, name, batches)):
        yield index, row
