"""Planning a build without Ray (``pipelines.plan``, ``pipelines.steps``): the stage steps a config
makes, the resume check, and which shards and rows are left to do after a partial run."""

from __future__ import annotations

import dataclasses
import sys
import uuid
from pathlib import Path

import pytest

from humanverse.config import ConfigError
from humanverse.shards import read_manifest, write_manifest
from pipelines.config import PRESETS, STAGES, load_config
from pipelines.plan import check_resumable, config_diff, config_fingerprint, finish_manifest, open_build, read_item
from pipelines.readers import ShardKeys, read_shard
from pipelines.rows import from_source_rows
from pipelines.sink import write_inflight
from pipelines.stages.decode import DecodeStage
from pipelines.steps import ActorStep, TaskStep, plan_steps

sys.path.insert(0, str(Path(__file__).parent))
from fixtures_sources import image_bytes  # noqa: E402


def test_every_stage_is_one_step_in_funnel_order_with_its_resources():
    cfg = load_config(PRESETS / "gpu-node.yaml")
    steps = plan_steps(cfg, "paper", 768)
    assert [s.name for s in steps] == list(STAGES)
    cpu = {s.name for s in steps if isinstance(s, TaskStep)}
    assert cpu == {"decode", "resolution", "person_filter"}
    for s in steps:
        assert s.resources == (cfg.resources.decode if s.name in cpu else getattr(cfg.resources, s.name))
        assert s.kwargs["config"] is getattr(cfg, s.name) and s.kwargs["clip_dim"] == 768
        assert s.stage.name == s.name  # the stage rejects rows under its own name
    depth = next(s for s in steps if s.name == "depth")
    assert isinstance(depth, ActorStep) and depth.kwargs["maps"] is cfg.maps and depth.kwargs["models"] == "paper"
    assert sum(s.held_cpus for s in steps) == 32  # as the preset's budget says
    # the config's stages, in funnel order whatever order the config lists them in
    few = load_config(None, {"stages": ["detect", "decode", "aesthetic"]})
    assert [s.name for s in plan_steps(few, "tiny", None)] == ["decode", "detect", "aesthetic"]


def test_a_resume_must_run_the_same_config_but_may_change_resources():
    cfg = load_config(PRESETS / "demo.yaml")
    fp = config_fingerprint(cfg, "tiny")
    assert "resources" not in fp and "ray" not in fp and fp["models"] == "tiny"
    more = dataclasses.replace(cfg, resources=dataclasses.replace(
        cfg.resources, detect=dataclasses.replace(cfg.resources.detect, concurrency=9)))
    assert config_fingerprint(more, "tiny") == fp
    other = load_config(PRESETS / "demo.yaml", {"detect.score_threshold": 0.9})
    assert config_diff(fp, config_fingerprint(other, "tiny")) == ["detect.score_threshold: 0.82 -> 0.9"]
    check_resumable(None, fp, "out", False)  # a new dataset
    check_resumable({"fingerprint": fp}, fp, "out", False)
    with pytest.raises(ConfigError, match=r"out was built with a different config \(detect.score_threshold: "
                                          r"0.9 -> 0.82\).*--force-new-config"):
        check_resumable({"fingerprint": config_fingerprint(other, "tiny")}, fp, "out", False)
    check_resumable({"fingerprint": config_fingerprint(other, "tiny")}, fp, "out", True)


def test_partly_done_shards_are_resumed_row_by_row(tmp_path):
    """After a run that committed all of shard ``b`` and two rows of shard ``a``, the plan leaves
    ``b`` out, skips the keys of those two rows of ``a``, and the reader yields only the rest."""
    src = tmp_path / "in"
    for d, n in (("a", 5), ("b", 3)):
        (src / d).mkdir(parents=True)
        for i in range(n):
            (src / d / f"{i}.jpg").write_bytes(image_bytes(i) if i else b"not an image")
    cfg = load_config(PRESETS / "demo.yaml", {"stages": ["decode", "resolution"]})  # no model to resolve
    out = str(tmp_path / "out")

    sink, plan = open_build(str(src), out, cfg, models="tiny")
    assert [s.name for s in plan.work.todo] == ["a#0.jpg", "b#0.jpg"] and not plan.work.done
    recorded = read_manifest(out)["source_shards"]
    assert {k: (e["rows"], e["span"], e["vanished"]) for k, e in recorded.items()} == {
        "a#0.jpg": (5, ["0.jpg", "4.jpg"], 0), "b#0.jpg": (3, ["0.jpg", "2.jpg"], 0)}
    assert plan.clip_dim is None and read_manifest(out)["inputs"] == [str(src)]
    commit(sink, plan.work.todo, {"a#0.jpg": 2, "b#0.jpg": 3}, cfg)
    sink.close()

    sink, plan = open_build(str(src), out, cfg, models="tiny")
    sink.close()
    assert plan.work.done == {"b#0.jpg"} and [s.name for s in plan.work.todo] == ["a#0.jpg"]
    assert plan.work.skip == {"a#0.jpg": ("a/0.jpg", "a/1.jpg")} and not plan.work.changed
    (item,) = plan.work.items()
    shard, skip = read_item(item)
    assert shard == plan.work.todo[0] and skip == {"a/0.jpg", "a/1.jpg"}
    assert [r["source_key"] for batch in read_shard(shard, skip=skip) for r in batch] == ["a/2.jpg", "a/3.jpg",
                                                                                          "a/4.jpg"]

    with pytest.raises(ConfigError, match="different config"):
        open_build(str(src), out, load_config(PRESETS / "demo.yaml", {"stages": ["decode"]}), models="tiny")


