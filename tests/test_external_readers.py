"""Our Parquet must be readable with no project code: DuckDB, pyarrow.dataset, pandas, polars, datasets (through
the dataset card at the root: ``load_dataset(ROOT, "data")`` gives decoded images)."""

from __future__ import annotations

import io
import shutil

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

import humanverse
from humanverse import codecs
from humanverse.card import write_card
from humanverse.codecs import decode_keypoints
from humanverse.schema import REJECT_SCHEMA
from humanverse.shards import read_manifest
from humanverse.testing.synthetic import synthetic_table

N = 5


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("ext") / "ds"
    sink = humanverse.ShardSink.open(root, manifest={"clip_dim": 16})
    table = synthetic_table(N, clip_dim=16)
    sink.write(table, "data", "a")
    sink.write(pa.Table.from_pylist([_reject(i) for i in range(3)], schema=REJECT_SCHEMA), "rejects", "a")
    sink.close()
    write_card(root, read_manifest(root))
    # Parquet files the card's configs must not read: a straggler's staged file and full rows held
    # aside (neither is a published data or rejects file), next to the manifest and the log.
    for folder in ("_staging/straggler", "held"):
        (root / folder).mkdir(parents=True, exist_ok=True)
        pq.write_table(synthetic_table(2, clip_dim=16, start=100), root / folder / "part-x-0.parquet")
    return root, table


def _reject(i: int) -> dict:
    return {"id": f"{i:064x}", "source_url": None, "source_key": f"r{i}", "source_shard": "a", "source_index": 50 + i,
            "orig_width": 90, "orig_height": 90, "stage": "resolution", "reason": "too_small", "detail": "90 < 200"}


def _first_keypoints(table):
    return decode_keypoints(table.column("persons")[0].as_py()[0]["keypoints"])


def test_duckdb(root):
    path, table = root
    rows = duckdb.sql(f"SELECT persons[1].keypoints AS kp, clip_embedding, models FROM '{path}/data/*.parquet' "
                      "ORDER BY source_index").fetchall()
    assert len(rows) == N
    assert np.allclose(np.asarray(rows[0][0]).reshape(133, 3), _first_keypoints(table))
    assert len(rows[0][1]) == 16 and rows[0][2][0]["stage"] == "source"


def test_pyarrow_dataset(root):
    path, table = root
    t = pads.dataset(str(path / "data"), format="parquet").to_table()
    assert t.num_rows == N and t.schema.equals(table.schema, check_metadata=False)


def test_pandas(root):
    import pandas as pd

    df = pd.read_parquet(path := root[0] / "data")
    assert len(df) == N and df["num_persons"].sum() == root[1].column("num_persons").to_numpy().sum()
    assert isinstance(df["image"].iloc[0], bytes), path


def test_polars(root):
    import polars as pl

    df = pl.read_parquet(str(root[0] / "data" / "*.parquet"))
    assert df.height == N and df["clip_embedding"].dtype.size == 16


def test_hf_datasets(root):
    import datasets

    d = datasets.load_dataset("parquet", data_files=str(root[0] / "data" / "*.parquet"), split="train",
                              cache_dir=str(root[0].parent / "hf-cache"))
    assert len(d) == N
    kp = np.asarray(d[0]["persons"][0]["keypoints"], np.float32).reshape(133, 3)
    assert np.allclose(kp, _first_keypoints(root[1]))


def test_hf_datasets_through_the_card(root, tmp_path):
    """``load_dataset(ROOT, "data")``: the card's config reads the published data files only, and its
    features make image, depth and normal decoded PIL images (the second depth map is null here)."""
    import datasets
    from PIL import Image

    path, table = root
    cache = str(tmp_path / "hf-cache")
    d = datasets.load_dataset(str(path), "data", split="train", cache_dir=cache)
    assert len(d) == N
    for c in ("image", "depth", "depth_omnidata", "normal"):
        assert isinstance(d.features[c], datasets.Image), c
    by_index = {r["source_index"]: r for r in table.to_pylist()}
    for row in d:
        want = by_index[row["source_index"]]
        assert isinstance(row["image"], Image.Image) and row["image"].size == (want["width"], want["height"])
        assert isinstance(row["depth"], Image.Image) and isinstance(row["normal"], Image.Image)
        assert row["depth"].size == row["normal"].size == (want["map_width"], want["map_height"])
        assert row["depth_omnidata"] is None
        depth = codecs.decode_depth(want["depth"], want["depth_min"], want["depth_max"])
        restored = want["depth_min"] + np.asarray(row["depth"], np.float64) / 65535 * (
            want["depth_max"] - want["depth_min"])
        assert np.allclose(restored, depth, atol=1e-4)  # the decoded image is the stored 16-bit map
        assert np.array_equal(np.asarray(row["normal"]), np.asarray(Image.open(io.BytesIO(want["normal"]))))
        assert row["persons"][0]["left_hand_visible"] == want["persons"][0]["left_hand_visible"]
    assert len(datasets.load_dataset(str(path), split="train", cache_dir=cache)) == N  # "data" is the default
    rejects = datasets.load_dataset(str(path), "rejects", split="train", cache_dir=cache)
    assert sorted(rejects["reason"]) == ["too_small"] * 3
    shutil.rmtree(cache, ignore_errors=True)
