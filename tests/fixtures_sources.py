"""Synthetic source inputs for reader and download tests: image bytes, image folders, webdataset tars
and Parquet files laid out the way img2dataset and HF datasets write them.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from humanverse.testing.synthetic import make_sample


def image_bytes(seed: int, width: int = 240, height: int = 300, fmt: str = "JPEG") -> bytes:
    """A synthetic person image encoded as ``fmt`` (JPEG, PNG, WEBP, ...)."""
    buf = io.BytesIO()
    make_sample(width, height, num_persons=1, seed=seed).image.save(buf, format=fmt)
    return buf.getvalue()


def write_tar(path: Path, members: list[tuple[str, bytes]], *, dirs: tuple[str, ...] = ()) -> Path:
    """Write an uncompressed tar with ``members`` (name, bytes) in this order (after directory entries ``dirs``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def img2dataset_json(key: str, url: str, *, status: str = "success", error: str | None = None,
                     caption: str | None = None) -> bytes:
    """The per-sample ``key.json`` img2dataset writes into its tars."""
    return json.dumps({"url": url, "caption": caption, "key": key, "status": status, "error_message": error,
                       "width": 240, "height": 300}, indent=4).encode()


def write_parquet(path: Path, columns: dict[str, list], *, schema: pa.Schema | None = None,
                  row_group_size: int | None = None) -> Path:
    """Write ``columns`` as one Parquet file (several row groups when ``row_group_size`` is set)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pydict(columns, schema=schema), path, row_group_size=row_group_size)
    return path
