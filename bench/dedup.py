"""What exact dedup by image id costs per million ids (pipelines.stages.dedup).

Prints one JSON object with, per million ids:

* ``in_process``: one :class:`IdSet` claiming 1 M fresh ids (every row kept), then the same ids again
  (every row a copy): seconds, and the Python heap it holds (tracemalloc: ids, labels, the dict)
  per kept id;
* ``preload``: loading 1 M committed ids at the start of a resumed build, in 256-row tables as
  committed files hold them: the driver's part (:func:`kept_by_owner`: kept rows, labels, split by
  id set) and the id sets' part (``IdSet.preload``, all in this process), seconds per million;
* ``ray``: the build's arrangement, :class:`DedupStage` (as the one dedup actor would) calling
  ``--id-sets`` :class:`IdSet` actors, blocks of ``--block`` rows: seconds per million rows and the
  resident memory the id-set processes gained.

Ids are sha256 hex strings, labels look like a webdataset row (``00042.tar`` + a 9-digit key).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pipelines.stages.dedup import DedupConfig, DedupStage, IdSet, kept_by_owner, label  # noqa: E402


def ids_and_labels(n: int, offset: int = 0) -> tuple[list[str], list[str]]:
    ids = [hashlib.sha256(i.to_bytes(8, "little")).hexdigest() for i in range(offset, offset + n)]
    labels = [label(f"{i // 10000:05d}.tar", f"{i:09d}") for i in range(offset, offset + n)]
    return ids, labels


def in_process(n: int) -> dict:
    ids, labels = ids_and_labels(n)
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    s = IdSet()
    t = time.perf_counter()
    for off in range(0, n, 1024):  # fresh label strings, as an actor gets them from each call
        s.claim(ids[off:off + 1024], [lab.encode().decode() for lab in labels[off:off + 1024]])
    fresh = time.perf_counter() - t
    held = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    t = time.perf_counter()
    for off in range(0, n, 1024):
        out = s.claim(ids[off:off + 1024], [label("other", str(j)) for j in range(off, off + 1024)])
    copies = time.perf_counter() - t
    assert out[0] is not None and s.size() == n
    per_m = 1e6 / n
    return {"ids": n, "claim_fresh_s_per_million": round(fresh * per_m, 2),
            "claim_copies_s_per_million": round(copies * per_m, 2),
            "heap_bytes_per_id": round(held / n, 1), "heap_mib_per_million": round(held * per_m / 2**20, 1)}


def preload(n: int, id_sets: int) -> dict:
    import pyarrow as pa

    ids, labels = ids_and_labels(n)
    shards, keys = zip(*(lab.split("\x1f") for lab in labels))
    table = pa.table({"id": ids, "source_shard": list(shards), "source_key": list(keys)})
    tables = [table.slice(off, 256) for off in range(0, n, 256)]
    t = time.perf_counter()
    parts = list(kept_by_owner(tables, id_sets))
    driver = time.perf_counter() - t
    sets = [IdSet() for _ in range(id_sets)]
    t = time.perf_counter()
    for part in parts:
        for owner, (i, lab) in part.items():
            sets[owner].preload(i, lab)
    loading = time.perf_counter() - t
    assert sum(s.size() for s in sets) == n
    per_m = 1e6 / n
    return {"ids": n, "id_sets": id_sets, "driver_s_per_million": round(driver * per_m, 2),
            "id_sets_s_per_million": round(loading * per_m, 2)}


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


class MeasuredIdSet(IdSet):
    """An id set that can say how much resident memory its process holds."""

    def rss_kib(self) -> int:
        return rss_kib()


def through_ray(n: int, id_sets: int, block: int) -> dict:
    import pyarrow as pa
    import ray

    from pipelines.rows import from_source_rows

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        owners = [ray.remote(num_cpus=0)(MeasuredIdSet).remote() for _ in range(id_sets)]
        before = sum(ray.get([o.rss_kib.remote() for o in owners]))
        stage = DedupStage(DedupConfig(id_sets=id_sets), owners)
        ids, labels = ids_and_labels(n)
        rows = [{"source_shard": lab.split("\x1f")[0], "source_index": i, "source_key": lab.split("\x1f")[1]}
                for i, lab in enumerate(labels)]
        blocks = []
        for off in range(0, n, block):
            t = from_source_rows(rows[off:off + block])
            blocks.append(t.set_column(t.schema.get_field_index("id"), "id", pa.array(ids[off:off + block])))
        t0 = time.perf_counter()
        for b in blocks:
            stage(b)
        elapsed = time.perf_counter() - t0
        after = sum(ray.get([o.rss_kib.remote() for o in owners]))
        assert sum(ray.get([o.size.remote() for o in owners])) == n
    finally:
        ray.shutdown()
    per_m = 1e6 / n
    return {"rows": n, "id_sets": id_sets, "block_rows": block, "s_per_million": round(elapsed * per_m, 2),
            "rows_per_s": round(n / elapsed),
            "id_set_rss_gain_mib_per_million": round((after - before) * per_m / 1024, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ids", type=int, default=1_000_000)
    p.add_argument("--ray-rows", type=int, default=1_000_000, help="rows pushed through the Ray arrangement")
    p.add_argument("--id-sets", type=int, default=4)
    p.add_argument("--block", type=int, default=256, help="rows per dedup call (resources.dedup.batch_size)")
    args = p.parse_args()
    report = {"bench": "dedup", "machine": {"cpus": os.cpu_count()}, "in_process": in_process(args.ids),
              "preload": preload(args.ids, args.id_sets),
              "ray": through_ray(args.ray_rows, args.id_sets, args.block)}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
