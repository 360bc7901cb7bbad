"""``humanverse refilter``: thresholds re-applied to stored scores as one committed, reversible run."""

from __future__ import annotations

import logging

import pyarrow.compute as pc
import pytest

import humanverse
from humanverse.cli import main
from humanverse.config import to_dict
from humanverse.shards import ShardSink, read_log, read_runs
from humanverse.testing.synthetic import synthetic_table
from pipelines.config import load_config


def _dataset(root):
    cfg = to_dict(load_config(None))  # the defaults: aesthetic.threshold 4.5, 1-3 persons
    sink = ShardSink.open(root, manifest={"config": cfg}, provenance={"command": "build", "config_sha": "b0"})
    for i in range(4):
        sink.write(synthetic_table(6, shard=f"s{i}", start=0, seed=i), "data", f"s{i}")
    sink.close()
    return root


def _rows(root):
    ds = humanverse.open(root)
    data = ds.to_arrow("data", columns=["id", "aesthetic"])
    rej = ds.to_arrow("rejects", columns=["id", "reason", "stage"])
    return ds, data, rej


def test_refilter_moves_rows_exactly_once_and_back(tmp_path):
    root = _dataset(tmp_path / "ds")
    _, data0, _ = _rows(root)
    full0 = humanverse.open(root).to_arrow("data").sort_by("id")
    ids0 = sorted(data0["id"].to_pylist())
    scores = data0["aesthetic"].to_pylist()
    threshold = sorted(scores)[10]
    below = sum(s < threshold for s in scores)
    assert 0 < below < len(scores)
    assert main(["refilter", str(root), "--set", f"aesthetic.threshold={threshold}"]) == 0

    ds, data, rej = _rows(root)
    assert pc.min(data["aesthetic"]).as_py() >= threshold and data.num_rows == len(scores) - below
    assert rej.num_rows == below and set(rej["reason"].to_pylist()) == {"low_aesthetic"}
    assert sorted(data["id"].to_pylist() + rej["id"].to_pylist()) == ids0  # every row in exactly one place
    assert ds.manifest["config"]["aesthetic"]["threshold"] == threshold
    runs = read_runs(root)
    assert [r["command"] for r in runs] == ["build", "refilter"]
    assert runs[1]["changes"] == {"aesthetic.threshold": [4.5, threshold]} and runs[1]["status"] == "finished"
    assert runs[1]["moved_to_rejects"] == below
    refilter_run = runs[1]["run"]
    # the files name the run that wrote them; the manifest names every run whose files are committed
    assert refilter_run in read_log(root).runs()
    assert set(read_log(root).runs()) <= set(sum(ds.manifest["built_by"].values(), []))
    assert ds.manifest["built_by"][runs[1]["config_sha"]][0] == refilter_run

    # a second identical refilter changes nothing
    assert main(["refilter", str(root), "--set", f"aesthetic.threshold={threshold}"]) == 0
    assert read_runs(root)[-1]["files_replaced"] == 0

    # and the old threshold brings every row back, whole
    assert main(["refilter", str(root), "--set", "aesthetic.threshold=4.5"]) == 0
    ds, data, rej = _rows(root)
    assert sorted(data["id"].to_pylist()) == ids0 and rej.num_rows == 0
    assert ds.to_arrow("data").sort_by("id").equals(full0)  # every column of every row as built


def test_a_killed_refilter_resumes_exactly_once(tmp_path, monkeypatch):
    import pipelines.refilter as rf

    root = _dataset(tmp_path / "ds")
    _, data0, _ = _rows(root)
    scores = data0["aesthetic"].to_pylist()
    threshold = sorted(scores)[12]
    below = sum(s < threshold for s in scores)
    real_commit, calls = ShardSink.commit, []

    def dying_commit(self, *a, **k):
        if len(calls) == 2:
            raise KeyboardInterrupt  # killed after two of the files were replaced
        calls.append(1)
        return real_commit(self, *a, **k)

    monkeypatch.setattr(ShardSink, "commit", dying_commit)
    with pytest.raises(KeyboardInterrupt):
        rf.refilter(str(root), {"aesthetic.threshold": threshold})
    monkeypatch.setattr(ShardSink, "commit", real_commit)
    _, data, rej = _rows(root)
    assert sorted(data["id"].to_pylist() + rej["id"].to_pylist()) == sorted(data0["id"].to_pylist())
    rf.refilter(str(root), {"aesthetic.threshold": threshold})
    _, data, rej = _rows(root)
    assert data.num_rows == len(scores) - below and rej.num_rows == below
    assert sorted(data["id"].to_pylist() + rej["id"].to_pylist()) == sorted(data0["id"].to_pylist())
    assert [r["status"] for r in read_runs(root)] == ["finished", "failed", "finished"]


@pytest.mark.parametrize("setting,message", [("caption.max_new_tokens=5", "cannot change caption.max_new_tokens"),
                                             ("aesthetic.threshold=.nan", "aesthetic.threshold must be a finite")])
def test_refilter_refuses_what_it_cannot_apply(tmp_path, caplog, setting, message):
    root = _dataset(tmp_path / "ds")
    with caplog.at_level(logging.ERROR):
        assert main(["refilter", str(root), "--set", setting]) == 2
    assert message in caplog.text
    assert [r["command"] for r in read_runs(root)] == ["build"]


def test_a_build_with_new_thresholds_points_to_refilter(tmp_path):
    from humanverse.config import ConfigError
    from pipelines.plan import check_resumable, config_fingerprint

    old = load_config(None)
    new = load_config(None, {"aesthetic.threshold": 5.5})
    existing = {"fingerprint": config_fingerprint(old, "tiny")}
    with pytest.raises(ConfigError, match=r"humanverse refilter OUT --set aesthetic.threshold=5.5"):
        check_resumable(existing, config_fingerprint(new, "tiny"), "OUT", force_new_config=False)
    other = load_config(None, {"caption.max_new_tokens": 7})
    with pytest.raises(ConfigError, match="--force-new-config"):
        check_resumable(existing, config_fingerprint(other, "tiny"), "OUT", force_new_config=False)
