"""What the read tasks tell the driver about the source shards they read (no Ray import here).

The builder runs one :class:`ReadLedger` as a Ray actor (no CPU) for a run; each read task reports
to it once per shard:

* :meth:`ReadLedger.failed`: the shard could not be read (to the end); its rows read before the
  failure are built, and it stays not done, so the next run retries it;
* :meth:`ReadLedger.finished`: the shard was read to its end, with the committed keys that the
  shard no longer holds (rows that disappeared from a changed shard: reported, never deleted).

Ray Data gives a read task no other channel back to the driver: its output is the rows themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class LedgerReport:
    """The ledger's content at the end of a run."""

    #: shard name -> one sentence: why it could not be read
    failed: dict[str, str] = field(default_factory=dict)
    #: names of the shards read to their end
    finished: set[str] = field(default_factory=set)
    #: shard name -> committed keys the shard no longer holds (only shards that have some)
    vanished: dict[str, list[str]] = field(default_factory=dict)


class ReadLedger:
    """Collects the read tasks' per-shard reports (a Ray actor in a build; a plain object in tests).

    A retried read task may report a shard twice: reports are keyed by shard, the last one counts,
    and a shard that finished in one attempt is not failed by an earlier attempt's report.
    """

    def __init__(self) -> None:
        self._report = LedgerReport()

    def failed(self, shard: str, reason: str) -> None:
        if shard not in self._report.finished:
            self._report.failed[shard] = reason

    def finished(self, shard: str, vanished: list[str]) -> None:
        self._report.failed.pop(shard, None)
        self._report.finished.add(shard)
        if vanished:
            self._report.vanished[shard] = sorted(vanished)
        else:
            self._report.vanished.pop(shard, None)

    def report(self) -> LedgerReport:
        return self._report


__all__ = ["LedgerReport", "ReadLedger"]
