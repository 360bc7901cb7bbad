"""Evaluation metrics of HyperHuman §5 on precomputed features and poses (no model loading).

Feature extractors (Inception for FID/KID, CLIP for FID-CLIP and CLIP score, a whole-body pose
estimator for AP/AR) are injected by the caller; this module only turns their outputs into numbers.

- FID (Heusel et al. 2017): ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)), float64, with the
  pytorch-fid / clean-fid handling of a singular product (eps on the diagonals) and of a small
  imaginary part of the matrix square root.
- KID (Binkowski et al. 2018): unbiased MMD^2 with the cubic polynomial kernel
  k(x, y) = (x.y / d + 1)^3, averaged over random subsets (clean-fid / torch-fidelity defaults:
  100 subsets of min(n_a, n_b, 1000)); seeded here, unlike clean-fid. The paper reports KID x 1000.
- CLIP score: torchmetrics' ``CLIPScore``: max(mean_i 100 cos(img_i, txt_i), 0).
- Pose AP/AR: COCO keypoint OKS and ``pycocotools.cocoeval.COCOeval(iouType="keypoints")`` with
  the 133 COCO-WholeBody sigmas; AP/AR "clean" restricts to the 3 largest people per image.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import linalg

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- FID


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2).

    d^2 = ||mu1 - mu2||^2 + Tr(sigma1) + Tr(sigma2) - 2 Tr((sigma1 sigma2)^(1/2)).
    If the square root of the product is not finite, ``eps`` is added to both diagonals and it is
    recomputed (logged); an imaginary part above 1e-3 on the diagonal is an error, a smaller one is
    numerical noise and dropped.
    """
    mu1 = np.atleast_1d(np.asarray(mu1, dtype=np.float64))
    mu2 = np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    d = mu1.shape[0]
    if mu1.shape != (d,) or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
        raise ValueError(f"frechet_distance needs means of shape (D,) and covariances (D, D) with the "
                         f"same D; got {mu1.shape}, {sigma1.shape}, {mu2.shape}, {sigma2.shape}")

    diff = mu1 - mu2
    covmean = linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        logger.warning("FID: singular covariance product; adding %g to the diagonals", eps)
        offset = np.eye(d) * eps
        covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
            raise ValueError(f"FID: the square root of the covariance product has an imaginary "
                             f"component of up to {np.max(np.abs(covmean.imag)):.3g}")
        covmean = covmean.real
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def feature_statistics(feats) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) features -> mean (D,) and unbiased covariance (D, D), float64."""
    feats = _features(feats, "feats")
    return feats.mean(axis=0), np.cov(feats, rowvar=False)


def fid_from_features(feats_a, feats_b) -> float:
    """FID between two (N, D) feature sets (e.g. Inception pool3 2048-d, or CLIP for FID-CLIP)."""
    mu_a, sigma_a = feature_statistics(feats_a)
    mu_b, sigma_b = feature_statistics(feats_b)
    return frechet_distance(mu_a, sigma_a, mu_b, sigma_b)


def _features(feats, name: str) -> np.ndarray:
    feats = np.asarray(feats, dtype=np.float64)
    if feats.ndim != 2 or feats.shape[0] < 2:
        raise ValueError(f"{name} must be a (N, D) feature array with N >= 2; got shape {feats.shape}")
    if not np.isfinite(feats).all():
        raise ValueError(f"{name} contains non-finite values")
    return feats


# ----------------------------------------------------------------------------- KID


def kid_from_features(feats_a, feats_b, num_subsets: int = 100, subset_size: int = 1000,
                      seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance: mean and std over ``num_subsets`` of the unbiased MMD^2.

    Each subset draws m = min(n_a, n_b, subset_size) rows of each set without replacement, and
    MMD^2_u = sum_{i!=j} [k(x_i,x_j) + k(y_i,y_j)] / (m (m-1)) - 2 sum_{i,j} k(x_i,y_j) / m^2
    with k(x, y) = (x.y / D + 1)^3 (Binkowski et al. 2018, eq. 3 with the cubic kernel).
    """
    a = _features(feats_a, "feats_a")
    b = _features(feats_b, "feats_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"KID feature sets differ in dimension: {a.shape[1]} vs {b.shape[1]}")
    if num_subsets < 1 or subset_size < 2:
        raise ValueError(f"KID needs num_subsets >= 1 and subset_size >= 2; got {num_subsets}, "
                         f"{subset_size}")
    d = a.shape[1]
    m = min(a.shape[0], b.shape[0], subset_size)
    rng = np.random.default_rng(seed)
    mmds = np.empty(num_subsets)
    for s in range(num_subsets):
        x = a[rng.choice(a.shape[0], m, replace=False)]  # (m, D)
        y = b[rng.choice(b.shape[0], m, replace=False)]  # (m, D)
        k_xx = (x @ x.T / d + 1.0) ** 3  # (m, m)
        k_yy = (y @ y.T / d + 1.0) ** 3
        k_xy = (x @ y.T / d + 1.0) ** 3
        within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
        mmds[s] = within - 2.0 * k_xy.sum() / (m * m)
    return float(mmds.mean()), float(mmds.std())


def kid_x1000(feats_a, feats_b, **kwargs) -> tuple[float, float]:
    """KID mean and std scaled by 1000, as in the paper's tables (Table 1: HyperHuman 4.11)."""
    mean, std = kid_from_features(feats_a, feats_b, **kwargs)
    return 1000.0 * mean, 1000.0 * std


# ----------------------------------------------------------------------------- CLIP score


def clip_score(image_embeds, text_embeds) -> float:
    """CLIP score as torchmetrics' ``CLIPScore``: max(mean_i 100 cos(image_i, text_i), 0).

    Note torchmetrics clamps the *mean* at 0 (``compute``: ``max(score / n, 0)``), not each pair;
    with real CLIP pairs cosines are positive and the two readings agree.
    Embeddings are (N, D) and need not be normalised.
    """
    img = np.asarray(image_embeds, dtype=np.float64)
    txt = np.asarray(text_embeds, dtype=np.float64)
    if img.ndim != 2 or img.shape != txt.shape or img.shape[0] == 0:
        raise ValueError(f"clip_score needs paired (N, D) image and text embeddings with N >= 1; got "
                         f"{img.shape} and {txt.shape}")
    img = img / np.linalg.norm(img, axis=1, keepdims=True)
    txt = txt / np.linalg.norm(txt, axis=1, keepdims=True)
    score = 100.0 * (img * txt).sum(axis=1)  # (N,)
    return float(max(score.mean(), 0.0))


# ----------------------------------------------------------------------------- pose


@dataclass(frozen=True)
class PersonPose:
    """One person's keypoints in image pixels.

    ``keypoints`` is (K, 3): x, y and a visibility or confidence; for ground truth a keypoint counts
    as labelled when its third value is > 0 (COCO). ``bbox`` is [x0, y0, x1, y1] (the HumanVerse
    schema's convention); ``area`` is the OKS scale s^2 (COCO uses the segment area). Missing ones
    default as pycocotools' ``loadRes`` does for detections: the keypoints' extent and its area.
    ``score`` ranks detections (unused for ground truth).
    """

    keypoints: np.ndarray
    bbox: tuple[float, float, float, float] | None = None
    area: float | None = None
    score: float = 1.0

    def xyxy(self) -> tuple[float, float, float, float]:
        if self.bbox is not None:
            return tuple(float(v) for v in self.bbox)
        kp = np.asarray(self.keypoints, dtype=np.float64)
        return (float(kp[:, 0].min()), float(kp[:, 1].min()),
                float(kp[:, 0].max()), float(kp[:, 1].max()))

    def resolved_area(self) -> float:
        if self.area is not None:
            return float(self.area)
        x0, y0, x1, y1 = self.xyxy()
        return (x1 - x0) * (y1 - y0)


def oks(gt_kp, pred_kp, area: float, sigmas, gt_bbox=None) -> float:
    """Object keypoint similarity, exactly as pycocotools' ``COCOeval.computeOks``.

    OKS = mean over labelled gt keypoints (v > 0) of exp(-d^2 / (2 s^2 k^2)), with s^2 = area
    (+ machine eps), k = 2 sigma. With no labelled gt keypoint, d is the distance to the gt box
    grown by its size on every side and the mean runs over all K keypoints; then ``gt_bbox``
    ([x0, y0, x1, y1]) is required.
    """
    g = np.asarray(gt_kp, dtype=np.float64)
    d = np.asarray(pred_kp, dtype=np.float64)
    sigmas = np.asarray(sigmas, dtype=np.float64)
    k = sigmas.shape[0]
    if g.shape != (k, 3) or d.shape[0] != k or d.ndim != 2 or d.shape[1] < 2:
        raise ValueError(f"oks needs gt (K, 3) and pred (K, 2|3) keypoints with K = len(sigmas) = {k}; "
                         f"got {g.shape} and {d.shape}")
    var = (sigmas * 2) ** 2
    xg, yg, vg = g[:, 0], g[:, 1], g[:, 2]
    xd, yd = d[:, 0], d[:, 1]
    visible = vg > 0
    if visible.any():
        dx, dy = xd - xg, yd - yg
    else:
        if gt_bbox is None:
            raise ValueError("oks: the ground truth has no labelled keypoint, so gt_bbox is needed")
        bx0, by0, bx1, by1 = (float(v) for v in gt_bbox)
        w, h = bx1 - bx0, by1 - by0
        x0, x1, y0, y1 = bx0 - w, bx0 + 2 * w, by0 - h, by0 + 2 * h
        dx = np.maximum(0, x0 - xd) + np.maximum(0, xd - x1)
        dy = np.maximum(0, y0 - yd) + np.maximum(0, yd - y1)
    e = (dx ** 2 + dy ** 2) / var / (area + np.spacing(1)) / 2
    if visible.any():
        e = e[visible]
    return float(np.sum(np.exp(-e)) / e.shape[0])


def salient_subset(persons: Mapping[int, Sequence[PersonPose]], k: int = 3
                   ) -> dict[int, list[PersonPose]]:
    """The ``k`` largest-area people of each image (the paper's AP_clean / AR_clean)."""
    if k < 1:
        raise ValueError(f"salient_subset needs k >= 1; got {k}")
    return {img: sorted(people, key=lambda p: -p.resolved_area())[:k]
            for img, people in persons.items()}


def pose_ap_ar(gts: Mapping[int, Sequence[PersonPose]], preds: Mapping[int, Sequence[PersonPose]],
               sigmas) -> dict[str, float]:
    """COCO keypoint AP, AP50, AP75 and AR of ``preds`` against ``gts`` (image id -> people).

    Runs ``pycocotools`` ``COCOeval(iouType="keypoints")`` with ``params.kpt_oks_sigmas = sigmas``
    (K of them, e.g. ``humanverse.skeleton.OKS_SIGMAS`` for whole-body 133) and the default
    ``maxDets=[20]`` (its ``summarize`` hard-codes 20). Images in ``preds`` must be in ``gts``.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    sigmas = np.asarray(sigmas, dtype=np.float64)
    num_kp = sigmas.shape[0]
    unknown = set(preds) - set(gts)
    if unknown:
        raise ValueError(f"pose_ap_ar: prediction image ids {sorted(unknown)[:5]} are not in gts")

    images, gt_anns, dt_anns = [], [], []
    for img_id in gts:
        images.append({"id": int(img_id)})
        for p in gts[img_id]:
            kp = _coco_keypoints(p, num_kp, "gt")
            x0, y0, x1, y1 = p.xyxy()
            gt_anns.append({"id": len(gt_anns) + 1, "image_id": int(img_id), "category_id": 1,
                            "keypoints": kp.ravel().tolist(),
                            "num_keypoints": int(np.count_nonzero(kp[:, 2] > 0)),
                            "bbox": [x0, y0, x1 - x0, y1 - y0], "area": p.resolved_area(),
                            "iscrowd": 0})
    for img_id, people in preds.items():
        for p in people:
            kp = _coco_keypoints(p, num_kp, "pred")
            # as COCO.loadRes does for keypoint results: box and area from the keypoints' extent
            x0, y0 = kp[:, 0].min(), kp[:, 1].min()
            x1, y1 = kp[:, 0].max(), kp[:, 1].max()
            dt_anns.append({"id": len(dt_anns) + 1, "image_id": int(img_id), "category_id": 1,
                            "keypoints": kp.ravel().tolist(), "score": float(p.score),
                            "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0),
                            "iscrowd": 0})
    # the category's keypoint names only need the right length (pycocotools never reads them)
    categories = [{"id": 1, "name": "person", "keypoints": [f"kp{i}" for i in range(num_kp)],
                   "skeleton": []}]

    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco_gt = COCO()
        coco_gt.dataset = {"images": images, "annotations": gt_anns, "categories": categories}
        coco_gt.createIndex()
        coco_dt = COCO()  # built directly: loadRes fails on an empty list and prefers "bbox"
        coco_dt.dataset = {"images": images, "annotations": dt_anns, "categories": categories}
        coco_dt.createIndex()
        ev = COCOeval(coco_gt, coco_dt, iouType="keypoints")
        ev.params.kpt_oks_sigmas = sigmas
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    s = ev.stats  # AP, AP50, AP75, AP_M, AP_L, AR, AR50, AR75, AR_M, AR_L; -1 where undefined
    return {"AP": float(s[0]), "AP50": float(s[1]), "AP75": float(s[2]), "AR": float(s[5])}


def _coco_keypoints(p: PersonPose, num_kp: int, role: str) -> np.ndarray:
    kp = np.asarray(p.keypoints, dtype=np.float64)
    if kp.shape != (num_kp, 3) or not np.isfinite(kp).all():
        raise ValueError(f"pose_ap_ar: {role} keypoints must be finite ({num_kp}, 3) arrays matching "
                         f"the sigmas; got shape {kp.shape}")
    return kp
