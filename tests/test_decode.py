"""Decode + resolution stages (HyperHuman §4's first filters) on good, odd and bad web images."""

from __future__ import annotations

import hashlib
import io
import logging
import pickle
import subprocess
import sys
import textwrap
import tracemalloc
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from humanverse.schema import validate_data, validate_rejects
from pipelines import rows as R
from pipelines.stages import decode as D
from pipelines.stages.decode import DecodeConfig, Decoded, DecodeStage, Rejected, decode_one, to_rgb
from pipelines.stages.resolution import ResolutionConfig, ResolutionStage

sys.path.insert(0, str(Path(__file__).parent))
import bad_images as B  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CFG = DecodeConfig()


def sha(data: bytes | None) -> str:
    return hashlib.sha256(data or b"").hexdigest()


def source_row(data: bytes | None, i: int = 0, key: str | None = None, error: str | None = None) -> dict:
    return {"source_shard": "shard-0", "source_index": i, "source_key": key or f"k{i}", "source_url": None,
            "alt_text": "a person", "source_bytes": data, "source_error": error}


def run_stage(*datas: bytes | None, cfg: DecodeConfig = CFG) -> list[dict]:
    table = R.from_source_rows([source_row(d, i) for i, d in enumerate(datas)])
    return DecodeStage(cfg)(table).to_pylist()


def stored_rgb(row_or_decoded) -> np.ndarray:
    data = row_or_decoded["image"] if isinstance(row_or_decoded, dict) else row_or_decoded.image
    with Image.open(io.BytesIO(data)) as im:
        assert im.mode == "RGB", f"stored image has mode {im.mode}"
        return np.asarray(im).astype(int)


def opened_rgb(data: bytes) -> np.ndarray:
    """to_rgb on the opened (and, like the stage, first-frame) source: exact values, no JPEG loss."""
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        out = to_rgb(im)
        assert out.mode == "RGB"
        return np.asarray(out).astype(int)


def close(pixel, expected, tol: int) -> bool:
    return bool(np.all(np.abs(np.asarray(pixel, int) - np.asarray(expected, int)) <= tol))


# ----------------------------------------------------------------------------------------- config


@pytest.mark.parametrize("kwargs, match", [
    ({"max_pixels": 0}, "max_pixels must be a positive integer"),
    ({"max_pixels": 1.5}, "max_pixels must be a positive integer"),
    ({"max_pixels": 10**12}, "above Pillow's hard limit"),
    ({"max_side": 0}, "max_side must be null or a positive integer"),
    ({"max_side": True}, "max_side must be null or a positive integer"),
    ({"jpeg_quality": 0}, "jpeg_quality must be an integer in 1..100"),
    ({"jpeg_quality": 101}, "jpeg_quality must be an integer in 1..100"),
    ({"formats": "JPEG"}, "formats must be a non-empty list"),
    ({"formats": ()}, "formats must be a non-empty list"),
    ({"formats": ("JPEG", "NOPE")}, "cannot be read by this Pillow build"),
])
def test_config_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DecodeConfig(**kwargs)


def test_config_normalises_formats_and_stage_pickles():
    assert DecodeConfig(formats=("jpeg", "png")).formats == ("JPEG", "PNG")
    with pytest.raises(ValueError, match="min_side must be a positive integer"):
        ResolutionConfig(min_side=0)
    stage = pickle.loads(pickle.dumps(DecodeStage(DecodeConfig(max_side=512), clip_dim=8)))
    assert stage.config.max_side == 512 and stage.clip_dim == 8
    with pytest.raises(TypeError, match="config must be a DecodeConfig"):
        DecodeStage({"max_side": 3})  # type: ignore[arg-type]


# ------------------------------------------------------------------------- kept vs re-encoded bytes


@pytest.mark.parametrize("make", [B.jpeg, B.png])
def test_plain_rgb_jpeg_and_png_are_kept_byte_for_byte(make):
    data = make()
    [row] = run_stage(data)
    assert row["reject_reason"] is None
    assert row["image"] == data
    assert row["id"] == sha(data)
    assert (row["width"], row["height"], row["orig_width"], row["orig_height"]) == (256, 320, 256, 320)
    assert row["source_bytes"] is None


