"""Decode and validate source images: the builder's first filter (HyperHuman §4).

HyperHuman (arXiv 2310.08579, §4 "HumanVerse") starts from LAION-2B-en / COYO-700M web images;
before any model sees them, every source row is decoded once here. A row either becomes an upright
8-bit RGB image ready for the model stages, or a reject with a reason from the fixed vocabulary:

* ``download_failed`` (or the reader's ``source_reason``, ``undecodable`` for bytes it could not
  read): the reader marked the row as carrying no image (``source_error``, the detail);
* ``too_large``: the header declares more than ``max_pixels`` pixels (a decompression bomb guard
  applied *before* any pixel data is decoded);
* ``undecodable``: empty, truncated, corrupt or non-image bytes (the detail says what failed).

Conventions (the format contract, ``docs/format.md``):

* ``id`` is the hex sha256 of the ORIGINAL source bytes, set for every row that reaches this stage,
  rejected or not (``sha256(b"")`` when the bytes are null), so rejects are accounted for by id too.
* ``orig_width``/``orig_height`` are the size of the *upright* original: after applying the EXIF
  orientation, before any resize. For rows rejected here they are the size the header declares
  (before EXIF orientation) when the header could be read, else null.
* ``width``/``height`` are the size of the stored ``image``.
* The stored ``image`` is the original bytes, unchanged, when they already are what the format
  promises: a single-frame 8-bit RGB JPEG or PNG, upright (no EXIF orientation 2..8, EXIF
  readable), without transparency, and not resized. Everything else is re-encoded as a JPEG at
  ``jpeg_quality`` with Pillow's default 4:2:0 chroma subsampling (as img2dataset's encoder),
  including grayscale JPEGs, so that every stored image opens as RGB. Why never PNG: after
  compositing on white every stored image is opaque and the sources are photographs, so a lossless
  PNG would cost ~5-10x the bytes and ~3x the decode time for no gain a generator can see. Re-encoded images carry no EXIF (orientation is applied; GPS and the like are dropped); an
  RGB source's ICC profile is carried over so they look the same as kept originals.
* ``source_bytes`` is nulled once decoded: the stored ``image`` replaces it in the object store.

Colour handling: every PIL mode ends as 8-bit RGB. Transparency (LA, RGBA, PA, P or L/RGB with a
``transparency`` key) is composited on white. 16-bit grayscale (``I;16*``) keeps its top byte
(``>> 8``), so the full 16-bit range maps onto 0..255. Mode ``I`` (32-bit int) is treated as 16-bit
data when its values lie in 0..65535 (how PIL opens 16-bit PGM/TIFF) and min-max normalised
otherwise. Mode ``F`` (float) is scaled by 255 when its values lie in [0, 1], taken as is when they
lie in [0, 255], min-max normalised otherwise (non-finite values count as 0). CMYK uses PIL's
conversion; embedded ICC profiles are not applied (the pipeline treats pixel values as sRGB, as
the models it feeds do).

Thread safety: the decompression-bomb warning of Pillow is silenced with ``warnings.catch_warnings``,
which mutates process-wide state on Python < 3.14; run one decode per process (Ray Data's default
for task-based ``map_batches``), not from several threads at once.
"""

from __future__ import annotations

import hashlib
import io
import logging
import struct
import warnings
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import ExifTags, Image, ImageOps

from humanverse.config import check
from pipelines.stages.base import Reject, RowFilter, as_inflight_table

logger = logging.getLogger(__name__)

STAGE = "decode"

#: Pillow's default ``MAX_IMAGE_PIXELS`` (the decompression-bomb warning threshold).
DEFAULT_MAX_PIXELS = 89_478_485

#: Formats Pillow may identify the bytes as. Restricting the list keeps Pillow's exotic decoders
#: (a larger attack surface) away from web bytes and stops text or HTML from being mistaken for a
#: loosely-identified format (TGA, ...). Add ``"AVIF"`` etc. via the config when needed.
#: (Multi-picture JPEGs, format "MPO", are opened through "JPEG".)
DEFAULT_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")

#: ``reducing_gap`` of the LANCZOS resize (the value ``Image.thumbnail`` uses): a cheap
#: integer-factor box reduction first, stopping at 2x the target size, then a true LANCZOS.
REDUCING_GAP = 2.0
#: JPEGs are decoded with libjpeg's DCT scaling (``Image.draft``) to the smallest of 1/2, 1/4, 1/8
#: that is still >= DRAFT_GAP x the target, then LANCZOS-resized: less than half the decode time,
#: and well under one grey level from a full decode + LANCZOS (timings in BENCHMARKS.md). A gap of
#: 2, as ``Image.thumbnail`` uses, would never draft at a 2000 -> 512 px ratio.
DRAFT_GAP = 1.0

