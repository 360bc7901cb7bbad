"""Planning a build without Ray (``pipelines.plan``, ``pipelines.steps``): the stage steps a config
makes, the resume check, and which shards and rows are left to do after a partial run."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

from humanverse.config import ConfigError
from humanverse.shards import read_manifest
from pipelines.config import PRESETS, STAGES, load_config
from pipelines.plan import check_resumable, config_diff, config_fingerprint, open_build, read_item
from pipelines.readers import read_shard
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
    ``b`` out, skips those two rows of ``a``, and the reader yields only the rest."""
    src = tmp_path / "in"
    for d, n in (("a", 5), ("b", 3)):
        (src / d).mkdir(parents=True)
        for i in range(n):
            (src / d / f"{i}.jpg").write_bytes(image_bytes(i) if i else b"not an image")
    cfg = load_config(PRESETS / "demo.yaml", {"stages": ["decode", "resolution"]})  # no model to resolve
    out = str(tmp_path / "out")

    sink, plan = open_build(str(src), out, cfg, models="tiny")
    assert [s.name for s in plan.work.todo] == ["a#00000", "b#00000"] and not plan.work.done
    assert plan.clip_dim is None and read_manifest(out)["source_shards"] == {"a#00000": 5, "b#00000": 3}
    decode = DecodeStage(cfg.decode)
    a, b = plan.work.todo
    for shard, rows in ((a, 2), (b, 3)):  # as the write step commits them
        table = from_source_rows([r for batch in read_shard(shard) for r in batch][:rows])
        write_inflight(sink.writer(), decode(table), f"{shard.name}-0", None)
    sink.close()

    sink, plan = open_build(str(src), out, cfg, models="tiny")
    sink.close()
    assert plan.work.done == {"b#00000"} and [s.name for s in plan.work.todo] == ["a#00000"]
    assert plan.work.skip == {"a#00000": (0, 1)}
    (item,) = plan.work.items()
    shard, skip = read_item(item)
    assert shard == a and skip == {0, 1}
    assert [r["source_index"] for batch in read_shard(shard, skip=skip) for r in batch] == [2, 3, 4]

    with pytest.raises(ConfigError, match="different config"):
        open_build(str(src), out, load_config(PRESETS / "demo.yaml", {"stages": ["decode"]}), models="tiny")