@pytest.mark.parametrize("make, size", [(B.webp, (256, 320)), (B.bmp, (256, 320)), (B.png_rgb16, (240, 220))])
def test_other_containers_are_reencoded_as_rgb_jpeg(make, size):
    data = make()
    res = decode_one(data, CFG)
    assert isinstance(res, Decoded) and res.reencoded
    assert (res.width, res.height, res.orig_width, res.orig_height) == (*size, *size)
    assert res.image[:3] == b"\xff\xd8\xff"  # JPEG
    got = stored_rgb(res)
    want = opened_rgb(data)
    assert np.abs(got - want).mean() < 5.0  # JPEG q95 (4:2:0) of the same noisy pixels


def test_first_frame_of_multipage_tiff_and_animated_gif():
    tiff = decode_one(B.tiff_multipage(), CFG)
    assert isinstance(tiff, Decoded) and (tiff.width, tiff.height) == (240, 210)
    assert close(stored_rgb(tiff)[100, 100], B.FIRST_FRAME_RGB, 4)
    gif = decode_one(B.gif_transparent(), CFG)
    assert isinstance(gif, Decoded)
    px = stored_rgb(gif)
    assert close(px[100, 30], (255, 255, 255), 4)  # transparent -> white
    assert close(px[100, 200], B.FIRST_FRAME_RGB, 4)  # not the second frame's blue
    exact = opened_rgb(B.gif_transparent())
    assert tuple(exact[100, 30]) == (255, 255, 255) and tuple(exact[100, 200]) == B.FIRST_FRAME_RGB


# ------------------------------------------------------------------------------ mode conversions


def test_gray16_keeps_top_byte_not_clipped():
    data = B.gray16_png()
    with Image.open(io.BytesIO(data)) as im:
        assert im.mode.startswith("I;16")
    exact = opened_rgb(data)
    np.testing.assert_array_equal(exact[5, :, 0], np.arange(256))  # x*257 >> 8 == x
    assert (exact[..., 0] == exact[..., 1]).all() and (exact[..., 1] == exact[..., 2]).all()
    stored = stored_rgb(decode_one(data, CFG))
    assert np.abs(stored[5, :, 0] - np.arange(256)).max() <= 4


@pytest.mark.parametrize("make", [B.int32_tiff, B.float_tiff])
def test_int32_and_float_gray_scale_sensibly(make):
    data = make()
    with Image.open(io.BytesIO(data)) as im:
        assert im.mode in ("I", "F")
    exact = opened_rgb(data)
    np.testing.assert_array_equal(exact[5, :, 1], np.arange(256))


def test_int32_outside_16bit_range_is_min_max_normalised():
    exact = opened_rgb(B.int32_tiff(scale=1_000_000))  # 0 .. 255e6
    np.testing.assert_array_equal(exact[0, :, 0], np.arange(256))


@pytest.mark.parametrize("make, bands", [
    (B.palette_png, [(c, c) for c in B.PALETTE_BANDS]),
    (B.la_png, B.LA_BANDS),
    (B.rgba_png, B.RGBA_BANDS),
])
def test_palette_and_alpha_modes_composite_on_white(make, bands):
    data = make()
    exact, stored = opened_rgb(data), stored_rgb(decode_one(data, CFG))
    for i, (_, want) in enumerate(bands):
        x = 40 + 80 * i  # middle of band i (width 240, 3 bands)
        assert close(exact[100, x], want, 1), (i, exact[100, x], want)
        assert close(stored[100, x], want, 4), (i, stored[100, x], want)


def test_bilevel_and_cmyk():
    bw = opened_rgb(B.bilevel_png())
    assert tuple(bw[10, 10]) == (0, 0, 0) and tuple(bw[10, 200]) == (255, 255, 255)
    with Image.open(io.BytesIO(B.cmyk_jpeg())) as im:
        assert im.mode == "CMYK"
    res = decode_one(B.cmyk_jpeg(), CFG)
    assert isinstance(res, Decoded) and res.reencoded
    px = stored_rgb(res)
    assert close(px[100, 40], B.CMYK_LEFT_RGB, 12) and close(px[100, 200], (255, 255, 255), 6)


