"""Bytes of good, odd and bad images, for tests of the decode stage and anything reading web images.

Every function returns the encoded bytes (deterministic for fixed arguments). Content is synthetic:
photographs come from :func:`humanverse.testing.synthetic.make_sample`; images whose decoded pixels a test
checks use flat patterns whose expected values are exported next to them (``*_EXPECTED``, ...).

Import from a test with ``sys.path.insert(0, str(Path(__file__).parent)); import bad_images``.
"""

from __future__ import annotations

import functools
import io
import struct
import zlib

import numpy as np
from PIL import Image

from humanverse.testing.synthetic import make_sample

# ---------------------------------------------------------------------------------------------
# helpers


def photo(width: int = 256, height: int = 320, seed: int = 0) -> Image.Image:
    """A synthetic RGB "photo" (a mannequin over a textured background)."""
    return make_sample(width=width, height=height, seed=seed).image


def encode(img: Image.Image, fmt: str, **save_kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **save_kwargs)
    return buf.getvalue()


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png(width: int, height: int, bit_depth: int, color_type: int, idat: bytes) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
            + _png_chunk(b"IEND", b""))


# ---------------------------------------------------------------------------------------------
# valid images in every common container


def jpeg(width: int = 256, height: int = 320, seed: int = 0, quality: int = 90) -> bytes:
    """A plain baseline RGB JPEG without EXIF (the decode stage keeps these bytes as they are)."""
    return encode(photo(width, height, seed), "JPEG", quality=quality)


def png(width: int = 256, height: int = 320, seed: int = 0) -> bytes:
    """A plain 8-bit RGB PNG (kept as is by the decode stage)."""
    return encode(photo(width, height, seed), "PNG")


