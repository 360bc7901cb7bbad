"""Filesystem plumbing: a dataset root may be a local path, ``s3://``, ``gs://``, ``hdfs://`` or any
fsspec URL. Everything else in ``humanverse`` goes through :class:`pyarrow.fs.FileSystem` so no
module assumes a local disk.
"""

from __future__ import annotations

import os
import posixpath
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import pyarrow.fs as pafs


@dataclass(frozen=True)
class Root:
    """A dataset root: the filesystem and the path of the root on it."""

    fs: pafs.FileSystem
    path: str
    uri: str  # what the user gave (a path or URL); resolve_root(uri) rebuilds this Root on a worker

    @property
    def is_local(self) -> bool:
        return isinstance(self.fs, pafs.LocalFileSystem)

    def join(self, *parts: str) -> str:
        return posixpath.join(self.path, *parts)


def resolve_root(root: "str | os.PathLike[str] | Root") -> Root:
    """Map a path or URL to a :class:`Root`; unknown URL schemes fall back to fsspec."""
    if isinstance(root, Root):
        return root
    s = os.fspath(root)
    if "://" not in s:
        path = os.path.abspath(s).replace(os.sep, "/")
        return Root(pafs.LocalFileSystem(), path, path)
    try:
        fs, path = pafs.FileSystem.from_uri(s)
        return Root(fs, path.rstrip("/"), s)
    except Exception:  # noqa: BLE001 - scheme pyarrow does not know: let fsspec try
        import fsspec

        fsspec_fs, path = fsspec.core.url_to_fs(s)
        return Root(pafs.PyFileSystem(pafs.FSSpecHandler(fsspec_fs)), path.rstrip("/"), s)


#: Concurrent reads of many small objects on an object store, where each read waits out a round trip.
OBJECT_STORE_READERS = 16

_T = TypeVar("_T")
_R = TypeVar("_R")


def map_ordered(fn: Callable[[_T], _R], items: Iterable[_T], workers: int) -> Iterator[_R]:
    """``map(fn, items)`` with up to ``workers`` calls in flight on threads, results in order.

    At most ``workers`` results wait unread, so a slow consumer of a long stream (a million files)
    holds little; ``workers <= 1`` calls ``fn`` in this thread."""
    if workers <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(workers) as pool:
        window: deque = deque()
        for item in items:
            window.append(pool.submit(fn, item))
            if len(window) >= workers:
                yield window.popleft().result()
        while window:
            yield window.popleft().result()


def readers(root: Root, count: int) -> int:
    """How many threads to read ``count`` objects of ``root`` with: one on a local disk (no round
    trips to hide), else up to :data:`OBJECT_STORE_READERS`."""
    return 1 if root.is_local or count <= 1 else min(OBJECT_STORE_READERS, count)


def absolute(path: str | None) -> str | None:
    """A local path made absolute (Ray workers and child processes run elsewhere); URLs and None
    unchanged."""
    return path if path is None or "://" in path else os.path.abspath(path)


def list_dir(root: Root, path: str) -> list[pafs.FileInfo]:
    """Direct children of ``path`` (empty if it does not exist)."""
    sel = pafs.FileSelector(path, allow_not_found=True, recursive=False)
    return root.fs.get_file_info(sel)


def exists(root: Root, path: str) -> bool:
    return root.fs.get_file_info(path).type != pafs.FileType.NotFound


def fsync_dir(root: Root, path: str) -> None:
    """Make a rename inside ``path`` durable (local filesystems only; object stores are no-ops)."""
    if root.is_local:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_bytes_atomic(root: Root, path: str, data: bytes, *, tmp_suffix: str, fsync: bool = True) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder and a rename.

    The folder must already exist: a missing folder raises ``FileNotFoundError`` (that is the
    fence that stops a killed run's late writers, see :mod:`humanverse.shards`).
    """
    tmp = f"{path}.tmp-{tmp_suffix}"
    if root.is_local:
        with open(tmp, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
        if fsync:
            fsync_dir(root, posixpath.dirname(path))
    else:
        with root.fs.open_output_stream(tmp) as f:
            f.write(data)
        root.fs.move(tmp, path)


def put_bytes(root: Root, path: str, data: bytes, fsync: bool = True) -> None:
    """Write one whole object: a temp file and a rename on a local disk; one PUT on an object store
    (a PUT is atomic there: readers see the old object or the new one)."""
    if root.is_local:
        write_bytes_atomic(root, path, data, tmp_suffix=uuid.uuid4().hex, fsync=fsync)
    else:
        with root.fs.open_output_stream(path) as f:
            f.write(data)


def read_bytes(root: Root, path: str) -> bytes:
    with root.fs.open_input_stream(path) as f:
        return f.read()
