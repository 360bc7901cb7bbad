"""Hostile and damaged inputs on the dataset side: each ends in one sentence and exit code 2, and
nothing is read, moved, deleted or written outside the dataset root.

Crafted commit records, injected ``where`` filters, deleted or truncated committed files, a
truncated manifest, and malformed records.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest

import humanverse
from humanverse.cli import main
from humanverse.shards import LOG_DIR, DatasetError, ShardSink
from humanverse.sql import where_expression
from humanverse.testing.synthetic import make_sample, synthetic_table

sys.path.insert(0, str(Path(__file__).parent))
from shard_writer_proc import make_rows  # noqa: E402

INJECTIONS = [
    "1=1) ; COPY (SELECT 42) TO '{target}' (FORMAT csv); --",
    "1=1; COPY (SELECT 42) TO '{target}' (FORMAT csv)",
    "id IN (SELECT column0 FROM read_csv('/etc/hostname'))",
    "row_number() OVER () < 3",
]


def _dataset(root: Path) -> Path:
    sink = ShardSink.open(root, manifest={})
    sink.write(synthetic_table(4, shard="a"), "data", "a")
    sink.write(make_rows("b", [0, 5])[1], "rejects", "b")
    sink.close()
    return root


def _one_sentence(caplog) -> str:
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and "\n" not in errors[0] and "Traceback" not in errors[0], errors
    return errors[0]


# -- where filters ----------------------------------------------------------------------------------


@pytest.mark.parametrize("template", INJECTIONS)
def test_where_is_one_condition_never_a_statement(tmp_path, template, caplog):
    root = _dataset(tmp_path / "ds")
    target = tmp_path / "written-by-the-filter.csv"
    where = template.format(target=target)
    with pytest.raises(ValueError):
        where_expression(where)
    assert main(["show", str(root), "--where", where, "--out", str(tmp_path / "g.html")]) == 2
    assert "where" in _one_sentence(caplog)
    assert main(["testset", "rows", str(root), str(tmp_path / "ts"), "--where", where]) == 2
    from model.training.data import TrainDataConfig

    with pytest.raises(ValueError, match="where"):
        TrainDataConfig(where=where)
    assert not target.exists()
    assert not (tmp_path / "g.html").exists()


def test_where_keeps_ordinary_conditions(tmp_path):
    root = _dataset(tmp_path / "ds")
    assert where_expression("num_persons >= 1 AND caption ILIKE '%a%'") == "num_persons >= 1 AND caption ILIKE '%a%'"
    assert main(["show", str(root), "--where", "num_persons >= 1", "--out", str(tmp_path / "g.html")]) == 0
    from model.training.data import TrainDataConfig

    assert TrainDataConfig(where="num_persons=1 -- one person").where == "num_persons=1"  # the parsed expression


# -- the commit log and the files it lists ----------------------------------------------------------


@pytest.mark.parametrize("file,run", [("data/../../outside.parquet", "r1"), ("/tmp/abs.parquet", "r1"),
                                      ("data/part-x.parquet", "../../elsewhere"), ("rejects/x.parquet", "r1")])
def test_a_crafted_record_moves_nothing_outside_the_root(tmp_path, file, run, caplog):
    root = _dataset(tmp_path / "ds")
    (tmp_path / "elsewhere").mkdir()
    staged = root / "_staging" / f"sealed-{run}"
    crafted = {"file": file, "kind": "data", "rows": 1, "shard_rows": {"a": 1}, "run": run, "created": 0.0}
    (root / LOG_DIR / "sealed-evil").mkdir()
    (root / LOG_DIR / "sealed-evil" / "data-x.json").write_text(json.dumps(crafted))
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(DatasetError, match="damaged or was crafted"):
        ShardSink.open(root)
    assert main(["query", str(root), "SELECT count(*) FROM hv"]) == 2
    assert "crafted" in _one_sentence(caplog)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    assert not (tmp_path / "outside.parquet").exists() and not staged.exists()


@pytest.mark.parametrize("record", ["{}", "[]", '{"file": 3}', "not json"])
def test_a_malformed_record_is_one_sentence(tmp_path, record, caplog):
    root = _dataset(tmp_path / "ds")
    (root / LOG_DIR / "sealed-bad").mkdir()
    (root / LOG_DIR / "sealed-bad" / "data-x.json").write_text(record)
    assert main(["stats", str(root)]) == 2
    _one_sentence(caplog)


def test_a_deleted_data_file_is_named_unless_asked_to_read_what_remains(tmp_path, caplog, capsys):
    root = _dataset(tmp_path / "ds")
    (data_file,) = (root / "data").iterdir()
    data_file.unlink()
    with pytest.raises(DatasetError, match=data_file.name):
        humanverse.open(root)
    assert main(["query", str(root), "SELECT count(*) AS n FROM rejects", "--format", "csv"]) == 2
    assert data_file.name in _one_sentence(caplog)
    capsys.readouterr()
    assert main(["query", str(root), "SELECT count(*) AS n FROM rejects", "--format", "csv", "--skip-missing"]) == 0
    assert capsys.readouterr().out.split() == ["n", "2"]
    assert humanverse.open(root, missing="skip").num_rows("rejects") == 2


def test_a_truncated_data_file_is_named(tmp_path, caplog):
    root = _dataset(tmp_path / "ds")
    (data_file,) = (root / "data").iterdir()
    data_file.write_bytes(data_file.read_bytes()[:100])
    assert main(["query", str(root), "SELECT count(*) FROM hv"]) == 2
    assert data_file.name in _one_sentence(caplog)
    caplog.clear()
    assert main(["stats", str(root)]) == 2
    assert data_file.name in _one_sentence(caplog)


def test_a_truncated_manifest_is_one_sentence(tmp_path, caplog):
    root = _dataset(tmp_path / "ds")
    manifest = root / "humanverse.json"
    manifest.write_text(manifest.read_text()[:10])
    assert main(["stats", str(root)]) == 2
    assert "humanverse.json is not valid JSON" in _one_sentence(caplog)


# -- one writer per output --------------------------------------------------------------------------


def test_one_writer_per_output_and_a_killed_writer_never_locks_it(tmp_path, caplog):
    import os
    import signal
    import subprocess
    import time

    from humanverse import fs as hfs
    from humanverse.shards import LEASE_DIR, Lease, write_lease

    root = _dataset(tmp_path / "ds")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from humanverse.shards import ShardSink\n"
        f"sink = ShardSink.open({str(root)!r}, lease_seconds=30)\n"
        "print('open', flush=True); time.sleep(600)")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(DatasetError, match=f"being written by another build .*process {holder.pid}"):
            ShardSink.open(root)
        src = tmp_path / "in"
        src.mkdir()
        make_sample(320, 240, seed=1).image.save(src / "a.jpg")
        assert main(["build", str(src), str(root), "--models", "tiny", "--set", "stages=[decode]"]) == 2
        assert f"process {holder.pid}" in _one_sentence(caplog)
        assert main(["query", str(root), "SELECT count(*) FROM hv"]) == 0  # readers are never blocked
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    ShardSink.open(root).close()  # the holder is gone: its lease no longer counts
    assert not list((root / LEASE_DIR).iterdir())  # given back on close

    r = hfs.resolve_root(root)
    now = time.time()
    write_lease(r, Lease("another-host", 1, "remote-run", now, now + 30))
    with pytest.raises(DatasetError, match="remote-run"):
        ShardSink.open(root)
    write_lease(r, Lease("another-host", 1, "remote-run", now - 100, now - 40))  # lapsed
    ShardSink.open(root).close()


# -- errors raised far from the command line --------------------------------------------------------


def test_errors_from_ray_tasks_and_train_workers_are_one_sentence():
    """Ray re-raises a task's exception as a RayTaskError (its text holds the remote traceback) and
    Ray Train a worker's inside a WorkerGroupError: the command reports the cause, on one line."""
    import errno

    from ray.exceptions import RayTaskError
    from ray.train.v2.api.exceptions import WorkerGroupError

    from humanverse.cli.plumbing import one_sentence, user_error

    task = RayTaskError("map_batches(DecodeStage)", "Traceback (most recent call last):\n  ...",
                        ValueError("input.batch_rows must be >= 1, got 0.")).as_instanceof_cause()
    assert one_sentence(user_error(task)) == "input.batch_rows must be >= 1, got 0."
    train = WorkerGroupError("rank 0: Traceback ...", {1: RuntimeError("later"), 0: ValueError(
        "the training data selection is empty: no rows to estimate latent statistics from.")})
    assert one_sentence(user_error(train)).startswith("the training data selection is empty")
    full = OSError(errno.ENOSPC, "No space left on device", "/data/hv/_staging/x.parquet")
    assert one_sentence(user_error(RayTaskError("write", "tb", full).as_instanceof_cause())) == \
        "No space left on device: /data/hv/_staging/x.parquet"
    assert user_error(RayTaskError("f", "tb", KeyError("a bug")).as_instanceof_cause()) is None


