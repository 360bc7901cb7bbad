"""Synthetic human-like samples with exact annotations, for tests, benchmarks and the offline demo.

Each sample is a drawn "mannequin" (thick limbs along a random but plausible whole-body pose)
over a textured background, with the ground-truth 133 keypoints, person boxes, a relative depth
map (person nearer than a sloped background) and normals derived from that depth. They are not
photographs: only the geometry is meaningful, which is what tests of coordinates, codecs, crops
and flips need.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from PIL import Image, ImageDraw, ImageFilter

from humanverse import codecs
from humanverse.schema import NUM_KEYPOINTS, data_schema, with_person_parts

# A standing pose in a unit box (x right, y down), COCO-17 order.
_BODY_TEMPLATE = np.array([
    [0.50, 0.08], [0.53, 0.06], [0.47, 0.06], [0.56, 0.08], [0.44, 0.08],   # nose, eyes, ears
    [0.64, 0.22], [0.36, 0.22], [0.70, 0.38], [0.30, 0.38], [0.72, 0.52],   # shoulders, elbows, wrists
    [0.28, 0.52], [0.59, 0.53], [0.41, 0.53], [0.61, 0.74], [0.39, 0.74],   # wrists, hips, knees
    [0.62, 0.95], [0.38, 0.95],                                              # ankles
], dtype=np.float32)
_LIMBS = [(5, 6), (5, 7), (7, 9), (6, 8), (8, 10), (5, 11), (6, 12), (11, 12), (11, 13), (13, 15),
          (12, 14), (14, 16), (0, 5), (0, 6)]


@dataclass
class SyntheticSample:
    image: Image.Image  # RGB
    keypoints: np.ndarray  # (P, 133, 3) in image pixels, score 1 for visible
    boxes: np.ndarray  # (P, 4) xyxy
    depth: np.ndarray  # (H, W) float32, relative inverse depth (larger = nearer)
    normal: np.ndarray  # (H, W, 3) unit vectors, camera frame (+x right, +y down, +z to viewer)


def _person_keypoints(rng: np.random.Generator, x0: float, y0: float, w: float, h: float) -> np.ndarray:
    body = _BODY_TEMPLATE + rng.normal(0, 0.015, _BODY_TEMPLATE.shape)
    # swing the arms a little
    for wrist, elbow in ((9, 7), (10, 8)):
        body[wrist] += rng.normal(0, 0.05, 2)
        body[elbow] += rng.normal(0, 0.02, 2)
    kp = np.zeros((NUM_KEYPOINTS, 3), np.float32)
    kp[:17, :2] = body
    # feet: big toe, small toe, heel for left (15) and right (16) ankles
    for base, ankle, side in ((17, 15, 1.0), (20, 16, -1.0)):
        a = body[ankle]
        kp[base:base + 3, :2] = [a + [0.04 * side, 0.03], a + [0.07 * side, 0.025], a + [-0.01 * side, 0.035]]
    # face: 68 points on an ellipse around the nose
    t = np.linspace(0, 2 * np.pi, 68, endpoint=False)
    kp[23:91, :2] = body[0] + np.stack([0.05 * np.cos(t), 0.06 * np.sin(t)], 1)
    # hands: root at the wrist, five fingers fanned away from the elbow
    for base, wrist, elbow in ((91, 9, 7), (112, 10, 8)):
        d = body[wrist] - body[elbow]
        ang = np.arctan2(d[1], d[0])
        kp[base, :2] = body[wrist]
        for f in range(5):
            a = ang + (f - 2) * 0.35
            for j in range(4):
                r = 0.015 * (j + 1) + 0.01
                kp[base + 1 + 4 * f + j, :2] = body[wrist] + r * np.array([np.cos(a), np.sin(a)])
    kp[:, 0] = x0 + kp[:, 0] * w
    kp[:, 1] = y0 + kp[:, 1] * h
    kp[:, 2] = 1.0
    return kp


def make_sample(width: int = 256, height: int = 320, num_persons: int = 1, seed: int = 0) -> SyntheticSample:
    """Draw one synthetic image with ``num_persons`` mannequins and its exact annotations."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    c0, c1 = rng.uniform(40, 215, 3), rng.uniform(40, 215, 3)
    grad = (yy / max(height - 1, 1))[..., None]
    bg = c0 * (1 - grad) + c1 * grad + rng.normal(0, 6, (height, width, 3))
    img = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(img)
    depth = 0.2 + 0.6 * (yy / max(height - 1, 1))  # floor-like slope: lower rows nearer
    mask_img = Image.new("L", (width, height), 0)
    mdraw = ImageDraw.Draw(mask_img)
    kps, boxes = [], []
    slot_w = width / num_persons
    for p in range(num_persons):
        h = rng.uniform(0.6, 0.9) * height
        w = min(h * 0.45, slot_w * 0.95)
        x0 = p * slot_w + rng.uniform(0, max(slot_w - w, 1))
        y0 = rng.uniform(0, height - h)
        kp = _person_keypoints(rng, x0, y0, w, h)
        color = tuple(int(c) for c in rng.integers(30, 226, 3))
        lw = max(2, int(w * 0.12))
        for a, b in _LIMBS:
            seg = [tuple(kp[a, :2]), tuple(kp[b, :2])]
            draw.line(seg, fill=color, width=lw)
            mdraw.line(seg, fill=255, width=lw)
        r = w * 0.09
        head = [kp[0, 0] - r, kp[0, 1] - r * 1.2, kp[0, 0] + r, kp[0, 1] + r * 1.2]
        draw.ellipse(head, fill=tuple(min(255, c + 30) for c in color))
        mdraw.ellipse(head, fill=255)
        kps.append(kp)
        vis = kp[:, :2]
        boxes.append([vis[:, 0].min() - 0.03 * w, vis[:, 1].min() - 0.1 * h / 2,
                      vis[:, 0].max() + 0.03 * w, vis[:, 1].max() + 0.01 * h])
    mask = np.asarray(mask_img.filter(ImageFilter.GaussianBlur(2)), np.float32) / 255.0
    depth = depth * (1 - mask) + (depth + 0.5) * mask
    gy, gx = np.gradient(depth * max(width, height) * 0.05)
    normal = np.stack([-gx, -gy, np.ones_like(depth)], -1)
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    boxes_a = np.array(boxes, np.float32)
    boxes_a[:, [0, 2]] = boxes_a[:, [0, 2]].clip(0, width)
    boxes_a[:, [1, 3]] = boxes_a[:, [1, 3]].clip(0, height)
    kp_a = np.stack(kps)
    inside = (kp_a[..., 0] >= 0) & (kp_a[..., 0] < width) & (kp_a[..., 1] >= 0) & (kp_a[..., 1] < height)
    kp_a[..., 2] = np.where(inside, kp_a[..., 2], 0.0)
    return SyntheticSample(img, kp_a, boxes_a, depth.astype(np.float32), normal.astype(np.float32))


