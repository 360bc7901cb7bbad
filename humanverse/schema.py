"""The HumanVerse dataset format (v2): Arrow schemas, reject vocabulary and validation.

One row per accepted image in ``data/``; one row per rejected source row in ``rejects/``. Every
source row ends in exactly one of the two (docs/format.md). Geometry is in pixels of the stored
``image``, origin top-left, x to the right, y down; a pixel's centre is at (i + 0.5).

Keypoints follow COCO-WholeBody (133 points, see :mod:`humanverse.skeleton`) and are stored flat,
``keypoints[3*k : 3*k+3] = (x, y, score)``, so every reader (DuckDB, pandas, polars, datasets)
sees a plain fixed-size float array.
"""

from __future__ import annotations

import functools

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

#: COCO-WholeBody parts (index ranges; :mod:`humanverse.skeleton` names every point). Each part has
#: two derived fields in the person struct, ``<part>_visible`` and ``<part>_confidence``.
KEYPOINT_PARTS: dict[str, range] = {
    "body": range(17),
    "feet": range(17, 23),
    "face": range(23, 91),
    "left_hand": range(91, 112),
    "right_hand": range(112, 133),
}
#: A keypoint is *visible* when its score is at least this (format v2). The dataset records it in
#: the schema metadata of every ``data/`` file (``humanverse_visible_score``) and in its card. The
#: same value is the default keypoint threshold of ``humanverse show`` and the skeleton drawing.
VISIBLE_SCORE = 0.3

#: One description per column, nested fields by dotted path (``persons.bbox``). Stored as each
#: Parquet field's ``description`` metadata and written into the dataset card (:mod:`humanverse.card`).
COLUMN_DESCRIPTIONS: dict[str, str] = {
    "id": "Hex sha256 (64 lowercase characters) of the original source bytes: the dedup key. In rejects, the "
          "sha256 of the empty string when the source carried no bytes.",
    "source_url": "URL of the source row, when the reader had one.",
    "source_key": "Name of the row in its source shard, unique there: the file name relative to the input root "
                  "(folders), the sample key (tars), or the key column or row number (Parquet).",
    "source_shard": "The source shard the row came from: the builder's unit of work and of resume.",
    "source_index": "Position of the row inside its source shard when it was read (>= 0).",
    "image": "The stored image, encoded: the original bytes when they already were an upright 8-bit RGB JPEG or "
             "PNG that was not resized, else a re-encoded JPEG.",
    "width": "Width of the stored image in pixels.",
    "height": "Height of the stored image in pixels.",
    "orig_width": "Width of the upright original in pixels (after EXIF orientation, before any resize); in rejects "
                  "null when the header could not be read.",
    "orig_height": "Height of the upright original in pixels (after EXIF orientation, before any resize); in "
                   "rejects null when the header could not be read.",
    "caption": "BLIP-2 caption of the image, or the alt text when the caption was degenerate; null when neither "
               "exists.",
    "caption_source": "Where caption came from: 'model', 'alt_text' (the fallback) or null.",
    "alt_text": "The source's alt text.",
    "aesthetic": "LAION aesthetic score (CLIP ViT-L/14 image embedding + the LAION linear predictor, about 1 to "
                 "10, higher is better); null when the stage did not run.",
    "persons": "One entry per detected person, highest detector score first.",
    "persons.bbox": "Person box [x0, y0, x1, y1] in stored-image pixels (x0 <= x1, y0 <= y1).",
    "persons.score": "Person detector confidence in [0, 1].",
    "persons.keypoints": "133 COCO-WholeBody keypoints stored flat, keypoints[3k : 3k+3] = (x, y, score) of point "
                         "k in stored-image pixels; score 0 for points outside the stored frame; null when the "
                         "pose stage did not run.",
    **{f"persons.{part}_visible": f"Number of {part.replace('_', ' ')} keypoints (indices {r.start}-{r.stop - 1}) "
                                  f"scoring at least {VISIBLE_SCORE} (VISIBLE_SCORE); null when keypoints is null."
       for part, r in KEYPOINT_PARTS.items()},
    **{f"persons.{part}_confidence": f"Mean score of the {r.stop - r.start} {part.replace('_', ' ')} keypoints "
                                     f"(indices {r.start}-{r.stop - 1}), visible or not; null when keypoints is "
                                     "null."
       for part, r in KEYPOINT_PARTS.items()},
    "num_persons": "Number of persons: len(persons).",
    "person_area": "Area of the union of the person boxes divided by the image area, in [0, 1].",
    "outpaint": "The outpainting canvas and where the stored image sits in it (the identity when not applied).",
    "outpaint.applied": "Whether the image was outpainted before pose, depth and normal estimation.",
    "outpaint.canvas_width": "Width of the outpainting canvas in pixels.",
    "outpaint.canvas_height": "Height of the outpainting canvas in pixels.",
    "outpaint.offset_x": "Canvas x of the stored image's top-left corner, in canvas pixels.",
    "outpaint.offset_y": "Canvas y of the stored image's top-left corner, in canvas pixels.",
    "map_width": "Width of the stored depth and normal maps in pixels (the image's, or smaller when capped).",
    "map_height": "Height of the stored depth and normal maps in pixels (the image's, or smaller when capped).",
    "depth": "Relative depth (larger = nearer) as a 16-bit greyscale PNG, min-max normalised per image: "
             "d = depth_min + v / 65535 * (depth_max - depth_min); null when the stage did not run.",
    "depth_min": "The depth value that the depth PNG's 0 stands for.",
    "depth_max": "The depth value that the depth PNG's 65535 stands for.",
    "depth_omnidata": "A second relative depth map (Omnidata DPT), encoded as depth; null when the builder ran "
                      "one depth model only.",
    "depth_omnidata_min": "The depth value that the depth_omnidata PNG's 0 stands for.",
    "depth_omnidata_max": "The depth value that the depth_omnidata PNG's 65535 stands for.",
    "normal": "Unit surface normals as an 8-bit RGB PNG, n = rgb / 127.5 - 1, camera frame (+x right, +y down, "
              "+z towards the viewer); null when the stage did not run.",
    "models": "Which model produced each stage's annotations.",
    "models.stage": "The builder stage.",
    "models.model": "The model it ran: 'org/repo@revision' for hub models, 'tiny:<entry>' for tiny random "
                    "stand-ins, or a local path.",
    "clip_embedding": "The L2-normalised CLIP image embedding the aesthetic stage computed (float16), for dedup "
                      "and search.",
    "stage": "The builder stage that rejected the row.",
    "reason": "Why the row was rejected: one of the reject reasons (REJECT_REASONS).",
    "detail": "Free text about the rejection, truncated to 2000 characters.",
}


