"""Whole-body pose stage (ViTPose, 133 keypoints) on tiny real-class models, and its coordinate chain:
box -> 1.25 padding -> 256x192 crop (UDP, or the whole-body model's classic non-UDP one) -> 64x48
heatmap -> image -> outpaint canvas -> stored pixels."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch
from PIL import Image

from humanverse.codecs import decode_keypoints
from humanverse.config import ConfigError
from humanverse.testing.synthetic import make_sample
from pipelines import rows as R
from pipelines.geometry import Canvas, plan_canvas
from pipelines.stages.outpaint import encode_canvas, outpaint_inputs
from pipelines.stages.pose import PoseConfig, PoseEstimator, processor_boxes

HM_H, HM_W = 64, 48  # heatmap size of a 256x192 input
K = 133

#: ``usyd-community/vitpose-base-simple`` preprocessor_config.json (docs/models.md): the real processor
REAL_PROCESSOR = {"do_affine_transform": True, "do_normalize": True, "do_rescale": True,
                  "image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225],
                  "normalize_factor": 200.0, "rescale_factor": 1 / 255, "size": {"height": 256, "width": 192}}


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _row(img: Image.Image, i: int, boxes, canvas: Canvas | None = None) -> dict:
    row = R.empty_row(R.inflight_schema(None))
    row.update(source_shard="s", source_index=i, id=f"{i:064x}", image=_jpeg(img), width=img.width,
               height=img.height, orig_width=img.width, orig_height=img.height, num_persons=len(boxes),
               persons=[{"bbox": list(map(float, b)), "score": 0.9, "keypoints": None} for b in boxes])
    canvas = canvas or Canvas.identity(img.width, img.height)
    row["outpaint"] = canvas.record()
    if canvas.applied:
        row["canvas"] = encode_canvas(outpaint_inputs(img, canvas, 64).canvas_image)
    return row


def _run(stage, rows):
    return stage(R.to_table(rows, stage.schema)).to_pylist()


def expected_keypoints(box_stored, offset, cells, values, size, padding=1.25):
    """Where heatmap cells (j = column of 48, i = row of 64) land in stored pixels, computed from
    ViTPose's definition: the box is grown to the 192:256 aspect, padded, and mapped onto the
    heatmap's 48 x 64 cell *centres* end to end (UDP: column 0 -> left edge, column 47 -> right)."""
    x0, y0, x1, y1 = np.asarray(box_stored, np.float64) + [offset[0], offset[1]] * 2  # canvas pixels
    cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
    if w > 0.75 * h:
        h = w / 0.75
    else:
        w = h * 0.75
    w, h = w * padding, h * padding
    out = np.zeros((len(cells), 3))
    for k, ((j, i), v) in enumerate(zip(cells, values)):
        x = cx - w / 2 + j * w / (HM_W - 1) - offset[0]
        y = cy - h / 2 + i * h / (HM_H - 1) - offset[1]
        inside = 0 <= x < size[0] and 0 <= y < size[1]
        out[k] = (x, y, v if inside else 0.0)
    return out


class FixedHeatmaps(torch.nn.Module):
    """A pose head whose heatmaps are set by hand (ignores its input): stands in for a trained head."""

    def __init__(self, heatmaps: torch.Tensor):
        super().__init__()
        self.register_buffer("heatmaps", heatmaps)

    def forward(self, hidden_state, flip_pairs=None):
        from transformers.models.vitpose.modeling_vitpose import flip_back

        hm = self.heatmaps.to(hidden_state.dtype).expand(hidden_state.shape[0], -1, -1, -1).clone()
        return flip_back(hm, flip_pairs) if flip_pairs is not None else hm


@contextlib.contextmanager
def fixed_heatmaps(stage, hm: torch.Tensor, config: PoseConfig | None = None):
    """``stage``'s pose head replaced by :class:`FixedHeatmaps` (and its config by ``config``) for the block."""
    head, old = stage.backend.model.head, stage.backend.config
    stage.backend.model.head = FixedHeatmaps(hm)
    if config is not None:
        stage.backend.config = config
    try:
        yield
    finally:
        stage.backend.model.head, stage.backend.config = head, old


