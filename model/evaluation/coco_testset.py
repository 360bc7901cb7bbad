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

Captions (``--caption``): ``first`` (lowest annotation id), ``longest``, ``all`` (one test row per
caption, ids ``<image id>-c<k>``, all pointing at the one real image, so the real set holds each
image once) or ``random`` with ``--seed`` (a per-image generator seeded with (seed, image id), so
the choice does not depend on order).

Two selections (``--selection``):

* ``detector`` (the paper's, §5: "we run an off-the-shelf detector and pose estimator over MS-COCO
  2014 val to pick 8,236 images of clearly visible people"): every val2014 image is resized and
  centre-cropped to 512 first, then a person detector and a whole-body pose estimator (the zoo's
  YOLOS + ViTPose, the builder's own stages; ``humanverse testset coco`` injects them, since
  ``model`` never imports ``pipelines``) run on the crop. An image is kept when at least one person
  is *clearly visible* and at most ``max_persons`` people were detected. Clearly visible (each
  configurable; the paper gives no numbers, these defaults are ours): person score (detection x
  mean keypoint score) >= ``person_score`` (0.5), box >= ``min_box_fraction`` (5 %) of the frame,
  and >= ``min_visible_keypoints`` (8) of the 17 body joints scoring >= ``keypoint_threshold``
  (0.3) inside the frame. The persons written are every detected person, with the estimated
  133 keypoints (v = 2 where the score passes ``keypoint_threshold``, else (0, 0, 0)), the
  detector's box and the box area as the OKS scale. The selected count is logged and returned
  beside the paper's 8,236.
* ``annotations``: COCO's ground-truth person keypoints (the variant described above).
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

from model.evaluation.evaluate import (CropGeometry, crop_geometry, load_eval_image, resize_center_crop,
                                       transform_keypoints)

log = logging.getLogger(__name__)

__all__ = ["CocoTestsetConfig", "build_coco_testset", "choose_captions", "clearly_visible", "convert_person",
           "wholebody_keypoints"]

NUM_KEYPOINTS = 133
COCO_KEYPOINTS = 17
#: COCO-WholeBody annotation fields in the 133-keypoint order, with their keypoint counts.
WHOLEBODY_PARTS = (("keypoints", 17), ("foot_kpts", 6), ("face_kpts", 68), ("lefthand_kpts", 21),
                   ("righthand_kpts", 21))
PAPER_COUNT = 8236
CAPTION_CHOICES = ("first", "longest", "all", "random")


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
        selection: ``detector`` (the paper's: detector + pose estimator on the 512 crop) or
            ``annotations`` (COCO's ground-truth keypoints).
        person_score, min_box_fraction, min_visible_keypoints, keypoint_threshold: what a clearly
            visible person is (``detector`` selection; see the module docstring).
        max_images: scan only the first N val images by id (``detector`` selection).
        batch_size: images per detector + pose call.
    """

    coco: str
    out: str
    wholebody: tuple[str, ...] = ()
    split: str = "val2014"
    limit: int | None = None
    resolution: int = 512
    caption: Literal["first", "longest", "all", "random"] = "first"
    seed: int = 0
    min_keypoints: int = 1
    max_persons: int | None = None
    workers: int = 1
    selection: Literal["detector", "annotations"] = "detector"
    person_score: float = 0.5
    min_box_fraction: float = 0.05
    min_visible_keypoints: int = 8
    keypoint_threshold: float = 0.3
    max_images: int | None = None
    batch_size: int = 8

    def __post_init__(self):
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be >= 1, got {self.limit}.")
        if self.resolution < 16:
            raise ValueError(f"resolution must be at least 16 pixels, got {self.resolution}.")
        if self.caption not in CAPTION_CHOICES:
            raise ValueError(f"caption must be one of {', '.join(CAPTION_CHOICES)}, got {self.caption!r}.")
        if self.selection not in ("detector", "annotations"):
            raise ValueError(f"selection must be 'detector' (the paper's) or 'annotations', got {self.selection!r}.")
        for k in ("person_score", "min_box_fraction", "keypoint_threshold"):
            if not 0.0 <= getattr(self, k) <= 1.0:
                raise ValueError(f"{k} must be in [0, 1], got {getattr(self, k)}.")
        if not 0 <= self.min_visible_keypoints <= COCO_KEYPOINTS:
            raise ValueError(f"min_visible_keypoints must be in [0, {COCO_KEYPOINTS}], got {self.min_visible_keypoints}.")
        if (self.max_images is not None and self.max_images < 1) or self.batch_size < 1:
            raise ValueError("max_images must be >= 1 or unset and batch_size >= 1.")
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


def choose_captions(caps: list[str], cfg: CocoTestsetConfig, image_id: int) -> list[str]:
    """The caption(s) of one image, ``caps`` in annotation-id order (``cfg.caption``)."""
    if cfg.caption == "first":
        return caps[:1]
    if cfg.caption == "longest":
        return [max(caps, key=len)]  # the first of equally long ones
    if cfg.caption == "all":
        return list(caps)
    return [caps[int(np.random.default_rng([cfg.seed, image_id]).integers(len(caps)))]]


def _caption_rows(image_id: int, caps: list[str], cfg: CocoTestsetConfig, persons: list[dict], extra: dict
                  ) -> list[dict]:
    rid = f"{image_id:012d}"
    chosen = choose_captions(caps, cfg, image_id)
    ids = [rid] if len(chosen) == 1 and cfg.caption != "all" else [f"{rid}-c{k}" for k in range(len(chosen))]
    return [{"id": i, "caption": c, "image": f"real/{rid}.png", "width": cfg.resolution, "height": cfg.resolution,
             "persons": persons, "coco_image_id": image_id, **extra} for i, c in zip(ids, chosen)]


def clearly_visible(person: dict, cfg: CocoTestsetConfig) -> bool:
    """The ``detector`` selection's test of one estimated person (keypoints (133, 3) in the crop,
    ``bbox`` (x0, y0, x1, y1), ``score``): see the module docstring."""
    x0, y0, x1, y1 = (float(v) for v in person["bbox"])
    size = cfg.resolution
    frac = max(0.0, min(x1, size) - max(x0, 0.0)) * max(0.0, min(y1, size) - max(y0, 0.0)) / (size * size)
    kp = np.asarray(person["keypoints"], np.float64).reshape(-1, 3)[:COCO_KEYPOINTS]
    inside = (kp[:, 0] >= 0) & (kp[:, 0] < size) & (kp[:, 1] >= 0) & (kp[:, 1] < size)
    visible = int(((kp[:, 2] >= cfg.keypoint_threshold) & inside).sum())
    return (float(person["score"]) >= cfg.person_score and frac >= cfg.min_box_fraction
            and visible >= cfg.min_visible_keypoints)


def _estimated_person(person: dict, cfg: CocoTestsetConfig) -> dict:
    """An estimated person -> a test-set person (labelled = score >= keypoint_threshold; box area as the OKS scale)."""
    kp = np.asarray(person["keypoints"], np.float64).reshape(NUM_KEYPOINTS, 3).copy()
    size = cfg.resolution
    ok = (kp[:, 2] >= cfg.keypoint_threshold) & (kp[:, 0] >= 0) & (kp[:, 0] < size) & (kp[:, 1] >= 0) \
        & (kp[:, 1] < size)
    kp[:, 2] = 2.0
    kp[~ok] = 0.0
    x0, y0, x1, y1 = (min(max(float(v), 0.0), float(size)) for v in person["bbox"])
    w, h = max(x1 - x0, 0.0), max(y1 - y0, 0.0)
    return {"keypoints": [round(float(v), 3) for v in kp.reshape(-1)],
            "bbox": [round(x0, 3), round(y0, 3), round(w, 3), round(h, 3)], "area": round(w * h, 3),
            "score": round(float(person["score"]), 5)}


def _captions_by_image(cap_data: dict) -> dict[int, list[str]]:
    """COCO image id -> its captions, stripped, in caption-annotation id order."""
    by_image: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for ann in cap_data.get("annotations", []):
        by_image[int(ann["image_id"])].append((int(ann["id"]), str(ann["caption"]).strip()))
    return {image_id: [c for _, c in sorted(caps)] for image_id, caps in by_image.items()}


def _build_detector_testset(cfg: CocoTestsetConfig, coco: Path, cap_data: dict, image_dir: Path,
                            estimator) -> dict[str, int]:
    """The paper's selection: detector + pose estimator on every val image's 512 crop."""
    images = sorted((int(im["id"]), im) for im in cap_data.get("images", []))
    if cfg.max_images is not None:
        images = images[: cfg.max_images]
    captions = _captions_by_image(cap_data)
    missing = [im["file_name"] for _, im in images if not (image_dir / im["file_name"]).is_file()]
    if missing:
        raise ValueError(f"{len(missing)} images of the caption file are missing from {str(image_dir)!r} "
                         f"(e.g. {missing[0]}).")
    log.info("coco: scanning %d %s images with %s (the paper selected %d)", len(images), cfg.split,
             getattr(estimator, "name", "the pose estimator"), PAPER_COUNT)
    real_dir = Path(cfg.out) / "real"
    real_dir.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    n_person = n_clear = n_selected = n_crowded = n_no_caption = 0
    done = False
    for start in range(0, len(images), cfg.batch_size):
        chunk = images[start:start + cfg.batch_size]
        crops = [load_eval_image(image_dir / im["file_name"], cfg.resolution) for _, im in chunk]
        people = estimator(crops)
        if len(people) != len(crops):
            raise RuntimeError(f"the pose estimator returned {len(people)} results for {len(crops)} images")
        for (image_id, im), crop, found in zip(chunk, crops, people):
            n_person += bool(found)
            if not any(clearly_visible(p, cfg) for p in found):
                continue
            n_clear += 1
            if cfg.max_persons is not None and len(found) > cfg.max_persons:
                n_crowded += 1
                continue
            caps = captions.get(image_id, [])
            if not caps:
                n_no_caption += 1
                continue
            n_selected += 1
            persons = [_estimated_person(p, cfg) for p in found]
            rows += _caption_rows(image_id, caps, cfg, persons, {"coco_file_name": im["file_name"]})
            tmp = real_dir / f".{image_id:012d}.tmp-{os.getpid()}.png"
            crop.save(tmp, format="PNG")
            os.replace(tmp, real_dir / f"{image_id:012d}.png")
            if cfg.limit is not None and n_selected >= cfg.limit:
                done = True
                break
        log.info("coco: scanned %d/%d images, selected %d", min(start + cfg.batch_size, len(images)), len(images),
                 n_selected)
        if done:
            break
    if not rows:
        raise ValueError(f"no image of {str(coco)!r} has a clearly visible person (person_score >= {cfg.person_score}, "
                         f"box >= {cfg.min_box_fraction:.0%} of the frame, >= {cfg.min_visible_keypoints} body "
                         f"keypoints scoring >= {cfg.keypoint_threshold}) and a caption.")
    _write_rows(Path(cfg.out) / "testset.jsonl", rows)
    counts = {"selection": "detector", "images_scanned": len(images), "with_detected_person": n_person,
              "clearly_visible": n_clear, "too_many_persons": n_crowded, "no_caption": n_no_caption,
              "selected": n_selected, "rows": len(rows), "paper_selected": PAPER_COUNT}
    log.info("coco: selected %d images (the paper's selection: %d), %d test rows, in %s", n_selected, PAPER_COUNT,
             len(rows), cfg.out)
    return counts


def _write_rows(out: Path, rows: list[dict]) -> None:
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    with tmp.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    os.replace(tmp, out)


def build_coco_testset(cfg: CocoTestsetConfig, estimator=None, estimator_factory=None) -> dict[str, int]:
    """Write ``cfg.out/real/<id>.png`` and ``cfg.out/testset.jsonl``; return the counts.

    ``estimator``: images -> per image, the people found (dicts with ``keypoints`` (133, 3),
    ``bbox`` (x0, y0, x1, y1) and ``score``), needed by ``selection="detector"``; or
    ``estimator_factory``, called for one once the inputs are checked (``humanverse testset coco``
    passes one that loads the builder's YOLOS + ViTPose stages)."""
    if cfg.selection == "detector" and estimator is None and estimator_factory is None:
        raise ValueError("selection 'detector' needs a detector + pose estimator: run `humanverse testset coco` "
                         "(it supplies the builder's YOLOS + ViTPose) or pass estimator=...; or use "
                         "selection 'annotations'.")
    coco = Path(cfg.coco)
    if not coco.is_dir():
        raise ValueError(f"the COCO folder {str(coco)!r} does not exist.")
    hint = f"download annotations_trainval2014.zip from cocodataset.org and unpack it into {str(coco)!r}"
    cap_data = _load_json(coco / "annotations" / f"captions_{cfg.split}.json", "the caption annotations", hint)
    image_dir = coco / cfg.split
    if not image_dir.is_dir():
        raise ValueError(f"the COCO image folder {str(image_dir)!r} does not exist; unpack {cfg.split}.zip there.")
    if cfg.selection == "detector":
        return _build_detector_testset(cfg, coco, cap_data, image_dir, estimator or estimator_factory())
    kp_data = _load_json(coco / "annotations" / f"person_keypoints_{cfg.split}.json", "the keypoint annotations", hint)

    wholebody: dict[int, list[float]] = {}
    for path in cfg.wholebody:
        wb = _load_json(Path(path), "the COCO-WholeBody annotations", "pass coco_wholebody_val_v1.0.json")
        for ann in wb.get("annotations", []):
            wholebody[int(ann["id"])] = wholebody_keypoints(ann)
    images = {int(im["id"]): im for im in kp_data.get("images", [])}
    captions = _captions_by_image(cap_data)
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
        caps = captions.get(image_id, [])
        if not caps:
            n_no_caption += 1
            continue
        rid = f"{image_id:012d}"
        rows += _caption_rows(image_id, caps, cfg, persons, {"coco_file_name": im["file_name"]})
        jobs.append((str(image_dir / im["file_name"]), str(real_dir / f"{rid}.png"), cfg.resolution,
                     int(im["width"]), int(im["height"])))
        n_wholebody += wb_here
        if cfg.limit is not None and len(jobs) >= cfg.limit:
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
    _write_rows(out, rows)
    counts = {"selection": "annotations", "images_with_keypoints": len(with_kp), "inside_crop": n_crop,
              "after_filters": n_filtered, "selected": len(jobs), "written": len(rows), "rows": len(rows),
              "wholebody_persons": n_wholebody, "paper_selected": PAPER_COUNT}
    log.info("coco: selected %d images (the paper's selection: %d), %d test rows, in %s", len(jobs), PAPER_COUNT,
             len(rows), out)
    return counts