_ORIENTATION_TAG = ExifTags.Base.Orientation
_TRANSPOSING = frozenset(range(2, 9))  # EXIF orientations 2..8 need a transpose; 5..8 swap w/h
_ALPHA_MODES = frozenset({"LA", "La", "PA", "RGBA", "RGBa"})
_RGB_ICC_MODES = frozenset({"RGB", "RGBA", "RGBX", "RGBa", "P", "PA"})
_WHITE = (255, 255, 255)

#: Exceptions that bad bytes raise inside Pillow; anything else is logged as a possible bug.
_DATA_ERRORS: tuple[type[BaseException], ...] = (OSError, SyntaxError, ValueError, EOFError, struct.error,
                                                 zlib.error)


def _is_int(v: object) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


@dataclass(frozen=True)
class DecodeConfig:
    """Settings of :class:`DecodeStage`; validated on construction."""

    #: Decompression-bomb limit in pixels (Pillow's default ``MAX_IMAGE_PIXELS``); larger images
    #: are rejected as ``too_large`` from their header alone.
    max_pixels: int = DEFAULT_MAX_PIXELS
    #: When set, images whose longer side exceeds it are resized (LANCZOS) so that it equals it.
    max_side: int | None = None
    #: JPEG quality used when an image has to be re-encoded.
    jpeg_quality: int = 95
    #: Image formats accepted (Pillow format names); other bytes are ``undecodable``.
    formats: tuple[str, ...] = DEFAULT_FORMATS

    def __post_init__(self) -> None:
        check(_is_int(self.max_pixels) and self.max_pixels > 0,
              f"decode.max_pixels must be a positive integer, got {self.max_pixels!r}.")
        pil_limit = Image.MAX_IMAGE_PIXELS
        check(pil_limit is None or self.max_pixels <= 2 * pil_limit,
              f"decode.max_pixels={self.max_pixels} is above Pillow's hard limit 2 * PIL.Image.MAX_IMAGE_PIXELS "
              f"= {2 * (pil_limit or 0)}, so such images could never be decoded; use at most {2 * (pil_limit or 0)}.")
        check(self.max_side is None or (_is_int(self.max_side) and self.max_side > 0),
              f"decode.max_side must be null or a positive integer, got {self.max_side!r}.")
        check(_is_int(self.jpeg_quality) and 1 <= self.jpeg_quality <= 100,
              f"decode.jpeg_quality must be an integer in 1..100, got {self.jpeg_quality!r}.")
        check(isinstance(self.formats, (tuple, list)) and len(self.formats) > 0
              and all(isinstance(f, str) for f in self.formats),
              f"decode.formats must be a non-empty list of Pillow format names, got {self.formats!r}.")
        formats = tuple(f.upper() for f in self.formats)
        Image.init()
        unknown = [f for f in formats if f not in Image.OPEN]
        check(not unknown, f"decode.formats {unknown} cannot be read by this Pillow build; readable formats are "
                           f"{sorted(Image.OPEN)}.")
        object.__setattr__(self, "formats", formats)


@dataclass(frozen=True)
class Decoded:
    """A decoded source image: what is stored, and its sizes (see the module docstring)."""

    image: bytes
    width: int
    height: int
    orig_width: int
    orig_height: int
    format: str  # the source format as Pillow names it
    reencoded: bool  # False: ``image`` is the original bytes


@dataclass(frozen=True)
class Rejected(Reject):
    """Why a source image cannot be used, with the size its header declares when it could be read;
    ``unexpected`` marks a possible bug (logged at WARNING)."""

    orig_width: int | None = None
    orig_height: int | None = None
    unexpected: bool = False


def image_id(data: bytes | None) -> str:
    """The row id: hex sha256 of the original bytes (of ``b""`` when they are null)."""
    return hashlib.sha256(data or b"").hexdigest()


def _orientation(img: Image.Image) -> tuple[int, bool]:
    """(EXIF orientation, whether the EXIF block could be read). Unreadable EXIF counts as 1."""
    try:
        value = img.getexif().get(_ORIENTATION_TAG, 1)
    except Exception as e:  # noqa: BLE001 - corrupt metadata must not cost a good image
        logger.debug("unreadable EXIF (%s: %s); treating orientation as 1", type(e).__name__, e)
        return 1, False
    return (int(value) if _is_int(value) else 1), True