# ------------------------------------------------------------------------------- EXIF orientation


@pytest.mark.parametrize("orientation", [1, 2, 3, 4, 5, 6, 7, 8])
def test_exif_orientation_is_applied(orientation):
    data = B.exif_rotated_jpeg(orientation)
    with Image.open(io.BytesIO(data)) as im:
        raw_size = im.size
    assert raw_size == (B.UPRIGHT_SIZE[::-1] if orientation >= 5 else B.UPRIGHT_SIZE)
    [row] = run_stage(data)
    assert row["reject_reason"] is None and row["id"] == sha(data)
    assert (row["width"], row["height"]) == B.UPRIGHT_SIZE
    assert (row["orig_width"], row["orig_height"]) == B.UPRIGHT_SIZE  # "original" = upright
    assert (row["image"] == data) == (orientation == 1)  # only the upright one is kept as is
    px, (w, h), c = stored_rgb(row), B.UPRIGHT_SIZE, B.CORNER // 2
    assert close(px[c, c], B.TOP_LEFT_RGB, 40)
    assert close(px[c, w - c], B.TOP_RIGHT_RGB, 40)
    assert close(px[h - c, c], B.BOTTOM_LEFT_RGB, 40)
    assert close(px[h - c, w - c], B.BACKGROUND_RGB, 20)
    if orientation != 1:
        with Image.open(io.BytesIO(row["image"])) as im:
            assert im.getexif().get(0x0112) is None  # re-encoded without the orientation tag


# ------------------------------------------------------------------------------------- resizing


def test_max_side_resizes_keeping_aspect_and_reports_original_size():
    cfg = DecodeConfig(max_side=200)
    big = decode_one(B.jpeg(600, 400, seed=4), cfg)  # JPEG: draft (DCT-scaled) decode, then LANCZOS
    assert isinstance(big, Decoded) and big.reencoded
    assert (big.width, big.height, big.orig_width, big.orig_height) == (200, 133, 600, 400)
    png = decode_one(B.png(400, 600, seed=4), cfg)
    assert isinstance(png, Decoded) and (png.width, png.height, png.orig_width, png.orig_height) == (133, 200, 400, 600)
    small = decode_one(B.jpeg(), DecodeConfig(max_side=320))  # longer side == max_side: untouched
    assert isinstance(small, Decoded) and not small.reencoded
    # Resized content matches a plain full-decode + LANCZOS resize.
    with Image.open(io.BytesIO(B.jpeg(600, 400, seed=4))) as im:
        ref = np.asarray(im.convert("RGB").resize((200, 133), Image.Resampling.LANCZOS)).astype(int)
    assert np.abs(stored_rgb(big) - ref).mean() < 4.0


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_resize_of_rotated_jpeg_is_upright(orientation):
    res = decode_one(B.exif_rotated_jpeg(orientation), DecodeConfig(max_side=150))
    assert isinstance(res, Decoded)
    assert (res.width, res.height) == (150, 110) and (res.orig_width, res.orig_height) == B.UPRIGHT_SIZE
    px = stored_rgb(res)
    assert close(px[8, 8], B.TOP_LEFT_RGB, 50) and close(px[8, 141], B.TOP_RIGHT_RGB, 50)
    assert close(px[101, 8], B.BOTTOM_LEFT_RGB, 50)


# -------------------------------------------------------------------------------------- rejects


@pytest.mark.parametrize("name", ["zero_bytes", "text_file", "html_page", "pdf_header", "corrupt_jpeg",
                                  "truncated_jpeg", "truncated_png"])
def test_bad_bytes_are_undecodable(name):
    data = getattr(B, name)()
    [row] = run_stage(data)
    assert (row["reject_stage"], row["reject_reason"]) == ("decode", "undecodable")
    assert row["reject_detail"]
    assert row["id"] == sha(data)
    assert row["source_bytes"] is None and row["image"] is None
    if name.startswith("truncated"):
        assert "truncated" in row["reject_detail"]
        assert (row["orig_width"], row["orig_height"]) == (256, 320)  # the header was readable


def test_text_and_html_details_say_what_the_bytes_are():
    [row] = run_stage(B.html_page())
    assert "not an image" in row["reject_detail"] and "<!DOCTYPE html" in row["reject_detail"]


