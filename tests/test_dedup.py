"""Exact dedup by image id (pipelines.stages.dedup) without Ray: which copy is kept, what the detail
says, idempotent claims, committed rows, and the config checks. The build-level tests (within a
shard, across shards, across runs, a symlink) are in tests/test_build.py."""

from __future__ import annotations

import hashlib

import pyarrow as pa
import pytest

from humanverse.config import ConfigError
from pipelines.config import load_config
from pipelines.rows import from_source_rows
from pipelines.stages.dedup import DedupConfig, DedupStage, IdSet, committed_kept, label, owner_of


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def block(rows: list[tuple[str, str, bytes]]) -> pa.Table:
    """An in-flight table of decoded rows (shard, key, image bytes): ``id`` set as decode sets it."""
    t = from_source_rows([{"source_shard": s, "source_index": i, "source_key": k} for i, (s, k, _) in enumerate(rows)])
    return t.set_column(t.schema.get_field_index("id"), "id", pa.array([sha(b) for _, _, b in rows]))


def verdicts(table: pa.Table) -> list[tuple[str | None, str | None]]:
    return list(zip(table.column("reject_reason").to_pylist(), table.column("reject_detail").to_pylist()))


def test_the_first_copy_is_kept_and_later_ones_name_it():
    owners = [IdSet() for _ in range(3)]
    stage = DedupStage(DedupConfig(id_sets=3), owners)
    out = stage(block([("a", "a/0.jpg", b"X"), ("a", "a/1.jpg", b"Y"), ("a", "a/2.jpg", b"X")]), batch_size=2)
    assert verdicts(out) == [(None, None), (None, None),
                             ("duplicate", "same image as the kept row source_shard='a' source_key='a/0.jpg'")]
    assert out.column("reject_stage").to_pylist() == [None, None, "dedup"]
    # a later block, another shard: its copy of Y names the row of the earlier block
    out = stage(block([("b", "b/0.jpg", b"Y"), ("b", "b/1.jpg", b"Z")]))
    assert verdicts(out)[0] == ("duplicate", "same image as the kept row source_shard='a' source_key='a/1.jpg'")
    assert verdicts(out)[1] == (None, None)
    # a retried block claims its own rows again: still kept (claims are idempotent)
    assert verdicts(stage(block([("b", "b/0.jpg", b"Y"), ("b", "b/1.jpg", b"Z")])))[1] == (None, None)
    assert sum(o.size() for o in owners) == 3  # X, Y, Z once each
    # a block of two chunks, with images: a copy loses its image (rejects carry no heavy columns)
    two = pa.concat_tables([block([("c", "c/0.jpg", b"V")]), block([("c", "c/1.jpg", b"V")])])
    two = two.set_column(two.schema.get_field_index("image"), two.schema.field("image"), pa.array([b"img0", b"img1"]))
    out = stage(two)
    assert out.schema == two.schema and out.column("image").to_pylist() == [b"img0", None]
    assert verdicts(out)[1] == ("duplicate", "same image as the kept row source_shard='c' source_key='c/0.jpg'")
    assert all(isinstance(o, int) and 0 <= o < 3 for o in (owner_of(sha(bytes([i])), 3) for i in range(50)))
    assert owner_of("0" * 64, 3) == 0 and owner_of("f" * 64, 3) == 2  # contiguous prefix ranges


def test_committed_rows_win_and_only_kept_ones_count():
    data = pa.table({"id": [sha(b"X")], "source_shard": ["old"], "source_key": ["x.jpg"]})
    rejects = pa.table({"id": [sha(b"S"), sha(b"U"), sha(b"X")], "source_shard": ["old"] * 3,
                        "source_key": ["small.jpg", "broken.jpg", "copy.jpg"],
                        "stage": ["resolution", "decode", "dedup"]})
    kept = list(committed_kept([data, rejects]))
    assert kept == [([sha(b"X")], [label("old", "x.jpg")]), ([sha(b"S")], [label("old", "small.jpg")])]
    owner = IdSet()
    for ids, labels in kept:
        owner.preload(ids, labels)
    out = DedupStage(DedupConfig(id_sets=1), [owner])(block([("new", "n/0.jpg", b"S"), ("new", "n/1.jpg", b"U"),
                                                             ("new", "n/2.jpg", b"X")]))
    assert verdicts(out) == [
        ("duplicate", "same image as the kept row source_shard='old' source_key='small.jpg'"), (None, None),
        ("duplicate", "same image as the kept row source_shard='old' source_key='x.jpg'")]


def test_dedup_config_is_checked():
    with pytest.raises(ConfigError, match=r"dedup.id_sets must be an integer in \[1, 4096\], got 0"):
        load_config(None, {"dedup.id_sets": 0})
    with pytest.raises(ConfigError, match="resources.dedup.concurrency must be 1, got 2"):
        load_config(None, {"resources.dedup.concurrency": 2})
    with pytest.raises(ValueError, match="needs its id sets"):
        DedupStage(DedupConfig(), [])
