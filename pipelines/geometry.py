"""Coordinates between the stored image and the outpainting canvas (HyperHuman §4).

The paper outpaints every image so pose, depth and normal models see whole bodies, then keeps only
the labels inside the original frame. Convention (all in pixels, origin top-left, continuous
coordinates, a pixel's centre at i + 0.5):

* the canvas holds the stored image unscaled, its top-left at ``(offset_x, offset_y)``;
* ``canvas = stored + offset`` and ``stored = canvas - offset`` (exact, no rounding);
* dense maps computed on the canvas are cropped to ``[offset_y : offset_y + height,
  offset_x : offset_x + width]``;
* keypoints mapped back that fall outside ``[0, width) x [0, height)`` get score 0.

The row's ``outpaint`` struct records ``applied``, ``canvas_width``, ``canvas_height``,
``offset_x`` and ``offset_y``; with no outpainting the canvas is the image and the offset (0, 0).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Canvas:
    width: int  # stored image size
    height: int
    canvas_width: int
    canvas_height: int
    offset_x: int
    offset_y: int
    applied: bool = True

    def __post_init__(self):
        if self.offset_x < 0 or self.offset_y < 0:
            raise ValueError(f"canvas offset must be >= 0, got ({self.offset_x}, {self.offset_y}).")
        if self.offset_x + self.width > self.canvas_width or self.offset_y + self.height > self.canvas_height:
            raise ValueError(
                f"a {self.width}x{self.height} image at ({self.offset_x}, {self.offset_y}) does not fit in a "
                f"{self.canvas_width}x{self.canvas_height} canvas."
            )

    @classmethod
    def identity(cls, width: int, height: int) -> "Canvas":
        return cls(width, height, width, height, 0, 0, applied=False)

    @classmethod
    def from_record(cls, width: int, height: int, rec: dict | None) -> "Canvas":
        if not rec:
            return cls.identity(width, height)
        return cls(width, height, rec["canvas_width"], rec["canvas_height"], rec["offset_x"], rec["offset_y"],
                   rec["applied"])

    def record(self) -> dict:
        return {"applied": self.applied, "canvas_width": self.canvas_width, "canvas_height": self.canvas_height,
                "offset_x": self.offset_x, "offset_y": self.offset_y}

    # -- points and boxes ---------------------------------------------------------------------
    def boxes_to_canvas(self, boxes) -> np.ndarray:
        b = np.asarray(boxes, np.float64).reshape(-1, 4).copy()
        b[:, [0, 2]] += self.offset_x
        b[:, [1, 3]] += self.offset_y
        return b

    def boxes_to_stored(self, boxes) -> np.ndarray:
        b = np.asarray(boxes, np.float64).reshape(-1, 4).copy()
        b[:, [0, 2]] -= self.offset_x
        b[:, [1, 3]] -= self.offset_y
        return b

    def keypoints_to_stored(self, keypoints) -> np.ndarray:
        """(..., K, 3) canvas keypoints -> stored-image keypoints; outside the frame -> score 0."""
        kp = np.array(keypoints, np.float32, copy=True)
        kp[..., 0] -= self.offset_x
        kp[..., 1] -= self.offset_y
        inside = (kp[..., 0] >= 0) & (kp[..., 0] < self.width) & (kp[..., 1] >= 0) & (kp[..., 1] < self.height)
        kp[..., 2] = np.where(inside, kp[..., 2], 0.0)
        return kp

    def keypoints_to_canvas(self, keypoints) -> np.ndarray:
        kp = np.array(keypoints, np.float32, copy=True)
        kp[..., 0] += self.offset_x
        kp[..., 1] += self.offset_y
        return kp

    # -- dense maps ---------------------------------------------------------------------------
    def crop_map(self, canvas_map: np.ndarray) -> np.ndarray:
        """A map at canvas resolution (H_c, W_c, ...) -> the stored frame (H, W, ...)."""
        m = np.asarray(canvas_map)
        if m.shape[:2] != (self.canvas_height, self.canvas_width):
            raise ValueError(f"map is {m.shape[1]}x{m.shape[0]}, expected the canvas size "
                             f"{self.canvas_width}x{self.canvas_height}.")
        return m[self.offset_y:self.offset_y + self.height, self.offset_x:self.offset_x + self.width]


@dataclass(frozen=True)
class MapsConfig:
    """Stored size of the depth/normal maps: the stored image size, or capped so the longer side is
    <= ``max_side`` (aspect kept). Every map stage of a run uses the same one (``maps`` in the config)."""

    max_side: int | None = None

    def __post_init__(self):
        if self.max_side is not None and self.max_side < 16:
            raise ValueError(f"maps.max_side must be >= 16 or null, got {self.max_side}.")

    def size(self, width: int, height: int) -> tuple[int, int]:
        if self.max_side is None or max(width, height) <= self.max_side:
            return width, height
        s = self.max_side / max(width, height)
        return max(1, round(width * s)), max(1, round(height * s))


def plan_canvas(width: int, height: int, boxes, *, policy: str, pad_fraction: float, border_margin: float,
                max_canvas_side: int | None = None) -> Canvas:
    """Where to put the stored image in an outpainting canvas.

    ``policy``: ``always`` pads every side by ``pad_fraction`` of the image size; ``truncated``
    pads only the sides that some person box touches or nears (within ``border_margin`` of the
    side's length), so images whose people are fully inside are not outpainted; ``never`` returns
    the identity. Padding is rounded to whole pixels (multiples of 8 for the diffusion VAE) and
    capped so the canvas side stays <= ``max_canvas_side`` when given.
    """
    if policy == "never":
        return Canvas.identity(width, height)
    b = np.asarray(boxes, np.float64).reshape(-1, 4)
    px, py = pad_fraction * width, pad_fraction * height
    if policy == "always":
        sides = {"left": True, "right": True, "top": True, "bottom": True}
    elif policy == "truncated":
        mx, my = border_margin * width, border_margin * height
        sides = {"left": bool((b[:, 0] <= mx).any()), "right": bool((b[:, 2] >= width - mx).any()),
                 "top": bool((b[:, 1] <= my).any()), "bottom": bool((b[:, 3] >= height - my).any())}
    else:
        raise ValueError(f"outpaint policy must be 'always', 'truncated' or 'never', got {policy!r}.")
    if not any(sides.values()):
        return Canvas.identity(width, height)

    def r8(v: float) -> int:
        return int(np.ceil(v / 8.0) * 8)

    left, right = (r8(px) if sides["left"] else 0), (r8(px) if sides["right"] else 0)
    top, bottom = (r8(py) if sides["top"] else 0), (r8(py) if sides["bottom"] else 0)
    if max_canvas_side is not None:
        scale_w = max(0, max_canvas_side - width) / max(left + right, 1)
        scale_h = max(0, max_canvas_side - height) / max(top + bottom, 1)
        if scale_w < 1:
            left, right = int(left * scale_w) // 8 * 8, int(right * scale_w) // 8 * 8
        if scale_h < 1:
            top, bottom = int(top * scale_h) // 8 * 8, int(bottom * scale_h) // 8 * 8
    if left + right + top + bottom == 0:
        return Canvas.identity(width, height)
    return Canvas(width, height, width + left + right, height + top + bottom, left, top, applied=True)