def test_null_bytes_and_download_failures():
    table = R.from_source_rows([source_row(None, 0), source_row(None, 1, error="HTTP 404"),
                                source_row(B.jpeg(), 2, error="timeout after body")])
    out = DecodeStage(CFG)(table).to_pylist()
    assert (out[0]["reject_reason"], out[0]["id"]) == ("undecodable", sha(b""))
    assert (out[1]["reject_reason"], out[1]["reject_detail"], out[1]["id"]) == ("download_failed", "HTTP 404", sha(b""))
    assert (out[2]["reject_reason"], out[2]["reject_detail"]) == ("download_failed", "timeout after body")
    assert out[2]["id"] == sha(B.jpeg()) and out[2]["source_bytes"] is None


def test_rows_rejected_upstream_pass_through_untouched():
    table = R.from_source_rows([source_row(B.jpeg(), 0), source_row(None, 1)])
    rows = table.to_pylist()
    R.reject(rows[1], "reader", "download_failed", "upstream")
    rows[1]["id"] = "f" * 64
    table = R.to_table(rows, table.schema)
    out = DecodeStage(CFG)(table).to_pylist()
    assert out[1] == rows[1]
    assert out[0]["reject_reason"] is None


def test_config_pixel_limit_rejects_too_large_with_header_size():
    data = B.jpeg()
    res = decode_one(data, DecodeConfig(max_pixels=256 * 320 - 1))
    assert isinstance(res, Rejected) and res.reason == "too_large"
    assert (res.orig_width, res.orig_height) == (256, 320)
    assert "256x320" in res.detail


BOMBS = {
    "bomb_png": lambda: B.bomb_png(),  # valid 20000^2, ~50 KB
    "header_bomb_png": lambda: B.header_bomb_png(20_000, 20_000),  # > 2x PIL limit: Pillow raises at open
    "warning_only_png": lambda: B.header_bomb_png(10_000, 9_000),  # 90 M: PIL would only *warn*
    "header_bomb_jpeg": lambda: B.header_bomb_jpeg(),
}


@pytest.mark.parametrize("name", list(BOMBS))
def test_decompression_bombs_are_too_large_without_any_warning(name):
    data = BOMBS[name]()
    assert len(data) < 60_000
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("error")  # any warning path would raise out of the stage
        [row] = run_stage(data)
    assert caught == []
    assert (row["reject_stage"], row["reject_reason"]) == ("decode", "too_large")
    assert row["id"] == sha(data) and row["source_bytes"] is None and row["image"] is None
    if name == "warning_only_png":  # under Pillow's hard limit: our own check, with the header size
        assert (row["orig_width"], row["orig_height"]) == (10_000, 9_000)
        assert "max_pixels" in row["reject_detail"]


def test_pillow_global_limit_warning_is_ignored_and_its_error_is_too_large(monkeypatch):
    cfg = DecodeConfig()  # built before lowering Pillow's global limit (a worker set up differently)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 30_000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        above = decode_one(B.jpeg(), cfg)  # 81920 px > 2 * 30000: Pillow raises at open
        warn_band = decode_one(B.jpeg(200, 200), cfg)  # 40000 px: Pillow would only warn
    assert isinstance(above, Rejected) and above.reason == "too_large" and above.detail.startswith("Pillow:")
    assert isinstance(warn_band, Decoded) and (warn_band.width, warn_band.height) == (200, 200)


