"""The in-flight row: what flows between builder stages (``docs/architecture.md``).

Every stage takes and returns a :class:`pyarrow.Table` with :data:`INFLIGHT_SCHEMA`. Stages work on
*alive* rows only (``reject_reason`` is null) and pass rejected rows through untouched; a stage that
rejects a row sets ``reject_stage``/``reject_reason``/``reject_detail`` and drops its heavy columns.
The writer (:mod:`pipelines.sink`) splits the final table into ``data/`` rows and ``rejects/`` rows.

Columns are the HumanVerse data columns (all nullable while in flight) plus:

* ``source_bytes``: the original bytes as read (null after decode, which stores ``image``);
* ``source_error``: set by readers when the source carries no image (e.g. img2dataset status), or
  when its bytes could not be read (a damaged tar, an unreadable file): the reject's detail;
* ``source_reason``: the reject reason that goes with ``source_error`` (``download_failed`` when the
  source says the download failed, ``undecodable`` when the bytes could not be read; null means
  ``download_failed``);
* ``canvas``: the outpainted canvas (null when not outpainted), dropped at write;
* ``reject_stage``, ``reject_reason``, ``reject_detail``.
"""

from __future__ import annotations

from collections.abc import Iterable

import pyarrow as pa

from humanverse.schema import (MODELS_TYPE, OUTPAINT_TYPE, PERSON_TYPE, REJECT_REASONS, REJECT_SCHEMA, data_schema,
                               with_person_parts)

SOURCE_FIELDS = [
    pa.field("source_shard", pa.string(), nullable=False),
    pa.field("source_index", pa.int64(), nullable=False),
    pa.field("source_key", pa.string()),
    pa.field("source_url", pa.string()),
    pa.field("alt_text", pa.string()),
    pa.field("source_bytes", pa.binary()),
    pa.field("source_error", pa.string()),
    pa.field("source_reason", pa.string()),
]
SOURCE_SCHEMA = pa.schema(SOURCE_FIELDS)

#: Internal columns that never reach the dataset: the outpainted canvas (encoded image bytes;
#: geometry in the row's ``outpaint`` struct, see :mod:`pipelines.geometry`).
INTERNAL_FIELDS = [
    pa.field("canvas", pa.binary()),
]

REJECT_FIELDS = [
    pa.field("reject_stage", pa.string()),
    pa.field("reject_reason", pa.string()),
    pa.field("reject_detail", pa.string()),
]


def inflight_schema(clip_dim: int | None = None) -> pa.Schema:
    """Source fields + every data column (nullable) + reject fields."""
    names = {f.name for f in SOURCE_FIELDS}
    data_fields = [f.with_nullable(True) for f in data_schema(clip_dim) if f.name not in names]
    return pa.schema(SOURCE_FIELDS + data_fields + INTERNAL_FIELDS + REJECT_FIELDS)


#: Heavy columns dropped when a row is rejected.
HEAVY_COLUMNS = ("source_bytes", "image", "canvas", "depth", "normal", "clip_embedding")


def empty_row(schema: pa.Schema) -> dict:
    return {f.name: None for f in schema}


def from_source_rows(rows: Iterable[dict], clip_dim: int | None = None) -> pa.Table:
    """Reader rows (dicts with the :data:`SOURCE_SCHEMA` keys) -> an in-flight table."""
    schema = inflight_schema(clip_dim)
    base = empty_row(schema)
    out = []
    for r in rows:
        row = dict(base)
        row.update({k: r.get(k) for k in SOURCE_SCHEMA.names})
        out.append(row)
    return pa.Table.from_pylist(out, schema=schema)


def to_table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pylist(rows, schema=schema)


def is_alive(row: dict) -> bool:
    return row["reject_reason"] is None


def reject(row: dict, stage: str, reason: str, detail: str | None = None) -> dict:
    """Mark ``row`` rejected in place (dropping heavy columns) and return it."""
    if reason not in REJECT_REASONS:
        raise ValueError(f"reject reason {reason!r} is not in the vocabulary {sorted(REJECT_REASONS)}.")
    row["reject_stage"], row["reject_reason"], row["reject_detail"] = stage, reason, (detail or "")[:2000]
    for c in HEAVY_COLUMNS:
        if c in row:
            row[c] = None
    return row


def add_model(row: dict, stage: str, tag: str) -> None:
    """Record which model produced ``stage``'s annotations (the ``models`` column)."""
    models = [m for m in (row.get("models") or []) if m["stage"] != stage]
    models.append({"stage": stage, "model": tag})
    row["models"] = models


def split_for_writing(table: pa.Table, clip_dim: int | None = None) -> tuple[pa.Table, pa.Table]:
    """In-flight table -> (``data/`` table, ``rejects/`` table) in the format's schemas."""
    rows = table.to_pylist()
    dschema = data_schema(clip_dim)
    data, rejects = [], []
    for r in rows:
        if r["reject_reason"] is None:
            d = {f.name: r.get(f.name) for f in dschema}
            if d["persons"] is None:
                d["persons"] = []
            if d["num_persons"] is None:
                d["num_persons"] = len(d["persons"])
            data.append(d)
        else:
            rejects.append({
                "id": r["id"], "source_url": r["source_url"], "source_key": r["source_key"],
                "source_shard": r["source_shard"], "source_index": r["source_index"],
                "orig_width": r["orig_width"], "orig_height": r["orig_height"],
                "stage": r["reject_stage"], "reason": r["reject_reason"], "detail": r["reject_detail"],
            })
    # The derived person fields (visible keypoints and mean confidence per part) are computed here,
    # from the final keypoints, for every row the builder writes.
    data_table = with_person_parts(pa.Table.from_pylist(data, schema=dschema))
    return data_table, pa.Table.from_pylist(rejects, schema=REJECT_SCHEMA)


__all__ = ["HEAVY_COLUMNS", "MODELS_TYPE", "OUTPAINT_TYPE", "PERSON_TYPE", "SOURCE_SCHEMA", "add_model",
           "from_source_rows", "inflight_schema", "is_alive", "reject", "split_for_writing", "to_table"]
