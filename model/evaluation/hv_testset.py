"""An evaluation test set from HumanVerse rows (e.g. a held-out selection), in the contract of
:mod:`model.evaluation.evaluate` (the same one :mod:`model.evaluation.coco_testset` writes for MS-COCO, paper §5)::

    OUT/real/<id>.png     the row's image, shorter side resized to 512 and centre-cropped
    OUT/testset.jsonl     id, caption, image, width, height, persons (512 x 512 frame)

``python -m model.evaluation.hv_testset ROOT OUT [--where SQL] [--limit N] [--resolution 512]``.

Keypoints come from the pose stage, so they carry scores, not COCO visibilities: a keypoint with
score >= ``--keypoint-threshold`` (default 0.3, the skeleton drawing threshold) is labelled v = 2,
others v = 0 (ignored by OKS); keypoints leaving the crop become (0, 0, 0). Boxes are stored
[x0, y0, x1, y1] in HumanVerse and [x, y, w, h] here, clipped to the frame; ``area`` (the OKS
scale; HumanVerse has no masks) is the clipped box area. Persons whose box leaves the frame are
dropped, and rows left without a person are skipped (counted in the log).
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from humanverse.schema import NUM_KEYPOINTS
from humanverse.sql import where_expression
from model.evaluation.evaluate import crop_geometry, resize_center_crop, transform_keypoints

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HVTestsetConfig:
    root: str
    out: str
    where: str | None = None
    limit: int | None = None
    resolution: int = 512
    keypoint_threshold: float = 0.3


def _person(p: dict, g, thr: float) -> dict | None:
    size = g.size
    x0, y0, x1, y1 = (float(v) for v in p["bbox"])
    (bx0, by0), (bx1, by1) = transform_keypoints(np.array([[x0, y0], [x1, y1]]), g)
    cx0, cy0, cx1, cy1 = max(bx0, 0.0), max(by0, 0.0), min(bx1, float(size)), min(by1, float(size))
    if cx1 <= cx0 or cy1 <= cy0:
        return None
    kp = np.zeros((NUM_KEYPOINTS, 3), np.float64)
    if p.get("keypoints") is not None:
        src = np.asarray(p["keypoints"], np.float64).reshape(NUM_KEYPOINTS, 3)
        xy = transform_keypoints(src[:, :2], g)
        ok = np.isfinite(src).all(axis=1) & (src[:, 2] >= thr)
        ok &= (xy[:, 0] >= 0) & (xy[:, 0] < size) & (xy[:, 1] >= 0) & (xy[:, 1] < size)
        kp[ok, :2], kp[ok, 2] = xy[ok], 2.0
    return {"keypoints": [round(float(v), 3) for v in kp.reshape(-1)],
            "bbox": [round(cx0, 3), round(cy0, 3), round(cx1 - cx0, 3), round(cy1 - cy0, 3)],
            "area": round((cx1 - cx0) * (cy1 - cy0), 3)}


def build_hv_testset(cfg: HVTestsetConfig) -> dict[str, int]:
    """Write the test set; returns counts (rows read, written, skipped without a person)."""
    import humanverse

    ds = humanverse.open(cfg.root)
    sql = "SELECT id, image, width, height, caption, persons FROM hv"
    if cfg.where:
        sql += f" WHERE ({where_expression(cfg.where, '--where')})"
    sql += " ORDER BY id"
    if cfg.limit:
        sql += f" LIMIT {int(cfg.limit)}"
    rows = ds.query(sql).to_pylist()
    if not rows:
        raise ValueError(f"{cfg.root} has no rows{' matching ' + cfg.where if cfg.where else ''} for a test set.")
    out = Path(cfg.out)
    (out / "real").mkdir(parents=True, exist_ok=True)
    lines, skipped = [], 0
    for r in rows:
        g = crop_geometry(r["width"], r["height"], cfg.resolution)
        persons = [q for q in (_person(p, g, cfg.keypoint_threshold) for p in (r["persons"] or [])) if q]
        if not persons:
            skipped += 1
            continue
        with Image.open(io.BytesIO(r["image"])) as im:
            resize_center_crop(im, cfg.resolution).save(out / "real" / f"{r['id']}.png")
        lines.append(json.dumps({"id": r["id"], "caption": r["caption"] or "", "image": f"real/{r['id']}.png",
                                 "width": cfg.resolution, "height": cfg.resolution, "persons": persons}))
    (out / "testset.jsonl").write_text("".join(line + "\n" for line in lines))
    counts = {"rows": len(rows), "written": len(lines), "skipped_no_person": skipped}
    log.info("test set %s: %s", out / "testset.jsonl", counts)
    return counts
