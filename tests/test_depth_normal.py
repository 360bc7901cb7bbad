"""Depth (MiDaS DPT-Hybrid / Omnidata) and normal (Omnidata) stages on tiny real-class models.

Alignment is proven with stand-ins that are real ``nn.Module`` subclasses of the tiny models whose
output is the input's red channel, so a bright square in the stored image must come back at the
same pixels of the stored map, with and without an outpainting canvas offset, and when capped.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import DPTForDepthEstimation, DPTImageProcessor
from transformers.modeling_outputs import DepthEstimatorOutput

from humanverse.codecs import decode_depth, decode_image, decode_normal
from humanverse.config import ConfigError
from humanverse.testing.synthetic import make_sample
from pipelines import rows as R
from pipelines.annotators.omnidata import OmnidataDPT, OmnidataProcessor, predict_maps
from pipelines.geometry import MapsConfig
from pipelines.stages.depth import DepthConfig, DepthEstimator, fit_map
from pipelines.stages.normal import NormalConfig, NormalEstimator

W, H = 160, 120  # stored image
SQUARE = (40, 30, 80, 60)  # x0, y0, x1, y1 of the bright square in the stored image
CW, CH, OX, OY = 256, 168, 48, 24  # canvas size and where the stored image sits in it


# -- stand-ins whose output is the red channel of their input ------------------------------------------


class RedChannelDPT(DPTForDepthEstimation):
    """The tiny MiDaS DPT, but "depth" = the input's red channel mapped back to [0, 1]."""

    def forward(self, pixel_values, **kwargs):
        return DepthEstimatorOutput(predicted_depth=(pixel_values[:, 0] + 1.0) / 2.0)  # undo mean=std=0.5


class RedChannelNormals(OmnidataDPT):
    """The tiny Omnidata normal model, but the output RGB is (red, 0.5, 0): in Omnidata's frame
    (+Z away from the viewer) n ~ (2 red - 1, 0, -1), a camera-facing surface tilted by red; the
    stored frame (+Z towards the viewer) makes it (2 red - 1, 0, 1)."""

    def forward(self, pixel_values):
        red = pixel_values[:, 0]  # normal inputs are [0, 1], unnormalised
        return torch.stack([red, torch.full_like(red, 0.5), torch.zeros_like(red)], dim=1)


# -- rows -------------------------------------------------------------------------------------------


def _jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _row(image: Image.Image, i: int = 0, canvas: Image.Image | None = None, offset=(0, 0)) -> dict:
    row = R.empty_row(R.inflight_schema(None))
    row.update(source_shard="s", source_index=i, id=f"{i:064x}", image=_jpeg(image), width=image.width,
               height=image.height, orig_width=image.width, orig_height=image.height, persons=[], alt_text="x")
    if canvas is not None:
        row["canvas"] = _png(canvas)
        row["outpaint"] = {"applied": True, "canvas_width": canvas.width, "canvas_height": canvas.height,
                           "offset_x": offset[0], "offset_y": offset[1]}
    return row


def _with_canvas(stored_bytes: bytes, i: int) -> dict:
    """A row whose stored image sits at (OX, OY) in a CW x CH canvas; the padding holds a decoy
    bright square that must never reach the stored map."""
    stored = decode_image(stored_bytes)
    canvas = Image.new("RGB", (CW, CH), (60, 60, 60))
    canvas.paste(Image.new("RGB", (30, 20), (255, 255, 255)), (4, 2))  # decoy, outside the frame
    canvas.paste(stored, (OX, OY))
    row = _row(stored, i, canvas, (OX, OY))
    row["image"] = stored_bytes  # the exact stored bytes, not a re-encode
    return row


def _square_scene() -> Image.Image:
    a = np.zeros((H, W, 3), np.uint8)
    x0, y0, x1, y1 = SQUARE
    a[y0:y1, x0:x1] = 255
    return Image.fromarray(a)


def _table(rows):
    return R.to_table(rows, R.inflight_schema(None))


def _red(stored_bytes: bytes) -> np.ndarray:
    return np.asarray(decode_image(stored_bytes), np.float32)[..., 0] / 255.0