def _peaks(seed=0):
    """One single-cell peak per keypoint, >= 6 cells from the border (DARK's blur stays symmetric)."""
    rng = np.random.default_rng(seed)
    cells = np.stack([rng.integers(6, HM_W - 6, K), rng.integers(6, HM_H - 6, K)], axis=1)
    cells[:8, 0] = 6  # far left of the crop: outside the frame for a person at the left border
    values = rng.uniform(0.3, 1.0, K).astype(np.float32)
    hm = torch.zeros(K, HM_H, HM_W)
    for k, ((j, i), v) in enumerate(zip(cells, values)):
        hm[k, i, j] = float(v)
    return cells, values, hm


@pytest.fixture(scope="module")
def stage(tiny_zoo):
    return PoseEstimator(PoseConfig(device="cpu", dtype="float32", decoding="udp"), models="tiny")


def test_tiny_checkpoint_matches_the_real_processor_and_layout(tiny_zoo):
    from transformers import VitPoseConfig, VitPoseImageProcessor

    proc = VitPoseImageProcessor.from_pretrained(tiny_zoo / "vitpose-wholebody")
    saved = proc.to_dict()
    for key, value in REAL_PROCESSOR.items():
        got = saved[key]
        assert (dict(got) if isinstance(value, dict) else got) == pytest.approx(value), key
    cfg = VitPoseConfig.from_pretrained(tiny_zoo / "vitpose-wholebody")
    assert cfg.num_labels == K and list(cfg.backbone_config.image_size) == [256, 192]
    assert cfg.id2label[0] == "nose" and cfg.id2label[91] == "left_hand_root"


def test_every_person_gets_133_finite_keypoints(stage):
    img = make_sample(200, 240, num_persons=2, seed=5).image
    canvas = plan_canvas(200, 240, [[0, 40, 90, 230]], policy="truncated", pad_fraction=0.25, border_margin=0.02)
    rows = [_row(img, 0, [[0, 40, 90, 230], [110, 60, 180, 200]], canvas),
            _row(img, 1, [[20, 20, 120, 220]]),
            _row(img, 2, []),
            R.reject(_row(img, 3, [[0, 0, 9, 9]]), "detect", "no_person")]
    out = _run(stage, rows)
    for r, n in zip(out[:2], (2, 1)):
        assert len(r["persons"]) == n
        for p, src in zip(r["persons"], rows[r["source_index"]]["persons"]):
            assert len(p["keypoints"]) == 3 * K and np.isfinite(p["keypoints"]).all()
            assert (decode_keypoints(p["keypoints"])[:, 2] >= 0).all()
            assert p["bbox"] == pytest.approx(src["bbox"])  # boxes stay in stored pixels
        assert r["models"] == [{"stage": "pose", "model": "tiny:vitpose-wholebody"}]
    assert out[2]["persons"] == [] and out[2]["models"] is None
    assert out[3]["reject_reason"] == "no_person" and out[3]["persons"][0]["keypoints"] is None


@pytest.mark.parametrize("decoding", ["udp", "classic"])
def test_a_batch_of_images_predicts_what_each_image_predicts_alone(stage, decoding):
    """Images with no boxes in the middle of a batch keep every other image's keypoints in place."""
    import dataclasses

    img = make_sample(200, 240, seed=8).image
    boxes = [np.array([[0, 40, 90, 230], [110, 60, 180, 200]], np.float32), np.zeros((0, 4), np.float32),
             np.array([[20, 20, 120, 220]], np.float32)]
    backend, old = stage.backend, (stage.backend.config, stage.backend.decoding)
    backend.config = dataclasses.replace(old[0], flip_test=False)
    backend.decoding = dataclasses.replace(old[1], use_udp=decoding == "udp")
    try:
        together = backend.predict([img] * 3, boxes)
        alone = [backend.predict([img], [b])[0] for b in boxes]
    finally:
        backend.config, backend.decoding = old
    assert [k.shape for k in together] == [(2, K, 3), (0, K, 3), (1, K, 3)]
    for t, a in zip(together, alone):
        np.testing.assert_allclose(t, a, atol=1e-4)


