"""Codecs for the per-pixel maps and keypoints stored in HumanVerse rows (docs/format.md).

* depth  <-> 16-bit grayscale PNG, min-max normalised per image; ``depth_min``/``depth_max``
  restore metric-free relative values with error <= (max - min) / 65535 / 2 per pixel.
* normal <-> 8-bit RGB PNG, ``n = rgb / 127.5 - 1`` per component (error <= 1/127.5), decoded
  vectors renormalised to unit length.
* keypoints <-> flat float32[399] in COCO-WholeBody order.

Maps are written by :func:`png_unfiltered`: zlib level 1 (about three times faster to write than
the default level 6) and PNG row filter "None" on every row. Pillow's writer picks adaptive filters
(mostly Paeth), and undoing them, not zlib, dominates the map decode in the training reader;
unfiltered maps decode about twice as fast for somewhat more bytes (BENCHMARKS.md,
``bench/train_loader.py``). Any PNG decoder reads them.
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image

from humanverse.schema import KEYPOINT_VALUES, NUM_KEYPOINTS

PNG_COMPRESS_LEVEL = 1


@dataclass(frozen=True)
class EncodedDepth:
    png: bytes
    depth_min: float
    depth_max: float


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def png_unfiltered(arr: np.ndarray, compress_level: int = 1) -> bytes:
    """A PNG of ``arr`` ((H, W) uint8/uint16 grey or (H, W, 3) uint8 RGB) with filter type 0 on
    every row: a valid PNG (ISO/IEC 15948) that decodes faster than adaptively filtered ones."""
    a = np.asarray(arr)
    if a.dtype not in (np.uint8, np.uint16) or not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] == 3)):
        raise ValueError(f"png_unfiltered takes (H, W) uint8/uint16 or (H, W, 3) uint8, got {a.dtype} {a.shape}.")
    h, w = a.shape[:2]
    depth = 16 if a.dtype == np.uint16 else 8
    rows = a.astype(">u2" if depth == 16 else np.uint8).reshape(h, -1).view(np.uint8)
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rows], axis=1).tobytes()  # filter byte 0 per row
    ihdr = struct.pack(">IIBBBBB", w, h, depth, 0 if a.ndim == 2 else 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(raw, compress_level))
            + _png_chunk(b"IEND", b""))


def encode_depth(depth: np.ndarray, compress_level: int = PNG_COMPRESS_LEVEL) -> EncodedDepth:
    """Encode an (H, W) float map as a 16-bit PNG normalised to its own [min, max]."""
    depth = np.asarray(depth)
    if depth.ndim != 2 or depth.size == 0:
        raise ValueError(f"depth must be a non-empty (H, W) array, got shape {depth.shape}.")
    if not np.isfinite(depth).all():
        raise ValueError("depth contains NaN or infinite values; only finite maps can be encoded.")
    d = depth.astype(np.float64)
    lo, hi = float(d.min()), float(d.max())
    scale = 65535.0 / (hi - lo) if hi > lo else 0.0
    q = np.rint((d - lo) * scale).astype(np.uint16)
    return EncodedDepth(png_unfiltered(q, compress_level), np.float32(lo).item(), np.float32(hi).item())


def decode_depth(png: bytes, depth_min: float, depth_max: float) -> np.ndarray:
    """Inverse of :func:`encode_depth`: (H, W) float32 in [depth_min, depth_max]."""
    with Image.open(io.BytesIO(png)) as img:
        q = np.asarray(img)
    if q.ndim != 2:
        raise ValueError(f"depth PNG must be single-channel, got array shape {q.shape}.")
    q = q.astype(np.float32)
    return (depth_min + q * ((depth_max - depth_min) / 65535.0)).astype(np.float32)


def encode_normal(normal: np.ndarray, compress_level: int = PNG_COMPRESS_LEVEL) -> bytes:
    """Encode an (H, W, 3) map of unit normals (components in [-1, 1]) as an 8-bit RGB PNG."""
    n = np.asarray(normal)
    if n.ndim != 3 or n.shape[2] != 3 or n.size == 0:
        raise ValueError(f"normal must be an (H, W, 3) array, got shape {n.shape}.")
    if not np.isfinite(n).all():
        raise ValueError("normal contains NaN or infinite values; only finite maps can be encoded.")
    rgb = np.clip(np.rint((n.astype(np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)
    return png_unfiltered(rgb, compress_level)


def decode_normal(png: bytes, renormalise: bool = True) -> np.ndarray:
    """Inverse of :func:`encode_normal`: (H, W, 3) float32; unit length restored when asked."""
    with Image.open(io.BytesIO(png)) as img:
        rgb = np.asarray(img.convert("RGB"), dtype=np.float32)
    n = rgb / 127.5 - 1.0
    if renormalise:
        norm = np.linalg.norm(n, axis=-1, keepdims=True)
        n = np.where(norm > 1e-6, n / np.maximum(norm, 1e-6), n)
    return n.astype(np.float32)


def encode_keypoints(keypoints: np.ndarray) -> list[float]:
    """(133, 3) array of (x, y, score) -> flat float32 list of 399 values (the stored layout)."""
    kp = np.asarray(keypoints, dtype=np.float32)
    if kp.shape != (NUM_KEYPOINTS, 3):
        raise ValueError(f"keypoints must have shape ({NUM_KEYPOINTS}, 3), got {kp.shape}.")
    if not np.isfinite(kp).all():
        raise ValueError("keypoints contain NaN or infinite values.")
    return kp.reshape(-1).tolist()


def decode_keypoints(flat) -> np.ndarray:
    """Flat 399 stored values -> (133, 3) float32 array of (x, y, score)."""
    kp = np.asarray(flat, dtype=np.float32)
    if kp.size != KEYPOINT_VALUES:
        raise ValueError(f"stored keypoints must hold {KEYPOINT_VALUES} values, got {kp.size}.")
    return kp.reshape(NUM_KEYPOINTS, 3)


def encode_image(img: Image.Image, format: str = "JPEG", quality: int = 95) -> bytes:
    """Encode an RGB PIL image (used when the stored image had to be re-encoded, e.g. resized)."""
    buf = io.BytesIO()
    if format.upper() == "JPEG":
        img.convert("RGB").save(buf, format="JPEG", quality=quality)
    else:
        img.save(buf, format=format)
    return buf.getvalue()


def decode_image(data: bytes) -> Image.Image:
    """Decode stored image bytes to an RGB PIL image (stored images are already upright RGB)."""
    with Image.open(io.BytesIO(data)) as img:
        return img.convert("RGB")