def _centroid(m: np.ndarray) -> tuple[float, float]:
    yy, xx = np.mgrid[0:m.shape[0], 0:m.shape[1]]
    return float((m * xx).sum() / m.sum()), float((m * yy).sum() / m.sum())


def _assert_square_at(m: np.ndarray, square, scale: float = 1.0):
    """``m`` (a map in [0, 1]-ish) is bright on the square, dark elsewhere (2 px slack at the edges
    for resampling blur), and its bright mass is centred on the square."""
    x0, y0, x1, y1 = (v * scale for v in square)
    yy, xx = np.mgrid[0:m.shape[0], 0:m.shape[1]] + 0.5  # pixel centres
    inside = (xx > x0 + 2) & (xx < x1 - 2) & (yy > y0 + 2) & (yy < y1 - 2)
    outside = (xx < x0 - 2) | (xx > x1 + 2) | (yy < y0 - 2) | (yy > y1 + 2)
    assert m[inside].min() > 0.85, m[inside].min()
    assert m[outside].max() < 0.15, m[outside].max()
    cx, cy = _centroid(np.clip(m, 0, None))
    assert cx + 0.5 == pytest.approx((x0 + x1) / 2, abs=0.35)
    assert cy + 0.5 == pytest.approx((y0 + y1) / 2, abs=0.35)


# -- alignment --------------------------------------------------------------------------------------


@pytest.mark.parametrize("max_side", [None, 80])
def test_depth_map_is_aligned_with_the_stored_image(tiny_zoo, max_side):
    stage = DepthEstimator(DepthConfig(device="cpu"), models="tiny", maps=MapsConfig(max_side))
    stage.backend.model = RedChannelDPT.from_pretrained(tiny_zoo / "midas-dpt-hybrid").eval()
    plain = _row(_square_scene(), 0)
    out = stage(_table([plain, _with_canvas(plain["image"], 1)])).to_pylist()
    mw, mh = MapsConfig(max_side).size(W, H)
    assert (mw, mh) == ((W, H) if max_side is None else (80, 60))
    for r in out:
        assert r["reject_reason"] is None
        assert (r["map_width"], r["map_height"]) == (mw, mh)
        d = decode_depth(r["depth"], r["depth_min"], r["depth_max"])
        assert d.shape == (mh, mw)
        _assert_square_at(d, SQUARE, mw / W)
        if max_side is None:  # the whole map follows the stored image's red channel
            assert np.abs(d - _red(r["image"])).mean() < 0.02


@pytest.mark.parametrize("max_side", [None, 80])
def test_normal_map_is_aligned_with_the_stored_image(tiny_zoo, max_side):
    stage = NormalEstimator(NormalConfig(device="cpu"), models="tiny", maps=MapsConfig(max_side))
    stage.model = RedChannelNormals.from_pretrained(tiny_zoo / "omnidata-normal")
    plain = _row(_square_scene(), 0)
    out = stage(_table([plain, _with_canvas(plain["image"], 1)])).to_pylist()
    mw, mh = MapsConfig(max_side).size(W, H)
    for r in out:
        assert r["reject_reason"] is None
        assert (r["map_width"], r["map_height"]) == (mw, mh)
        n = decode_normal(r["normal"])
        assert n.shape == (mh, mw, 3)
        assert np.abs(n[..., 1]).max() < 0.02  # the stand-in's y component is 0
        red = (n[..., 0] / n[..., 2] + 1.0) / 2.0  # invert n ~ (2 red - 1, 0, 1)
        _assert_square_at(red, SQUARE, mw / W)


# -- preprocessing matches the checkpoints' configs -------------------------------------------------


def _capture_inputs(model: torch.nn.Module) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []

    def hook(module, args, kwargs):
        seen.append((kwargs.get("pixel_values") if "pixel_values" in kwargs else args[0]).detach().clone())

    model.register_forward_pre_hook(hook, with_kwargs=True)
    return seen