def test_heatmap_peaks_land_at_the_expected_stored_pixels(stage):
    """THE coordinate test: peaks set by hand, positions computed independently from the box."""
    cells, values, hm = _peaks()
    img = make_sample(200, 240, num_persons=2, seed=6).image
    left = [0, 40, 90, 230]  # touches the left border -> canvas padded on the left
    inner = [110, 60, 180, 200]
    canvas = plan_canvas(200, 240, [left], policy="truncated", pad_fraction=0.25, border_margin=0.02)
    assert (canvas.offset_x, canvas.offset_y, canvas.canvas_width) == (56, 0, 256)
    rows = [_row(img, 0, [left, inner], canvas), _row(img, 1, [[30, 5, 190, 235]])]
    with fixed_heatmaps(stage, hm):
        out = _run(stage, rows)
    checks = [(out[0]["persons"][0], left, (56, 0)), (out[0]["persons"][1], inner, (56, 0)),
              (out[1]["persons"][0], [30, 5, 190, 235], (0, 0))]
    n_outside = 0
    for person, box, offset in checks:
        got = decode_keypoints(person["keypoints"])
        want = expected_keypoints(box, offset, cells, values, (200, 240))
        np.testing.assert_allclose(got[:, :2], want[:, :2], atol=0.01)
        np.testing.assert_allclose(got[:, 2], want[:, 2], atol=1e-6)
        n_outside += int((want[:, 2] == 0).sum())
    # the left-border person's far-left keypoints fall in the outpainted padding: mapped, score 0
    first = decode_keypoints(out[0]["persons"][0]["keypoints"])
    assert (first[:8, 0] < 0).all() and (first[:8, 2] == 0).all() and n_outside >= 8


def test_flip_test_runs_and_keeps_symmetric_peaks(stage):
    """With flip testing the flipped crop's heatmaps are flipped back with left/right swapped: peaks
    placed mirror-symmetrically (keypoint k at column j, its flip partner at 47 - j) are unchanged."""
    from humanverse.skeleton import FLIP_INDEX

    cells, values, _ = _peaks(seed=1)
    for k in range(K):  # make the layout mirror-symmetric under the flip
        if FLIP_INDEX[k] > k:
            cells[FLIP_INDEX[k]] = (HM_W - 1 - cells[k][0], cells[k][1])
            values[FLIP_INDEX[k]] = values[k]
        elif FLIP_INDEX[k] == k:
            cells[k][0] = 23 if cells[k][0] < 24 else 24  # self-symmetric points cannot be exact: skip below
    hm = torch.zeros(K, HM_H, HM_W)
    for k, ((j, i), v) in enumerate(zip(cells, values)):
        hm[k, i, j] = float(v)
    img = make_sample(200, 240, seed=7).image
    box = [40, 20, 160, 220]
    with fixed_heatmaps(stage, hm, PoseConfig(device="cpu", dtype="float32", flip_test=True, decoding="udp")):
        (r,) = _run(stage, [_row(img, 0, [box])])
    got = decode_keypoints(r["persons"][0]["keypoints"])
    paired = FLIP_INDEX != np.arange(K)
    want = expected_keypoints(box, (0, 0), cells, values, (200, 240))
    np.testing.assert_allclose(got[paired, :2], want[paired, :2], atol=0.01)
    np.testing.assert_allclose(got[paired, 2], want[paired, 2], atol=1e-6)


