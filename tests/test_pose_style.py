"""The paper's pose map (HyperHuman App. A.13: drawn "exactly the same" as HumanSD) against
HumanSD's layout: 17 COCO joints, its 16 limbs in order, seaborn's hls palette, 10 px lines with
radius-5 end circles, compared pixel by pixel with HumanSD's own OpenCV drawing calls."""

from __future__ import annotations

import colorsys

import numpy as np
import pytest

from humanverse.skeleton import (
    HUMANSD_COLORS,
    HUMANSD_LIMBS,
    HUMANSD_LINE_WIDTH,
    POSE_STYLES,
    render_humansd,
    render_pose,
    render_skeleton,
)
from humanverse.testing.synthetic import synthetic_table


def test_humansd_layout_as_data():
    assert POSE_STYLES == ("humansd", "wholebody")
    assert len(HUMANSD_LIMBS) == 16 and {j for limb in HUMANSD_LIMBS for j in limb} == set(range(17))
    # HumanSD's pose_skeleton: [idx, a, b] rows in this order
    assert HUMANSD_LIMBS[:4] == ((0, 1), (0, 2), (1, 3), (2, 4)) and HUMANSD_LIMBS[10] == (5, 11)
    assert (5, 6) not in HUMANSD_LIMBS and (11, 12) not in HUMANSD_LIMBS
    # seaborn.color_palette("hls", 16): hls_palette(h=.01, l=.6, s=.65), then int(255 * c)
    hues = (np.linspace(0, 1, 17)[:-1] + 0.01) % 1
    want = [tuple(int(255 * c) for c in colorsys.hls_to_rgb(h, 0.6, 0.65)) for h in hues]
    assert list(HUMANSD_COLORS) == want
    assert HUMANSD_LINE_WIDTH == 10


def _humansd_cv2(people: np.ndarray, size: int, threshold: float) -> np.ndarray:
    """HumanSD's plot_kpts, restated with the same OpenCV calls (line, then the two end circles)."""
    cv2 = pytest.importorskip("cv2")
    img = np.zeros((size, size, 3), np.uint8)
    for kp in people:
        for (a, b), color in zip(HUMANSD_LIMBS, HUMANSD_COLORS):
            if kp[a, 2] >= threshold and kp[b, 2] >= threshold:
                pa, pb = (int(kp[a, 0]), int(kp[a, 1])), (int(kp[b, 0]), int(kp[b, 1]))
                cv2.line(img, pa, pb, color, HUMANSD_LINE_WIDTH)
                cv2.circle(img, pa, HUMANSD_LINE_WIDTH // 2, color, -1)
                cv2.circle(img, pb, HUMANSD_LINE_WIDTH // 2, color, -1)
    return img


def _people(seed: int, size: int = 512) -> np.ndarray:
    row = synthetic_table(1, shard="p", seed=seed, width=size, height=size).to_pylist()[0]
    return np.stack([np.asarray(p["keypoints"], np.float32).reshape(133, 3) for p in row["persons"]])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_humansd_drawing_matches_humansds_opencv_calls(seed):
    people = _people(seed)
    people[..., 2] = np.where(np.arange(133) % 7 == 3, 0.0, 1.0)  # some joints below the threshold
    ours = np.asarray(render_humansd(people, 512, 512, threshold=0.3))
    ref = _humansd_cv2(people[:, :17], 512, 0.3)
    a, b = ours.any(-1), ref.any(-1)
    assert b.sum() > 500  # something was drawn
    iou = (a & b).sum() / (a | b).sum()
    assert iou > 0.9, iou
    both = a & b
    same_colour = (ours[both] == ref[both]).all(-1).mean()
    assert same_colour > 0.95, same_colour
    # only HumanSD's colours appear (no anti-aliasing, no joint dots of other colours)
    assert set(map(tuple, ours[a].tolist())) <= set(HUMANSD_COLORS)


def test_humansd_ignores_hands_face_feet_and_low_scores():
    people = _people(0)
    body_only = people.copy()
    body_only[:, 17:, 2] = 0.0
    assert np.array_equal(np.asarray(render_humansd(people, 512, 512)), np.asarray(render_humansd(body_only, 512, 512)))
    low = people.copy()
    low[..., 2] = 0.1
    assert np.asarray(render_humansd(low, 512, 512, threshold=0.3)).sum() == 0
    # 17-joint input works too, and the width scales with the image (HumanSD: 10 px at 512)
    small = np.asarray(render_humansd(people[:, :17] * np.array([0.125, 0.125, 1.0], np.float32), 64, 64))
    assert small.any()


def test_render_pose_dispatches_and_refuses_unknown_styles():
    people = _people(1)
    assert np.array_equal(np.asarray(render_pose(people, 512, 512, 0.3, "wholebody")),
                          np.asarray(render_skeleton(people, 512, 512, 0.3)))
    assert np.array_equal(np.asarray(render_pose(people, 512, 512, 0.3, "humansd")),
                          np.asarray(render_humansd(people, 512, 512, 0.3)))
    with pytest.raises(ValueError, match="pose style must be one of humansd, wholebody"):
        render_pose(people, 64, 64, 0.3, "openpose")