def test_midas_preprocessing_is_the_hub_config_on_the_canvas(tiny_zoo):
    stage = DepthEstimator(DepthConfig(device="cpu"), models="tiny")
    p = stage.backend.processor
    assert (p.size.height, p.size.width) == (384, 384) and p.keep_aspect_ratio is False
    assert int(p.resample) == 2  # bilinear (the class default would be bicubic)
    assert list(p.image_mean) == [0.5] * 3 and list(p.image_std) == [0.5] * 3
    seen = _capture_inputs(stage.backend.model)
    row = _with_canvas(_row(make_sample(W, H, seed=3).image)["image"], 0)
    stage(_table([row]))
    (x,) = seen
    assert tuple(x.shape) == (1, 3, 384, 384)  # a 256x168 canvas squashed, aspect not kept
    canvas = decode_image(row["canvas"])
    bilinear = (np.asarray(canvas.resize((384, 384), Image.Resampling.BILINEAR), np.float32) / 255 - 0.5) / 0.5
    bicubic = (np.asarray(canvas.resize((384, 384), Image.Resampling.BICUBIC), np.float32) / 255 - 0.5) / 0.5
    got = x[0].permute(1, 2, 0).numpy()
    assert np.abs(got - bilinear).max() < 1e-4
    assert np.abs(got - bicubic).mean() > 1e-3  # the check above can tell the two apart


def test_omnidata_normal_preprocessing_is_unnormalised_on_the_canvas(tiny_zoo):
    stage = NormalEstimator(NormalConfig(device="cpu"), models="tiny")
    seen = _capture_inputs(stage.model)
    row = _with_canvas(_row(make_sample(W, H, seed=4).image)["image"], 0)
    stage(_table([row]))
    (x,) = seen
    # 256x168 canvas: shorter side 168 -> 384 (x 2.2857), longer 585.1 -> nearest multiple of 32 = 576
    assert tuple(x.shape) == (1, 3, 384, 576)
    canvas = decode_image(row["canvas"])
    expected = np.asarray(canvas.resize((576, 384), Image.Resampling.BILINEAR), np.float32) / 255.0
    assert np.abs(x[0].permute(1, 2, 0).numpy() - expected).max() < 1e-6  # ToTensor only, [0, 1]


# -- real tiny models: values, codec round trip, tags -------------------------------------------------


@pytest.fixture(scope="module")
def midas_peer(tiny_zoo):
    """The same checkpoint through transformers directly: canvas -> (H_canvas, W_canvas) map."""
    proc = DPTImageProcessor.from_pretrained(tiny_zoo / "midas-dpt-hybrid")
    model = DPTForDepthEstimation.from_pretrained(tiny_zoo / "midas-dpt-hybrid").eval()
    return lambda canvas: _midas_peer(proc, model, canvas)


def _midas_peer(proc, model, canvas: Image.Image) -> np.ndarray:
    with torch.inference_mode():
        out = model(**proc(images=canvas, return_tensors="pt"))
    return proc.post_process_depth_estimation(out, target_sizes=[(canvas.height, canvas.width)])[0][
        "predicted_depth"].numpy()


def test_midas_depth_values_round_trip_and_tags(midas_peer):
    stage = DepthEstimator(DepthConfig(device="cpu"), models="tiny")
    plain = _row(make_sample(W, H, seed=5).image, 0)
    canvased = _with_canvas(plain["image"], 1)
    other = _row(make_sample(120, 150, seed=6).image, 2)  # a different size in the same batch
    out = stage(_table([plain, canvased, other])).to_pylist()
    peers = [midas_peer(decode_image(plain["image"])),
             midas_peer(decode_image(canvased["canvas"]))[OY:OY + H, OX:OX + W],
             midas_peer(decode_image(other["image"]))]
    for r, ref in zip(out, peers):
        assert r["models"] == [{"stage": "depth", "model": "tiny:midas-dpt-hybrid"}]
        assert (r["map_height"], r["map_width"]) == ref.shape == (r["height"], r["width"])
        lo, hi = float(ref.min()), float(ref.max())
        assert hi > lo
        assert r["depth_min"] == pytest.approx(lo, rel=1e-4) and r["depth_max"] == pytest.approx(hi, rel=1e-4)
        d = decode_depth(r["depth"], r["depth_min"], r["depth_max"])
        assert d.min() == pytest.approx(r["depth_min"]) and d.max() == pytest.approx(r["depth_max"])
        assert np.abs(d - ref).max() <= (hi - lo) / 65535 + 1e-4 * (hi - lo)
    # the canvas changes the prediction (context), so the crop really came from the canvas run
    whole = midas_peer(decode_image(plain["image"]))
    assert not np.allclose(whole, peers[1], rtol=1e-3, atol=1e-3 * float(whole.max()))


