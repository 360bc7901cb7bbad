"""A writer process for the kill-and-resume test: writes every (shard, index) of a fixed source set
exactly once through :class:`humanverse.ShardSink`, resuming from whatever is committed.

Run: python tests/shard_writer_proc.py ROOT NUM_SHARDS ROWS_PER_SHARD ROWS_PER_FILE
"""

from __future__ import annotations

import hashlib
import sys
import time

import pyarrow as pa

import humanverse
from humanverse.schema import REJECT_SCHEMA, data_schema


def make_rows(shard: str, indices: list[int]) -> tuple[pa.Table, pa.Table]:
    data, rejects = [], []
    for i in indices:
        payload = f"{shard}/{i}".encode()
        base = {"id": hashlib.sha256(payload).hexdigest(), "source_url": None, "source_key": str(i),
                "source_shard": shard, "source_index": i}
        if i % 5 == 0:
            rejects.append({**base, "orig_width": 10, "orig_height": 10, "stage": "resolution",
                            "reason": "too_small", "detail": "10x10 < 200"})
        else:
            data.append({**base, "image": payload * 50, "width": 300, "height": 400, "orig_width": 300,
                         "orig_height": 400, "persons": [], "num_persons": 0})
    return (pa.Table.from_pylist(data, schema=data_schema()),
            pa.Table.from_pylist(rejects, schema=REJECT_SCHEMA))


def main(root: str, num_shards: int, rows_per_shard: int, rows_per_file: int) -> None:
    sizes = {f"shard-{s:03d}": rows_per_shard for s in range(num_shards)}
    sink = humanverse.ShardSink.open(root, manifest={"config": {"test": "kill-resume"}})
    done = sink.state.complete_shards(sizes)
    for shard in sorted(set(sizes) - done):
        have = {int(k) for k in sink.committed_keys([shard])[shard]}
        todo = [i for i in range(sizes[shard]) if i not in have]
        for k in range(0, len(todo), rows_per_file):
            chunk = todo[k:k + rows_per_file]
            data, rejects = make_rows(shard, chunk)
            sink.write(data, "data", name=f"{shard}-{chunk[0]}")
            sink.write(rejects, "rejects", name=f"{shard}-{chunk[0]}")
            time.sleep(0.005)
    sink.close()
    print("DONE", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
