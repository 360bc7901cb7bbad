"""Model stages of the builder (detect, aesthetic) and the person filter, on tiny real-class models."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines import rows as R
from pipelines.stages.aesthetic import AestheticConfig, AestheticScorer, clip_embed_dim, load_aesthetic_mlp
from pipelines.stages.detect import DetectConfig, PersonDetector
from pipelines.stages.person_filter import PersonFilter, PersonFilterConfig, union_area
from humanverse.testing.synthetic import make_sample


def _row(img: Image.Image, i: int = 0) -> dict:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    row = R.empty_row(R.inflight_schema(32))
    row.update(source_shard="s", source_index=i, id=f"{i:064x}", image=buf.getvalue(), width=img.width,
               height=img.height, orig_width=img.width, orig_height=img.height)
    return row


def _table(rows):
    return R.to_table(rows, R.inflight_schema(32))


def test_union_area_exact():
    assert union_area([]) == 0
    assert union_area([[0, 0, 10, 10]]) == 100
    assert union_area([[0, 0, 10, 10], [5, 5, 15, 15]]) == 175  # overlap counted once
    assert union_area([[0, 0, 10, 10], [2, 2, 4, 4]]) == 100  # nested
    assert union_area([[0, 0, 10, 10], [20, 0, 30, 10], [0, 20, 10, 30]]) == 300


def test_person_filter_reasons():
    stage = PersonFilter(PersonFilterConfig(), clip_dim=32)
    img = Image.new("RGB", (100, 100))
    rows = [_row(img, i) for i in range(5)]
    box = lambda x0, y0, x1, y1: {"bbox": [x0, y0, x1, y1], "score": 0.9, "keypoints": None}  # noqa: E731
    rows[0]["persons"] = []
    rows[1]["persons"] = [box(0, 0, 10, 10)] * 4
    rows[2]["persons"] = [box(0, 0, 10, 10)]  # 1 % of the image
    rows[3]["persons"] = [box(0, 0, 50, 50), box(25, 25, 75, 75)]  # union 0.4375
    rows[4] = R.reject(rows[4], "decode", "undecodable", "x")  # rejected upstream: passes through
    out = stage(_table(rows)).to_pylist()
    assert [r["reject_reason"] for r in out] == ["no_person", "too_many_persons", "person_too_small", None, "undecodable"]
    assert out[3]["person_area"] == pytest.approx(0.4375) and out[3]["num_persons"] == 2
    assert out[0]["image"] is None  # heavy columns dropped on reject


def test_detector_matches_the_processor_and_records_its_model(tiny_zoo):
    from transformers import YolosForObjectDetection, YolosImageProcessor

    s = make_sample(200, 240, num_persons=2, seed=1)
    rows = [_row(s.image, 0), _row(make_sample(320, 200, seed=2).image, 1)]
    det = PersonDetector(DetectConfig(score_threshold=0.0, device="cpu"), models="tiny", clip_dim=32)
    out = det(_table(rows)).to_pylist()
    # peer: the same checkpoint through transformers directly
    proc = YolosImageProcessor.from_pretrained(tiny_zoo / "yolos-tiny")
    model = YolosForObjectDetection.from_pretrained(tiny_zoo / "yolos-tiny").eval()
    img = Image.open(io.BytesIO(rows[0]["image"])).convert("RGB")
    with torch.inference_mode():
        o = model(**proc(images=[img], return_tensors="pt"))
    ref = proc.post_process_object_detection(o, threshold=0.0, target_sizes=[(240, 200)])[0]
    ref_boxes = []
    for sc, b, lab in sorted(zip(ref["scores"].tolist(), ref["boxes"].tolist(), ref["labels"].tolist()), key=lambda t: -t[0]):
        b = [min(max(b[0], 0), 200), min(max(b[1], 0), 240), min(max(b[2], 0), 200), min(max(b[3], 0), 240)]
        if lab == 1 and b[2] > b[0] and b[3] > b[1]:
            ref_boxes.append((sc, b))
    got = out[0]["persons"]
    assert len(got) == len(ref_boxes) > 0
    for p, (sc, b) in zip(got, ref_boxes):
        assert p["score"] == pytest.approx(sc, abs=1e-5) and np.allclose(p["bbox"], b, atol=1e-3)
    assert [p["score"] for p in got] == sorted([p["score"] for p in got], reverse=True)
    for p in got:
        x0, y0, x1, y1 = p["bbox"]
        assert 0 <= x0 < x1 <= 200 and 0 <= y0 < y1 <= 240
    assert {"stage": "detect", "model": "tiny:yolos-tiny"} in out[0]["models"]
    assert out[1]["num_persons"] == len(out[1]["persons"])
    # threshold and top_k
    none = PersonDetector(DetectConfig(score_threshold=1.0, device="cpu"), "tiny", 32)(_table(rows)).to_pylist()
    assert all(r["num_persons"] == 0 for r in none)
    top = PersonDetector(DetectConfig(score_threshold=0.0, top_k=2, device="cpu"), "tiny", 32)(_table(rows)).to_pylist()
    assert all(r["num_persons"] <= 2 for r in top)


def test_model_stage_failure_becomes_model_error(tiny_zoo):
    det = PersonDetector(DetectConfig(device="cpu"), models="tiny", clip_dim=32)
    good = _row(make_sample(64, 64).image, 0)
    broken = dict(good, source_index=1, image=b"not an image at all")
    out = det(_table([good, broken])).to_pylist()
    # the batch failed twice as a whole: every alive row of it is rejected with the exception text
    assert [r["reject_reason"] for r in out] == ["model_error", "model_error"]
    assert "UnidentifiedImageError" in out[1]["reject_detail"]
    assert out[0]["reject_stage"] == "detect"


def test_aesthetic_scores_match_an_independent_computation(tiny_zoo):
    import open_clip

    from humanverse.zoo import resolve

    rows = [_row(make_sample(200, 260, seed=i).image, i) for i in range(3)]
    cfg = AestheticConfig(threshold=-1e9, device="cpu")
    assert clip_embed_dim(cfg, "tiny") == 32
    out = AestheticScorer(cfg, models="tiny", clip_dim=32)(_table(rows)).to_pylist()
    clip, _, pre = open_clip.create_model_and_transforms(f"local-dir:{tiny_zoo / 'clip-vit-l14'}")
    mlp = load_aesthetic_mlp(resolve("aesthetic-mlp", "tiny"))
    for r in out:
        img = Image.open(io.BytesIO(r["image"])).convert("RGB")
        with torch.inference_mode():
            e = clip.eval().encode_image(pre(img)[None]).float()
            e = e / e.norm(dim=-1, keepdim=True)
            ref = float(mlp(e))
        assert r["aesthetic"] == pytest.approx(ref, abs=1e-4)
        assert np.allclose(r["clip_embedding"], e[0].numpy(), atol=2e-3)  # float16 storage
        assert r["reject_reason"] is None
    median = float(np.median([r["aesthetic"] for r in out]))
    out2 = AestheticScorer(AestheticConfig(threshold=median, device="cpu"), "tiny", 32)(_table(rows)).to_pylist()
    assert sum(r["reject_reason"] == "low_aesthetic" for r in out2) == 1
    assert all(r["clip_embedding"] is None for r in out2 if r["reject_reason"])