def test_omnidata_depth_backend_stores_one_minus_depth(tiny_zoo):
    stage = DepthEstimator(DepthConfig(backend="omnidata", device="cpu"), models="tiny", maps=MapsConfig(100))
    row = _with_canvas(_row(make_sample(W, H, seed=7).image)["image"], 0)
    (r,) = stage(_table([row])).to_pylist()
    assert r["models"] == [{"stage": "depth", "model": "tiny:omnidata-depth"}]
    assert (r["map_width"], r["map_height"]) == (100, 75)
    model = OmnidataDPT.from_pretrained(tiny_zoo / "omnidata-depth")
    (pred,) = predict_maps(model, [decode_image(row["canvas"])], OmnidataProcessor(task="depth"))
    ref = fit_map(1.0 - pred[OY:OY + H, OX:OX + W], (100, 75))
    d = decode_depth(r["depth"], r["depth_min"], r["depth_max"])
    assert np.abs(d - ref).max() <= (ref.max() - ref.min()) / 65535 + 1e-5


def test_normals_are_unit_length_and_share_the_map_size_with_depth(tiny_zoo):
    maps = MapsConfig(100)
    depth = DepthEstimator(DepthConfig(device="cpu"), models="tiny", maps=maps)
    normal = NormalEstimator(NormalConfig(device="cpu"), models="tiny", maps=maps)
    rows = [_row(make_sample(W, H, seed=8).image, 0), _row(make_sample(90, 140, seed=9).image, 1)]
    out = normal(depth(_table(rows))).to_pylist()
    for r, size in zip(out, [(100, 75), (64, 100)]):
        assert (r["map_width"], r["map_height"]) == size
        assert [m["stage"] for m in r["models"]] == ["depth", "normal"]
        assert r["models"][1]["model"] == "tiny:omnidata-normal"
        n = decode_normal(r["normal"], renormalise=False)  # as stored, only 8-bit quantised
        assert n.shape == (size[1], size[0], 3)
        assert np.abs(np.linalg.norm(n, axis=-1) - 1.0).max() < 0.015
        with Image.open(io.BytesIO(r["depth"])) as im:
            assert im.size == size


# -- per-row input problems and configs ----------------------------------------------------------------


def test_inconsistent_canvas_rejects_only_that_row(tiny_zoo):
    stage = DepthEstimator(DepthConfig(device="cpu"), models="tiny")
    good = _row(make_sample(W, H, seed=10).image, 0)
    wrong_size = _with_canvas(good["image"], 1)
    wrong_size["outpaint"] = dict(wrong_size["outpaint"], canvas_width=CW + 8)
    missing = _row(make_sample(W, H, seed=10).image, 2)
    missing["outpaint"] = {"applied": True, "canvas_width": CW, "canvas_height": CH, "offset_x": OX, "offset_y": OY}
    out = stage(_table([good, wrong_size, missing])).to_pylist()
    assert [r["reject_reason"] for r in out] == [None, "model_error", "model_error"]
    assert "canvas is 256x168" in out[1]["reject_detail"] and "no canvas bytes" in out[2]["reject_detail"]
    assert out[0]["depth"] is not None and out[1]["depth"] is None


def test_configs_are_validated():
    with pytest.raises(ConfigError, match="depth.backend"):
        DepthConfig(backend="zoe")
    with pytest.raises(ConfigError, match="multiple of 32"):
        NormalConfig(working_size=100)
    with pytest.raises(ConfigError, match="multiple of 32"):
        DepthConfig(working_size=0)


def test_fit_map_keeps_or_resizes():
    m = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert fit_map(m, (4, 3)) is m
    assert fit_map(np.ones((40, 60, 3), np.float32), (30, 20)).shape == (20, 30, 3)
    assert np.allclose(fit_map(np.full((40, 60), 2.0, np.float32), (30, 20)), 2.0)