def _union_area(boxes: np.ndarray, width: int, height: int) -> float:
    m = np.zeros((height, width), bool)
    for x0, y0, x1, y1 in boxes:
        m[int(y0):int(np.ceil(y1)), int(x0):int(np.ceil(x1))] = True
    return float(m.mean())


def sample_row(sample: SyntheticSample, *, shard: str, index: int, clip_dim: int | None = None,
               caption: str | None = None, seed: int = 0) -> dict:
    """A HumanVerse ``data/`` row (dict) for a synthetic sample, image stored as JPEG."""
    buf = io.BytesIO()
    sample.image.save(buf, format="JPEG", quality=92)
    data = buf.getvalue()
    w, h = sample.image.size
    d = codecs.encode_depth(sample.depth)
    rng = np.random.default_rng(seed)
    row = {
        "id": hashlib.sha256(data).hexdigest(),
        "source_url": f"synthetic://{shard}/{index}",
        "source_key": f"{index:09d}",
        "source_shard": shard,
        "source_index": index,
        "image": data,
        "width": w, "height": h, "orig_width": w, "orig_height": h,
        "caption": caption or f"a synthetic figure of {len(sample.boxes)} person(s) standing",
        "caption_source": "model",
        "alt_text": "synthetic mannequin",
        "aesthetic": float(rng.uniform(4.5, 7.0)),
        "persons": [
            {"bbox": b.tolist(), "score": float(rng.uniform(0.6, 1.0)), "keypoints": codecs.encode_keypoints(k)}
            for b, k in zip(sample.boxes, sample.keypoints)
        ],
        "num_persons": len(sample.boxes),
        "person_area": _union_area(sample.boxes, w, h),
        "outpaint": {"applied": False, "canvas_width": w, "canvas_height": h, "offset_x": 0, "offset_y": 0},
        "map_width": w, "map_height": h,
        "depth": d.png, "depth_min": d.depth_min, "depth_max": d.depth_max,
        "normal": codecs.encode_normal(sample.normal),
        "models": [{"stage": "source", "model": "synthetic"}],
    }
    if clip_dim is not None:
        v = rng.normal(size=clip_dim)
        row["clip_embedding"] = (v / np.linalg.norm(v)).astype(np.float16).tolist()
    return row


def synthetic_table(n: int, *, shard: str = "synthetic-00000", start: int = 0, seed: int = 0,
                    width: int = 256, height: int = 320, clip_dim: int | None = None) -> pa.Table:
    """``n`` synthetic rows (1-3 persons each) as a table in the ``data/`` schema."""
    rows = []
    for i in range(start, start + n):
        rng = np.random.default_rng((seed, i))
        s = make_sample(width, height, num_persons=int(rng.integers(1, 4)), seed=int(rng.integers(2**31)))
        rows.append(sample_row(s, shard=shard, index=i, clip_dim=clip_dim, seed=i))
    return with_person_parts(pa.Table.from_pylist(rows, schema=data_schema(clip_dim)))
