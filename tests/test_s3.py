"""The commit protocol on a real S3 API: moto's standalone server on 127.0.0.1, started here as a
subprocess and stopped by PID. Object stores have no folder rename: the protocol must not need one.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

import humanverse
from humanverse import fs as hfs
from humanverse.shards import RunFencedError, ShardSink, read_log, read_runs
from humanverse.testing.s3server import moto_available, moto_server, s3_filesystem, s3_uri

sys.path.insert(0, str(Path(__file__).parent))
from shard_writer_proc import make_rows  # noqa: E402

pytestmark = pytest.mark.skipif(not moto_available(), reason="moto[server] is not installed (it is in the test extra)")


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """(endpoint, filesystem): a fresh S3 API server on a free loopback port, credentials in the
    environment (Ray workers and subprocesses inherit them)."""
    with moto_server(tmp_path_factory.mktemp("moto") / "server.log") as endpoint:
        fs = s3_filesystem(endpoint)
        fs.create_dir("hvtest")
        yield endpoint, fs


def _uri(endpoint: str, path: str) -> str:
    return s3_uri(endpoint, "hvtest", path)


def _keys(ds, kinds=("data", "rejects")) -> list[tuple[str, int]]:
    keys = []
    for kind in kinds:
        t = ds.to_arrow(kind, columns=["source_shard", "source_index"])
        keys += list(zip(t.column(0).to_pylist(), t.column(1).to_pylist()))
    return keys


def test_commit_fence_and_roll_forward_on_s3(s3):
    endpoint, fs = s3
    uri = _uri(endpoint, "proto")
    old = ShardSink.open(uri, manifest={"config": {"a": 1}}, provenance={"command": "test"})
    d, r = make_rows("s0", list(range(10)))
    old.write(d, "data", name="x")
    old.write(r, "rejects", name="x")
    late = old.writer()  # held by a task of a driver that is now killed (no close)
    # a crash between commit and publish: the file is logged but still in staging
    rec = old.write(make_rows("s1", [1, 2, 3])[0], "data", name="y")
    root = hfs.resolve_root(uri)
    fs.move(root.join(rec.file), root.join("_staging", old.run, Path(rec.file).name))
    ds = humanverse.open(uri)
    assert ds.num_rows("data") == 11 and len(ds.files("data")) == 1  # the unpublished file is left out

    new = ShardSink.open(uri)  # seals the killed run, rolls its file forward
    with pytest.raises(RunFencedError):
        late.write(make_rows("s2", [1])[0], "data", name="late")
    new.write(make_rows("s3", [1, 2])[0], "data", name="z")
    new.close()
    ds = humanverse.open(uri)
    assert ds.num_rows("data") == 13 and ds.num_rows("rejects") == 2 and len(ds.files("data")) == 3
    assert sorted(_keys(ds)) == sorted([("s0", i) for i in range(10)] + [("s1", 1), ("s1", 2), ("s1", 3),
                                                                           ("s3", 1), ("s3", 2)])
    # DuckDB (through Arrow over pyarrow's S3 filesystem) and pandas see the same rows
    assert ds.query("SELECT count(*) AS n FROM hv").column("n")[0].as_py() == 13
    df = pq.read_table([f for f in ds.files("data")], filesystem=root.fs).to_pandas()
    assert len(df) == 13 and set(df["source_shard"]) == {"s0", "s1", "s3"}
    # no folder of the old run remains; both runs are recorded with their provenance
    runs = read_runs(uri)
    assert [x["status"] for x in runs] == ["running", "finished"]  # the killed run never closed
    assert runs[0]["command"] == "test" and runs[1]["code_version"].startswith(humanverse.__version__)
    listing = {i.path for i in fs.get_file_info(pafs.FileSelector(root.path, recursive=True))}
    assert not [p for p in listing if "/_staging/" in p and p.endswith(".parquet")]
    assert not [p for p in listing if "/_log/records/" in p and p.endswith(".json")]
    # committed files are read several at a time on an object store, and come back in log order
    reader = ShardSink.open(uri)
    try:
        got = [(rec.file, t.column("source_index").to_pylist())
               for rec, t in reader.committed_tables({"data": ["source_index"], "rejects": ["source_index"]})]
        want = [(rec.file, pq.read_table(root.join(rec.file), columns=["source_index"], filesystem=fs)
                 .column(0).to_pylist()) for rec in reader.state.records]
        assert got == want and len(got) == 4
    finally:
        reader.close()


def test_sigkill_and_resume_exactly_once_on_s3(s3, tmp_path):
    """The kill-and-resume writer of test_shards, against S3: every row exactly once."""
    endpoint, _ = s3
    uri = _uri(endpoint, "killed")
    num_shards, per_shard, per_file = 6, 30, 6
    cmd = [sys.executable, str(Path(__file__).parent / "shard_writer_proc.py"), uri,
           str(num_shards), str(per_shard), str(per_file)]
    rng = random.Random(7)
    kills, finished = 0, False
    while not finished:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        if kills < 6:
            time.sleep(rng.uniform(1.5, 3.5))
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                kills += 1
        out, err = proc.communicate(timeout=300)
        if proc.returncode == 0:
            assert b"DONE" in out
            finished = True
        elif proc.returncode != -signal.SIGKILL:
            raise AssertionError(f"writer failed: {err.decode()[-2000:]}")
    assert kills >= 3
    ds = humanverse.open(uri)
    keys = _keys(ds)
    expected = {(f"shard-{s:03d}", i) for s in range(num_shards) for i in range(per_shard)}
    assert len(keys) == len(expected) and set(keys) == expected
    assert read_log(uri).rows() == len(expected)


def test_build_kill_resume_and_read_on_s3(s3, tmp_path, tiny_zoo):
    """``humanverse build`` into s3://, killed once mid-run, then resumed; three readers agree."""
    from humanverse.cli import main
    from humanverse.testing.synthetic import make_sample

    endpoint, _ = s3
    uri = _uri(endpoint, "built")
    src = tmp_path / "in"
    src.mkdir()
    for i in range(12):
        make_sample(320, 240, seed=i).image.save(src / f"img-{i:03d}.jpg")
    args = ["build", str(src), uri, "--models", "tiny", "--set", "stages=[decode,resolution]",
            "--set", "input.folder_shard_size=3"]
    proc = subprocess.Popen([sys.executable, "-m", "humanverse.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True,
                            env={**os.environ, "HUMANVERSE_TINY_ZOO": str(tiny_zoo)})
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline:  # kill once the first file is committed
        try:
            if read_log(uri).rows() > 0:
                break
        except Exception:  # noqa: BLE001 - the dataset may not exist yet
            pass
        time.sleep(0.2)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert main(args) == 0
    ds = humanverse.open(uri)
    keys = [k for k, _ in (_keys(ds))]
    t = ds.to_arrow("data", columns=["source_key"])
    r = ds.to_arrow("rejects", columns=["source_key"])
    got = t.column(0).to_pylist() + r.column(0).to_pylist()
    assert sorted(got) == sorted(f"img-{i:03d}.jpg" for i in range(12)) and len(keys) == 12
    n = ds.num_rows("data")
    assert ds.query("SELECT count(*) AS n FROM hv").column("n")[0].as_py() == n
    import pandas as pd

    df = pd.read_parquet(ds.files("data"), filesystem=ds.root.fs, columns=["id"])
    assert len(df) == n and df["id"].is_unique
    runs = read_runs(uri)
    assert runs[-1]["status"] == "finished" and runs[-1]["command"] == "build"
    assert runs[-1]["config"]["stages"] == ["decode", "resolution"]
