"""The HumanVerse dataset format (v2): Arrow schemas, reject vocabulary and validation.

One row per accepted image in ``data/``; one row per rejected source row in ``rejects/``. Every
source row ends in exactly one of the two (docs/format.md). Geometry is in pixels of the stored
``image``, origin top-left, x to the right, y down; a pixel's centre is at (i + 0.5).

Keypoints follow COCO-WholeBody (133 points, see :mod:`humanverse.skeleton`) and are stored flat,
``keypoints[3*k : 3*k+3] = (x, y, score)``, so every reader (DuckDB, pandas, polars, datasets)
sees a plain fixed-size float array.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

FORMAT_NAME = "humanverse"
FORMAT_VERSION = 2
NUM_KEYPOINTS = 133
KEYPOINT_VALUES = NUM_KEYPOINTS * 3

#: Reject reasons: a short fixed vocabulary (docs/format.md). ``detail`` carries the free text.
REJECT_REASONS: dict[str, str] = {
    "download_failed": "the source row carries no image (img2dataset status != success)",
    "undecodable": "the bytes are empty, truncated, corrupt or not an image",
    "too_large": "more pixels than the decompression-bomb limit",
    "too_small": "shorter side below the minimum resolution",
    "duplicate": "same image bytes (id) as a row already accepted",
    "no_person": "no person detected",
    "too_many_persons": "more persons than the maximum",
    "person_too_small": "union of person boxes below the minimum area fraction",
    "low_aesthetic": "aesthetic score below the threshold",
    "model_error": "a model stage failed on the whole batch twice, or could not read a row's inputs",
}

BBOX_TYPE = pa.list_(pa.float32(), 4)
KEYPOINTS_TYPE = pa.list_(pa.float32(), KEYPOINT_VALUES)

PERSON_TYPE = pa.struct(
    [
        pa.field("bbox", BBOX_TYPE, nullable=False),  # [x0, y0, x1, y1] stored-image pixels
        pa.field("score", pa.float32(), nullable=False),  # detector confidence
        pa.field("keypoints", KEYPOINTS_TYPE),  # 133 x (x, y, score); null before the pose stage
    ]
)

OUTPAINT_TYPE = pa.struct(
    [
        pa.field("applied", pa.bool_(), nullable=False),
        pa.field("canvas_width", pa.int32(), nullable=False),
        pa.field("canvas_height", pa.int32(), nullable=False),
        pa.field("offset_x", pa.int32(), nullable=False),  # where the original's top-left sits
        pa.field("offset_y", pa.int32(), nullable=False),  # in the canvas, canvas pixels
    ]
)

MODELS_TYPE = pa.list_(pa.struct([pa.field("stage", pa.string(), nullable=False),
                                   pa.field("model", pa.string(), nullable=False)]))

_PROVENANCE = [
    pa.field("id", pa.string(), nullable=False),  # hex sha256 of the original image bytes
    pa.field("source_url", pa.string()),
    pa.field("source_key", pa.string()),
    pa.field("source_shard", pa.string(), nullable=False),  # unit of work and resume
    pa.field("source_index", pa.int64(), nullable=False),  # row position inside the shard
]


def data_schema(clip_dim: int | None = None) -> pa.Schema:
    """The schema of ``data/`` files; ``clip_embedding`` is present iff ``clip_dim`` is given."""
    fields = [
        *_PROVENANCE,
        pa.field("image", pa.binary(), nullable=False),
        pa.field("width", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),
        pa.field("orig_width", pa.int32(), nullable=False),
        pa.field("orig_height", pa.int32(), nullable=False),
        pa.field("caption", pa.string()),
        pa.field("caption_source", pa.string()),  # "model" | "alt_text" (fallback) | null
        pa.field("alt_text", pa.string()),
        pa.field("aesthetic", pa.float32()),
        pa.field("persons", pa.list_(PERSON_TYPE), nullable=False),
        pa.field("num_persons", pa.int8(), nullable=False),
        pa.field("person_area", pa.float32()),
        pa.field("outpaint", OUTPAINT_TYPE),
        pa.field("map_width", pa.int32()),  # stored size of depth/normal maps (may be capped)
        pa.field("map_height", pa.int32()),
        pa.field("depth", pa.binary()),  # 16-bit PNG, min-max normalised, relative inverse depth
        pa.field("depth_min", pa.float32()),
        pa.field("depth_max", pa.float32()),
        # A second depth map (Omnidata DPT, HyperHuman Sec. 3.2 / App. A.1 annotate both); same
        # encoding as ``depth``; null when the builder ran one depth model only (format v2).
        pa.field("depth_omnidata", pa.binary()),
        pa.field("depth_omnidata_min", pa.float32()),
        pa.field("depth_omnidata_max", pa.float32()),
        pa.field("normal", pa.binary()),  # 8-bit RGB PNG, n = rgb / 127.5 - 1, camera frame
        # Which model produced what: (stage, "hub id@revision" | "tiny:<name>" | local path).
        # A list of structs rather than a map so every reader (datasets included) can load it.
        pa.field("models", MODELS_TYPE),
    ]
    if clip_dim is not None:
        if clip_dim <= 0:
            raise ValueError(f"clip_dim must be a positive integer, got {clip_dim!r}.")
        fields.append(pa.field("clip_embedding", pa.list_(pa.float16(), clip_dim)))
    return pa.schema(fields, metadata={b"humanverse_format_version": str(FORMAT_VERSION).encode()})


REJECT_SCHEMA = pa.schema(
    [
        *_PROVENANCE,
        pa.field("orig_width", pa.int32()),
        pa.field("orig_height", pa.int32()),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("detail", pa.string()),
    ],
    metadata={b"humanverse_format_version": str(FORMAT_VERSION).encode()},
)

_HEX64 = re.compile(r"^[0-9a-f]{64}$")


class FormatError(ValueError):
    """A table or row does not follow the HumanVerse format; the message names column and value."""


@dataclass(frozen=True)
class _Issue:
    column: str
    row: int
    value: object
    expected: str

    def sentence(self, kind: str) -> str:
        return (
            f"{kind} row {self.row}: column {self.column!r} has value {self.value!r}, "
            f"expected {self.expected}."
        )


def _check_schema(table: pa.Table, expected: pa.Schema, kind: str) -> None:
    names = table.schema.names
    missing = [f.name for f in expected if f.name not in names]
    if missing:
        raise FormatError(f"{kind} table is missing column(s) {missing}; expected {expected.names}.")
    extra = [n for n in names if n not in expected.names]
    if extra:
        raise FormatError(f"{kind} table has unknown column(s) {extra}; expected {expected.names}.")
    for f in expected:
        got = table.schema.field(f.name).type
        if not got.equals(f.type):
            raise FormatError(f"{kind} column {f.name!r} has type {got}, expected {f.type}.")
        if not f.nullable and table.column(f.name).null_count:
            row = table.column(f.name).to_pylist().index(None)
            raise FormatError(f"{kind} row {row}: column {f.name!r} is null, expected a value.")


def _first(mask) -> int | None:
    """Index of the first True in a boolean numpy array, or None."""
    idx = np.flatnonzero(mask)
    return int(idx[0]) if idx.size else None


def _value(table: pa.Table, column: str, row: int):
    return table.column(column)[row].as_py()


def _provenance_issue(table: pa.Table) -> _Issue | None:
    ok_id = pc.match_substring_regex(table.column("id"), _HEX64.pattern).to_numpy(zero_copy_only=False)
    if (i := _first(~ok_id)) is not None:
        return _Issue("id", i, _value(table, "id", i), "a 64-character lowercase hex sha256")
    idx = table.column("source_index").to_numpy()
    if (i := _first(idx < 0)) is not None:
        return _Issue("source_index", i, int(idx[i]), "a non-negative integer")
    empty = pc.equal(pc.utf8_length(table.column("source_shard")), 0).to_numpy(zero_copy_only=False)
    if (i := _first(empty)) is not None:
        return _Issue("source_shard", i, "", "a non-empty shard name")
    return None


def _row_of_element(list_col: pa.ChunkedArray, element: int) -> int:
    """Row index holding flattened element ``element`` of a list column."""
    lengths = pc.fill_null(pc.list_value_length(list_col), 0).to_numpy(zero_copy_only=False)
    return int(np.searchsorted(np.cumsum(lengths), element, side="right"))


def validate_data(table: pa.Table) -> None:
    """Check a ``data/`` table against the format: schema, then values. Raises :class:`FormatError`.

    Vectorised (Arrow compute + numpy): it runs on the writer's hot path for every file.
    """
    clip_dim = None
    if "clip_embedding" in table.schema.names:
        clip_dim = table.schema.field("clip_embedding").type.list_size
    _check_schema(table, data_schema(clip_dim), "data")
    issue = _provenance_issue(table) if table.num_rows else None
    if issue is None:
        for c in ("width", "height", "orig_width", "orig_height"):
            v = table.column(c).to_numpy()
            if (i := _first(v <= 0)) is not None:
                issue = _Issue(c, i, int(v[i]), "a positive pixel count")
                break
    if issue is None and table.num_rows:
        persons = table.column("persons")
        n = pc.list_value_length(persons).to_numpy()
        declared = table.column("num_persons").to_numpy()
        if (i := _first(declared != n)) is not None:
            issue = _Issue("num_persons", i, int(declared[i]), f"len(persons) = {int(n[i])}")
    if issue is None:
        a = pc.fill_null(table.column("aesthetic"), 0.0).to_numpy()  # null = not scored, allowed
        if (i := _first(~np.isfinite(a))) is not None:
            issue = _Issue("aesthetic", i, float(a[i]), "a finite score")
    if issue is None:
        pa_ = pc.fill_null(table.column("person_area"), 0.0).to_numpy()
        bad = ~((pa_ >= 0) & (pa_ <= 1 + 1e-6))
        if (i := _first(bad)) is not None:
            issue = _Issue("person_area", i, float(pa_[i]), "a fraction in [0, 1]")
    if issue is None and table.num_rows:
        flat = pc.list_flatten(persons.combine_chunks())
        if len(flat):
            box = pc.list_flatten(flat.field("bbox")).to_numpy(zero_copy_only=False).reshape(-1, 4)
            bad = ~np.isfinite(box).all(1) | (box[:, 0] > box[:, 2]) | (box[:, 1] > box[:, 3])
            if (j := _first(bad)) is not None:
                issue = _Issue("persons.bbox", _row_of_element(persons, j), box[j].tolist(),
                               "finite [x0, y0, x1, y1] with x0<=x1, y0<=y1")
            else:
                kp_col = flat.field("keypoints")
                kp = pc.list_flatten(kp_col).to_numpy(zero_copy_only=False)
                valid = ~pc.is_null(kp_col).to_numpy(zero_copy_only=False)
                per_person = np.ones(len(flat), bool)
                per_person[valid] = np.isfinite(kp.reshape(-1, KEYPOINT_VALUES)).all(1)
                if (j := _first(~per_person)) is not None:
                    issue = _Issue("persons.keypoints", _row_of_element(persons, j), "non-finite value",
                                   "133 finite (x, y, score) triples")
    if issue:
        raise FormatError(issue.sentence("data"))


def validate_rejects(table: pa.Table) -> None:
    """Check a ``rejects/`` table: schema, provenance, and that every reason is in the vocabulary."""
    _check_schema(table, REJECT_SCHEMA, "rejects")
    issue = _provenance_issue(table) if table.num_rows else None
    if issue is None and table.num_rows:
        known = pc.is_in(table.column("reason"), pa.array(sorted(REJECT_REASONS))).to_numpy(zero_copy_only=False)
        if (i := _first(~known)) is not None:
            issue = _Issue("reason", i, _value(table, "reason", i), f"one of {sorted(REJECT_REASONS)}")
    if issue:
        raise FormatError(issue.sentence("rejects"))
