"""Write+read throughput of the exactly-once sink against bare pyarrow.parquet on the same rows.

Prints one JSON object. Target (issue 2): sink throughput >= 0.8 x bare pyarrow.
Each repetition runs both writers side by side on identical tables (realistic rows: JPEG image,
16-bit depth PNG, normal PNG, 1-3 persons with 133 keypoints) and reads everything back.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

import humanverse
from humanverse.testing.synthetic import synthetic_table


def bare(tables, root: Path) -> float:
    t = time.perf_counter()
    (root / "data").mkdir(parents=True)
    for i, tb in enumerate(tables):
        pq.write_table(tb, root / "data" / f"part-{i}.parquet", row_group_size=128)
    n = sum(pq.read_table(p).num_rows for p in sorted((root / "data").glob("*.parquet")))
    assert n == sum(tb.num_rows for tb in tables)
    return time.perf_counter() - t


def sink(tables, root: Path, validate: bool = True, fsync: bool = True) -> float:
    t = time.perf_counter()
    opts = humanverse.shards.ParquetWriteOptions(validate=validate, fsync=fsync)
    s = humanverse.ShardSink.open(root, options=opts)
    for i, tb in enumerate(tables):
        s.write(tb, "data", name=str(i))
    s.close()
    n = humanverse.open(root).to_arrow().num_rows
    assert n == sum(tb.num_rows for tb in tables)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--files", type=int, default=40)
    ap.add_argument("--rows-per-file", type=int, default=32)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    base = synthetic_table(args.rows_per_file, width=512, height=512, seed=0)
    tables = [base] * args.files
    mb = sum(tb.nbytes for tb in tables) / 2**20
    res = {"bare": [], "sink": [], "sink_no_fsync": []}
    tmp = Path(tempfile.mkdtemp(prefix="hv-bench-"))
    try:
        variants = [("bare", bare), ("sink", sink), ("sink_no_fsync", lambda t, p: sink(t, p, fsync=False))]
        for r in range(args.reps):
            # rotate the order and flush dirty pages between variants: otherwise the sink's fsyncs
            # pay for the writeback of whatever the previous variant left in the page cache
            for name, fn in variants[r % 3:] + variants[: r % 3]:
                os.sync()
                d = tmp / f"{name}-{r}"
                res[name].append(fn(tables, d))
                shutil.rmtree(d)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in res.items()}
    rows = args.files * args.rows_per_file
    out = {
        "benchmark": "shards.write_read",
        "files": args.files, "rows": rows, "mebibytes": round(mb, 1), "reps": args.reps,
        "rows_per_s": {k: round(rows / v, 1) for k, v in med.items()},
        "mib_per_s": {k: round(mb / v, 1) for k, v in med.items()},
        "ratio_sink_vs_bare": round(med["bare"] / med["sink"], 3),
        "ratio_sink_no_fsync_vs_bare": round(med["bare"] / med["sink_no_fsync"], 3),
        "target_ratio": 0.8,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