def png_rgb16(width: int = 240, height: int = 220) -> bytes:
    """A 16-bit-per-channel RGB PNG (Pillow opens it as 8-bit "RGB"; stored re-encoded)."""
    a = (np.arange(width, dtype=np.uint32) * 65535 // max(width - 1, 1)).astype(">u2")
    rgb = np.stack([np.broadcast_to(a, (height, width))] * 3, -1)
    raw = b"".join(b"\x00" + row.tobytes() for row in rgb.reshape(height, -1))
    return _png(width, height, 16, 2, zlib.compress(raw))


def webp(width: int = 256, height: int = 320, seed: int = 0) -> bytes:
    return encode(photo(width, height, seed), "WEBP", quality=90)


def bmp(width: int = 256, height: int = 320, seed: int = 0) -> bytes:
    return encode(photo(width, height, seed), "BMP")


def tiny_jpeg(width: int = 100, height: int = 80) -> bytes:
    """A valid image below the 200-pixel resolution minimum."""
    return jpeg(width, height, seed=3)


#: Colours of the pages of :func:`tiff_multipage` and the frames of :func:`gif_transparent`.
FIRST_FRAME_RGB = (200, 30, 30)
SECOND_FRAME_RGB = (30, 30, 200)


def tiff_multipage(width: int = 240, height: int = 210) -> bytes:
    """A 2-page TIFF: page 0 solid :data:`FIRST_FRAME_RGB`, page 1 solid :data:`SECOND_FRAME_RGB`."""
    pages = [Image.new("RGB", (width, height), FIRST_FRAME_RGB), Image.new("RGB", (width, height), SECOND_FRAME_RGB)]
    return encode(pages[0], "TIFF", save_all=True, append_images=pages[1:])


def gif_transparent(width: int = 240, height: int = 210) -> bytes:
    """A 2-frame palette GIF with a transparent index.

    Frame 0: left half transparent (decodes to white on the decode stage's white background), right
    half :data:`FIRST_FRAME_RGB`. Frame 1: solid :data:`SECOND_FRAME_RGB` (must not be what is stored).
    """
    palette = [255, 255, 255, *FIRST_FRAME_RGB, *SECOND_FRAME_RGB] + [0] * (256 * 3 - 9)
    f0 = Image.new("P", (width, height), 1)
    f0.paste(0, (0, 0, width // 2, height))
    f0.putpalette(palette)
    f1 = Image.new("P", (width, height), 2)
    f1.putpalette(palette)
    return encode(f0, "GIF", save_all=True, append_images=[f1], transparency=0, duration=100, loop=0,
                  disposal=2)


# ---------------------------------------------------------------------------------------------
# modes that need converting to 8-bit RGB (expected decoded values exported)


def gray16_png(width: int = 256, height: int = 210) -> bytes:
    """16-bit grayscale PNG (PIL mode I;16): column x holds x * 257, so it decodes to gray level x."""
    a = (np.arange(width, dtype=np.uint16) * 257)[None].repeat(height, 0)
    return encode(Image.fromarray(a), "PNG")


def int32_tiff(width: int = 256, height: int = 210, scale: int = 257) -> bytes:
    """32-bit integer grayscale TIFF (mode I): column x holds x * scale (default: 16-bit data)."""
    a = (np.arange(width, dtype=np.int32) * scale)[None].repeat(height, 0)
    return encode(Image.fromarray(a, "I"), "TIFF")


def float_tiff(width: int = 256, height: int = 210) -> bytes:
    """Float grayscale TIFF (mode F): column x holds x / 255 in [0, 1], so it decodes to gray level x."""
    a = (np.arange(width, dtype=np.float32) / 255.0)[None].repeat(height, 0)
    return encode(Image.fromarray(a, "F"), "TIFF")


#: Palette of :func:`palette_png`: the image's three vertical bands, left to right.
PALETTE_BANDS = [(220, 20, 60), (20, 160, 60), (30, 60, 220)]


def palette_png(width: int = 240, height: int = 210) -> bytes:
    """Palette PNG (mode P, no transparency) with three bands of :data:`PALETTE_BANDS`."""
    idx = np.repeat(np.arange(3, dtype=np.uint8), -(-width // 3))[:width][None].repeat(height, 0)
    img = Image.fromarray(idx, "P")
    img.putpalette([c for rgb in PALETTE_BANDS for c in rgb] + [0] * (256 * 3 - 9))
    return encode(img, "PNG")


#: (gray level, alpha) of the three vertical bands of :func:`la_png`, and the RGB they composite to.
LA_BANDS = [((60, 0), (255, 255, 255)), ((60, 255), (60, 60, 60)), ((0, 128), (127, 127, 127))]


def la_png(width: int = 240, height: int = 210) -> bytes:
    """Gray + alpha PNG (mode LA) with the three bands of :data:`LA_BANDS`."""
    return _banded(width, height, "LA", [b[0] for b in LA_BANDS])


#: (RGBA, composited RGB) of the three vertical bands of :func:`rgba_png`. The fully transparent
#: band hides pure red: compositing must not let it leak.
RGBA_BANDS = [((255, 0, 0, 0), (255, 255, 255)), ((0, 0, 255, 255), (0, 0, 255)),
              ((0, 0, 0, 128), (127, 127, 127))]


def rgba_png(width: int = 240, height: int = 210) -> bytes:
    """RGBA PNG with the three bands of :data:`RGBA_BANDS`."""
    return _banded(width, height, "RGBA", [b[0] for b in RGBA_BANDS])


def _banded(width: int, height: int, mode: str, colors: list[tuple[int, ...]]) -> bytes:
    img = Image.new(mode, (width, height))
    step = -(-width // len(colors))
    for i, c in enumerate(colors):
        img.paste(c, (i * step, 0, min(width, (i + 1) * step), height))
    return encode(img, "PNG")


def bilevel_png(width: int = 240, height: int = 210) -> bytes:
    """1-bit PNG (mode 1): left half black, right half white."""
    img = Image.new("1", (width, height), 0)
    img.paste(1, (width // 2, 0, width, height))
    return encode(img, "PNG")


#: The RGB colour in the left half of :func:`cmyk_jpeg` (right half: white).
CMYK_LEFT_RGB = (200, 40, 40)


def cmyk_jpeg(width: int = 240, height: int = 210) -> bytes:
    """CMYK JPEG: left half :data:`CMYK_LEFT_RGB` converted to CMYK, right half white."""
    img = Image.new("RGB", (width, height), (255, 255, 255))
    img.paste(CMYK_LEFT_RGB, (0, 0, width // 2, height))
    return encode(img.convert("CMYK"), "JPEG", quality=95)


# ---------------------------------------------------------------------------------------------
# EXIF orientation

#: Upright size of :func:`exif_rotated_jpeg` and the colours of its marked corners (40x40 blocks).
UPRIGHT_SIZE = (300, 220)
CORNER = 40
TOP_LEFT_RGB, TOP_RIGHT_RGB, BOTTOM_LEFT_RGB = (255, 0, 0), (0, 0, 255), (0, 200, 0)
BACKGROUND_RGB = (128, 128, 128)

# Transposes that undo each EXIF orientation (as ImageOps.exif_transpose applies them) ...
_APPLY = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
          5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
          8: Image.Transpose.ROTATE_90}
# ... and their inverses, which turn the upright picture into what a camera would store.
_INVERSE = {**_APPLY, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}


def upright_pattern() -> Image.Image:
    """The asymmetric upright picture: red top-left, blue top-right, green bottom-left corner."""
    w, h = UPRIGHT_SIZE
    img = Image.new("RGB", UPRIGHT_SIZE, BACKGROUND_RGB)
    img.paste(TOP_LEFT_RGB, (0, 0, CORNER, CORNER))
    img.paste(TOP_RIGHT_RGB, (w - CORNER, 0, w, CORNER))
    img.paste(BOTTOM_LEFT_RGB, (0, h - CORNER, CORNER, h))
    return img


def exif_rotated_jpeg(orientation: int, quality: int = 95) -> bytes:
    """A JPEG whose pixels are stored so that applying EXIF ``orientation`` shows :func:`upright_pattern`."""
    img = upright_pattern()
    if orientation != 1:
        img = img.transpose(_INVERSE[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(img, "JPEG", quality=quality, exif=exif.tobytes())


# ---------------------------------------------------------------------------------------------
# bad bytes


def zero_bytes() -> bytes:
    return b""


def text_file() -> bytes:
    return b"This is not an image.\nJust some plain UTF-8 text, as a mislabelled download would be.\n"


def html_page() -> bytes:
    """An HTML error page, the usual body of a failed or redirected image download."""
    return (b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head>\n"
            b"<body><h1>Not Found</h1><p>The requested URL was not found on this server.</p></body></html>\n")


def pdf_header() -> bytes:
    return b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n" + b"\x00" * 64


def corrupt_jpeg(seed: int = 0) -> bytes:
    """A JPEG whose markers and tables survive but whose entropy-coded data is random (no 0xFF)."""
    good = jpeg(256, 320, seed=seed)
    sos = good.index(b"\xff\xda")
    header_end = sos + 2 + struct.unpack(">H", good[sos + 2:sos + 4])[0]
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 255, len(good) // 3, dtype=np.uint8).tobytes()  # 0..254: no marker bytes
    return good[:header_end] + noise


def truncated_jpeg() -> bytes:
    good = jpeg(256, 320, seed=1)
    return good[: len(good) // 2]


def truncated_png() -> bytes:
    good = png(256, 320, seed=1)
    return good[: len(good) // 2]


@functools.lru_cache(maxsize=4)
def bomb_png(side: int = 20_000) -> bytes:
    """A real decompression bomb: a valid 1-bit ``side`` x ``side`` all-black PNG (~50 KB at 20000).

    Decoding it would need side**2 bytes (400 MB at 20000); the pixel data is compressed row by row
    so building it does not allocate the raw image either.
    """
    row = b"\x00" * (1 + (side + 7) // 8)  # filter byte 0 + packed bits
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    return _png(side, side, 1, 0, idat)


def header_bomb_png(width: int, height: int) -> bytes:
    """A ~70-byte PNG whose header declares ``width`` x ``height`` (8-bit gray) over a stub IDAT."""
    return _png(width, height, 8, 0, zlib.compress(b"\x00" * 16))


def header_bomb_jpeg(width: int = 60_000, height: int = 60_000) -> bytes:
    """A small valid JPEG with its SOF0 frame header patched to declare ``width`` x ``height``."""
    data = bytearray(jpeg(64, 64, seed=2))
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)
    return bytes(data)


# ---------------------------------------------------------------------------------------------
# everything at once

#: The expected outcome of each case of :func:`all_cases` through decode + resolution (min side 200):
#: a reject reason, or None for an accepted row.
EXPECTED_REASON: dict[str, str | None] = {
    "jpeg": None, "png": None, "png_rgb16": None, "webp": None, "bmp": None, "gif_transparent": None,
    "tiff_multipage": None, "gray16_png": None, "int32_tiff": None, "float_tiff": None, "palette_png": None,
    "la_png": None, "rgba_png": None, "bilevel_png": None, "cmyk_jpeg": None, "exif_3": None,
    "exif_6": None, "exif_8": None, "tiny_jpeg": "too_small", "zero_bytes": "undecodable",
    "text_file": "undecodable", "html_page": "undecodable", "pdf_header": "undecodable",
    "corrupt_jpeg": "undecodable", "truncated_jpeg": "undecodable", "truncated_png": "undecodable",
    "bomb_png": "too_large", "header_bomb_png": "too_large", "header_bomb_jpeg": "too_large",
}


def all_cases() -> dict[str, bytes]:
    """Every case above, keyed as in :data:`EXPECTED_REASON`."""
    return {
        "jpeg": jpeg(), "png": png(), "png_rgb16": png_rgb16(), "webp": webp(), "bmp": bmp(),
        "gif_transparent": gif_transparent(), "tiff_multipage": tiff_multipage(), "gray16_png": gray16_png(),
        "int32_tiff": int32_tiff(), "float_tiff": float_tiff(), "palette_png": palette_png(),
        "la_png": la_png(), "rgba_png": rgba_png(), "bilevel_png": bilevel_png(), "cmyk_jpeg": cmyk_jpeg(),
        "exif_3": exif_rotated_jpeg(3), "exif_6": exif_rotated_jpeg(6), "exif_8": exif_rotated_jpeg(8),
        "tiny_jpeg": tiny_jpeg(), "zero_bytes": zero_bytes(), "text_file": text_file(),
        "html_page": html_page(), "pdf_header": pdf_header(), "corrupt_jpeg": corrupt_jpeg(),
        "truncated_jpeg": truncated_jpeg(), "truncated_png": truncated_png(), "bomb_png": bomb_png(),
        "header_bomb_png": header_bomb_png(20_000, 20_000), "header_bomb_jpeg": header_bomb_jpeg(),
    }