def described(f: pa.Field, prefix: str = "") -> pa.Field:
    """``f`` with its ``description`` metadata (from :data:`COLUMN_DESCRIPTIONS`), nested fields of
    structs and lists of structs included."""
    path = prefix + f.name
    if path not in COLUMN_DESCRIPTIONS:
        raise KeyError(f"column {path!r} has no entry in humanverse.schema.COLUMN_DESCRIPTIONS; every column needs a "
                       "description.")
    t = f.type
    if pa.types.is_struct(t):
        t = pa.struct([described(c, path + ".") for c in t])
    elif pa.types.is_list(t) and pa.types.is_struct(t.value_type):
        t = pa.list_(pa.struct([described(c, path + ".") for c in t.value_type]))
    return f.with_type(t).with_metadata({b"description": COLUMN_DESCRIPTIONS[path].encode()})


def _struct(fields: list[pa.Field], name: str) -> pa.StructType:
    return pa.struct([described(f, name + ".") for f in fields])


PERSON_TYPE = _struct(
    [
        pa.field("bbox", BBOX_TYPE, nullable=False),  # [x0, y0, x1, y1] stored-image pixels
        pa.field("score", pa.float32(), nullable=False),  # detector confidence
        pa.field("keypoints", KEYPOINTS_TYPE),  # 133 x (x, y, score); null before the pose stage
        # Derived from keypoints (format v2, :func:`person_parts`); null when keypoints is null.
        *(f for part in KEYPOINT_PARTS
          for f in (pa.field(f"{part}_visible", pa.int8()), pa.field(f"{part}_confidence", pa.float32()))),
    ],
    "persons",
)

OUTPAINT_TYPE = _struct(
    [
        pa.field("applied", pa.bool_(), nullable=False),
        pa.field("canvas_width", pa.int32(), nullable=False),
        pa.field("canvas_height", pa.int32(), nullable=False),
        pa.field("offset_x", pa.int32(), nullable=False),  # where the original's top-left sits
        pa.field("offset_y", pa.int32(), nullable=False),  # in the canvas, canvas pixels
    ],
    "outpaint",
)

MODELS_TYPE = pa.list_(_struct([pa.field("stage", pa.string(), nullable=False),
                                pa.field("model", pa.string(), nullable=False)], "models"))

_PROVENANCE = [
    pa.field("id", pa.string(), nullable=False),  # hex sha256 of the original image bytes
    pa.field("source_url", pa.string()),
    pa.field("source_key", pa.string()),
    pa.field("source_shard", pa.string(), nullable=False),  # unit of work and resume
    pa.field("source_index", pa.int64(), nullable=False),  # row position inside the shard
]

#: Schema metadata of every file: the format version; ``data/`` files also record VISIBLE_SCORE.
_METADATA = {b"humanverse_format_version": str(FORMAT_VERSION).encode()}
_DATA_METADATA = {**_METADATA, b"humanverse_visible_score": str(VISIBLE_SCORE).encode()}


@functools.lru_cache(maxsize=16)
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
    return pa.schema([described(f) for f in fields], metadata=_DATA_METADATA)


REJECT_SCHEMA = pa.schema(
    [
        described(f)
        for f in [
            *_PROVENANCE,
            pa.field("orig_width", pa.int32()),
            pa.field("orig_height", pa.int32()),
            pa.field("stage", pa.string(), nullable=False),
            pa.field("reason", pa.string(), nullable=False),
            pa.field("detail", pa.string()),
        ]
    ],
    metadata=_METADATA,
)