def test_processor_crop_follows_our_pixel_centre_convention(tiny_zoo):
    """A one-pixel dot at index (100, 120) has its centre at (100.5, 120.5) in our convention; a box
    centred there must put the dot at the crop's centre ((191/2, 255/2) in crop indices)."""
    from transformers import VitPoseImageProcessor

    proc = VitPoseImageProcessor.from_pretrained(tiny_zoo / "vitpose-wholebody")
    a = np.zeros((240, 200, 3), np.uint8)
    a[120, 100] = 255
    box = [100.5 - 12, 120.5 - 16, 100.5 + 12, 120.5 + 16]  # 24x32: already 3:4, crop scale ~6.4
    pv = proc(images=[Image.fromarray(a)], boxes=[processor_boxes([box])], return_tensors="pt")["pixel_values"][0]
    v = (pv[0] * 0.229 + 0.485).numpy()  # red channel back in [0, 1]
    v = np.clip(v - v.min(), 0, None)
    ys, xs = np.mgrid[0:256, 0:192]
    cx, cy = (v * xs).sum() / v.sum(), (v * ys).sum() / v.sum()
    assert cx == pytest.approx(191 / 2, abs=0.3) and cy == pytest.approx(255 / 2, abs=0.3)


def test_box_padding_scales_the_crop(stage):
    cells, values, hm = _peaks(seed=2)
    img = make_sample(200, 240, seed=8).image
    box = [50, 30, 150, 210]
    with fixed_heatmaps(stage, hm, PoseConfig(device="cpu", dtype="float32", box_padding=1.5)):
        (r,) = _run(stage, [_row(img, 0, [box])])
    want = expected_keypoints(box, (0, 0), cells, values, (200, 240), padding=1.5)
    np.testing.assert_allclose(decode_keypoints(r["persons"][0]["keypoints"])[:, :2], want[:, :2], atol=0.01)


def _save_vitpose(tmp_path, tiny_zoo, num_labels: int, num_experts: int = 1):
    from transformers import (
        VitPoseBackboneConfig,
        VitPoseConfig,
        VitPoseForPoseEstimation,
        VitPoseImageProcessor,
    )

    backbone = VitPoseBackboneConfig(image_size=[256, 192], patch_size=[16, 16], hidden_size=32, num_hidden_layers=1,
                                     num_attention_heads=2, mlp_ratio=2, num_experts=num_experts, part_features=8,
                                     out_indices=[1])
    torch.manual_seed(0)
    model = VitPoseForPoseEstimation(VitPoseConfig(backbone_config=backbone, num_labels=num_labels,
                                                   use_simple_decoder=False)).eval()
    out = tmp_path / f"vitpose-{num_labels}-{num_experts}"
    model.save_pretrained(out)
    VitPoseImageProcessor.from_pretrained(tiny_zoo / "vitpose-wholebody").save_pretrained(out)
    return out


def test_a_17_keypoint_checkpoint_is_refused_clearly(tmp_path, tiny_zoo):
    path = _save_vitpose(tmp_path, tiny_zoo, 17)
    with pytest.raises(ValueError, match=r"predicts 17 keypoints .* 133 COCO-WholeBody.*'vitpose-wholebody'"):
        PoseEstimator(PoseConfig(model=str(path), device="cpu"), models="tiny")


def test_vitpose_plus_moe_gets_the_wholebody_expert(tmp_path, tiny_zoo):
    path = _save_vitpose(tmp_path, tiny_zoo, K, num_experts=6)
    st = PoseEstimator(PoseConfig(model=str(path), device="cpu", dtype="float32"))
    assert st.backend.moe
    seen = []
    hook = st.backend.model.backbone.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append(kwargs.get("dataset_index")), with_kwargs=True)
    try:
        (r,) = _run(st, [_row(make_sample(120, 160, seed=9).image, 0, [[10, 10, 100, 150]])])
    finally:
        hook.remove()
    assert r["reject_reason"] is None and np.isfinite(r["persons"][0]["keypoints"]).all()
    assert seen and seen[0].tolist() == [5]


def test_config_errors():
    with pytest.raises(ConfigError, match="needs pose.mmpose_config"):
        PoseConfig(backend="mmpose")
    with pytest.raises(ConfigError, match="only used by pose.backend 'mmpose'"):
        PoseConfig(mmpose_config="x.py")
    with pytest.raises(ConfigError, match="box_padding"):
        PoseConfig(box_padding=0.5)


# -- MMPose backend (optional extra) --------------------------------------------------------------

