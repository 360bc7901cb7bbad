"""Outpainting stage (HyperHuman §4) on the tiny SD-2 inpainting pipeline: 2 steps at 64 px."""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import pytest
from PIL import Image

from humanverse.config import ConfigError
from humanverse.testing.synthetic import make_sample
from pipelines import rows as R
from pipelines.geometry import Canvas
from pipelines.stages.outpaint import (OutpaintConfig, Outpainter, outpaint_inputs, row_seed, working_shape)

FAST = dict(steps=2, working_size=64, device="cpu", dtype="float32")


def _row(img: Image.Image, i: int, boxes, alt="a person standing on a beach") -> dict:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    row = R.empty_row(R.inflight_schema(None))
    row.update(source_shard="s", source_index=i, id=f"{i:064x}", image=buf.getvalue(), width=img.width,
               height=img.height, orig_width=img.width, orig_height=img.height, alt_text=alt, num_persons=len(boxes),
               persons=[{"bbox": list(map(float, b)), "score": 0.9, "keypoints": None} for b in boxes])
    return row


def _run(stage, rows):
    return stage(R.to_table(rows, stage.schema)).to_pylist()


def _decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


class PipeRecorder:
    """Forwards to the real pipeline and keeps the keyword arguments of every call."""

    def __init__(self, pipe):
        self.pipe, self.calls = pipe, []

    def __call__(self, **kwargs):
        self.calls.append(kwargs)
        return self.pipe(**kwargs)


@pytest.fixture(scope="module")
def image():
    return make_sample(200, 240, num_persons=1, seed=3).image


@pytest.fixture(scope="module")
def truncated(tiny_zoo):
    return Outpainter(OutpaintConfig(policy="truncated", **FAST), models="tiny")


def test_inputs_mask_is_white_on_the_padding_and_aligned_to_latents(image):
    canvas = Canvas(200, 240, 312, 304, 56, 32)
    inp = outpaint_inputs(image, canvas, 64)
    assert inp.working_size == working_shape(312, 304, 64) == (64, 64)
    c = np.asarray(inp.canvas_image)
    assert c.shape == (304, 312, 3)
    assert np.array_equal(c[32:272, 56:256], np.asarray(image))  # original at the offset
    assert np.array_equal(c[:32, 56:256], np.broadcast_to(np.asarray(image)[:1], (32, 200, 3)))  # edge replication
    m = np.asarray(inp.mask)
    assert inp.mask.mode == "L" and m.shape == (64, 64) and set(np.unique(m)) == {0, 255}
    # the frame at working size is x in [11.5, 52.5), y in [6.7, 57.3): kept = shrunk to the 8-px grid
    keep = np.zeros((64, 64), bool)
    keep[8:56, 16:48] = True
    assert np.array_equal(m == 0, keep)
    assert (m[:6, :] == 255).all() and (m[:, :11] == 255).all()  # every padding pixel is repainted


def test_working_shape_rounds_to_eight():
    assert working_shape(1000, 500, 512) == (512, 256)
    assert working_shape(300, 1000, 512) == (152, 512)
    assert working_shape(10, 1000, 64) == (8, 64)


def test_truncated_outpaints_touching_rows_and_pastes_the_original_back(truncated, image):
    rows = [_row(image, 0, [[40, 60, 160, 240]]),  # touches the bottom
            _row(image, 1, [[40, 60, 160, 200]]),  # fully inside
            R.reject(_row(image, 2, [[0, 0, 10, 10]]), "decode", "undecodable", "x")]
    truncated.pipe = recorder = PipeRecorder(truncated.pipe)
    try:
        out = _run(truncated, rows)
    finally:
        truncated.pipe = recorder.pipe
    a, b, rejected = out
    assert a["outpaint"] == {"applied": True, "canvas_width": 200, "canvas_height": 304, "offset_x": 0, "offset_y": 0}
    assert a["models"] == [{"stage": "outpaint", "model": "tiny:sd2-inpainting"}]
    canvas = _decode(a["canvas"])
    stored = _decode(a["image"])
    assert canvas.shape == (304, 200, 3)
    assert np.array_equal(canvas[:240], stored)  # original pixels exactly
    init = np.broadcast_to(stored[-1:], (64, 200, 3))
    assert np.abs(canvas[240:].astype(int) - init).mean() > 1.0  # the padding was repainted
    assert b["outpaint"] == Canvas.identity(200, 240).record() and b["canvas"] is None and b["models"] is None
    assert rejected["reject_reason"] == "undecodable" and rejected["outpaint"] is None and rejected["canvas"] is None

    # what went into the pipeline: one row, 64 px working size, white = padding
    (call,) = recorder.calls
    assert call["prompt"] == ["a person standing on a beach"] and call["negative_prompt"] == [""]
    assert (call["width"], call["height"]) == working_shape(200, 304, 64) == (40, 64)
    assert call["num_inference_steps"] == 2 and call["strength"] == 1.0 and len(call["generator"]) == 1
    (mask,) = call["mask_image"]
    m = np.asarray(mask)
    assert m.shape == (64, 40)
    assert (m[:48] == 0).all() and (m[48:] == 255).all()  # frame ends at y = 240 * 64/304 = 50.5 -> grid 48
    assert call["image"][0].size == (40, 64)