def commit(sink, shards, rows: dict[str, int], cfg) -> None:
    """Commit the first ``rows[name]`` rows of each shard, as the write step does."""
    decode = DecodeStage(cfg.decode)
    for n, shard in enumerate(shards):
        table = from_source_rows([r for batch in read_shard(shard) for r in batch][:rows[shard.name]])
        write_inflight(sink.writer(), decode(table), f"test-{n}-{uuid.uuid4().hex[:6]}", None)


def test_a_grown_folder_is_reconciled_by_key_and_a_different_input_is_refused(tmp_path, caplog):
    """Files added to a folder between runs (five that sort first, one inside a shard's range) and
    one removed: the five become a new shard, the grown shard is read again skipping its committed
    keys, the removed file's committed row is reported, and once reconciled the shard is done."""
    src = tmp_path / "in"
    src.mkdir()
    for i in range(10, 16):
        (src / f"{i}.jpg").write_bytes(image_bytes(i))
    cfg = load_config(PRESETS / "demo.yaml", {"stages": ["decode"], "input.folder_shard_size": 3})
    out = str(tmp_path / "out")
    sink, plan = open_build(str(src), out, cfg, models="tiny")
    commit(sink, plan.work.todo, {"#10.jpg": 3, "#13.jpg": 3}, cfg)
    sink.close()
    for i in range(5):
        (src / f"0{i}.jpg").write_bytes(image_bytes(i))  # sort before every recorded file
    (src / "105.jpg").write_bytes(image_bytes(105))  # inside the range of #10.jpg
    (src / "11.jpg").unlink()

    sink, plan = open_build(str(src), out, cfg, models="tiny")
    assert plan.work.done == {"#13.jpg"} and plan.work.changed == {"#10.jpg"}
    assert [s.name for s in plan.work.todo] == ["#00.jpg", "#03.jpg", "#10.jpg"]
    assert plan.work.skip == {"#10.jpg": ("10.jpg", "11.jpg", "12.jpg")}
    # the changed shard keeps its old record until it is reconciled
    assert read_manifest(out)["source_shards"]["#10.jpg"]["rows"] == 3
    (grown,) = [s for s in plan.work.todo if s.name == "#10.jpg"]
    keys = ShardKeys(plan.work.skip["#10.jpg"])
    assert [r["source_key"] for b in read_shard(grown, skip=keys) for r in b] == ["105.jpg"]
    assert keys.vanished == ["11.jpg"]
    commit(sink, plan.work.todo, {"#00.jpg": 3, "#03.jpg": 2, "#10.jpg": 0}, cfg)
    write_inflight(sink.writer(), DecodeStage(cfg.decode)(from_source_rows(
        [r for b in read_shard(grown, skip=plan.work.skip["#10.jpg"]) for r in b])), "test-grown", None)
    write_manifest(sink.root, finish_manifest(plan.manifest, list(plan.work.todo), {s.name for s in plan.work.todo},
                                              {"#10.jpg": keys.vanished}, str(src)))
    sink.close()
    sink, plan = open_build(str(src), out, cfg, models="tiny")
    sink.close()
    assert not plan.work.todo and read_manifest(out)["source_shards"]["#10.jpg"]["vanished"] == 1

    other = tmp_path / "other"
    other.mkdir()
    (other / "x.jpg").write_bytes(image_bytes(99))
    with pytest.raises(ConfigError, match=rf"^{out} was built from {src} and {other} shares no source shard with "
                                          r"it; pass --add-input"):
        open_build(str(other), out, cfg, models="tiny")
    sink, plan = open_build(str(other), out, cfg, models="tiny", add_input=True)
    sink.close()
    assert [s.name for s in plan.work.todo] == ["#x.jpg"] and read_manifest(out)["inputs"] == [str(src), str(other)]
    (src / "x.jpg").write_bytes(image_bytes(98))  # would now share a shard name with the other input
    with pytest.raises(ConfigError, match=r"source shard #x.jpg of .* has the name of a shard of .*other"):
        open_build(str(src), out, cfg, models="tiny")
