"""Exactly-once commits: the protocol's pieces, then a writer SIGKILLed 20+ times while a reader samples."""

from __future__ import annotations

import glob
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import humanverse
from humanverse.shards import (LOG_DIR, RECORDS_DIR, STAGING_DIR, DataLossError, RunFencedError, ShardSink,
                               read_log)
from humanverse.testing.synthetic import synthetic_table

sys.path.insert(0, str(Path(__file__).parent))
from shard_writer_proc import make_rows  # noqa: E402


def test_write_then_read_only_committed(tmp_path):
    root = tmp_path / "ds"
    sink = ShardSink.open(root, manifest={"config": {"a": 1}})
    data, rejects = make_rows("s0", list(range(10)))
    sink.write(data, "data", name="x")
    sink.write(rejects, "rejects", name="x")
    # a stray file a crashed foreign writer could leave in data/: never visible, removed on open
    (root / "data" / "stray.parquet").write_bytes(b"PAR1 not really")
    ds = humanverse.open(root)
    assert len(ds.files("data")) == 1 and ds.num_rows("data") == 8 and ds.num_rows("rejects") == 2
    assert ds.query("SELECT count(*) AS n FROM hv").column("n")[0].as_py() == 8
    assert ds.query("SELECT reason FROM rejects").column("reason").to_pylist() == ["too_small"] * 2
    sink.close()
    ShardSink.open(root).close()
    assert not (root / "data" / "stray.parquet").exists()
    assert humanverse.open(root).manifest["config"] == {"a": 1}


def test_complete_shards_and_committed_keys(tmp_path):
    sink = ShardSink.open(tmp_path / "ds")
    d, r = make_rows("a", list(range(5)))
    sink.write(d, "data", "a0"), sink.write(r, "rejects", "a0")
    d, r = make_rows("b", [0, 1])
    sink.write(d, "data", "b0"), sink.write(r, "rejects", "b0")
    assert sink.state.complete_shards({"a": 5, "b": 4}) == {"a"}
    assert sink.committed_keys(["b"]) == {"b": {"0", "1"}}
    with pytest.raises(DataLossError, match="more committed rows than their size"):
        sink.state.complete_shards({"a": 3})


def test_fence_stops_a_killed_runs_late_writer(tmp_path):
    root = tmp_path / "ds"
    old = ShardSink.open(root)
    late_writer = old.writer()  # as held by a Ray task of a driver that has been SIGKILLed
    ShardSink.open(root)  # the re-run fences the old run
    d, _ = make_rows("s", [1, 2])
    with pytest.raises(RunFencedError):
        late_writer.write(d, "data", name="late")
    assert humanverse.open(root).num_rows("data") == 0
    assert not list((root / "data").iterdir())


def test_logged_but_unpublished_file_rolls_forward(tmp_path):
    root = tmp_path / "ds"
    sink = ShardSink.open(root)
    d, _ = make_rows("s", [1, 2, 3])
    rec = sink.write(d, "data", name="f")
    # Simulate a crash between commit (log record) and publish (rename into data/).
    os.replace(root / rec.file, root / STAGING_DIR / sink.run / Path(rec.file).name)
    ds = humanverse.open(root)
    assert ds.files("data") == []  # committed but not visible yet; never half-visible
    ShardSink.open(root)
    assert humanverse.open(root).num_rows("data") == 3
    assert (root / rec.file).exists()


def test_closing_a_run_rolls_forward_from_its_staging_without_listing_the_dataset(tmp_path, monkeypatch):
    """A writer's close looks only in its own staging folder: listing data/ costs minutes on an
    object store with a million files."""
    import humanverse.fs as hfs_module

    root = tmp_path / "ds"
    sink = ShardSink.open(root)
    d, _ = make_rows("s", [1, 2, 3])
    first = sink.write(d, "data", name="f1")
    second = sink.write(make_rows("s", [4])[0], "data", name="f2")
    os.replace(root / second.file, root / STAGING_DIR / sink.run / f"data-{Path(second.file).name}")
    listed = []
    real = hfs_module.list_dir
    monkeypatch.setattr(hfs_module, "list_dir", lambda r, path: listed.append(path) or real(r, path))
    sink.close()
    monkeypatch.undo()
    assert (root / first.file).exists() and (root / second.file).exists()
    assert not any(Path(p).name in ("data", "rejects", "held") for p in listed), listed
    assert humanverse.open(root).num_rows("data") == 4


def test_map_ordered_keeps_order_and_bounds_what_is_in_flight():
    from humanverse.fs import map_ordered

    running, peak, lock = [0], [0], threading.Lock()

    def slow(i):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.002 * (i % 5))  # later items often finish first
        with lock:
            running[0] -= 1
        return i * i

    assert list(map_ordered(slow, range(60), 4)) == [i * i for i in range(60)]
    assert 1 < peak[0] <= 4
    assert list(map_ordered(slow, range(5), 1)) == [0, 1, 4, 9, 16]