TINY_MMPOSE_CONFIG = """
_base_ = ['mmpose::_base_/default_runtime.py']
codec = dict(type='UDPHeatmap', input_size=(192, 256), heatmap_size=(48, 64), sigma=2)
model = dict(
    type='TopdownPoseEstimator',
    data_preprocessor=dict(type='PoseDataPreprocessor', mean=[123.675, 116.28, 103.53],
                           std=[58.395, 57.12, 57.375], bgr_to_rgb=True),
    backbone=dict(type='mmpretrain.VisionTransformer',
                  arch=dict(embed_dims={dims}, num_layers={layers}, num_heads={heads}, feedforward_channels={ffn}),
                  img_size=(256, 192), patch_size=16, qkv_bias=True, with_cls_token=False,
                  out_type='featmap', patch_cfg=dict(padding=2)),
    head=dict(type='HeatmapHead', in_channels={dims}, out_channels=133, deconv_out_channels=(256, 256),
              deconv_kernel_sizes=(4, 4), loss=dict(type='KeypointMSELoss', use_target_weight=True),
              decoder=codec),
    test_cfg=dict(flip_test=True, flip_mode='heatmap', shift_heatmap=False))
val_pipeline = [dict(type='LoadImage'), dict(type='GetBBoxCenterScale'),
                dict(type='TopdownAffine', input_size=codec['input_size'], use_udp=True),
                dict(type='PackPoseInputs')]
train_dataloader = dict(batch_size=1, dataset=dict(type='CocoWholeBodyDataset', data_mode='topdown',
                        ann_file='', pipeline=[]))
val_dataloader = dict(batch_size=1, dataset=dict(type='CocoWholeBodyDataset', data_mode='topdown',
                      ann_file='', test_mode=True, pipeline=val_pipeline))
test_dataloader = val_dataloader
"""


def tiny_mmpose_config(dims: int = 32, layers: int = 1, heads: int = 2) -> str:
    """An MMPose 1.x ViTPose-style whole-body config (mmpretrain ViT, LayerNorm eps 1e-6 by default)."""
    return TINY_MMPOSE_CONFIG.format(dims=dims, layers=layers, heads=heads, ffn=4 * dims)


def test_mmpose_backend_agrees_with_the_same_coordinate_chain(tmp_path):
    from pipelines.annotators.mmpose_backend import MMPoseBackend, mmpose_available

    if not mmpose_available():
        pytest.skip("the optional MMPose stack is not installed (see pipelines/annotators/mmpose_backend.py)")
    config = tmp_path / "tiny_wholebody.py"
    config.write_text(tiny_mmpose_config())
    random_init = MMPoseBackend(str(config), None, "cpu")
    ckpt = tmp_path / "tiny.pth"
    torch.save({"state_dict": random_init.model.state_dict()}, ckpt)
    backend = MMPoseBackend(str(config), str(ckpt), "cpu", box_padding=1.25, flip_test=False)
    assert backend.model.dataset_meta["num_keypoints"] == K
    img = np.asarray(make_sample(200, 240, seed=10).image)
    boxes = np.array([[0, 40, 90, 230], [110, 60, 180, 200]], np.float32)
    kp = backend.predict(img, boxes)
    assert kp.shape == (2, K, 3) and np.isfinite(kp).all()

    cells, values, hm = _peaks(seed=3)
    backend.model.head.final_layer = FixedHeatmaps(hm)
    kp = backend.predict(img, boxes)
    for p, box in zip(kp, boxes):
        want = expected_keypoints(box, (0, 0), cells, values, (10**6, 10**6))  # image coordinates, no frame
        np.testing.assert_allclose(p[:, :2], want[:, :2], atol=0.01)
        np.testing.assert_allclose(p[:, 2], values, atol=1e-6)

    # through the stage: the mmpose backend fills persons like the vitpose one (flip testing on)
    st = PoseEstimator(PoseConfig(backend="mmpose", mmpose_config=str(config), model=str(ckpt), device="cpu",
                                  flip_test=True))
    (r,) = _run(st, [_row(Image.fromarray(img), 0, boxes.tolist())])
    assert r["models"] == [{"stage": "pose", "model": "mmpose:tiny_wholebody.py:tiny.pth"}]
    assert all(len(p["keypoints"]) == 3 * K and np.isfinite(p["keypoints"]).all() for p in r["persons"])


