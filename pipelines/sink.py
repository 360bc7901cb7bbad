"""The builder's writer: a Ray Data ``Datasink`` over :class:`humanverse.ShardWriter`.

Each write task splits its blocks into ``data/`` and ``rejects/`` tables and commits them through
the exactly-once protocol of :mod:`humanverse.shards`. File names are deterministic per (task,
block), because Ray Data retries a failed write task with the same ``task_idx``: a retry overwrites
its own files instead of adding copies (the commit protocol: ``docs/format.md``).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa

from humanverse.shards import ShardWriter
from pipelines.rows import split_for_writing

log = logging.getLogger(__name__)


@dataclass
class WriteSummary:
    data_rows: int = 0
    reject_rows: int = 0
    files: int = 0
    rejects_by_reason: Counter = field(default_factory=Counter)

    def merge(self, other: "WriteSummary") -> None:
        self.data_rows += other.data_rows
        self.reject_rows += other.reject_rows
        self.files += other.files
        self.rejects_by_reason.update(other.rejects_by_reason)


def write_inflight(writer: ShardWriter, table: pa.Table, name: str, clip_dim: int | None) -> WriteSummary:
    """Commit one in-flight table as a data file and a rejects file named after ``name``."""
    data, rejects = split_for_writing(table, clip_dim)
    s = WriteSummary()
    for kind, t in (("data", data), ("rejects", rejects)):
        if writer.write(t, kind, name=name) is not None:
            s.files += 1
    s.data_rows, s.reject_rows = data.num_rows, rejects.num_rows
    s.rejects_by_reason.update(rejects.column("reason").to_pylist())
    return s


def make_datasink(writer: ShardWriter, clip_dim: int | None, rows_per_file: int = 256, tally=None):
    """Build the Ray Data sink (Ray imported lazily so this module loads without it). Each block's
    committed accepted and rejected rows are added to ``tally`` (an actor with ``add(accepted,
    rejected)``, for the progress line; no wait) when one is given."""
    from ray.data import Datasink
    from ray.data.block import BlockAccessor

    class HumanVerseDatasink(Datasink):
        def __init__(self):
            self.summary = WriteSummary()

        def write(self, blocks, ctx) -> WriteSummary:
            # Ray Data coalesces small outputs into large blocks: cut them back to rows_per_file so
            # files stay bounded and progress is committed as it goes.
            total = WriteSummary()
            for i, block in enumerate(blocks):
                table = BlockAccessor.for_block(block).to_arrow()
                done = WriteSummary()
                for off in range(0, table.num_rows, rows_per_file):
                    part = table.slice(off, rows_per_file)
                    done.merge(write_inflight(writer, part, f"{ctx.task_idx:06d}-{i:04d}-{off:07d}", clip_dim))
                if tally is not None:  # one message per block, once its files are committed
                    tally.add.remote(done.data_rows, done.reject_rows)
                total.merge(done)
            return total

        def on_write_complete(self, write_result) -> None:
            for s in write_result.write_returns:
                self.summary.merge(s)

        @property
        def min_rows_per_write(self) -> int:
            return rows_per_file

    return HumanVerseDatasink()
