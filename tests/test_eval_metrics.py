"""Evaluation metrics (model/evaluation/metrics.py) against closed forms and independent references."""

import contextlib
import io

import numpy as np
import pytest

from humanverse.skeleton import OKS_SIGMAS
from model.evaluation.metrics import (PersonPose, clip_score, fid_from_features, frechet_distance,
                                kid_from_features, kid_x1000, oks, pose_ap_ar, salient_subset)


def _gaussian(rng, n, d, shift=0.0, scale=1.0):
    mix = rng.normal(size=(d, d)) / np.sqrt(d) + np.eye(d)
    return rng.normal(size=(n, d)) @ mix * scale + shift


def _reference_fid(a, b):
    """Independent re-derivation: eigendecomposition instead of sqrtm.

    Tr((S1 S2)^(1/2)) = sum sqrt(eig(S1^(1/2) S2 S1^(1/2))), the latter being symmetric PSD."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a.T), np.cov(b.T)
    w, v = np.linalg.eigh(s1)
    r1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    lam = np.linalg.eigvalsh(r1 @ s2 @ r1)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2)
                 - 2 * np.sqrt(np.clip(lam, 0, None)).sum())


def test_fid_self_zero_and_shift_is_mean_term():
    rng = np.random.default_rng(0)
    a = _gaussian(rng, 500, 16)
    scale = np.trace(np.cov(a.T))
    assert abs(fid_from_features(a, a)) < 1e-6 * scale
    shift = rng.normal(size=16)
    # same covariance, means differ by `shift`: FID = ||shift||^2 exactly
    assert fid_from_features(a, a + shift) == pytest.approx(float(shift @ shift), rel=1e-6)


def test_frechet_distance_closed_forms():
    rng = np.random.default_rng(1)
    d = 12
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    a, b = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    # commuting (diagonal) covariances: ||dmu||^2 + sum (sqrt a - sqrt b)^2
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-9)
    # identity against a full SPD covariance S: Tr(I + S - 2 S^(1/2))
    m = rng.normal(size=(d, d))
    s = m @ m.T + np.eye(d)
    expected = ((mu1 - mu2) ** 2).sum() + d + np.trace(s) - 2 * np.sqrt(np.linalg.eigvalsh(s)).sum()
    assert frechet_distance(mu1, np.eye(d), mu2, s) == pytest.approx(expected, rel=1e-9)


def test_fid_matches_independent_references():
    rng = np.random.default_rng(2)
    a = _gaussian(rng, 400, 10)
    b = _gaussian(rng, 300, 10, shift=0.3, scale=1.4)
    ours = fid_from_features(a, b)
    assert ours > 0
    assert ours == pytest.approx(_reference_fid(a, b), rel=1e-8)
    cleanfid = pytest.importorskip("cleanfid.fid")
    ref = cleanfid.frechet_distance(a.mean(0), np.cov(a.T), b.mean(0), np.cov(b.T))
    assert ours == pytest.approx(float(ref), rel=1e-8)


def test_fid_rank_deficient_covariances_stay_finite():
    rng = np.random.default_rng(3)
    # 5 samples in 8 dims: rank-deficient covariances (scipy 1.17's sqrtm stays finite here, so the
    # eps-offset branch is not reached; this checks the result is still a finite positive number)
    a, b = rng.normal(size=(5, 8)), rng.normal(size=(5, 8)) + 1.0
    value = fid_from_features(a, b)
    assert np.isfinite(value) and value > 0


def test_fid_rejects_bad_shapes():
    with pytest.raises(ValueError, match="same D"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))
    with pytest.raises(ValueError, match="N >= 2"):
        fid_from_features(np.zeros((1, 3)), np.zeros((4, 3)))


def test_kid_near_zero_for_same_distribution_and_positive_for_different():
    rng = np.random.default_rng(4)
    mix = rng.normal(size=(16, 16)) / 4 + np.eye(16)
    a, a2 = rng.normal(size=(300, 16)) @ mix, rng.normal(size=(300, 16)) @ mix
    b = rng.normal(size=(300, 16)) @ mix + 0.5
    same_mean, same_std = kid_from_features(a, a2, num_subsets=20, subset_size=100)
    diff_mean, diff_std = kid_from_features(a, b, num_subsets=20, subset_size=100)
    assert abs(same_mean) < 0.05 * diff_mean
    assert abs(same_mean) < 2 * same_std
    assert diff_mean > 3 * diff_std > 0
    # seeded, and x1000 is the same number scaled
    assert kid_from_features(a, b, num_subsets=20, subset_size=100) == (diff_mean, diff_std)
    m1000, s1000 = kid_x1000(a, b, num_subsets=20, subset_size=100)
    assert (m1000, s1000) == pytest.approx((1000 * diff_mean, 1000 * diff_std))


def test_kid_matches_cleanfid_formula_on_full_sets():
    # subset size = n: every subset is a permutation of the whole set, so the estimate is exact
    rng = np.random.default_rng(5)
    a, b = _gaussian(rng, 60, 8), _gaussian(rng, 60, 8, shift=0.4)
    cleanfid = pytest.importorskip("cleanfid.fid")
    ours, std = kid_from_features(a, b, num_subsets=3, subset_size=1000)
    assert std == pytest.approx(0, abs=1e-9)
    assert ours == pytest.approx(cleanfid.kernel_distance(a, b, num_subsets=1), rel=1e-9)


def test_clip_score():
    rng = np.random.default_rng(6)
    img = rng.normal(size=(4, 32))
    assert clip_score(img, 3 * img) == pytest.approx(100.0)
    assert clip_score(img, -img) == 0.0  # mean clamped at 0
    txt = rng.normal(size=(4, 32))
    cos = (img * txt).sum(1) / np.linalg.norm(img, axis=1) / np.linalg.norm(txt, axis=1)
    assert clip_score(img, txt) == pytest.approx(max(100 * cos.mean(), 0.0))


# ----------------------------------------------------------------------------- pose

K = OKS_SIGMAS.shape[0]


def _person(rng, cx, cy, size, hidden=0):
    kp = np.zeros((K, 3))
    kp[:, 0] = cx + rng.uniform(-size / 2, size / 2, K)
    kp[:, 1] = cy + rng.uniform(-size, size, K)
    kp[:, 2] = 2.0
    if hidden:
        kp[rng.choice(K, hidden, replace=False), 2] = 0.0
    return PersonPose(kp, bbox=(cx - size / 2, cy - size, cx + size / 2, cy + size),
                      area=0.6 * size * 2 * size)


def _scene(seed=7):
    rng = np.random.default_rng(seed)
    gts = {}
    for img in range(1, 5):
        gts[img] = [_person(rng, 100 + 150 * j, 200, rng.uniform(40, 120), hidden=10 * j)
                    for j in range(3)]
    return gts


def _perturb(gts, scale, seed=8):
    rng = np.random.default_rng(seed)
    out = {}
    for img, people in gts.items():
        out[img] = []
        for p in people:
            kp = p.keypoints.copy()
            kp[:, :2] += scale * rng.normal(size=(K, 2))
            kp[:, 2] = 1.0
            out[img].append(PersonPose(kp, score=float(rng.uniform(0.5, 1))))
    return out


def test_oks_of_ground_truth_is_one():
    p = _scene()[1][2]
    assert oks(p.keypoints, p.keypoints, p.area, OKS_SIGMAS) == 1.0


def test_ap_of_ground_truth_is_one():
    gts = _scene()
    res = pose_ap_ar(gts, gts, OKS_SIGMAS)
    assert res == {"AP": 1.0, "AP50": 1.0, "AP75": 1.0, "AR": 1.0}


def test_oks_matches_pycocotools_compute_oks():
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gts = _scene()
    # image 1 also gets a gt with no labelled keypoint: pycocotools measures to its grown box
    rng = np.random.default_rng(9)
    blank = _person(rng, 300, 150, 80)
    blank = PersonPose(np.concatenate([blank.keypoints[:, :2], np.zeros((K, 1))], 1),
                       bbox=blank.bbox, area=blank.area)
    gts[1] = gts[1] + [blank]
    preds = _perturb(gts, 4.0)
    preds[1][-1].keypoints[:, 0] += 200  # push some of its keypoints outside the grown box

    images = [{"id": i} for i in gts]
    cats = [{"id": 1, "name": "person", "keypoints": [str(i) for i in range(K)]}]
    ganns, danns = [], []
    for img in gts:
        for p in gts[img]:
            x0, y0, x1, y1 = p.bbox
            ganns.append({"id": len(ganns) + 1, "image_id": img, "category_id": 1, "iscrowd": 0,
                          "keypoints": p.keypoints.ravel().tolist(), "area": p.area,
                          "num_keypoints": int((p.keypoints[:, 2] > 0).sum()),
                          "bbox": [x0, y0, x1 - x0, y1 - y0]})
        for p in preds[img]:
            danns.append({"image_id": img, "category_id": 1, "score": p.score,
                          "keypoints": p.keypoints.ravel().tolist()})
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = {"info": {}, "images": images, "annotations": ganns, "categories": cats}
        coco_gt.createIndex()
        ev = COCOeval(coco_gt, coco_gt.loadRes(danns), iouType="keypoints")
        ev.params.kpt_oks_sigmas = OKS_SIGMAS
        ev.evaluate()
    checked = 0
    for img in gts:
        ious = ev.ious[(img, 1)]  # (dets sorted by score, gts)
        order = np.argsort([-p.score for p in preds[img]], kind="mergesort")
        for i, di in enumerate(order):
            for j, g in enumerate(gts[img]):
                ours = oks(g.keypoints, preds[img][di].keypoints, g.area, OKS_SIGMAS, gt_bbox=g.bbox)
                assert ours == pytest.approx(ious[i, j], rel=1e-12, abs=1e-15)
                checked += 1
    assert checked == 4 * 9 + 7  # 3x3 per image, 4x4 on image 1
    with pytest.raises(ValueError, match="gt_bbox"):
        oks(blank.keypoints, blank.keypoints, blank.area, OKS_SIGMAS)


def test_ap_falls_monotonically_with_noise():
    gts = _scene()
    results = [pose_ap_ar(gts, _perturb(gts, s), OKS_SIGMAS) for s in (0.0, 1.0, 3.0, 8.0, 20.0)]
    for key in ("AP", "AR"):
        values = [r[key] for r in results]
        assert all(x >= y for x, y in zip(values, values[1:])), (key, values)
        assert values[0] == 1.0 and values[-1] < 0.5, (key, values)
    assert pose_ap_ar(gts, {}, OKS_SIGMAS)["AP"] == 0.0


def test_salient_subset_keeps_largest_people():
    gts = _scene()
    extra = {1: gts[1] + [PersonPose(gts[1][0].keypoints, area=1e6)]}
    top = salient_subset(extra, k=3)[1]
    assert len(top) == 3 and top[0].area == 1e6
    assert [p.area for p in top[1:]] == sorted((p.area for p in gts[1]), reverse=True)[:2]
    clean = pose_ap_ar(salient_subset(gts, k=2), salient_subset(gts, k=2), OKS_SIGMAS)
    assert clean["AP"] == 1.0


def test_pose_ap_ar_rejects_bad_input():
    gts = _scene()
    with pytest.raises(ValueError, match="not in gts"):
        pose_ap_ar(gts, {99: gts[1]}, OKS_SIGMAS)
    with pytest.raises(ValueError, match="matching the sigmas"):
        pose_ap_ar(gts, gts, OKS_SIGMAS[:17])