def test_missing_mmpose_is_one_clear_import_error():
    from pipelines.annotators.mmpose_backend import mmpose_available

    if mmpose_available():
        pytest.skip("MMPose is installed here")
    with pytest.raises(ImportError, match="optional MMPose stack.*mmpose_backend.py"):
        PoseEstimator(PoseConfig(backend="mmpose", mmpose_config="wholebody.py", model="wholebody.pth", device="cpu"))


# ---------------------------------------------------------------------------------------------
# classic (non-UDP) decoding: the paper's whole-body model (ViTPose_huge_wholebody_256x192.py)


def expected_classic(box_stored, offset, cells, size, padding=1.25):
    """Where heatmap cells land under ViTPose's non-UDP transform, from its definition: the box
    grown to 192:256 and padded is w x h pixels around (cx, cy) in cv2 pixel indices; cell j maps to
    ``cx - w/2 + j * w / 48`` (``transform_preds(use_udp=False)``); our pixel centres are +0.5."""
    x0, y0, x1, y1 = np.asarray(box_stored, np.float64) + [offset[0], offset[1]] * 2 - 0.5
    cx, cy, w, h = (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0
    if w > 0.75 * h:
        h = w / 0.75
    else:
        w = h * 0.75
    w, h = w * padding, h * padding
    j, i = np.asarray(cells, np.float64).T
    return np.stack([cx - w / 2 + j * w / HM_W - offset[0] + 0.5, cy - h / 2 + i * h / HM_H - offset[1] + 0.5], 1)


def _gaussian_heatmaps(points, sigma=2.0):
    ys, xs = np.mgrid[0:HM_H, 0:HM_W]
    return np.stack([np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma**2)) for x, y in points]).astype(np.float32)


def test_classic_coordinate_round_trip_is_within_a_hundredth_of_a_pixel():
    """image point -> non-UDP crop (classic_affine) -> heatmap (/4) -> Gaussian -> classic_decode ->
    image point, for points on heatmap cells (the quarter-shift is then 0, as for a symmetric peak)."""
    from pipelines.stages.pose import box_center_scale, classic_affine, classic_decode

    rng = np.random.default_rng(0)
    for box in ([37.3, 12.9, 81.0, 200.4], [5.0, 5.0, 305.5, 120.25], [100.0, 50.0, 101.5, 53.0]):
        (center,), (size,) = box_center_scale([box])
        cells = np.stack([rng.integers(3, HM_W - 3, 40), rng.integers(3, HM_H - 3, 40)], 1).astype(np.float64)
        # the image points whose crop coordinates are exactly 4 x those cells
        m = classic_affine(center, size, (256, 192))
        pts = (cells * 4 - m[:, 2]) / np.diag(m)
        crop = pts * np.diag(m) + m[:, 2]
        np.testing.assert_allclose(crop / 4, cells, atol=1e-9)  # the warp itself
        kp = classic_decode(_gaussian_heatmaps(cells)[None], center[None], size[None])[0]
        np.testing.assert_allclose(kp[:, :2], pts, atol=0.01)
        np.testing.assert_allclose(kp[:, 2], 1.0, atol=1e-6)
    # off-cell peaks move a quarter cell towards the higher neighbour, as post_process='default'
    hm = _gaussian_heatmaps([(20.3, 30.0)])
    kp = classic_decode(hm[None], np.array([[96.0, 128.0]]), np.array([[192.0, 256.0]]))[0, 0]
    assert kp[0] == pytest.approx(20.25 * 4, abs=1e-9) and kp[1] == pytest.approx(30 * 4, abs=1e-9)


@pytest.fixture(scope="module")
def classic_stage(tiny_zoo):
    """The tiny stand-in decodes as the real whole-body model: its folder's pose_decoding.json."""
    return PoseEstimator(PoseConfig(device="cpu", dtype="float32"), models="tiny")


