"""The two-stage generator (``humanverse sample`` / ``HyperHumanPipeline``) with the tiny zoo:
pose input validation, every output written, trained weights (with EMA) loaded from run folders,
batching and seeds, and the test-set mode that ``humanverse eval`` reads."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import humanverse
from humanverse.cli import main as cli_main
from humanverse.testing.synthetic import synthetic_table
from model.sampling.hyperhuman import HyperHumanPipeline, SampleConfig, check_pose, load_pose_json, pose_from_row

FAST = ["--set", "stage1_resolution=64", "--set", "stage2_resolution=64", "--set", "stage1_steps=3",
        "--set", "stage2_steps=3"]
FAST_CFG = SampleConfig(stage1_resolution=64, stage2_resolution=64, stage1_steps=3, stage2_steps=3, batch_size=2)


def _pose(seed: int = 0, w: int = 96, h: int = 128) -> np.ndarray:
    row = synthetic_table(1, shard="p", seed=seed, width=w, height=h).to_pylist()[0]
    return np.asarray(row["persons"][0]["keypoints"], np.float32).reshape(133, 3)


@pytest.fixture()
def pose_file(tmp_path) -> Path:
    p = tmp_path / "pose.json"
    p.write_text(json.dumps({"width": 96, "height": 128, "persons": [{"keypoints": _pose().tolist()}]}))
    return p


def test_pose_validation_errors(tmp_path):
    good = _pose()
    assert check_pose([good], 96, 128).keypoints.shape == (1, 133, 3)
    assert check_pose([good.reshape(-1).tolist()], 96, 128).keypoints.shape == (1, 133, 3)  # flat 399 accepted
    with pytest.raises(ValueError, match="person 0 has 396 values; expected 133 keypoints"):
        check_pose([good[:132]], 96, 128)
    bad = good.copy()
    bad[5, 0] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        check_pose([bad], 96, 128)
    with pytest.raises(ValueError, match="the pose is empty"):
        check_pose([np.zeros((133, 3))], 96, 128)
    with pytest.raises(ValueError, match="no person"):
        check_pose([], 96, 128)
    with pytest.raises(ValueError, match="width and height must be positive"):
        check_pose([good], 0, 128)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        load_pose_json(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="does not exist"):
        load_pose_json(tmp_path / "missing.json")


def test_fitting_keeps_aspect_and_centres():
    kp = np.zeros((1, 133, 3), np.float32)
    kp[0, 0] = (0, 0, 1)
    kp[0, 1] = (100, 200, 1)  # the frame's bottom-right corner
    p = check_pose(kp, 100, 200)
    f = p.fitted(64)
    assert f[0, 0, :2].tolist() == [16.0, 0.0] and f[0, 1, :2].tolist() == [48.0, 64.0]


def test_sample_cli_writes_everything(tiny_zoo, pose_file, tmp_path):
    out = tmp_path / "sample"
    assert cli_main(["sample", "--models", "tiny", "--prompt", "a person waving", "--pose", str(pose_file),
                     "--out", str(out), *FAST]) == 0
    for name in ("pose", "stage1_rgb", "depth", "normal", "final", "sheet"):
        im = Image.open(out / f"{name}.png")
        assert im.size[0] >= 64, name
    assert Image.open(out / "final.png").size == (64, 64) and Image.open(out / "stage1_rgb.png").size == (64, 64)
    settings = json.loads((out / "settings.json").read_text())
    assert settings["tiny_models"] is True and settings["seed"] == 0 and settings["prompt"] == "a person waving"
    assert settings["config"]["stage1_steps"] == 3 and settings["sources"]["stage2"] == "fresh (untrained)"
    pose = np.asarray(Image.open(out / "pose.png"))
    assert pose.any() and pose.shape == (64, 64, 3)  # the skeleton was drawn
    # bad input: one sentence, exit code 2, nothing written
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"persons": [[0.0] * 398]}))
    assert cli_main(["sample", "--models", "tiny", "--prompt", "x", "--pose", str(bad), "--out",
                     str(tmp_path / "nothing"), *FAST]) == 2
    assert not (tmp_path / "nothing").exists()


def test_pipeline_batches_seeds_and_trained_weights(tiny_zoo, tmp_path):
    from safetensors.torch import save_file

    from model.models.lsdm import LatentStructuralUNet
    from model.models.refiner import StructureGuidedControlNet
    from model.models.sdxl import load_sdxl_parts

    # a stage-1 checkpoint (tiny LSDM + latent stats) and a stage-2 run with an EMA different from the weights
    ck1 = tmp_path / "run1" / "checkpoints" / "step-00000005"
    LatentStructuralUNet.from_pretrained(tiny_zoo / "lsdm").save_pretrained(ck1 / "lsdm")
    stats = {"mean": {m: [0.1] * 4 for m in ("rgb", "depth", "normal")},
             "std": {m: [1.0] * 4 for m in ("rgb", "depth", "normal")}}
    (ck1 / "latent_stats.json").write_text(json.dumps(stats))
    (ck1 / "COMPLETE").write_text("")
    ck2 = tmp_path / "ck2"
    ref = StructureGuidedControlNet.from_unet(load_sdxl_parts("tiny", "cpu").unet)
    ref.save_pretrained(ck2 / "refiner")
    params = [p for p in ref.parameters() if p.requires_grad]
    save_file({str(i): p.detach() + 0.01 for i, p in enumerate(params)}, ck2 / "ema.safetensors")

    pipe = HyperHumanPipeline.from_pretrained("tiny", stage1=str(tmp_path / "run1"), stage2=str(ck2))
    assert pipe.sources["stage1"].endswith("step-00000005") and pipe.stats.mean["depth"] == [0.1] * 4
    loaded = [p for p in pipe.refiner.parameters() if p.requires_grad]
    assert torch.allclose(loaded[0], params[0].detach() + 0.01)  # sampling uses the EMA weights

    prompts = ["one", "two", "three"]
    poses = [check_pose([_pose(s)], 96, 128) for s in range(3)]
    a = pipe(prompts, poses, FAST_CFG)
    assert len(a) == 3 and [r.seed for r in a] == [0, 0, 2]  # batch_size 2: seeds per batch
    assert all(r.final.size == (64, 64) for r in a)
    b = pipe(prompts, poses, FAST_CFG)
    assert all(np.array_equal(np.asarray(x.final), np.asarray(y.final)) for x, y in zip(a, b))  # deterministic
    c = pipe(prompts[:1], poses[:1], SampleConfig(**{**FAST_CFG.__dict__, "refine": True, "seed": 7}))
    assert not np.array_equal(np.asarray(c[0].stage1_rgb), np.asarray(a[0].stage1_rgb))
    with pytest.raises(ValueError, match="one prompt per pose"):
        pipe(prompts[:2], poses, FAST_CFG)
    assert pipe.sources["stage2_weights"] == "EMA" and pipe.sources["stage1_weights"].startswith("raw")

    # a run trained on one pose-map style refuses to sample with the other
    (tmp_path / "run1" / "conditioning.json").write_text(json.dumps({"stage": "stage1", "pose_style": "wholebody"}))
    pipe = HyperHumanPipeline.from_pretrained("tiny", stage1=str(tmp_path / "run1"), refine=False)
    no_refine = SampleConfig(**{**FAST_CFG.__dict__, "refine": False})
    with pytest.raises(ValueError, match="trained on 'wholebody' pose maps but sampling would draw 'humansd'"):
        pipe(prompts[:1], poses[:1], no_refine)
    assert len(pipe(prompts[:1], poses[:1], SampleConfig(**{**no_refine.__dict__, "pose_style": "wholebody"}))) == 1


def test_pose_from_row_and_testset_mode(tiny_zoo, tmp_path):
    root = tmp_path / "ds"
    sink = humanverse.ShardSink.open(root)
    sink.write(synthetic_table(3, shard="s0", seed=4, width=96, height=128), "data", "s0")
    sink.close()
    pose, caption = pose_from_row(str(root))
    assert pose.keypoints.shape[1:] == (133, 3) and caption
    with pytest.raises(ValueError, match="'nope' is not a row id"):
        pose_from_row(f"{root}#nope")
    with pytest.raises(ValueError, match="no row with id 0000aaaa"):
        pose_from_row(f"{root}#0000aaaa")
    out = tmp_path / "from-row"
    assert cli_main(["sample", "--models", "tiny", "--pose-from", str(root), "--no-refine", "--out", str(out),
                     *FAST]) == 0
    assert (out / "stage1_rgb.png").is_file() and not (out / "final.png").exists()
    assert json.loads((out / "settings.json").read_text())["prompt"] == caption  # the row's caption

    ts = tmp_path / "testset.jsonl"
    rows = [{"id": f"img{i}", "caption": f"person {i}", "image": None, "width": 512, "height": 512,
             "persons": [{"keypoints": _pose(i).reshape(-1).tolist(), "bbox": [0, 0, 10, 10], "area": 100.0}]}
            for i in range(3)]
    ts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    gen = tmp_path / "gen"
    assert cli_main(["sample", "--models", "tiny", "--testset", str(ts), "--out", str(gen), *FAST,
                     "--set", "batch_size=2"]) == 0
    # the stage-1 RGB (what Table 1 scores) and the refined image, each in its own folder
    for folder in ("stage1", "refined"):
        assert sorted(p.name for p in (gen / folder).glob("*.png")) == ["img0.png", "img1.png", "img2.png"]
    settings = json.loads((gen / "settings.json").read_text())
    assert settings["count"] == 3 and set(settings["outputs"]) == {"stage1", "refined"}
    assert not list(gen.glob("*.png"))


def test_testset_from_humanverse_rows(tmp_path):
    from model.evaluation.evaluate import load_testset
    from model.evaluation.hv_testset import HVTestsetConfig, build_hv_testset

    root = tmp_path / "ds"
    sink = humanverse.ShardSink.open(root)
    table = synthetic_table(4, shard="s0", seed=6, width=96, height=128)
    sink.write(table, "data", "s0")
    sink.close()
    counts = build_hv_testset(HVTestsetConfig(str(root), str(tmp_path / "ts"), keypoint_threshold=0.0))
    assert counts == {"rows": 4, "written": 4, "skipped_no_person": 0}
    rows = load_testset(tmp_path / "ts" / "testset.jsonl")
    assert len(rows) == 4 and all(Image.open(tmp_path / "ts" / "real" / f"{r.id}.png").size == (512, 512) for r in rows)
    # geometry: 96x128 -> 512x682 (torchvision's truncation), crop top = round(170 / 2) = 85
    src = {r["id"]: r for r in table.to_pylist()}
    line = json.loads((tmp_path / "ts" / "testset.jsonl").read_text().splitlines()[0])
    kp_in = np.asarray(src[line["id"]]["persons"][0]["keypoints"], np.float64).reshape(133, 3)
    kp_out = np.asarray(line["persons"][0]["keypoints"]).reshape(133, 3)
    s = 512 / 96
    inside = kp_out[:, 2] > 0
    assert inside.any()
    np.testing.assert_allclose(kp_out[inside, 0], kp_in[inside, 0] * s, atol=2e-3)
    np.testing.assert_allclose(kp_out[inside, 1], kp_in[inside, 1] * (682 / 128) - 85, atol=2e-3)
    with pytest.raises(ValueError, match="no rows matching"):
        build_hv_testset(HVTestsetConfig(str(root), str(tmp_path / "ts2"), where="num_persons > 50"))
