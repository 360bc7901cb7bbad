"""Parquet files with an image-bytes column: one shard per file.

img2dataset's ``--output_format parquet``, Hugging Face datasets exports or any table with an
image-bytes column (binary, or a struct with a binary ``bytes`` field as ``datasets.Image`` writes).
Optional columns: ``key``, a URL (:data:`~pipelines.readers.base.URL_COLUMNS`), alt texts
(:data:`~pipelines.readers.base.ALT_TEXT_COLUMNS`), img2dataset's ``status`` and ``error_message``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq

from humanverse.fs import Root, resolve_root
from pipelines.readers.base import (
    ALT_TEXT_COLUMNS,
    IMAGE_COLUMNS,
    SUCCESS,
    UNREADABLE,
    URL_COLUMNS,
    ShardKeys,
    SourceShard,
    SourceShardError,
    check_size,
    first_of,
    iter_parquet,
    open_parquet,
    source_row,
    str_or_none,
)


def image_column(schema: pa.Schema, image_column: str | None, name: str) -> str:
    """The image column of a Parquet schema (``image_column`` if given), validated; ``ValueError`` otherwise."""
    names = schema.names
    if image_column is not None:
        if image_column not in names:
            raise ValueError(
                f"{name} has no image column {image_column!r} (from --image-column); its columns are {names}."
            )
        col = image_column
    else:
        col = first_of(names, IMAGE_COLUMNS)
        if col is None:
            raise ValueError(
                f"{name} has none of the image columns {list(IMAGE_COLUMNS)}; its columns are {names}: "
                "name the image-bytes column with --image-column."
            )
    t = schema.field(col).type
    if not (_is_binary(t) or (pa.types.is_struct(t) and t.get_field_index("bytes") >= 0
                              and _is_binary(t.field("bytes").type))):
        raise ValueError(
            f"column {col!r} of {name} has type {t}, not image bytes (binary, or a struct with a binary 'bytes' field)."
        )
    return col


def parquet_size(root: Root, name: str, image_col: str | None) -> int:
    """Rows of the Parquet shard at ``root``, after checking it has an image column."""
    def size(pf: pq.ParquetFile) -> int:
        image_column(pf.schema_arrow, image_col, name)
        return pf.metadata.num_rows

    return open_parquet(root, name, size)


@dataclass(frozen=True)
class ParquetColumns:
    """Which columns of a Parquet shard hold what a row needs (None: the shard has no such column)."""

    image: str
    #: the image column is a struct (``bytes``, ``path``), not plain bytes
    image_is_struct: bool
    alt_texts: tuple[str, ...]
    url: str | None
    key: str | None
    status: str | None
    error: str | None

    @classmethod
    def of(cls, schema: pa.Schema, image_col: str | None, name: str) -> ParquetColumns:
        names = schema.names
        img = image_column(schema, image_col, name)

        def present(col: str) -> str | None:
            return col if col in names else None

        return cls(image=img, image_is_struct=pa.types.is_struct(schema.field(img).type),
                   alt_texts=tuple(c for c in ALT_TEXT_COLUMNS if c in names), url=first_of(names, URL_COLUMNS),
                   key=present("key"), status=present("status"), error=present("error_message"))

    @property
    def names(self) -> list[str]:
        """The columns to read, each once."""
        optional = [c for c in (self.url, self.key, self.status, self.error) if c]
        return list(dict.fromkeys([self.image, *self.alt_texts, *optional]))

    def row(self, shard: SourceShard, index: int, key: str, values: dict[str, list], k: int) -> dict:
        """The reader row of the ``k``-th entry of ``values`` (column -> Python values), at ``index``."""
        url = str_or_none(values[self.url][k]) if self.url else None
        alt_text = next((str(v) for v in (values[c][k] for c in self.alt_texts) if v is not None), None)

        def failed(error: str) -> dict:
            return source_row(shard, index, key=key, url=url, alt_text=alt_text, error=error)

        status = values[self.status][k] if self.status else None
        if status is not None and status != SUCCESS:
            return failed(f"{status}: {values[self.error][k] if self.error else None}")
        value = values[self.image][k]
        if self.image_is_struct:
            path = value.get("path") if value else None
            value = value.get("bytes") if value else None
            if value is None:
                where = f" (it names the file {path}, which is not embedded)" if path else ""
                return failed(f"no image bytes in column {self.image!r}{where}")
        if value is None:
            return failed(f"no image bytes in column {self.image!r}")
        return source_row(shard, index, key=key, url=url, alt_text=alt_text, data=bytes(value))


def parquet_rows(shard: SourceShard, keys: ShardKeys, image_col: str | None, batch_rows: int) -> Iterator[dict]:
    """The rows of a Parquet shard; row groups whose rows are all committed are not read (only their keys).

    A row's key is its ``key`` column value, or its row number when the file has no ``key`` column.
    A row group whose data cannot be read (a damaged page) becomes rows with ``source_error``
    (reason ``undecodable``) as long as its keys can still be read; otherwise, like a footer that
    cannot be read, it raises :class:`SourceShardError`.
    """
    root = resolve_root(shard.uri)

    def rows(pf: pq.ParquetFile) -> Iterator[dict]:
        cols = ParquetColumns.of(pf.schema_arrow, image_col, shard.name)
        names = cols.names
        md = pf.metadata
        start = 0
        for rg in range(md.num_row_groups):
            n = md.row_group(rg).num_rows
            first = start
            start += n
            if n == 0:
                continue
            rg_keys = [keys.unique(k, first + j) for j, k in enumerate(_row_group_keys(pf, cols, shard, rg, first, n))]
            todo = [j for j in range(n) if not keys.skips(rg_keys[j])]
            if not todo:
                continue  # a committed row group: its data is not even read
            wanted, offset = set(todo), 0
            try:
                for b in pf.iter_batches(batch_size=batch_rows, row_groups=[rg], columns=names):
                    keep = [j for j in range(b.num_rows) if offset + j in wanted]
                    if keep:
                        data = {c: b.column(c) for c in names}
                        if len(keep) < b.num_rows:
                            data = {c: a.take(pa.array(keep, pa.int64())) for c, a in data.items()}
                        values = {c: a.to_pylist() for c, a in data.items()}
                        for k, j in enumerate(keep):
                            yield cols.row(shard, first + offset + j, rg_keys[offset + j], values, k)
                            wanted.discard(offset + j)
                    offset += b.num_rows
            except (OSError, pa.ArrowException) as e:
                detail = f"cannot read row group {rg} of the parquet shard {shard.name}: {e}"
                for j in sorted(wanted):
                    yield source_row(shard, first + j, key=rg_keys[j], error=detail, reason=UNREADABLE)
        check_size(shard, start)

    yield from iter_parquet(root, shard.name, rows)


def _row_group_keys(pf: pq.ParquetFile, cols: ParquetColumns, shard: SourceShard, rg: int, first: int,
                    n: int) -> list[str | None]:
    """The raw keys of row group ``rg``: its ``key`` column, or the row numbers when there is none."""
    if cols.key is None:
        return [str(first + j) for j in range(n)]
    try:
        return [str_or_none(v) for v in pf.read_row_group(rg, columns=[cols.key]).column(0).to_pylist()]
    except (OSError, pa.ArrowException) as e:
        raise SourceShardError(f"cannot read row group {rg} of the parquet shard {shard.name}, not even its "
                               f"keys: {e}") from e


def _is_binary(t: pa.DataType) -> bool:
    return (pa.types.is_binary(t) or pa.types.is_large_binary(t) or pa.types.is_fixed_size_binary(t)
            or pa.types.is_binary_view(t))