def person_parts(keypoints: np.ndarray) -> dict[str, np.ndarray]:
    """The derived person fields for keypoints of shape (P, 133, 3): per part of
    :data:`KEYPOINT_PARTS`, ``<part>_visible`` (int8, points with score >= :data:`VISIBLE_SCORE`) and
    ``<part>_confidence`` (float32, the mean score of the part's points). A non-finite score counts
    as 0."""
    kp = np.asarray(keypoints, dtype=np.float32)
    if kp.ndim != 3 or kp.shape[1:] != (NUM_KEYPOINTS, 3):
        raise ValueError(f"keypoints must have shape (P, {NUM_KEYPOINTS}, 3), got {kp.shape}.")
    score = np.nan_to_num(kp[:, :, 2], nan=0.0, posinf=0.0, neginf=0.0)
    out: dict[str, np.ndarray] = {}
    for part, r in KEYPOINT_PARTS.items():
        s = score[:, r.start:r.stop]
        out[f"{part}_visible"] = (s >= VISIBLE_SCORE).sum(1).astype(np.int8)
        out[f"{part}_confidence"] = s.mean(1, dtype=np.float64).astype(np.float32)
    return out


def _flat_keypoints(kp_col: pa.FixedSizeListArray) -> tuple[np.ndarray, np.ndarray]:
    """(M, 133, 3) float32 values (rows with null keypoints hold zeros) and the (M,) valid mask."""
    valid = kp_col.is_valid().to_numpy(zero_copy_only=False)
    values = kp_col.values.slice(kp_col.offset * KEYPOINT_VALUES, len(kp_col) * KEYPOINT_VALUES)
    kp = values.to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, NUM_KEYPOINTS, 3)
    kp[~valid] = 0.0
    return kp, valid


def with_person_parts(table: pa.Table) -> pa.Table:
    """``table`` with its ``persons`` column in :data:`PERSON_TYPE`, the derived fields computed
    from the keypoints by :func:`person_parts` (null where keypoints is null). Vectorised; derived
    values already present are recomputed. The builder's writer (``pipelines.rows.split_for_writing``)
    and the synthetic test data call it."""
    i = table.schema.get_field_index("persons")
    if i < 0:
        raise ValueError(f"table has no persons column; its columns are {table.column_names}.")
    persons = table.column(i).combine_chunks()
    offsets = persons.offsets.to_numpy()
    # the person structs of the (possibly sliced) list array, null lists' slots included
    flat = persons.values.slice(offsets[0], offsets[-1] - offsets[0])
    n = len(flat)
    by_name = {f.name: c for f, c in zip(flat.type, flat.flatten())}
    kp_col = by_name.get("keypoints")
    if kp_col is None:
        kp, valid = np.zeros((n, NUM_KEYPOINTS, 3), np.float32), np.zeros(n, bool)
    else:
        kp, valid = _flat_keypoints(kp_col)
    parts = person_parts(kp)
    children = []
    for f in PERSON_TYPE:
        if f.name in parts:
            children.append(pa.array(parts[f.name], f.type, mask=~valid))
        elif f.name in by_name:
            children.append(by_name[f.name].cast(f.type))
        else:
            children.append(pa.nulls(n, f.type))
    struct = pa.StructArray.from_arrays(children, fields=list(PERSON_TYPE), mask=flat.is_null())
    mask = persons.is_null() if persons.null_count else None
    lists = pa.ListArray.from_arrays(pa.array(offsets - offsets[0], pa.int32()), struct, mask=mask)
    field = table.schema.field(i)
    return table.set_column(i, field.with_type(pa.list_(PERSON_TYPE)),
                            lists.cast(pa.list_(PERSON_TYPE)))


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


def _parts_issue(persons: pa.ChunkedArray, flat: pa.StructArray) -> _Issue | None:
    """A derived person field (``<part>_visible``, ``<part>_confidence``) that disagrees with the
    person's keypoints. Null derived fields are allowed (files of a writer that did not fill them)."""
    by_name = {f.name: c for f, c in zip(flat.type, flat.flatten())}
    kp, valid = _flat_keypoints(by_name["keypoints"])
    for name, want in person_parts(kp).items():
        col = by_name[name]
        if col.null_count == len(col):
            continue
        has = col.is_valid().to_numpy(zero_copy_only=False)
        got = col.fill_null(0).to_numpy(zero_copy_only=False)
        bad = has & (~valid | ~np.isclose(got, want, rtol=0.0, atol=1e-5))
        if (j := _first(bad)) is not None:
            expected = f"{want[j]} (from the keypoints, humanverse.schema.person_parts)" if valid[j] else (
                "null (the keypoints are null)")
            return _Issue(f"persons.{name}", _row_of_element(persons, j), got[j].item(), expected)
    return None


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
                else:
                    issue = _parts_issue(persons, flat)
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
