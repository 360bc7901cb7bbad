"""Minimum-resolution filter (HyperHuman §4, DESIGN.md §2: "resolution >= 200").

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
import pyarrow as pa

from pipelines.configs import check
from pipelines.rows import reject
from pipelines.stages.base import Stage
from pipelines.stages.decode import as_inflight_table

STAGE = "resolution"


@dataclass(frozen=True)
class ResolutionConfig:
    """Settings of :class:`ResolutionStage`; validated on construction."""

    #: Rows whose original shorter side is below this many pixels are rejected as ``too_small``.
    min_side: int = 200

    def __post_init__(self) -> None:
        check(not isinstance(self.min_side, bool) and isinstance(self.min_side, (int, np.integer))
              and self.min_side > 0, f"resolution.min_side must be a positive integer, got {self.min_side!r}.")


class ResolutionStage(Stage):
    """Reject alive rows whose original shorter side is below ``min_side`` (reason ``too_small``).

    Runs after :class:`pipelines.stages.decode.DecodeStage` (which sets the original size); use as
    ``ds.map_batches(ResolutionStage, fn_constructor_kwargs={"config": cfg}, batch_format="pyarrow")``
    or call an instance on a table.
    """

    name = STAGE

    def __init__(self, config: ResolutionConfig | None = None, clip_dim: int | None = None):
        super().__init__(clip_dim)
        self.config = config if config is not None else ResolutionConfig()
        if not isinstance(self.config, ResolutionConfig):
            raise TypeError(f"config must be a ResolutionConfig, got {type(self.config).__name__}.")
        self.clip_dim = clip_dim

    def __call__(self, batch: pa.Table) -> pa.Table:
        return super().__call__(as_inflight_table(batch, self.schema, type(self).__name__))

    def process(self, rows: list[dict]) -> None:
        for row in rows:
            self.process_row(row)

    def process_row(self, row: dict) -> dict:
        """Check one alive row in place (and return it)."""
        w, h = row.get("orig_width"), row.get("orig_height")
        if w is None or h is None:
            raise ValueError(f"row {row.get('source_key')!r} (shard {row.get('source_shard')!r}, index "
                             f"{row.get('source_index')}) has no orig_width/orig_height: run DecodeStage "
                             "before ResolutionStage.")
        short = min(w, h)
        if short < self.config.min_side:
            return reject(row, STAGE, "too_small", f"min side {short} < {self.config.min_side} "
                                                   f"(original {w}x{h})")
        return row


__all__ = ["ResolutionConfig", "ResolutionStage"]
