"""The paper presets: the builder's (outpaint every image, both depth maps) and the trainer's
(HumanSD pose maps, the trained CFG, the Table-2 layout) load and say what the paper did."""

from __future__ import annotations

from pathlib import Path

import yaml

from humanverse.config import from_dict

REPO = Path(__file__).resolve().parents[1]


def test_builder_paper_preset():
    from pipelines.config import load_config

    cfg = load_config(REPO / "pipelines" / "presets" / "paper.yaml")
    assert cfg.outpaint.policy == "always"
    assert cfg.depth.backend == "midas" and cfg.depth.also_omnidata is True


def test_trainer_paper_preset_equals_the_defaults():
    from model.evaluation.evaluate import EvalConfig
    from model.sampling.hyperhuman import SampleConfig
    from model.training.loop import (
        Stage1TrainConfig,
        Stage2TrainConfig,
        load_train_config,
    )

    path = REPO / "model" / "presets" / "paper.yaml"
    s1 = load_train_config(str(path), stage="stage1")
    assert s1 == Stage1TrainConfig(), "the paper preset and Stage1TrainConfig's defaults disagree"
    assert s1.data.pose_style == "humansd" and s1.lsdm.modalities == ("rgb", "depth", "normal")
    assert load_train_config(str(path), stage="stage2") == Stage2TrainConfig()
    raw = yaml.safe_load(path.read_text())
    assert from_dict(SampleConfig, raw["sample"]) == SampleConfig()
    assert from_dict(EvalConfig, raw["eval"]) == EvalConfig()