def _upright(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    w, h = size
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def _target_size(size: tuple[int, int], max_side: int | None) -> tuple[int, int] | None:
    """Size after shrinking so that the longer side is ``max_side``; None when no resize is needed."""
    w, h = size
    if max_side is None or max(w, h) <= max_side:
        return None
    s = max_side / max(w, h)
    return (max_side, max(1, round(h * s))) if w >= h else (max(1, round(w * s)), max_side)


def _int_to_u8(a: np.ndarray) -> np.ndarray:
    """Integer grayscale -> uint8: 16-bit data keeps its top byte, wider ranges are min-max scaled."""
    a = a.astype(np.int64, copy=False)
    lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
    if lo >= 0 and hi <= 0xFFFF:
        return (a >> 8).astype(np.uint8)
    return _minmax_u8(a.astype(np.float64), lo, hi)


def _float_to_u8(a: np.ndarray) -> np.ndarray:
    """Float grayscale -> uint8: [0, 1] * 255, [0, 255] as is, else min-max (non-finite -> 0)."""
    a = np.where(np.isfinite(a), a, 0.0).astype(np.float64, copy=False)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if lo >= 0.0 and hi <= 1.0:
        return np.rint(a * 255.0).astype(np.uint8)
    if lo >= 0.0 and hi <= 255.0:
        return np.rint(a).astype(np.uint8)
    return _minmax_u8(a, lo, hi)


def _minmax_u8(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    if hi <= lo:
        return np.zeros(a.shape, np.uint8)
    return np.rint((a - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _has_alpha(img: Image.Image) -> bool:
    if img.mode in _ALPHA_MODES or "transparency" in img.info:
        return True
    return img.mode == "P" and img.palette is not None and img.palette.mode == "RGBA"


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB (conventions in the module docstring); transparency on white."""
    mode = img.mode
    if mode == "RGB" and "transparency" not in img.info:
        return img
    if mode.startswith("I;16") or mode == "I":
        return Image.fromarray(_int_to_u8(np.asarray(img)), "L").convert("RGB")
    if mode == "F":
        return Image.fromarray(_float_to_u8(np.asarray(img)), "L").convert("RGB")
    if _has_alpha(img):
        rgba = img.convert("LA").convert("RGBA") if mode == "La" else img.convert("RGBA")
        out = Image.new("RGB", rgba.size, _WHITE)
        out.paste(rgba, mask=rgba.getchannel("A"))  # out = rgb * a + white * (1 - a)
        return out
    return img.convert("RGB")


def _encode_jpeg(img: Image.Image, quality: int, icc_profile: bytes | None) -> bytes:
    buf = io.BytesIO()
    kwargs: dict[str, Any] = {"quality": quality}
    if icc_profile:
        kwargs["icc_profile"] = icc_profile
    img.save(buf, format="JPEG", **kwargs)
    return buf.getvalue()


def _decode(data: bytes, cfg: DecodeConfig, header: dict[str, int]) -> Decoded | Rejected:
    """The decode proper; bad bytes raise (Pillow's exceptions), :func:`decode_one` maps them.

    ``header`` receives the declared ``width``/``height`` as soon as the header is read, so that a
    reject raised later can still report them.
    """
    try:
        img = Image.open(io.BytesIO(data), formats=cfg.formats)
    except Image.UnidentifiedImageError:
        return Rejected("undecodable", f"not an image in an accepted format {list(cfg.formats)}; "
                                       f"it starts with {data[:24]!r}")
    with img:
        fmt = img.format or "unknown"
        w, h = img.size
        header.update(width=w, height=h)
        # Decompression-bomb guard from the header alone, before any pixel data is decoded.
        if w <= 0 or h <= 0:
            return Rejected("undecodable", f"{fmt} header declares an empty size {w}x{h}")
        if w * h > cfg.max_pixels:
            return Rejected("too_large", f"{fmt} header declares {w}x{h} = {w * h} pixels > max_pixels "
                                         f"{cfg.max_pixels}", w, h)
        src_mode = img.mode
        # PNG: keepable only when 8-bit RGB (16-bit RGB PNGs also open as mode "RGB") and one frame.
        png_plain = fmt == "PNG" and len(img.tile) > 0 and img.tile[0].args == "RGB" \
            and getattr(img, "n_frames", 1) == 1
        icc = img.info.get("icc_profile") if src_mode in _RGB_ICC_MODES else None
        transparency = "transparency" in img.info

        orientation, exif_ok, drafted = 1, True, False
        if cfg.max_side is not None and fmt in ("JPEG", "MPO"):
            # JPEG EXIF is parsed with the header, so the orientation is known before decoding and
            # libjpeg can decode straight at 1/2, 1/4 or 1/8 scale (DCT scaling): far less work.
            orientation, exif_ok = _orientation(img)
            target = _target_size(_upright((w, h), orientation), cfg.max_side)
            if target is not None:
                tw, th = _upright(target, orientation)  # back to the stored (sensor) orientation
                drafted = img.draft(None, (int(tw * DRAFT_GAP), int(th * DRAFT_GAP))) is not None

        img.load()  # full decode: truncated / corrupt data raises here
        if not (cfg.max_side is not None and fmt in ("JPEG", "MPO")):
            orientation, exif_ok = _orientation(img)  # PNG may carry eXIf after the pixel data

        im: Image.Image = img
        if orientation in _TRANSPOSING:
            im = ImageOps.exif_transpose(img)
        # The upright original's size; a draft decode is smaller, so take it from the header then.
        orig_w, orig_h = _upright((w, h), orientation) if drafted else im.size
        rgb = to_rgb(im)
        target = _target_size((orig_w, orig_h), cfg.max_side)
        if target is not None and rgb.size != target:
            rgb = rgb.resize(target, Image.Resampling.LANCZOS, reducing_gap=REDUCING_GAP)

        keep = (target is None and src_mode == "RGB" and not transparency and exif_ok
                and orientation not in _TRANSPOSING and (fmt == "JPEG" or png_plain))
        if keep:
            return Decoded(data, orig_w, orig_h, orig_w, orig_h, fmt, reencoded=False)
        stored = _encode_jpeg(rgb, cfg.jpeg_quality, icc)
        return Decoded(stored, rgb.width, rgb.height, orig_w, orig_h, fmt, reencoded=True)


def decode_one(data: bytes | None, cfg: DecodeConfig) -> Decoded | Rejected:
    """Decode one source image into what the dataset stores, or say why it cannot be used.

    Pure and total: it never raises for bad input. Exceptions Pillow raises on bad bytes become
    ``undecodable``; any other exception also does, with ``unexpected=True`` so the caller logs it.
    Warnings raised while decoding are recorded and logged at DEBUG, never propagated, so the result
    does not depend on the process's warning filters (Pillow's decompression-bomb warning included:
    the size check against ``cfg.max_pixels`` is ours).
    """
    if data is None:
        return Rejected("undecodable", "no image bytes (source_bytes is null)")
    if len(data) == 0:
        return Rejected("undecodable", "empty image bytes (0 bytes)")
    header: dict[str, int] = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = _decode(bytes(data), cfg, header)
        except Image.DecompressionBombError as e:  # Pillow's hard limit (2 * MAX_IMAGE_PIXELS), at open
            result = Rejected("too_large", f"Pillow: {e}")
        except _DATA_ERRORS as e:
            result = Rejected("undecodable", f"{type(e).__name__}: {e}", header.get("width"), header.get("height"))
        except Exception as e:  # noqa: BLE001 - one bad row must never fail the batch
            result = Rejected("undecodable", f"unexpected {type(e).__name__} while decoding: {e}",
                              header.get("width"), header.get("height"), unexpected=True)
    for w in caught:
        logger.debug("warning while decoding: %s: %s", w.category.__name__, w.message)
    return result


class DecodeStage(RowFilter):
    """Ray Data stage: decode and validate every alive row (HyperHuman §4's first filter).

    A CPU stage: call an instance on a table with :func:`pipelines.rows.inflight_schema` ``(clip_dim)``
    columns; rows rejected upstream pass through untouched, and the output has the same rows in the
    same order. Images are decoded one at a time and no decoded pixels are kept, so memory is bounded
    by the batch's encoded bytes plus one image.
    """

    name = STAGE
    config_class = DecodeConfig

    def check(self, row: dict) -> Reject | None:
        """Decode one alive row in place: its ``id`` always, its image and sizes when it decodes."""
        data = row.get("source_bytes")
        row["id"] = image_id(data)
        if row.get("source_error") is not None:
            reason = row.get("source_reason") or "download_failed"
            return Reject(reason, row["source_error"] or "source row has no image")
        try:
            res = decode_one(data, self.config)
        except Exception as e:  # noqa: BLE001 - decode_one is total; this guards against our own bugs
            res = Rejected("undecodable", f"unexpected {type(e).__name__} while decoding: {e}", unexpected=True)
        if isinstance(res, Rejected):
            log = logger.warning if res.unexpected else logger.debug
            log("reject %s (shard %s, index %s): %s: %s", row.get("source_key"), row.get("source_shard"),
                row.get("source_index"), res.reason, res.detail)
            row["orig_width"], row["orig_height"] = res.orig_width, res.orig_height
            return res
        row.update(image=res.image, width=res.width, height=res.height, orig_width=res.orig_width,
                   orig_height=res.orig_height, source_bytes=None)
        return None


__all__ = ["DEFAULT_FORMATS", "DEFAULT_MAX_PIXELS", "DecodeConfig", "DecodeStage", "Decoded", "Rejected",
           "as_inflight_table", "decode_one", "image_id", "to_rgb"]
