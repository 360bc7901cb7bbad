"""Person filter (HyperHuman §4): keep images with 1-3 persons whose boxes cover >= 15 % of the image."""

from __future__ import annotations

from dataclasses import dataclass

from humanverse.config import check
from pipelines.stages.base import Reject, RowFilter


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


class PersonFilter(RowFilter):
    """Sets ``num_persons`` and ``person_area`` (union of the person boxes / image area) on every alive
    row and rejects those outside 1-3 persons (by default) or below ``min_area``."""

    name = "person_filter"
    config_class = PersonFilterConfig

    def check(self, row: dict) -> Reject | None:
        c = self.config
        persons = row["persons"] or []
        n = len(persons)
        row["num_persons"] = n
        row["person_area"] = union_area([p["bbox"] for p in persons]) / float(row["width"] * row["height"])
        return person_verdict(n, row["person_area"], c)


def person_verdict(num_persons: int, area: float | None, config: PersonFilterConfig) -> Reject | None:
    """The thresholds on stored ``num_persons`` and ``person_area``, in order (also what
    ``humanverse refilter`` re-applies)."""
    c, n = config, num_persons
    if n < c.min_persons:
        return Reject("no_person", f"{n} persons detected (need >= {c.min_persons})")
    if n > c.max_persons:
        return Reject("too_many_persons", f"{n} persons > {c.max_persons}")
    if area is not None and area < c.min_area:
        return Reject("person_too_small", f"person area {area:.3f} < {c.min_area}")
    return None
