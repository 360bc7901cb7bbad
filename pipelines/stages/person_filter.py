"""Person filter (HyperHuman §4): keep images with 1-3 persons whose boxes cover >= 15 % of the image."""

from __future__ import annotations

from dataclasses import dataclass

from pipelines import rows as R
from pipelines.configs import check
from pipelines.stages.base import Stage


@dataclass(frozen=True)
class PersonFilterConfig:
    min_persons: int = 1
    max_persons: int = 3
    #: union of person boxes / image area
    min_area: float = 0.15

    def __post_init__(self):
        check(self.min_persons >= 1, f"person_filter.min_persons must be >= 1, got {self.min_persons}.")
        check(self.max_persons >= self.min_persons,
              f"person_filter.max_persons ({self.max_persons}) must be >= min_persons ({self.min_persons}).")
        check(0.0 <= self.min_area <= 1.0, f"person_filter.min_area must be in [0, 1], got {self.min_area}.")


def union_area(boxes: list[list[float]]) -> float:
    """Exact area of the union of axis-aligned boxes [x0, y0, x1, y1] (coordinate compression)."""
    if not boxes:
        return 0.0
    xs = sorted({b[0] for b in boxes} | {b[2] for b in boxes})
    area = 0.0
    for xa, xb in zip(xs, xs[1:]):
        spans = sorted((b[1], b[3]) for b in boxes if b[0] <= xa and b[2] >= xb)
        covered, cur0, cur1 = 0.0, None, None
        for y0, y1 in spans:
            if cur1 is None or y0 > cur1:
                if cur1 is not None:
                    covered += cur1 - cur0
                cur0, cur1 = y0, y1
            else:
                cur1 = max(cur1, y1)
        if cur1 is not None:
            covered += cur1 - cur0
        area += covered * (xb - xa)
    return area


class PersonFilter(Stage):
    name = "person_filter"

    def __init__(self, config: PersonFilterConfig, clip_dim: int | None = None):
        super().__init__(clip_dim)
        self.config = config

    def process(self, rows: list[dict]) -> None:
        c = self.config
        for r in rows:
            persons = r["persons"] or []
            n = len(persons)
            r["num_persons"] = n
            r["person_area"] = union_area([p["bbox"] for p in persons]) / float(r["width"] * r["height"])
            if n < c.min_persons:
                R.reject(r, self.name, "no_person", f"{n} persons detected (need >= {c.min_persons})")
            elif n > c.max_persons:
                R.reject(r, self.name, "too_many_persons", f"{n} persons > {c.max_persons}")
            elif r["person_area"] < c.min_area:
                R.reject(r, self.name, "person_too_small", f"person area {r['person_area']:.3f} < {c.min_area}")
