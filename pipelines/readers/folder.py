"""Image folders: each directory's image files, in shards that own a fixed range of file names.

A folder shard is named ``<dir relative to the input>#<its first file name>`` (``#0001.jpg`` for files
directly in the input folder) and owns the file names from its first to its last, as first
chunked: ``folder_shard_size`` files of a directory's sorted names per shard. Those ranges are
recorded in the dataset's manifest (``span``) and never change, so adding files changes no
existing shard's membership except by the new names that fall inside its range; new names outside
every range (before the first, after the last, in a gap) become new shards, chunked the same way.
Position in a listing is never part of a row's identity: a row is its shard and its file name.

An image's alt text and URL come from the ``<stem>.txt`` and ``<stem>.json`` (``{"url": ...}``) files
beside it, when there.
"""

from __future__ import annotations

import bisect
import hashlib
import logging
import posixpath
from collections.abc import Iterator, Mapping

import pyarrow as pa
import pyarrow.fs as pafs

from humanverse.fs import Root, resolve_root
from pipelines.readers.base import (
    FOLDER,
    UNREADABLE,
    ShardKeys,
    SourceShard,
    check_size,
    join_uri,
    json_dict,
    read_all,
    source_row,
    str_or_none,
)

log = logging.getLogger(__name__)


def folder_shards(root: Root, images: list[str], shard_size: int,
                  known: Mapping[str, tuple[str, str]] | None = None) -> list[SourceShard]:
    """The shards of the image files ``images`` (paths relative to ``root``, sorted).

    ``known``: shard name -> (first, last) file name range of the folder shards recorded earlier
    (the manifest's ``span``): they keep their ranges, and are listed even when none of their files
    is left (size 0, so that their committed rows are reported as gone).
    """
    by_dir: dict[str, list[str]] = {}
    for rel in images:
        by_dir.setdefault(posixpath.dirname(rel), []).append(posixpath.basename(rel))
    spans: dict[str, list[tuple[str, str, str]]] = {}  # dir -> [(first, last, name)]
    for name, (first, last) in (known or {}).items():
        suffix = "#" + first
        if name.endswith(suffix) and first <= last:
            spans.setdefault(name[: -len(suffix)], []).append((first, last, name))
    shards = []
    for d in sorted(set(by_dir) | set(spans)):
        uri = join_uri(root, d) if d else root.uri
        for name, span, members in _assign(sorted(by_dir.get(d, [])), sorted(spans.get(d, [])), shard_size, d):
            shards.append(SourceShard(name, uri, FOLDER, len(members), tuple(members), _names_fingerprint(members),
                                      span))
    return sorted(shards, key=lambda s: s.name)


def _assign(files: list[str], spans: list[tuple[str, str, str]], shard_size: int,
            d: str) -> list[tuple[str, tuple[str, str], list[str]]]:
    """(name, span, members) of one directory's shards: the recorded ``spans`` (sorted, disjoint) take
    the files inside their ranges; the runs of files between them are chunked into new shards."""
    firsts = [f for f, _, _ in spans]
    owned: list[list[str]] = [[] for _ in spans]
    runs: list[list[str]] = []  # consecutive files outside every span
    gap_of_last = None
    for f in files:
        i = bisect.bisect_right(firsts, f) - 1
        if i >= 0 and f <= spans[i][1]:
            owned[i].append(f)
            continue
        if gap_of_last != i or not runs:  # a new gap: between span i and span i + 1
            runs.append([])
            gap_of_last = i
        runs[-1].append(f)
    out = [(name, (first, last), members) for (first, last, name), members in zip(spans, owned)]
    for run in runs:
        for start in range(0, len(run), shard_size):
            chunk = run[start:start + shard_size]
            out.append((f"{d}#{chunk[0]}", (chunk[0], chunk[-1]), chunk))
    return out


def _names_fingerprint(members: list[str]) -> str:
    """A folder shard's fingerprint: a hash of its member names (a file's identity is its name)."""
    return "names:" + hashlib.sha256("\n".join(members).encode()).hexdigest()[:32]


def folder_rows(shard: SourceShard, keys: ShardKeys) -> Iterator[dict]:
    """The rows of a folder shard, without reading the files of committed rows."""
    if not shard.members:  # a recorded shard none of whose files is left
        return
    root = resolve_root(shard.uri)
    try:
        listing = {posixpath.basename(f.path) for f in root.fs.get_file_info(pafs.FileSelector(root.path))}
    except (OSError, pa.ArrowException) as e:  # each member is still tried: those that fail are rows too
        log.warning("cannot list folder shard %s at %s (%s); reading its images without their .txt/.json",
                    shard.name, shard.uri, e)
        listing = set()
    prefix = shard.name[: -len("#" + shard.span[0])] if shard.span else shard.name.rsplit("#", 1)[0]
    for index, member in enumerate(shard.members):
        key = keys.unique(posixpath.join(prefix, member) if prefix else member, index)
        if keys.skips(key):
            continue
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
