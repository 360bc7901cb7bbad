"""Exact deduplication by image id, right after decode, so that no model sees a copy (HyperHuman §4's
funnel: the cheapest filters first; web crawls repeat images, and each copy would otherwise pay for
every model and count twice in training).

A row's ``id`` is the sha256 of its original bytes (:func:`pipelines.stages.decode.image_id`), so
equal ids are equal images. The first row of an id that reaches this stage is *kept*; every later
row with the same id is rejected as ``duplicate``, its detail naming the kept row
(``source_shard``/``source_key``), whatever later stages decide about the kept row. Which copy is
first is deterministic:

* rows already committed in the output always win: their ids are loaded before the run starts
  (data rows, and rejects of stages after this one: rows that were kept once);
* within a run, rows reach this stage in (source shard, ``source_index``) order: the build turns on
  Ray Data's ``preserve_order`` when this stage runs, and the stage is one actor, so it claims ids in
  that order. A retried batch claims its own rows again and keeps them (a claim by the same row is
  idempotent).

**Why an actor pool of id sets keyed by id prefix, and not a join against the committed ids.** A
join needs every id of the run before it can answer (a barrier after decode: the model stages could
not start until all images are decoded), and it still needs an in-run structure for copies within
the run. Here the ids live in :class:`IdSet` actors, ``dedup.id_sets`` of them; each owns the ids
whose leading hex digits fall in its range (:func:`owner_of`), so the memory spreads over as many
processes, and nodes, as needed, and a lookup is one batched call per id set per block. The
stage itself (one actor, which keeps the order) holds nothing but the handles. The id sets cost
memory per kept id, not per row: see ``bench/dedup.py`` and ``BENCHMARKS.md``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from humanverse.config import check
from pipelines import rows as R
from pipelines.stages.base import Stage

log = logging.getLogger(__name__)

STAGE = "dedup"
#: Reject stages whose rows were never kept by this stage (they stopped before it, or were its copies):
#: their committed ids do not count as kept.
NOT_KEPT_STAGES = ("decode", STAGE)
#: Separates shard and key in a kept row's label (neither contains it: it is a control character).
_SEP = "\x1f"


@dataclass(frozen=True)
class DedupConfig:
    """Settings of the dedup stage."""

    #: number of :class:`IdSet` actors holding the kept ids (each owns a range of id prefixes): more
    #: of them spread the memory (about 0.23 GiB per million kept ids, BENCHMARKS.md) over more processes
    id_sets: int = 4

    def __post_init__(self) -> None:
        check(isinstance(self.id_sets, int) and 1 <= self.id_sets <= 4096,
              f"dedup.id_sets must be an integer in [1, 4096], got {self.id_sets!r}.")


def owner_of(image_id: str, n: int) -> int:
    """Which of ``n`` id sets owns ``image_id``: its first four hex digits, as a fraction of 16**4,
    scaled to ``n`` (each id set owns one contiguous range of prefixes)."""
    return int(image_id[:4], 16) * n >> 16


def label(shard: str, key: str | None) -> str:
    """A kept row, as the id sets store it."""
    return f"{shard}{_SEP}{key if key is not None else ''}"


def describe(kept: str) -> str:
    """The ``duplicate`` detail for a copy of the row ``kept`` (a :func:`label`)."""
    shard, _, key = kept.partition(_SEP)
    return f"same image as the kept row source_shard={shard!r} source_key={key!r}"


class IdSet:
    """The kept ids whose prefixes one id set owns (a Ray actor in a build; a plain object in tests).

    Ids are stored as 32 raw bytes with the kept row's label.
    """

    def __init__(self) -> None:
        self._kept: dict[bytes, str] = {}

    def preload(self, ids: Sequence[str], labels: Sequence[str]) -> int:
        """Add committed rows (they win over every row of the run); the first of equal ids stays."""
        for i, lab in zip(ids, labels):
            self._kept.setdefault(bytes.fromhex(i), lab)
        return len(self._kept)

    def claim(self, ids: Sequence[str], labels: Sequence[str]) -> list[str | None]:
        """Claim each id for its row, in order: None where the row is kept (the id was free, or already
        this row's), else the label of the row that keeps it."""
        out: list[str | None] = []
        for i, lab in zip(ids, labels):
            kept = self._kept.setdefault(bytes.fromhex(i), lab)
            out.append(None if kept == lab else kept)
        return out

    def size(self) -> int:
        return len(self._kept)


class DedupStage(Stage):
    """Ray Data stage: reject every alive row whose ``id`` is already kept, as ``duplicate``.

    ``owners`` are the :class:`IdSet` actor handles (or, in tests, plain :class:`IdSet` objects).
    Run as a single actor on an order-preserving dataset (see the module docstring).
    """

    name = STAGE

    def __init__(self, config: DedupConfig | None = None, owners: Sequence | None = None,
                 clip_dim: int | None = None):
        super().__init__(clip_dim)
        self.config = config or DedupConfig()
        if not owners:
            raise ValueError("the dedup stage needs its id sets (pipelines.stages.dedup.start_id_sets).")
        self.owners = list(owners)
        self._remote = hasattr(self.owners[0], "claim") and hasattr(self.owners[0].claim, "remote")

    def _batch(self, batch: pa.Table) -> pa.Table:
        """Column-wise: only ``id``, ``source_shard`` and ``source_key`` are read into Python, and the
        copies' reject columns and heavy columns are set with Arrow (one actor sees every row, so it
        must not copy the images)."""
        alive = batch.column("reject_reason").is_null().to_pylist()
        ids, shards, keys = (batch.column(c).to_pylist() for c in ("id", "source_shard", "source_key"))
        n = len(self.owners)
        groups: dict[int, list[int]] = {}
        for j, ok in enumerate(alive):
            if ok:
                groups.setdefault(owner_of(ids[j], n), []).append(j)
        calls = {o: ([ids[j] for j in g], [label(shards[j], keys[j]) for j in g]) for o, g in groups.items()}
        if self._remote:
            import ray

            owners = list(calls)
            answers = dict(zip(owners, ray.get([self.owners[o].claim.remote(*calls[o]) for o in owners])))
        else:
            answers = {o: self.owners[o].claim(*args) for o, args in calls.items()}
        details: list[str | None] = [None] * batch.num_rows
        for o, group in groups.items():
            for j, kept in zip(group, answers[o]):
                if kept is not None:
                    details[j] = describe(kept)[:2000]
        if all(d is None for d in details):
            return batch
        return _reject_copies(batch, details)


def _reject_copies(batch: pa.Table, details: list[str | None]) -> pa.Table:
    """``batch`` with the rows whose ``details`` entry is set rejected as ``duplicate`` by this stage
    (as :func:`pipelines.rows.reject` does row by row: reject columns set, heavy columns dropped)."""
    mask = pa.array([d is not None for d in details])
    values = {"reject_stage": pa.array([STAGE if d is not None else None for d in details], pa.string()),
              "reject_reason": pa.array(["duplicate" if d is not None else None for d in details], pa.string()),
              "reject_detail": pa.array(details, pa.string())}
    for name in batch.column_names:
        if name in values:
            col = pc.if_else(mask, values[name], batch.column(name))
        elif name in R.HEAVY_COLUMNS:
            col = pc.if_else(mask, pa.nulls(batch.num_rows, batch.schema.field(name).type), batch.column(name))
        else:
            continue
        batch = batch.set_column(batch.schema.get_field_index(name), batch.schema.field(name), col)
    return batch


def committed_kept(tables: Iterable) -> Iterable[tuple[list[str], list[str]]]:
    """(ids, labels) of the kept rows in committed tables: every data row, and rejects of stages
    after dedup (a table without a ``stage`` column is a data table)."""
    for t in tables:
        names = t.column_names
        ids = t.column("id").to_pylist()
        shards = t.column("source_shard").to_pylist()
        keys = t.column("source_key").to_pylist()
        stages = t.column("stage").to_pylist() if "stage" in names else [None] * len(ids)
        keep = [j for j, s in enumerate(stages) if s not in NOT_KEPT_STAGES]
        yield [ids[j] for j in keep], [label(shards[j], keys[j]) for j in keep]


def kept_by_owner(tables: Iterable, n: int) -> Iterator[dict[int, tuple[list[str], list[str]]]]:
    """Per committed table, its kept rows' (ids, labels) split by the id set of ``n`` that owns each
    id (:func:`committed_kept`, :func:`owner_of`)."""
    for ids, labels in committed_kept(tables):
        parts: dict[int, tuple[list[str], list[str]]] = {}
        for i, lab in zip(ids, labels):
            p = parts.setdefault(owner_of(i, n), ([], []))
            p[0].append(i)
            p[1].append(lab)
        yield parts


def start_id_sets(config: DedupConfig, committed: Iterable) -> list:
    """Start ``config.id_sets`` :class:`IdSet` actors (no CPU; not restarted, so a lost one fails the
    run instead of forgetting ids) and load the kept ids of the ``committed`` tables into them."""
    import ray

    actor = ray.remote(num_cpus=0, max_restarts=0)(IdSet)
    owners = [actor.remote() for _ in range(config.id_sets)]
    n, pending, loaded = len(owners), [], 0
    for parts in kept_by_owner(committed, n):
        pending += [owners[o].preload.remote(*p) for o, p in parts.items()]
        loaded += sum(len(p[0]) for p in parts.values())
        if len(pending) > 4 * n:  # bounded in flight: the driver streams the committed files
            ray.get(pending)
            pending = []
    ray.get(pending)
    if loaded:
        log.info("dedup: %d committed kept rows loaded into %d id sets", loaded, n)
    return owners


__all__ = ["NOT_KEPT_STAGES", "DedupConfig", "DedupStage", "IdSet", "committed_kept", "describe", "kept_by_owner",
           "label", "owner_of", "start_id_sets"]
