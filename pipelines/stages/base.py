"""What every builder stage shares: alive-row selection, sub-batching of whole blocks, the row-filter
contract and the model-stage failure policy (bad samples are data, not exceptions: a bad image or a
failed batch becomes reject rows with a reason, see ``docs/format.md``).

A stage is a callable ``pa.Table -> pa.Table`` over :func:`pipelines.rows.inflight_schema`: it
annotates or rejects the *alive* rows (``reject_reason`` null) and passes rejected rows through
untouched, same rows, same order. Ray Data hands a stage whole blocks; ``stage(block, batch_size=N)``
works through the block ``N`` rows at a time (:meth:`Stage.__call__`).

* :class:`RowFilter`: a CPU stage that judges each alive row on its own (decode, resolution, person
  filter): :meth:`RowFilter.check` returns None to keep the row, or a :class:`Reject`.
* :class:`ModelStage`: a stage that runs a model over a batch. Ray Data constructs it once per actor
  (weights load there, never on the driver). If :meth:`ModelStage.process` raises for a batch it is
  retried once; a second failure rejects that batch's alive rows with ``model_error`` and the
  exception text, and the run goes on.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass

import pyarrow as pa

from pipelines import rows as R

log = logging.getLogger(__name__)


def worker_logging() -> None:
    """Send this package's INFO lines (which model each stage loaded, with what settings) to stderr in
    a Ray worker, whose Python logging is otherwise unconfigured (only warnings show); Ray streams
    workers' stderr to the driver. A no-op where logging is configured (the driver, tests)."""
    pkg = logging.getLogger("pipelines")
    if logging.getLogger().handlers or pkg.handlers or "ray" not in sys.modules:
        return
    import ray

    if not ray.is_initialized() or ray.get_runtime_context().get_task_id() is None:  # not in a task or actor
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    pkg.addHandler(handler)
    pkg.setLevel(logging.INFO)


class Stage:
    """A stage over alive rows. Subclasses implement :meth:`process` on a list of row dicts."""

    name = "stage"

    def __init__(self, clip_dim: int | None = None):
        worker_logging()
        self.clip_dim = clip_dim
        self.schema = R.inflight_schema(clip_dim)

    def process(self, rows: list[dict]) -> None:
        """Annotate or reject the alive ``rows`` in place."""
        raise NotImplementedError

    def run(self, rows: list[dict]) -> None:
        self.process(rows)

    def __call__(self, block: pa.Table, batch_size: int | None = None) -> pa.Table:
        """The stage over ``block``, ``batch_size`` rows at a time (None: all at once).

        Several batches come back as one table whose columns are one chunk each: Ray serialises a
        block that leaves a task column by column and chunk by chunk, and the next stage would only
        combine the chunks again, so combining them once here is the cheaper place.
        """
        if batch_size is None or block.num_rows <= batch_size:
            return self._batch(block)
        outs = [self._batch(block.slice(off, batch_size)) for off in range(0, block.num_rows, batch_size)]
        return pa.concat_tables(outs).combine_chunks()

    def _batch(self, batch: pa.Table) -> pa.Table:
        rows = batch.to_pylist()
        alive = [r for r in rows if R.is_alive(r)]
        if alive:
            self.run(alive)
        return R.to_table(rows, self.schema)


@dataclass(frozen=True)
class Reject:
    """A row filter's verdict against one row: the reason (from the format's fixed vocabulary) and
    a human-readable detail."""

    reason: str
    detail: str = ""


class RowFilter(Stage):
    """A CPU stage that judges every alive row on its own: keep it, or reject it with a reason.

    Subclasses set ``name`` and ``config_class`` and implement :meth:`check`, which may also fill
    columns of the row (it gets the row dict itself). Input tables are checked for the in-flight
    schema first, so a wrong ``clip_dim`` or a table from elsewhere fails with one clear error.
    """

    #: the type of ``config`` (constructed with its defaults when no config is given)
    config_class: type

    def __init__(self, config=None, clip_dim: int | None = None):
        super().__init__(clip_dim)
        self.config = config if config is not None else self.config_class()
        if not isinstance(self.config, self.config_class):
            raise TypeError(f"config must be a {self.config_class.__name__}, got {type(self.config).__name__}.")

    def check(self, row: dict) -> Reject | None:
        """None to keep the alive ``row``, else why it is rejected."""
        raise NotImplementedError

    def __call__(self, block: pa.Table, batch_size: int | None = None) -> pa.Table:
        return super().__call__(as_inflight_table(block, self.schema, type(self).__name__), batch_size)

    def process(self, rows: list[dict]) -> None:
        for row in rows:
            self.process_row(row)

    def process_row(self, row: dict) -> dict:
        """Judge one alive row in place (and return it)."""
        verdict = self.check(row)
        if verdict is not None:
            R.reject(row, self.name, verdict.reason, verdict.detail)
        return row


def as_inflight_table(batch: pa.Table | pa.RecordBatch, schema: pa.Schema, who: str) -> pa.Table:
    """``batch`` as a table, after checking it has the in-flight schema's columns (one clear error)."""
    if isinstance(batch, pa.RecordBatch):
        batch = pa.Table.from_batches([batch])
    if not isinstance(batch, pa.Table):
        raise TypeError(f"{who} takes a pyarrow.Table (map_batches(..., batch_format='pyarrow')), "
                        f"got {type(batch).__name__}.")
    if batch.schema.names != schema.names:
        raise ValueError(f"{who} got columns {batch.schema.names}, expected the in-flight schema's "
                         f"{schema.names} (check clip_dim).")
    return batch


class ModelStage(Stage):
    """A stage that runs a model over a batch: retried once, then ``model_error`` for the batch."""

    def run(self, rows: list[dict]) -> None:
        snapshot = [dict(r) for r in rows]
        for attempt in (1, 2):
            try:
                self.process(rows)
                return
            except Exception as e:  # noqa: BLE001 - a failed batch becomes rejects, never a crash
                log.warning("stage %s failed on a batch of %d rows (attempt %d): %r", self.name, len(rows), attempt, e)
                for r, s in zip(rows, snapshot):  # undo partial work before retrying
                    r.clear()
                    r.update(s)
                err = e
        for r in rows:
            R.reject(r, self.name, "model_error", f"{type(err).__name__}: {err}")


__all__ = ["ModelStage", "Reject", "RowFilter", "Stage", "as_inflight_table", "worker_logging"]
