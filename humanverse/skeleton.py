"""COCO-WholeBody skeleton: keypoint names, left/right flip pairs, OKS sigmas, and the pose image.

This module is the one place that defines the 133-keypoint layout (mmpose
``configs/_base_/datasets/coco_wholebody.py``; Jin et al., "Whole-Body Human Pose Estimation in
the Wild", ECCV 2020): 0-16 COCO body, 17-22 feet, 23-90 face (68), 91-111 left hand, 112-132
right hand.

The pose image the trainer conditions on comes in two styles (:data:`POSE_STYLES`,
:func:`render_pose`):

* ``humansd`` (:func:`render_humansd`): the paper's. HyperHuman App. A.13 draws the pose map
  "exactly the same" as HumanSD (Ju et al., ICCV 2023): the 17 COCO body joints only, 16 limbs in
  HumanSD's order (:data:`HUMANSD_LIMBS`), each a straight line 10 px wide at 512 px with a filled
  circle of radius 5 at both ends, coloured from seaborn's 16-colour ``hls`` palette
  (:data:`HUMANSD_COLORS`), on black. No joint dots of their own, no neck, no hands, face or feet.
  Facts from HumanSD's ``ldm/data/humansd.py`` and ``configs/humansd/humansd-finetune.yaml``.
* ``wholebody`` (:func:`render_skeleton`): OpenPose-style body limbs as coloured ellipses with the
  neck inserted between the shoulders, feet, hands as thin rainbow lines and face points as white
  dots (the DWPose drawing convention, plus feet).
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from humanverse.schema import KEYPOINT_PARTS, NUM_KEYPOINTS

BODY_NAMES = [
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip",
    "left_knee", "right_knee", "left_ankle", "right_ankle",
]
FEET_NAMES = ["left_big_toe", "left_small_toe", "left_heel", "right_big_toe", "right_small_toe", "right_heel"]
FACE_NAMES = [f"face-{i}" for i in range(68)]
_FINGERS = ["thumb", "forefinger", "middle_finger", "ring_finger", "pinky_finger"]
_HAND = ["root"] + [f"{f}{j}" for f in _FINGERS for j in range(1, 5)]
LEFT_HAND_NAMES = [f"left_hand_{n}" for n in _HAND]
RIGHT_HAND_NAMES = [f"right_hand_{n}" for n in _HAND]
KEYPOINT_NAMES = BODY_NAMES + FEET_NAMES + FACE_NAMES + LEFT_HAND_NAMES + RIGHT_HAND_NAMES
assert len(KEYPOINT_NAMES) == NUM_KEYPOINTS

# Index ranges of the parts, from the format (which derives per-part person fields from them).
BODY, FEET, FACE, LEFT_HAND, RIGHT_HAND = KEYPOINT_PARTS.values()

#: Left/right pairs swapped by a horizontal flip (61 pairs).
FLIP_PAIRS: tuple[tuple[int, int], ...] = (
    *((i, i + 1) for i in range(1, 17, 2)),
    (17, 20), (18, 21), (19, 22),
    (23, 39), (24, 38), (25, 37), (26, 36), (27, 35), (28, 34), (29, 33), (30, 32),
    (40, 49), (41, 48), (42, 47), (43, 46), (44, 45), (54, 58), (55, 57), (59, 68), (60, 67),
    (61, 66), (62, 65), (63, 70), (64, 69), (71, 77), (72, 76), (73, 75), (78, 82), (79, 81),
    (83, 87), (84, 86), (88, 90),
    *((91 + k, 112 + k) for k in range(21)),
)


def _flip_index() -> np.ndarray:
    idx = np.arange(NUM_KEYPOINTS)
    for a, b in FLIP_PAIRS:
        idx[a], idx[b] = b, a
    return idx


#: ``kp_flipped = kp[FLIP_INDEX]`` after mirroring x.
FLIP_INDEX = _flip_index()

_HAND_SIGMAS = [.029, .022, .035, .037, .047, .026, .025, .024, .035, .018, .024, .022, .026,
                .017, .021, .021, .032, .020, .019, .022, .031]
#: Per-keypoint OKS sigmas for COCO-WholeBody (body as COCO-17, then feet, face, hands).
OKS_SIGMAS = np.array(
    [.026, .025, .025, .035, .035, .079, .079, .072, .072, .062, .062, .107, .107, .087, .087,
     .089, .089]
    + [.068, .066, .066, .092, .094, .094]
    + [.042, .043, .044, .043, .040, .035, .031, .025, .020, .023, .029, .032, .037, .038, .043,
       .041, .045, .013, .012, .011, .011, .012, .012, .011, .011, .013, .015, .009, .007, .007,
       .007, .012, .009, .008, .016, .010, .017, .011, .009, .011, .009, .007, .013, .008, .011,
       .012, .010, .034, .008, .008, .009, .008, .008, .007, .010, .008, .009, .009, .009, .007,
       .007, .008, .011, .008, .008, .008, .010, .008]
    + _HAND_SIGMAS + _HAND_SIGMAS,
    dtype=np.float64,
)
assert OKS_SIGMAS.shape == (NUM_KEYPOINTS,)


def flip_keypoints(keypoints: np.ndarray, width: float) -> np.ndarray:
    """Mirror keypoints horizontally in an image ``width`` pixels wide and swap left/right.

    Works on (133, 3) or (P, 133, 3). Continuous pixel coordinates: x -> width - x.
    """
    kp = np.array(keypoints, dtype=np.float32, copy=True)
    if kp.shape[-2:] != (NUM_KEYPOINTS, 3):
        raise ValueError(f"keypoints must end in shape ({NUM_KEYPOINTS}, 3), got {kp.shape}.")
    kp[..., 0] = width - kp[..., 0]
    return kp[..., FLIP_INDEX, :]


# ---------------------------------------------------------------------------------------------
# Drawing (OpenPose-18 body order with a neck; see docs/models.md, pose)

#: COCO body index for each OpenPose-18 slot; slot 1 (neck) is the mean of the shoulders.
_OPENPOSE_FROM_COCO = [0, -1, 6, 8, 10, 5, 7, 9, 12, 14, 16, 11, 13, 15, 2, 1, 4, 3]
_OPENPOSE_LIMBS = [(1, 2), (1, 5), (2, 3), (3, 4), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10),
                   (1, 11), (11, 12), (12, 13), (1, 0), (0, 14), (14, 16), (0, 15), (15, 17)]
_OPENPOSE_COLORS = [(255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0),
                    (85, 255, 0), (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255),
                    (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255), (170, 0, 255),
                    (255, 0, 255), (255, 0, 170), (255, 0, 85)]
#: Feet: ankle -> big toe / small toe / heel, per side (COCO-WholeBody indices).
_FEET_LIMBS = [(15, 17), (15, 18), (15, 19), (16, 20), (16, 21), (16, 22)]
_FEET_COLORS = [(0, 255, 255), (0, 200, 255), (0, 150, 255), (255, 255, 0), (255, 200, 0), (255, 150, 0)]
_HAND_EDGES = [(0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10),
               (10, 11), (11, 12), (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18),
               (18, 19), (19, 20)]
_HAND_COLORS = [tuple(int(255 * c) for c in colorsys.hsv_to_rgb(i / len(_HAND_EDGES), 1.0, 1.0))
                for i in range(len(_HAND_EDGES))]


@dataclass(frozen=True)
class SkeletonStyle:
    """Sizes in pixels at 512 px; ``scale_with_size`` scales them by max(width, height) / 512."""

    limb_half_width: float = 4.0
    joint_radius: float = 4.0
    hand_line_width: float = 2.0
    hand_joint_radius: float = 4.0
    face_radius: float = 3.0
    limb_alpha: float = 0.6  # limbs are drawn at 60 % of their colour, as OpenPose does
    scale_with_size: bool = False


def _ellipse(x0: float, y0: float, x1: float, y1: float, half_width: float) -> list[tuple[float, float]]:
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    half_len = math.hypot(x1 - x0, y1 - y0) / 2
    ang = math.atan2(y1 - y0, x1 - x0)
    ca, sa = math.cos(ang), math.sin(ang)
    pts = []
    for k in range(36):
        t = 2 * math.pi * k / 36
        ex, ey = half_len * math.cos(t), half_width * math.sin(t)
        pts.append((cx + ex * ca - ey * sa, cy + ex * sa + ey * ca))
    return pts


def _dot(draw: ImageDraw.ImageDraw, x: float, y: float, r: float, color) -> None:
    draw.ellipse([x - r, y - r, x + r, y + r], fill=color)


def _as_people(keypoints) -> np.ndarray:
    kp = np.asarray(keypoints, dtype=np.float32)
    if kp.ndim == 1 or (kp.ndim == 2 and kp.shape[-1] == NUM_KEYPOINTS * 3):
        kp = kp.reshape(-1, NUM_KEYPOINTS, 3)
    if kp.ndim == 2:
        kp = kp[None]
    if kp.ndim != 3 or kp.shape[1:] != (NUM_KEYPOINTS, 3):
        raise ValueError(
            f"keypoints must be (133, 3), (P, 133, 3) or flat 399-value rows, got shape {kp.shape}."
        )
    return kp


def render_skeleton(keypoints, width: int, height: int, threshold: float = 0.3,
                    style: SkeletonStyle = SkeletonStyle()) -> Image.Image:
    """Draw whole-body skeletons on a black ``width`` x ``height`` RGB image.

    ``keypoints``: (133, 3), (P, 133, 3), or a list of flat 399-value rows, in pixels of the
    target image. Keypoints with score < ``threshold`` (or non-finite) are not drawn, nor are
    limbs touching them; the neck is drawn only when both shoulders pass.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"width and height must be positive, got {width}x{height}.")
    people = _as_people(keypoints) if len(keypoints) else np.zeros((0, NUM_KEYPOINTS, 3), np.float32)
    s = max(width, height) / 512.0 if style.scale_with_size else 1.0
    canvas = Image.new("RGB", (width, height), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    a = style.limb_alpha
    for kp in people:
        ok = np.isfinite(kp).all(axis=1) & (kp[:, 2] >= threshold)
        # OpenPose-18 body with the neck inserted.
        op = np.zeros((18, 2), np.float32)
        op_ok = np.zeros(18, bool)
        for slot, c in enumerate(_OPENPOSE_FROM_COCO):
            if c >= 0:
                op[slot], op_ok[slot] = kp[c, :2], ok[c]
        op[1], op_ok[1] = (kp[5, :2] + kp[6, :2]) / 2, ok[5] and ok[6]
        for i, (p, q) in enumerate(_OPENPOSE_LIMBS):
            if op_ok[p] and op_ok[q]:
                color = tuple(int(c * a) for c in _OPENPOSE_COLORS[i])
                draw.polygon(_ellipse(*op[p], *op[q], style.limb_half_width * s), fill=color)
        for i, (p, q) in enumerate(_FEET_LIMBS):
            if ok[p] and ok[q]:
                color = tuple(int(c * a) for c in _FEET_COLORS[i])
                draw.polygon(_ellipse(*kp[p, :2], *kp[q, :2], style.limb_half_width * s), fill=color)
        for slot in range(18):
            if op_ok[slot]:
                _dot(draw, *op[slot], style.joint_radius * s, _OPENPOSE_COLORS[slot])
        for i, j in enumerate(FEET):
            if ok[j]:
                _dot(draw, *kp[j, :2], style.joint_radius * s * 0.75, _FEET_COLORS[i])
        for hand in (LEFT_HAND, RIGHT_HAND):
            base = hand.start
            for e, (p, q) in enumerate(_HAND_EDGES):
                if ok[base + p] and ok[base + q]:
                    draw.line([tuple(kp[base + p, :2]), tuple(kp[base + q, :2])],
                              fill=_HAND_COLORS[e], width=max(1, round(style.hand_line_width * s)))
            for j in hand:
                if ok[j]:
                    _dot(draw, *kp[j, :2], style.hand_joint_radius * s, (0, 0, 255))
        for j in FACE:
            if ok[j]:
                _dot(draw, *kp[j, :2], style.face_radius * s, (255, 255, 255))
    return canvas


# ---------------------------------------------------------------------------------------------
# HumanSD's drawing (the paper's pose map, App. A.13)

#: The pose-map styles: ``humansd`` (the paper's) and ``wholebody``.
POSE_STYLES = ("humansd", "wholebody")
#: HumanSD's 16 limbs in its drawing order, COCO-17 indices (``pose_skeleton`` in HumanSD's
#: configs; entry i is drawn with colour i). There is no shoulder-shoulder or hip-hip line.
HUMANSD_LIMBS: tuple[tuple[int, int], ...] = (
    (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7), (6, 8),
    (7, 9), (8, 10), (5, 11), (6, 12), (11, 13), (12, 14), (13, 15), (14, 16),
)
#: seaborn ``color_palette("hls", 16)`` (hues 0.01 + i/16, lightness 0.6, saturation 0.65) as
#: HumanSD converts it, ``int(255 * c)`` per channel, RGB.
HUMANSD_COLORS: tuple[tuple[int, int, int], ...] = (
    (219, 94, 86), (219, 144, 86), (219, 194, 86), (194, 219, 86), (145, 219, 86), (95, 219, 86),
    (86, 219, 127), (86, 219, 177), (86, 211, 219), (86, 161, 219), (86, 111, 219), (111, 86, 219),
    (160, 86, 219), (210, 86, 219), (219, 86, 178), (219, 86, 128),
)
#: HumanSD's line width in pixels at its 512 px training size (``skeleton_width``); the end circles
#: have radius ``width // 2``.
HUMANSD_LINE_WIDTH = 10
#: HumanSD draws at most this many people per image (``max_person_num``).
HUMANSD_MAX_PERSONS = 10


def _segment_polygon(x0: float, y0: float, x1: float, y1: float, half: float) -> list[tuple[float, float]]:
    """The rectangle of a straight line ``2 * half`` wide from (x0, y0) to (x1, y1)."""
    dx, dy = x1 - x0, y1 - y0
    n = math.hypot(dx, dy)
    ox, oy = -dy / n * half, dx / n * half
    return [(x0 + ox, y0 + oy), (x1 + ox, y1 + oy), (x1 - ox, y1 - oy), (x0 - ox, y0 - oy)]


def render_humansd(keypoints, width: int, height: int, threshold: float = 0.3, scale_with_size: bool = True
                   ) -> Image.Image:
    """Draw COCO-17 body skeletons as HumanSD does (HyperHuman App. A.13) on a black RGB image.

    ``keypoints``: as :func:`render_skeleton` (133 whole-body keypoints per person; only the body
    0-16 are used) or (P, 17, 3). A limb is drawn when both ends score >= ``threshold``, are
    finite and lie inside the image (HumanSD drops keypoints outside it), as a line
    :data:`HUMANSD_LINE_WIDTH` px wide with a filled circle of radius ``width // 2`` at each end,
    in :data:`HUMANSD_LIMBS` order with :data:`HUMANSD_COLORS`; coordinates are truncated to
    integers as HumanSD's OpenCV calls do. The first :data:`HUMANSD_MAX_PERSONS` people are drawn.
    ``scale_with_size`` scales the width by max(width, height) / 512 (HumanSD trains at 512).
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"width and height must be positive, got {width}x{height}.")
    if len(keypoints) == 0:
        people = np.zeros((0, 17, 3), np.float32)
    else:
        kp = np.asarray(keypoints, dtype=np.float32)
        if kp.ndim >= 2 and kp.shape[-2:] == (17, 3):
            people = kp.reshape(-1, 17, 3)
        else:
            people = _as_people(keypoints)[:, :17]
    s = max(width, height) / 512.0 if scale_with_size else 1.0
    line = max(1, round(HUMANSD_LINE_WIDTH * s))
    radius = line // 2
    canvas = Image.new("RGB", (width, height), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    for kp in people[:HUMANSD_MAX_PERSONS]:
        ok = (np.isfinite(kp).all(axis=1) & (kp[:, 2] >= threshold) & (kp[:, 0] >= 0) & (kp[:, 1] >= 0)
              & (kp[:, 0] < width) & (kp[:, 1] < height))
        xy = np.trunc(np.nan_to_num(kp[:, :2]))
        for (a, b), color in zip(HUMANSD_LIMBS, HUMANSD_COLORS):
            if ok[a] and ok[b]:
                (xa, ya), (xb, yb) = xy[a], xy[b]
                if (xa, ya) != (xb, yb):  # a zero-length limb is its end circle only
                    draw.polygon(_segment_polygon(xa, ya, xb, yb, line / 2), fill=color)
                if radius > 0:
                    _dot(draw, xa, ya, radius, color)
                    _dot(draw, xb, yb, radius, color)
    return canvas


def render_pose(keypoints, width: int, height: int, threshold: float = 0.3, style: str = "humansd") -> Image.Image:
    """The pose map the models condition on, in ``style`` (:data:`POSE_STYLES`)."""
    if style == "humansd":
        return render_humansd(keypoints, width, height, threshold)
    if style == "wholebody":
        return render_skeleton(keypoints, width, height, threshold)
    raise ValueError(f"pose style must be one of {', '.join(POSE_STYLES)}, got {style!r}.")
