"""Build the paper's test set from a local MS-COCO 2014 download (HyperHuman §5).

The paper evaluates on "the MS-COCO 2014 validation human subset" (8,236 images), resized and
centre-cropped to 512 x 512, with the captions as prompts and the annotated poses as conditions.
This script writes that set in the evaluation contract of :mod:`model.evaluation.evaluate`::

    OUT/real/<id>.png     the real image, 512 x 512 (shorter side resized, bicubic; centre crop)
    OUT/testset.jsonl     one row per image: id, caption, image, width, height, persons

Inputs (under ``--coco DIR``, as cocodataset.org ships them):
``annotations/person_keypoints_val2014.json``, ``annotations/captions_val2014.json`` and
``val2014/*.jpg``. Optionally ``--wholebody coco_wholebody_val_v1.0.json`` (COCO-WholeBody,
Jin et al. 2020; repeatable, e.g. also the train file): its 133 keypoints (body 17, feet 6, face 68,
left hand 21, right hand 21) replace a person's COCO-17 ones, matched by annotation id (COCO keeps
image and annotation ids across the 2014 and 2017 splits, and COCO-WholeBody is built on 2017, so
only the val2014 people that are in the given WholeBody files get 133 points; the count is
logged). Without it, COCO-17 fills the first 17 of the 133 slots (the same order) and the other
116 are unlabelled (v = 0).

Selection (the human subset): an image qualifies if, after the 512 crop, at least one non-crowd
person annotation keeps ``--min-keypoints`` (default 1) labelled keypoints inside the frame.
The paper does not say how its 8,236 images were chosen; the script logs the count before the
crop (images with a keypoint-annotated person), after it, and after the optional filters
(``--max-persons``: at most that many non-crowd people), so a run on the real val2014 shows
how close a rule gets. Persons kept per image: every non-crowd person annotation overlapping the
crop, including those without keypoints (all v = 0), which COCOeval ignores, as COCO's own keypoint
evaluation does.

Geometry (:func:`model.evaluation.evaluate.crop_geometry`): COCO keypoints put a pixel's centre at integer
coordinates, HumanVerse (and the pose stage) at ``i + 0.5``, so keypoints are shifted by +0.5, then
scaled and cropped; keypoints outside the frame become (0, 0, 0). Boxes ([x, y, w, h], continuous)
are scaled, cropped and clipped to the frame; a person whose box leaves the frame is dropped.
``area`` (COCO's segment area, the OKS scale) is scaled by the resize factors and by the fraction
of the box that survives the crop (an approximation: the mask itself is not cropped).

Captions: the first (lowest annotation id) per image, or ``--caption random`` with ``--seed``
(a per-image generator seeded with (seed, image id), so the choice does not depend on order).
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import logging
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from model.evaluation.evaluate import CropGeometry, crop_geometry, resize_center_crop, transform_keypoints

log = logging.getLogger(__name__)

__all__ = ["CocoTestsetConfig", "build_coco_testset", "convert_person", "wholebody_keypoints"]

NUM_KEYPOINTS = 133
COCO_KEYPOINTS = 17
#: COCO-WholeBody annotation fields in the 133-keypoint order, with their keypoint counts.
WHOLEBODY_PARTS = (("keypoints", 17), ("foot_kpts", 6), ("face_kpts", 68), ("lefthand_kpts", 21),
                   ("righthand_kpts", 21))
PAPER_COUNT = 8236


@dataclass(frozen=True)
class CocoTestsetConfig:
    """Options of ``python -m model.evaluation.coco_testset`` (see the module docstring).

    Attributes:
        coco: the COCO folder (annotations/, val2014/).
        out: output folder (real/, testset.jsonl).
        wholebody: COCO-WholeBody annotation files (133 keypoints), matched by annotation id.
        split: the COCO split name in the file names.
        limit: keep the first N qualifying images (by image id), after the filters.
        resolution: evaluation frame side (the paper's 512).
        caption: ``first`` or ``random`` (seeded) caption per image.
        seed: seed of ``caption="random"``.
        min_keypoints: labelled keypoints inside the frame a person needs to make the image qualify.
        max_persons: drop images with more non-crowd people than this (None: no limit).
        workers: processes resizing and writing images.
    """

    coco: str
    out: str
    wholebody: tuple[str, ...] = ()
    split: str = "val2014"
    limit: int | None = None
    resolution: int = 512
    caption: Literal["first", "random"] = "first"
    seed: int = 0
    min_keypoints: int = 1
    max_persons: int | None = None
    workers: int = 1

    def __post_init__(self):
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}.")
        if self.resolution < 16:
            raise ValueError(f"resolution must be at least 16 pixels, got {self.resolution}.")
        if self.caption not in ("first", "random"):
            raise ValueError(f"caption must be 'first' or 'random', got {self.caption!r}.")
        if self.min_keypoints < 1:
            raise ValueError(f"min_keypoints must be >= 1, got {self.min_keypoints}.")
        if self.max_persons is not None and self.max_persons < 1:
            raise ValueError(f"max_persons must be >= 1 or unset, got {self.max_persons}.")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}.")


def _load_json(path: Path, what: str, hint: str) -> Any:
    if not path.is_file():
        raise ValueError(f"{what} {str(path)!r} does not exist; {hint}.")
    try:
        with path.open(encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{what} {str(path)!r} is not valid JSON ({e.msg} at line {e.lineno}).") from None


def wholebody_keypoints(ann: dict) -> list[float]:
    """A COCO-WholeBody annotation -> its 399 values (body, feet, face, left hand, right hand)."""
    out: list[float] = []
    for key, n in WHOLEBODY_PARTS:
        part = ann.get(key)
        if not isinstance(part, list) or len(part) != 3 * n:
            raise ValueError(f"COCO-WholeBody annotation {ann.get('id')!r} has {key} of length "
                             f"{len(part) if isinstance(part, list) else None}; expected {3 * n}.")
        out.extend(float(v) for v in part)
    return out


def convert_person(keypoints: list[float], bbox: list[float], area: float, g: CropGeometry
                   ) -> tuple[dict, int] | None:
    """One COCO person -> (the test-set person in the crop frame, labelled keypoints inside), or
    None when its box does not overlap the frame.

    ``keypoints`` holds 17 or 133 COCO (x, y, v) triples (pixel centres at integers); the result
    always has 133, with the missing ones and those outside the frame at (0, 0, 0).
    """
    size = g.size
    kp = np.zeros((NUM_KEYPOINTS, 3), np.float64)
    src = np.asarray(keypoints, np.float64).reshape(-1, 3)
    if src.shape[0] not in (COCO_KEYPOINTS, NUM_KEYPOINTS):
        raise ValueError(f"a COCO person has {src.shape[0]} keypoints; expected {COCO_KEYPOINTS} or {NUM_KEYPOINTS}.")
    kp[:src.shape[0]] = src
    labelled = kp[:, 2] > 0
    xy = transform_keypoints(kp[:, :2] + 0.5, g)  # COCO pixel-index -> HumanVerse (centre at i + 0.5)
    inside = labelled & (xy[:, 0] >= 0) & (xy[:, 0] < size) & (xy[:, 1] >= 0) & (xy[:, 1] < size)
    kp[:, :2] = np.where(inside[:, None], xy, 0.0)
    kp[:, 2] = np.where(inside, kp[:, 2], 0.0)

    x, y, w, h = (float(v) for v in bbox)
    (x0, y0), (x1, y1) = transform_keypoints(np.array([[x, y], [x + w, y + h]]), g)
    cx0, cy0, cx1, cy1 = max(x0, 0.0), max(y0, 0.0), min(x1, float(size)), min(y1, float(size))
    if cx1 <= cx0 or cy1 <= cy0:
        return None
    full = (x1 - x0) * (y1 - y0)
    kept = (cx1 - cx0) * (cy1 - cy0) / full if full > 0 else 1.0
    person = {"keypoints": [round(float(v), 3) for v in kp.reshape(-1)],
              "bbox": [round(cx0, 3), round(cy0, 3), round(cx1 - cx0, 3), round(cy1 - cy0, 3)],
              "area": round(float(area) * g.scale_x * g.scale_y * kept, 3)}
    return person, int(inside.sum())


def _write_image(src: str, dst: str, size: int, width: int, height: int) -> None:
    with Image.open(src) as im:
        im.load()
        if im.size != (width, height):
            raise ValueError(f"the image {src!r} is {im.width}x{im.height} but its annotation says {width}x{height}.")
        out = resize_center_crop(im, size)
    tmp = f"{dst}.tmp-{os.getpid()}.png"
    out.save(tmp, format="PNG")
    os.replace(tmp, dst)


def build_coco_testset(cfg: CocoTestsetConfig) -> dict[str, int]:
    """Write ``cfg.out/real/<id>.png`` and ``cfg.out/testset.jsonl``; return the counts."""
    coco = Path(cfg.coco)
    if not coco.is_dir():
        raise ValueError(f"the COCO folder {str(coco)!r} does not exist.")
    hint = f"download annotations_trainval2014.zip from cocodataset.org and unpack it into {str(coco)!r}"
    kp_data = _load_json(coco / "annotations" / f"person_keypoints_{cfg.split}.json", "the keypoint annotations", hint)
    cap_data = _load_json(coco / "annotations" / f"captions_{cfg.split}.json", "the caption annotations", hint)
    image_dir = coco / cfg.split
    if not image_dir.is_dir():
        raise ValueError(f"the COCO image folder {str(image_dir)!r} does not exist; unpack {cfg.split}.zip there.")

    wholebody: dict[int, list[float]] = {}
    for path in cfg.wholebody:
        wb = _load_json(Path(path), "the COCO-WholeBody annotations", "pass coco_wholebody_val_v1.0.json")
        for ann in wb.get("annotations", []):
            wholebody[int(ann["id"])] = wholebody_keypoints(ann)
    images = {int(im["id"]): im for im in kp_data.get("images", [])}
    captions: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for ann in cap_data.get("annotations", []):
        captions[int(ann["image_id"])].append((int(ann["id"]), str(ann["caption"]).strip()))
    people: dict[int, list[dict]] = defaultdict(list)
    for ann in kp_data.get("annotations", []):
        if ann.get("category_id", 1) == 1 and not ann.get("iscrowd", 0):
            people[int(ann["image_id"])].append(ann)

    with_kp = sorted(i for i, anns in people.items() if any(a.get("num_keypoints", 0) > 0 for a in anns))
    log.info("coco: %d images in %s, %d with a non-crowd person, %d with a keypoint-annotated person "
             "(the paper's human subset has %d)", len(images), cfg.split, len(people), len(with_kp), PAPER_COUNT)

    rows: list[dict] = []
    jobs: list[tuple[str, str, int, int, int]] = []
    n_crop = n_filtered = n_wholebody = n_no_caption = 0
    real_dir = Path(cfg.out) / "real"
    for image_id in with_kp:
        im = images.get(image_id)
        if im is None:
            raise ValueError(f"annotation image id {image_id} is not among the images of the keypoint file.")
        g = crop_geometry(int(im["width"]), int(im["height"]), cfg.resolution)
        persons, best = [], 0
        wb_here = 0
        for ann in sorted(people[image_id], key=lambda a: int(a["id"])):
            kps = wholebody.get(int(ann["id"]))
            wb_here += kps is not None
            conv = convert_person(kps if kps is not None else ann["keypoints"], ann["bbox"], ann["area"], g)
            if conv is not None:
                persons.append(conv[0])
                best = max(best, conv[1])
        if best < cfg.min_keypoints:
            continue
        n_crop += 1
        if cfg.max_persons is not None and len(people[image_id]) > cfg.max_persons:
            continue
        n_filtered += 1
        caps = [c for _, c in sorted(captions.get(image_id, []))]
        if not caps:
            n_no_caption += 1
            continue
        if cfg.caption == "first":
            caption = caps[0]
        else:
            caption = caps[int(np.random.default_rng([cfg.seed, image_id]).integers(len(caps)))]
        rid = f"{image_id:012d}"
        rows.append({"id": rid, "caption": caption, "image": f"real/{rid}.png", "width": cfg.resolution,
                     "height": cfg.resolution, "persons": persons, "coco_image_id": image_id,
                     "coco_file_name": im["file_name"]})
        jobs.append((str(image_dir / im["file_name"]), str(real_dir / f"{rid}.png"), cfg.resolution,
                     int(im["width"]), int(im["height"])))
        n_wholebody += wb_here
        if cfg.limit is not None and len(rows) >= cfg.limit:
            break
    log.info("coco: %d images keep >= %d labelled keypoint(s) inside the %d crop; %d pass the person-count "
             "filter; %d lack a caption", n_crop, cfg.min_keypoints, cfg.resolution, n_filtered, n_no_caption)
    if not rows:
        raise ValueError(f"no image of {str(coco)!r} qualifies for the test set (a non-crowd person with "
                         f">= {cfg.min_keypoints} labelled keypoints inside the crop, and a caption).")
    if cfg.wholebody:
        log.info("coco: %d people got COCO-WholeBody's 133 keypoints; the others have COCO-17 only", n_wholebody)

    real_dir.mkdir(parents=True, exist_ok=True)
    missing = [j[0] for j in jobs if not Path(j[0]).is_file()]
    if missing:
        raise ValueError(f"{len(missing)} annotated images are missing from {str(image_dir)!r} (e.g. {missing[0]}).")
    if cfg.workers == 1:
        for n, job in enumerate(jobs, 1):
            _write_image(*job)
            if n % 500 == 0:
                log.info("coco: wrote %d/%d images", n, len(jobs))
    else:
        with cf.ProcessPoolExecutor(cfg.workers) as pool:
            for n, _ in enumerate(pool.map(_write_image, *zip(*jobs), chunksize=16), 1):
                if n % 500 == 0:
                    log.info("coco: wrote %d/%d images", n, len(jobs))

    out = Path(cfg.out) / "testset.jsonl"
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    os.replace(tmp, out)
    counts = {"images_with_keypoints": len(with_kp), "inside_crop": n_crop, "after_filters": n_filtered,
              "written": len(rows), "wholebody_persons": n_wholebody}
    log.info("coco: wrote %d test images to %s (paper: %d)", len(rows), out, PAPER_COUNT)
    return counts