def test_bomb_decoding_allocates_nothing():
    bombs = [f() for f in BOMBS.values()]
    decode_one(B.jpeg(), CFG)  # warm up Pillow's plugins
    tracemalloc.start()
    try:
        for data in bombs:
            assert decode_one(data, CFG).reason == "too_large"
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2_000_000, peak
    # Pillow allocates pixel buffers outside Python's allocator: measure the process's peak RSS too,
    # in a fresh interpreter so that earlier tests do not hide a spike.
    code = textwrap.dedent("""
        import resource, sys
        sys.path.insert(0, "tests")
        import bad_images as B
        from pipelines.stages.decode import DecodeConfig, decode_one
        bombs = [B.bomb_png(), B.header_bomb_png(20000, 20000), B.header_bomb_png(10000, 9000), B.header_bomb_jpeg()]
        decode_one(B.jpeg(), DecodeConfig())
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        assert all(decode_one(b, DecodeConfig()).reason == "too_large" for b in bombs)
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    grew_kib = int(out.stdout.strip().splitlines()[-1])
    assert grew_kib < 20_000, f"peak RSS grew by {grew_kib} KiB while rejecting bombs"


def test_unexpected_errors_become_undecodable_and_are_logged(monkeypatch, caplog):
    def boom(data, cfg, header):
        raise KeyError("simulated bug")

    monkeypatch.setattr(D, "_decode", boom)
    with caplog.at_level(logging.WARNING, logger="pipelines.stages.decode"):
        table = R.from_source_rows([source_row(B.jpeg(), 0, key="img-007")])
        [row] = DecodeStage(CFG)(table).to_pylist()
    assert row["reject_reason"] == "undecodable" and "unexpected KeyError" in row["reject_detail"]
    assert any("img-007" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)


def test_wrong_table_is_a_clear_error():
    table = R.from_source_rows([source_row(B.jpeg())])
    with pytest.raises(ValueError, match="check clip_dim"):
        DecodeStage(CFG, clip_dim=16)(table)
    with pytest.raises(TypeError, match="batch_format='pyarrow'"):
        DecodeStage(CFG)({"source_bytes": []})  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------- resolution


def test_resolution_rejects_small_originals_not_small_stored_images():
    cfg = DecodeConfig(max_side=150)
    table = R.from_source_rows([source_row(B.tiny_jpeg(), 0), source_row(B.exif_rotated_jpeg(6), 1)])
    out = ResolutionStage(ResolutionConfig(min_side=200))(DecodeStage(cfg)(table)).to_pylist()
    assert (out[0]["reject_stage"], out[0]["reject_reason"]) == ("resolution", "too_small")
    assert out[0]["reject_detail"].startswith("min side 80 < 200")
    assert out[0]["image"] is None and out[0]["id"] == sha(B.tiny_jpeg())
    assert (out[0]["orig_width"], out[0]["orig_height"]) == (100, 80)
    assert out[1]["reject_reason"] is None and (out[1]["width"], out[1]["height"]) == (150, 110)


def test_resolution_needs_decode_first():
    table = R.from_source_rows([source_row(B.jpeg())])
    with pytest.raises(ValueError, match="run DecodeStage before ResolutionStage"):
        ResolutionStage()(table)


# --------------------------------------------------------------------------------- mixed batch


def test_mixed_batch_keeps_order_and_every_row_lands_in_data_or_rejects():
    cases = B.all_cases()
    names = list(cases)
    table = R.from_source_rows([source_row(cases[n], i, key=n) for i, n in enumerate(names)], clip_dim=4)
    out_table = ResolutionStage(clip_dim=4)(DecodeStage(CFG, clip_dim=4)(table))
    assert out_table.schema.equals(R.inflight_schema(4), check_metadata=False)
    out = out_table.to_pylist()
    assert [r["source_key"] for r in out] == names
    for r in out:
        n = r["source_key"]
        assert r["id"] == sha(cases[n]), n
        assert r["reject_reason"] == B.EXPECTED_REASON[n], (n, r["reject_reason"], r["reject_detail"])
        assert r["source_bytes"] is None, n
        if r["reject_reason"] is None:
            with Image.open(io.BytesIO(r["image"])) as im:
                assert im.mode == "RGB" and im.size == (r["width"], r["height"]), n
            assert (r["orig_width"], r["orig_height"]) == (r["width"], r["height"]), n
        else:
            assert r["image"] is None, n
    data, rejects = R.split_for_writing(out_table, clip_dim=4)
    validate_data(data)
    validate_rejects(rejects)
    assert data.num_rows + rejects.num_rows == len(names)
    assert data.num_rows == sum(v is None for v in B.EXPECTED_REASON.values())


def test_record_batch_input_is_accepted():
    table = R.from_source_rows([source_row(B.jpeg())])
    out = DecodeStage(CFG)(table.to_batches()[0])
    assert isinstance(out, pa.Table) and out.num_rows == 1