def test_same_row_same_canvas_and_seed_dependence(truncated, image):
    box = [[0, 40, 120, 200]]  # touches the left border
    first = _run(truncated, [_row(image, 7, box)])[0]["canvas"]
    again = _run(truncated, [_row(image, 7, box)])[0]["canvas"]
    assert first == again
    other_row = _run(truncated, [_row(image, 8, box)])[0]["canvas"]  # another id: other noise
    config = truncated.config
    try:
        truncated.config = dataclasses.replace(config, seed=1)
        other_seed = _run(truncated, [_row(image, 7, box)])[0]["canvas"]
    finally:
        truncated.config = config
    assert other_row != first and other_seed != first
    assert row_seed(0, "a") == row_seed(0, "a") != row_seed(1, "a") != row_seed(0, "b")
    # the original is exact in all of them
    stored = _decode(_row(image, 7, box)["image"])
    for c in (first, other_row, other_seed):
        assert np.array_equal(_decode(c)[:, 56:256], stored)


def test_always_pads_every_side_and_batches_equal_shapes(tiny_zoo, image):
    stage = Outpainter(OutpaintConfig(policy="always", **FAST), models="tiny")
    stage.pipe = recorder = PipeRecorder(stage.pipe)
    other = make_sample(120, 100, seed=4).image
    out = _run(stage, [_row(image, 0, [[40, 60, 160, 200]]), _row(image, 1, [[50, 50, 150, 150]]),
                       _row(other, 2, [[30, 20, 90, 80]])])
    for r, (w, h) in zip(out, [(200, 240), (200, 240), (120, 100)]):
        rec = r["outpaint"]
        px, py = -(-w // 32) * 8, -(-h // 32) * 8  # 0.25 of the side rounded up to 8
        assert rec == {"applied": True, "canvas_width": w + 2 * px, "canvas_height": h + 2 * py,
                       "offset_x": px, "offset_y": py}
        canvas = _decode(r["canvas"])
        assert canvas.shape == (h + 2 * py, w + 2 * px, 3)
        assert np.array_equal(canvas[py:py + h, px:px + w], _decode(r["image"]))
    # the two 200x240 rows share one call; the 120x100 one has its own working shape
    assert sorted(len(c["prompt"]) for c in recorder.calls) == [1, 2]


def test_never_loads_no_model_and_records_identity(image):
    stage = Outpainter(OutpaintConfig(policy="never"), models="paper")  # would need the hub if it loaded
    assert stage.pipe is None
    (r,) = _run(stage, [_row(image, 0, [[0, 0, 200, 240]])])
    assert r["outpaint"] == Canvas.identity(200, 240).record() and r["canvas"] is None and r["models"] is None


def test_prompt_switch_and_config_errors(truncated, image):
    config = truncated.config
    truncated.pipe = recorder = PipeRecorder(truncated.pipe)
    try:
        truncated.config = dataclasses.replace(config, prompt_from_alt_text=False, negative_prompt="blurry")
        _run(truncated, [_row(image, 0, [[40, 0, 160, 200]])])
    finally:
        truncated.config, truncated.pipe = config, recorder.pipe
    assert recorder.calls[0]["prompt"] == [""] and recorder.calls[0]["negative_prompt"] == ["blurry"]
    with pytest.raises(ConfigError, match="outpaint.policy"):
        OutpaintConfig(policy="sometimes")
    with pytest.raises(ConfigError, match="working_size must be a multiple of 8"):
        OutpaintConfig(working_size=500)
    with pytest.raises(ConfigError, match="pad_fraction"):
        OutpaintConfig(pad_fraction=0)
