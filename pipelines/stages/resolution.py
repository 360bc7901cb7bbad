"""Minimum-resolution filter (HyperHuman §4: "resolution >= 200").

HyperHuman (arXiv 2310.08579, §4 "HumanVerse") keeps only images whose resolution is at least 200
pixels. The check is on the ORIGINAL size (``orig_width``/``orig_height``: the upright source image,
after EXIF orientation and before any resize): the paper filters on the source image's resolution,
and the decode stage's optional resize only ever shrinks images to a ``max_side``, so checking the
stored size would reject sources that are large enough merely because of our own storage setting.
Rotation does not change the shorter side, so the EXIF convention does not matter here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from humanverse.config import check
from pipelines.stages.base import Reject, RowFilter

STAGE = "resolution"


@dataclass(frozen=True)
class ResolutionConfig:
    """Settings of :class:`ResolutionStage`; validated on construction."""

    #: Rows whose original shorter side is below this many pixels are rejected as ``too_small``.
    min_side: int = 200

    def __post_init__(self) -> None:
        check(not isinstance(self.min_side, bool) and isinstance(self.min_side, (int, np.integer))
              and self.min_side > 0, f"resolution.min_side must be a positive integer, got {self.min_side!r}.")


class ResolutionStage(RowFilter):
    """Reject alive rows whose original shorter side is below ``min_side`` (reason ``too_small``).

    Runs after :class:`pipelines.stages.decode.DecodeStage` (which sets the original size).
    """

    name = STAGE
    config_class = ResolutionConfig

    def check(self, row: dict) -> Reject | None:
        w, h = row.get("orig_width"), row.get("orig_height")
        if w is None or h is None:
            raise ValueError(f"row {row.get('source_key')!r} (shard {row.get('source_shard')!r}, index "
                             f"{row.get('source_index')}) has no orig_width/orig_height: run DecodeStage "
                             "before ResolutionStage.")
        short = min(w, h)
        if short < self.config.min_side:
            return Reject("too_small", f"min side {short} < {self.config.min_side} (original {w}x{h})")
        return None


__all__ = ["ResolutionConfig", "ResolutionStage"]