def test_missing_logged_file_is_a_clear_error(tmp_path):
    root = tmp_path / "ds"
    sink = ShardSink.open(root)
    rec = sink.write(make_rows("s", [1])[0], "data", name="f")
    os.remove(root / rec.file)
    with pytest.raises(DataLossError, match="neither in place nor in staging"):
        ShardSink.open(root)


def test_bad_tables_are_refused_before_anything_is_written(tmp_path):
    sink = ShardSink.open(tmp_path / "ds")
    d, r = make_rows("s", [0, 1, 2])
    bad = r.set_column(r.schema.get_field_index("reason"), r.schema.field("reason"),
                       pa.array(["lost_in_space"] * r.num_rows))
    with pytest.raises(ValueError, match="column 'reason' has value 'lost_in_space'"):
        sink.write(bad, "rejects")
    with pytest.raises(ValueError, match="kind must be one of"):
        sink.write(d, "accepted")
    assert humanverse.open(tmp_path / "ds").state.records == ()


def test_not_a_dataset(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no humanverse.json"):
        humanverse.open(tmp_path)


def test_non_local_filesystem(tmp_path):
    """The sink and readers only use pyarrow.fs: an fsspec in-memory filesystem works as a root."""
    root = "memory://hv-test/ds"
    sink = ShardSink.open(root)
    table = synthetic_table(3, shard="m")
    sink.write(table, "data", name="m0")
    ds = humanverse.open(root)
    assert ds.to_arrow(columns=["source_index"]).column(0).to_pylist() == [0, 1, 2]
    assert ds.query("SELECT sum(num_persons) AS s FROM hv").column("s")[0].as_py() == sum(table.column("num_persons").to_pylist())


class _Reader(threading.Thread):
    """Samples the dataset while the writer is being killed; records every invariant violation."""

    def __init__(self, root: Path):
        super().__init__(daemon=True)
        self.root, self.stop, self.samples, self.errors = root, threading.Event(), 0, []

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.sample()
                self.samples += 1
            except Exception as e:  # noqa: BLE001 - any failure is a finding
                self.errors.append(repr(e))

    def sample(self) -> None:
        if not (self.root / "humanverse.json").exists():
            return
        # Raw glob first (what DuckDB `data/*.parquet` sees), then the log: every file in data/ must be
        # complete and already in the log, since commit precedes publish.
        raw = glob.glob(str(self.root / "data" / "*.parquet"))
        for f in raw:
            try:
                pq.read_metadata(f)
            except FileNotFoundError:
                continue  # only unlogged files are ever deleted; checked below
        logged = {os.path.basename(f) for f in read_log(self.root).files()}
        unlogged = [f for f in raw if os.path.basename(f) not in logged]
        if unlogged:
            raise AssertionError(f"visible but not logged: {unlogged[:3]}")
        ds = humanverse.open(self.root)
        keys = []
        for kind in ("data", "rejects"):
            t = ds.to_arrow(kind, columns=["source_shard", "source_index"])
            keys += list(zip(t.column(0).to_pylist(), t.column(1).to_pylist()))
        if len(keys) != len(set(keys)):
            raise AssertionError("a source row is visible twice")


def test_sigkill_and_resume_exactly_once(tmp_path):
    """>= 20 SIGKILLs of the writer at random points; every row exactly once, nothing partial visible."""
    root = tmp_path / "ds"
    num_shards, per_shard, per_file = 20, 60, 6
    cmd = [sys.executable, str(Path(__file__).parent / "shard_writer_proc.py"), str(root),
           str(num_shards), str(per_shard), str(per_file)]
    rng = random.Random(1234)
    reader = _Reader(root)
    reader.start()
    kills, finished = 0, False
    try:
        while not finished:
            start_rows = read_log(root).rows() if (root / LOG_DIR).exists() else 0
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
            if kills < 22:
                target = start_rows + rng.randint(1, 12) * per_file
                while proc.poll() is None:
                    if (root / LOG_DIR).exists() and read_log(root).rows() >= target:
                        time.sleep(rng.uniform(0, 0.02))
                        break
                    time.sleep(0.005)
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                    kills += 1
            out, err = proc.communicate(timeout=120)
            if proc.returncode == 0:
                assert b"DONE" in out
                finished = True
            elif proc.returncode != -signal.SIGKILL:
                raise AssertionError(f"writer failed: {err.decode()[-2000:]}")
    finally:
        time.sleep(0.2)
        reader.stop.set()
        reader.join(timeout=30)
    assert kills >= 20
    assert reader.errors == [], reader.errors[:5]
    assert reader.samples >= 20
    ds = humanverse.open(root)
    keys = []
    for kind in ("data", "rejects"):
        t = ds.to_arrow(kind, columns=["source_shard", "source_index"])
        keys += list(zip(t.column(0).to_pylist(), t.column(1).to_pylist()))
    expected = {(f"shard-{s:03d}", i) for s in range(num_shards) for i in range(per_shard)}
    assert len(keys) == len(expected) and set(keys) == expected
    assert ds.num_rows("rejects") == len([k for k in expected if k[1] % 5 == 0])
    ids = ds.to_arrow("data", columns=["id"]).column(0).to_pylist()
    assert len(ids) == len(set(ids))
    # nothing left behind: no unlogged files, no live staging of dead runs once a new run opens
    sink = ShardSink.open(root)
    assert sorted(os.listdir(root / STAGING_DIR)) == [sink.run]
    assert sorted(os.listdir(root / RECORDS_DIR)) == [sink.run]
    assert [n for n in os.listdir(root / LOG_DIR) if n.startswith("snapshot-")] == [f"snapshot-{sink.run}.parquet"]


def test_a_live_run_checkpoints_its_commits_into_parquet(tmp_path):
    """A live build's readers read a few Parquet seals plus the newest commit objects; the
    checkpoint removes the objects it holds, and the final seal takes the rest."""
    from humanverse.shards import SEALS_DIR

    root = tmp_path / "ds"
    sink = ShardSink.open(root)
    for i in range(5):
        sink.write(make_rows(f"s{i}", [1, 2])[0], "data", name=f"f{i}")
    assert not sink.checkpoint(every=6)  # fewer than `every` new commits: nothing to do
    assert sink.checkpoint(every=2)
    assert list((root / RECORDS_DIR / sink.run).iterdir()) == []
    assert [p.name for p in (root / SEALS_DIR / sink.run).iterdir()] == ["000000.parquet"]
    sink.write(make_rows("s9", [1])[0], "data", name="f9")
    assert read_log(root).rows("data") == 11 and humanverse.open(root).num_rows("data") == 11
    sink.close()
    assert sorted(p.name for p in (root / SEALS_DIR / sink.run).iterdir()) == ["000000.parquet", "final.parquet"]
    assert humanverse.open(root).num_rows("data") == 11
    ShardSink.open(root).close()  # compaction folds both seals into the snapshot
    assert humanverse.open(root).num_rows("data") == 11 and not (root / SEALS_DIR / sink.run).exists()


def test_the_log_keeps_each_file_once_across_its_parts():
    """A file listed by several parts of the log (a snapshot, a seal, a leftover commit object)
    counts once, from its first listing; a retired file counts nowhere."""
    from humanverse.shards import Commit, CommitRecord, CommitState

    def rec(i, run="r1"):
        return CommitRecord(file=f"data/part-{run}-f{i}.parquet", kind="data", rows=i + 1,
                            shard_rows={f"s{i}": i + 1}, run=run, created=float(i))

    snapshot = Commit("r1", tuple(rec(i) for i in range(5))).table()
    seal = Commit("r1", (rec(3), rec(4), rec(5), rec(6))).table()
    leftover = Commit("r2", (rec(7, "r2"),), retires=(rec(0),)).table()
    state = CommitState.combine([snapshot, seal, leftover])
    assert sorted(state.files()) == sorted(f"data/part-r1-f{i}.parquet" for i in range(1, 7)) + [
        "data/part-r2-f7.parquet"]
    assert state.rows() == sum(i + 1 for i in range(1, 8))
    assert state.rows_per_shard() == {f"s{i}": i + 1 for i in range(1, 8)}


def test_a_log_of_the_first_version_is_read_and_folded_in(tmp_path):
    """Datasets written before the object-store protocol (one JSON record per file in
    ``_log/<run>/`` or ``_log/sealed-<run>/``, a JSON snapshot) read as they are; the first writer
    rolls their files forward and folds the records into a Parquet snapshot."""
    import json

    from humanverse.shards import CommitRecord, write_manifest

    root = tmp_path / "ds"
    for d in ("data", "rejects", "_log/sealed-r1", "_log/r2", "_staging/r2"):
        (root / d).mkdir(parents=True)
    write_manifest(str(root), {"config": {}})
    d1, _ = make_rows("a", [1, 2, 3])
    d2, _ = make_rows("b", [1, 2])
    pq.write_table(d1, root / "data" / "part-r1-x.parquet")
    pq.write_table(d2, root / "_staging" / "r2" / "part-r2-y.parquet")  # logged, not yet published
    recs = [CommitRecord("data/part-r1-x.parquet", "data", 3, {"a": 3}, "r1", 1.0),
            CommitRecord("data/part-r2-y.parquet", "data", 2, {"b": 2}, "r2", 2.0)]
    (root / "_log" / "snapshot-r0.json").write_text(json.dumps({"records": [json.loads(recs[0].to_json())]}))
    (root / "_log" / "r2" / "data-y.json").write_bytes(recs[1].to_json())
    assert read_log(root).rows("data") == 5
    assert humanverse.open(root).num_rows("data") == 5
    sink = ShardSink.open(root)
    sink.close()
    assert (root / "data" / "part-r2-y.parquet").exists()
    assert not (root / "_log" / "r2").exists() and not (root / "_log" / "snapshot-r0.json").exists()
    ds = humanverse.open(root)
    assert ds.num_rows("data") == 5 and ds.to_arrow("data").num_rows == 5
