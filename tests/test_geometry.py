"""Stored <-> canvas coordinates for every outpainting geometry (pipelines.geometry, HyperHuman §4)."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.geometry import Canvas, plan_canvas

W, H = 200, 120
PAD = 0.25  # -> 50 px horizontally (48 -> 56 rounded up to 8), 30 px vertically (-> 32)
PX, PY = 56, 32

# person boxes (stored px) that touch exactly the named borders
BOXES = {
    "none": [[60, 30, 140, 90]],
    "left": [[0, 30, 80, 90]],
    "right": [[120, 30, 200, 90]],
    "top": [[60, 0, 140, 90]],
    "bottom": [[60, 30, 140, 120]],
    "top-left": [[0, 0, 80, 90]],
    "top-right": [[120, 0, 200, 90]],
    "bottom-left": [[0, 30, 80, 120]],
    "bottom-right": [[120, 30, 200, 120]],
}


def _expected(sides: set[str]) -> tuple[int, int, int, int]:
    left, right = PX * ("left" in sides), PX * ("right" in sides)
    top, bottom = PY * ("top" in sides), PY * ("bottom" in sides)
    return W + left + right, H + top + bottom, left, top


def _plan(boxes, policy="truncated", **kw):
    return plan_canvas(W, H, boxes, policy=policy, pad_fraction=PAD, border_margin=0.02, **kw)


GEOMETRIES = [(name, "truncated", set() if name == "none" else set(name.split("-"))) for name in BOXES]
GEOMETRIES += [("none", "always", {"left", "right", "top", "bottom"}), ("left", "never", set())]


@pytest.mark.parametrize("name,policy,sides", GEOMETRIES, ids=[f"{p}-{n}" for n, p, _ in GEOMETRIES])
def test_round_trip_for_every_geometry(name, policy, sides):
    c = _plan(BOXES[name], policy)
    cw, ch, ox, oy = _expected(sides)
    assert (c.canvas_width, c.canvas_height, c.offset_x, c.offset_y) == (cw, ch, ox, oy)
    assert c.applied == bool(sides)
    assert c.record() == {"applied": bool(sides), "canvas_width": cw, "canvas_height": ch,
                          "offset_x": ox, "offset_y": oy}
    assert Canvas.from_record(W, H, c.record()) == c
    # padding per side is a multiple of 8
    assert ox % 8 == 0 and oy % 8 == 0 and (cw - W - ox) % 8 == 0 and (ch - H - oy) % 8 == 0

    # boxes: stored -> canvas is + offset, and back exactly
    boxes = np.array([[0, 0, W, H], [10.25, 20.5, 30.75, 40.125]])
    cb = c.boxes_to_canvas(boxes)
    assert np.array_equal(cb, boxes + [ox, oy, ox, oy])
    assert np.array_equal(c.boxes_to_stored(cb), boxes)

    # keypoints: pixel centres and frame corners land where expected and come back exactly
    kp = np.array([[0.5, 0.5, 0.9], [W - 0.5, H - 0.5, 0.8], [0.0, 0.0, 0.7], [123.25, 45.75, 0.6]], np.float32)
    ckp = c.keypoints_to_canvas(kp)
    assert np.array_equal(ckp[:, :2], kp[:, :2] + [ox, oy])
    back = c.keypoints_to_stored(ckp)
    assert np.array_equal(back, kp)  # all inside: exact, scores kept

    # a canvas-size map whose values encode their own coordinates crops to the stored frame exactly
    yy, xx = np.mgrid[0:ch, 0:cw]
    m = np.stack([xx - ox, yy - oy], axis=-1)
    crop = c.crop_map(m)
    assert crop.shape == (H, W, 2)
    sy, sx = np.mgrid[0:H, 0:W]
    assert np.array_equal(crop, np.stack([sx, sy], axis=-1))


def test_keypoints_outside_the_frame_get_score_zero():
    c = _plan(BOXES["top-left"], "always")
    ox, oy = c.offset_x, c.offset_y
    kp = np.array([
        [ox - 0.01, oy + 10, 0.9],  # left of the frame
        [ox + 10, oy - 3, 0.9],  # above
        [ox + W, oy + 10, 0.9],  # x == width is outside ([0, width))
        [ox + 10, oy + H + 5, 0.9],  # below
        [ox, oy, 0.9],  # the frame's top-left corner is inside
        [ox + W - 0.01, oy + H - 0.01, 0.9],  # just inside
    ], np.float32)
    out = c.keypoints_to_stored(kp)
    assert out[:, 2].tolist() == pytest.approx([0, 0, 0, 0, 0.9, 0.9])
    assert np.array_equal(out[:, :2], kp[:, :2] - [ox, oy])  # coordinates still mapped
    # (P, K, 3) batches work the same
    assert np.array_equal(c.keypoints_to_stored(np.stack([kp, kp]))[1], out)


def test_near_border_counts_within_the_margin():
    inside = [[2, 30, 80, 90]]  # 2 px from the left: 1 % of the width < 2 % margin
    assert _plan(inside).offset_x == PX
    far = [[6, 30, 80, 90]]  # 3 %
    assert not _plan(far).applied
    # any box touching decides; several boxes pad the union of their sides
    c = _plan([[0, 30, 50, 90], [150, 30, 200, 120]])
    assert (c.canvas_width, c.canvas_height, c.offset_x, c.offset_y) == _expected({"left", "right", "bottom"})


def test_identity_when_nothing_applies():
    for c in (_plan(BOXES["left"], "never"), _plan(BOXES["none"]), _plan([], "truncated")):
        assert c == Canvas.identity(W, H) and not c.applied
        assert c.crop_map(np.zeros((H, W))).shape == (H, W)
        kp = np.array([[5.0, 5.0, 1.0], [W + 1.0, 5.0, 1.0]])
        assert c.keypoints_to_stored(kp)[:, 2].tolist() == [1.0, 0.0]
    assert Canvas.from_record(W, H, None) == Canvas.identity(W, H)


def test_max_canvas_side_caps_the_padding():
    free = _plan(BOXES["top-left"], "always")
    assert (free.canvas_width, free.canvas_height) == (W + 2 * PX, H + 2 * PY)
    capped = _plan(BOXES["top-left"], "always", max_canvas_side=256)
    assert capped.canvas_width <= 256 and capped.canvas_height <= 256
    assert capped.offset_x % 8 == 0 and (capped.canvas_width - W - capped.offset_x) % 8 == 0
    assert 0 < capped.offset_x < PX and capped.offset_y == PY  # only the long side was squeezed
    # a cap at the image's long side leaves no room there; the short side still pads up to the cap
    at_w = _plan(BOXES["top-left"], "always", max_canvas_side=W)
    assert (at_w.canvas_width, at_w.canvas_height, at_w.offset_x, at_w.offset_y) == (W, H + 2 * PY, 0, PY)
    # a cap below the image size (maps are capped elsewhere) removes the padding altogether
    assert not _plan(BOXES["top-left"], "always", max_canvas_side=H).applied


def test_bad_policy_and_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="outpaint policy must be"):
        _plan(BOXES["left"], "sometimes")
    with pytest.raises(ValueError, match="does not fit"):
        Canvas(W, H, W + 8, H, 16, 0)
    with pytest.raises(ValueError, match="offset must be >= 0"):
        Canvas(W, H, W + 8, H, -8, 0)
    c = _plan(BOXES["left"])
    with pytest.raises(ValueError, match="expected the canvas size"):
        c.crop_map(np.zeros((H, W)))