def test_tiny_model_records_the_whole_body_decoding(classic_stage):
    d = classic_stage.backend.decoding
    assert (d.use_udp, d.flip_test, d.shift_heatmap, d.post_process) == (False, True, True, "default")


def test_classic_crop_puts_the_box_centre_at_the_crop_centre(classic_stage):
    """Non-UDP: the box centre (our pixel (100.5, 120.5) = cv2 index (100, 120)) lands on crop
    index (96, 128) = (192/2, 256/2), not UDP's (95.5, 127.5)."""
    a = np.zeros((240, 200, 3), np.uint8)
    a[120, 100] = 255
    box = [100.5 - 12, 120.5 - 16, 100.5 + 12, 120.5 + 16]
    crops, _, _ = classic_stage.backend.classic_crops(Image.fromarray(a), processor_boxes([box]))
    v = (crops[0, 0] * 0.229 + 0.485).numpy()
    v = np.clip(v - v.min(), 0, None)
    ys, xs = np.mgrid[0:256, 0:192]
    assert (v * xs).sum() / v.sum() == pytest.approx(96, abs=0.3)
    assert (v * ys).sum() / v.sum() == pytest.approx(128, abs=0.3)


def test_classic_stage_lands_peaks_where_the_original_transform_puts_them(classic_stage):
    cells, values, hm = _peaks(seed=3)
    img = make_sample(200, 240, num_persons=2, seed=9).image
    left = [0, 40, 90, 230]
    canvas = plan_canvas(200, 240, [left], policy="truncated", pad_fraction=0.25, border_margin=0.02)
    rows = [_row(img, 0, [left], canvas), _row(img, 1, [[30, 5, 190, 235]])]
    with fixed_heatmaps(classic_stage, hm, PoseConfig(device="cpu", dtype="float32", flip_test=False)):
        out = _run(classic_stage, rows)
    for person, box, offset in ((out[0]["persons"][0], left, (canvas.offset_x, 0)),
                                (out[1]["persons"][0], [30, 5, 190, 235], (0, 0))):
        got = decode_keypoints(person["keypoints"])
        want = expected_classic(box, offset, cells, (200, 240))
        np.testing.assert_allclose(got[:, :2], want, atol=0.01)
        inside = (want[:, 0] >= 0) & (want[:, 0] < 200) & (want[:, 1] >= 0) & (want[:, 1] < 240)
        np.testing.assert_allclose(got[:, 2], np.where(inside, values, 0), atol=1e-6)


def test_classic_flip_test_flips_back_swaps_and_shifts_one_column(classic_stage):
    """Flip test as the original: the flipped crop's heatmaps flipped back with left/right swapped
    and shifted one column right (shift_heatmap). With mirror-symmetric one-cell peaks the average
    holds v/2 at column j and v/2 at j + 1, which decodes a quarter cell right of j."""
    from humanverse.skeleton import FLIP_INDEX

    cells, values, _ = _peaks(seed=4)
    for k in range(K):
        if FLIP_INDEX[k] > k:
            cells[FLIP_INDEX[k]] = (HM_W - 1 - cells[k][0], cells[k][1])
            values[FLIP_INDEX[k]] = values[k]
    hm = torch.zeros(K, HM_H, HM_W)
    for k, ((j, i), v) in enumerate(zip(cells, values)):
        hm[k, i, j] = float(v)
    img = make_sample(200, 240, seed=10).image
    box = [40, 20, 160, 220]
    with fixed_heatmaps(classic_stage, hm):  # flip test on: the model's recorded decoding
        (r,) = _run(classic_stage, [_row(img, 0, [box])])
    got = decode_keypoints(r["persons"][0]["keypoints"])
    paired = (FLIP_INDEX != np.arange(K)) & (cells[:, 0] > 1) & (cells[:, 0] < HM_W - 2)
    shifted = cells.astype(np.float64) + [0.25, 0.0]
    want = expected_classic(box, (0, 0), shifted, (200, 240))
    np.testing.assert_allclose(got[paired, :2], want[paired], atol=0.01)
    np.testing.assert_allclose(got[paired, 2], values[paired] / 2, atol=1e-6)