@pytest.mark.parametrize("argv,expect", [
    (["--set", "write.rows_per_file.x=1"], "write.rows_per_file"),
    (["--set", "write=3", "--set", "write.rows_per_file=1"], "write is a value, not a section"),
    (["--config", "{tab}"], "not valid YAML at line 2"),
    (["--config", "{tag}"], "not valid YAML"),
])
def test_config_mistakes_are_one_sentence(tmp_path, argv, expect, caplog):
    src = tmp_path / "in"
    src.mkdir()
    make_sample(320, 240, seed=1).image.save(src / "a.jpg")
    (tmp_path / "tab.yaml").write_text("write:\n\trows_per_file: 3\n")
    (tmp_path / "tag.yaml").write_text("write: !!python/object/apply:os.system ['touch pwned']\n")
    argv = [a.format(tab=tmp_path / "tab.yaml", tag=tmp_path / "tag.yaml") for a in argv]
    assert main(["build", str(src), str(tmp_path / "out"), "--models", "tiny", *argv]) == 2
    assert expect in _one_sentence(caplog)
    assert not (tmp_path / "pwned").exists()


def test_query_parquet_without_out_and_an_output_that_is_a_file(tmp_path, caplog):
    root = _dataset(tmp_path / "ds")
    assert main(["query", str(root), "SELECT 1", "--format", "parquet"]) == 2
    assert "--out" in _one_sentence(caplog)
    caplog.clear()
    (tmp_path / "afile").write_text("x")
    src = tmp_path / "in"
    src.mkdir()
    make_sample(320, 240, seed=1).image.save(src / "a.jpg")
    assert main(["build", str(src), str(tmp_path / "afile"), "--models", "tiny", "--set", "stages=[decode]"]) == 2
    assert "is a file, not a folder" in _one_sentence(caplog)
