"""What every builder stage shares: alive-row selection, per-stage counters, and the model-stage
failure policy (DESIGN.md §5: bad samples are data, not exceptions).

A stage is a callable ``pa.Table -> pa.Table`` over :func:`pipelines.rows.inflight_schema`. Model
stages subclass :class:`ModelStage`: Ray Data constructs them once per actor (weights load there,
never on the driver) and calls them per batch. If :meth:`ModelStage.process` raises for a whole
batch it is retried once; a second failure rejects that batch's alive rows with ``model_error``
and the exception text, and the run goes on.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, field

import pyarrow as pa

from pipelines import rows as R

log = logging.getLogger(__name__)


@dataclass
class StageCounters:
    """Rows in/out of one stage in one worker; logged every ``every_s`` seconds and at the end."""

    stage: str
    every_s: float = 30.0
    rows_in: int = 0
    alive_in: int = 0
    alive_out: int = 0
    seconds: float = 0.0
    _last: float = field(default_factory=time.monotonic)

    def add(self, rows_in: int, alive_in: int, alive_out: int, seconds: float) -> None:
        self.rows_in += rows_in
        self.alive_in += alive_in
        self.alive_out += alive_out
        self.seconds += seconds
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            self.log()

    def log(self) -> None:
        rate = self.alive_in / self.seconds if self.seconds > 0 else 0.0
        log.info("stage %-13s in %6d alive %6d -> kept %6d (rejected %d), %.1f rows/s per worker",
                 self.stage, self.rows_in, self.alive_in, self.alive_out, self.alive_in - self.alive_out, rate)


def worker_logging() -> None:
    """Send this package's INFO lines (per-stage rows in/out and rates) to stderr in a Ray worker,
    whose Python logging is otherwise unconfigured (only warnings show); Ray streams workers'
    stderr to the driver. A no-op where logging is configured (the driver, tests)."""
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
        self.schema = R.inflight_schema(clip_dim)
        self.counters = StageCounters(self.name)

    def process(self, rows: list[dict]) -> None:
        """Annotate or reject the alive ``rows`` in place."""
        raise NotImplementedError

    def run(self, rows: list[dict]) -> None:
        self.process(rows)

    def __call__(self, batch: pa.Table) -> pa.Table:
        t = time.perf_counter()
        rows = batch.to_pylist()
        alive = [r for r in rows if R.is_alive(r)]
        if alive:
            self.run(alive)
        self.counters.add(len(rows), len(alive), sum(R.is_alive(r) for r in alive), time.perf_counter() - t)
        return R.to_table(rows, self.schema)


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
