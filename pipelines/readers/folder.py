"""Image folders: each directory's sorted image files, chunked into shards of ``folder_shard_size``.

A shard is named ``<dir relative to the input>#<chunk:05d>`` (``#00000`` for files directly in the
input folder). An image's alt text and URL come from the ``<stem>.txt`` and ``<stem>.json``
(``{"url": ...}``) files beside it, when there.
"""

from __future__ import annotations

import logging
import posixpath
from collections.abc import Iterator

import pyarrow as pa
import pyarrow.fs as pafs

from humanverse.fs import Root, resolve_root
from pipelines.readers.base import (
    FOLDER,
    UNREADABLE,
    SourceShard,
    check_size,
    join_uri,
    json_dict,
    read_all,
    source_row,
    str_or_none,
)

log = logging.getLogger(__name__)


def folder_shards(root: Root, images: list[str], shard_size: int) -> list[SourceShard]:
    """The shards of the image files ``images`` (paths relative to ``root``, sorted)."""
    by_dir: dict[str, list[str]] = {}
    for rel in images:
        by_dir.setdefault(posixpath.dirname(rel), []).append(posixpath.basename(rel))
    shards = []
    for d in sorted(by_dir):
        members = sorted(by_dir[d])
        uri = join_uri(root, d) if d else root.uri
        for c, start in enumerate(range(0, len(members), shard_size)):
            chunk = tuple(members[start:start + shard_size])
            shards.append(SourceShard(f"{d}#{c:05d}", uri, FOLDER, len(chunk), chunk))
    return shards


def folder_rows(shard: SourceShard, skip: frozenset[int]) -> Iterator[dict]:
    """The rows of a folder shard, without reading the files of skipped rows."""
    root = resolve_root(shard.uri)
    try:
        listing = {posixpath.basename(f.path) for f in root.fs.get_file_info(pafs.FileSelector(root.path))}
    except (OSError, pa.ArrowException) as e:  # each member is still tried: those that fail are rows too
        log.warning("cannot list folder shard %s at %s (%s); reading its images without their .txt/.json",
                    shard.name, shard.uri, e)
        listing = set()
    prefix = shard.name.rsplit("#", 1)[0]
    for index, member in enumerate(shard.members):
        if index in skip:
            continue
        key = posixpath.join(prefix, member) if prefix else member
        stem = member.rsplit(".", 1)[0]
        alt_text = url = None
        try:
            data = read_all(root, root.join(member))
        except (OSError, pa.ArrowException) as e:
            yield source_row(shard, index, key=key, error=f"cannot read {key}: {e}", reason=UNREADABLE)
            continue
        try:
            if stem + ".txt" in listing:
                alt_text = read_all(root, root.join(stem + ".txt")).decode("utf-8", "replace").strip()
            if stem + ".json" in listing:
                url = str_or_none(json_dict(read_all(root, root.join(stem + ".json")), key).get("url"))
        except (OSError, pa.ArrowException) as e:
            log.warning("cannot read the sidecar of %s: %s", key, e)
        yield source_row(shard, index, key=key, url=url, alt_text=alt_text, data=data)
    check_size(shard, len(shard.members))
