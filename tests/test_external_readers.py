"""Our Parquet must be readable with no project code: DuckDB, pyarrow.dataset, pandas, polars, datasets."""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow.dataset as pads
import pytest

import humanverse
from humanverse.codecs import decode_keypoints
from humanverse.testing.synthetic import synthetic_table

N = 5


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("ext") / "ds"
    sink = humanverse.ShardSink.open(root, manifest={"clip_dim": 16})
    table = synthetic_table(N, clip_dim=16)
    sink.write(table, "data", "a")
    sink.close()
    return root, table


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
