"""Reading every committed file of a dataset on an object store: one file at a time vs several in flight.

A resumed build with dedup reads three columns of every committed file before it starts
(``ShardSink.committed_tables``), and ``refilter`` reads the rejects' reasons. On an object store
each read waits out a round trip, so the files are read ``humanverse.fs.OBJECT_STORE_READERS``
at a time. This writes ``--files`` small files (``--rows`` rows each, the dedup columns) through
``ShardSink`` to a local moto S3 server, then reads them all with ``--readers`` threads.

    python bench/committed_reads.py                       # own server: 1 and 16 readers, alternating
    python bench/committed_reads.py --endpoint H:P --populate          # fill a running server once
    python bench/committed_reads.py --endpoint H:P --readers 1         # one measurement (farm-bench)

moto on the loopback answers in about a millisecond; a real object store's round trip (10-50 ms)
makes the sequential read slower and the ratio larger.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine  # noqa: E402

COLUMNS = ["id", "source_shard", "source_key"]


def populate(uri: str, files: int, rows: int) -> None:
    """``files`` data files of ``rows`` small synthetic rows each, one commit per file."""
    from humanverse.shards import ShardSink
    from humanverse.testing.synthetic import synthetic_table

    table = synthetic_table(rows, width=32, height=40)
    sink = ShardSink.open(uri)
    try:
        for i in range(files):
            shard = table.set_column(table.schema.get_field_index("source_shard"), "source_shard",
                                     [[f"{i:06d}.tar"] * rows])
            sink.write(shard, "data", name=f"f{i:06d}")
    finally:
        sink.close()


def read_all(uri: str, readers: int) -> tuple[float, int]:
    """Seconds to read the dedup columns of every committed data file with ``readers`` threads."""
    import humanverse.fs as hfs
    from humanverse.shards import ShardSink

    hfs.OBJECT_STORE_READERS = readers
    sink = ShardSink.open(uri)
    try:
        start = time.perf_counter()
        rows = sum(t.num_rows for _, t in sink.committed_tables({"data": COLUMNS}))
        return time.perf_counter() - start, rows
    finally:
        sink.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--endpoint", help="host:port of a running S3 API server (default: start moto here)")
    ap.add_argument("--files", type=int, default=1000)
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--readers", type=int, nargs="*", default=[1, 16])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--populate", action="store_true", help="with --endpoint: only write the files")
    args = ap.parse_args()

    from humanverse.testing.s3server import moto_server, s3_filesystem, s3_uri

    def run(endpoint: str, fill: bool) -> dict:
        s3_filesystem(endpoint).create_dir("bench")
        uri = s3_uri(endpoint, "bench", "committed")
        if fill:
            t = time.perf_counter()
            populate(uri, args.files, args.rows)
            print(json.dumps({"populated_files": args.files, "seconds": round(time.perf_counter() - t, 2)}),
                  file=sys.stderr)
        if args.populate:
            return {}
        times: dict[int, list[float]] = {k: [] for k in args.readers}
        rows = 0
        for _ in range(args.repeats):  # alternating, so drift in the machine's load hits both alike
            for k in args.readers:
                seconds, rows = read_all(uri, k)
                times[k].append(seconds)
        out = {"files": args.files, "rows": rows,
               "seconds": {str(k): round(statistics.median(v), 3) for k, v in times.items()}}
        if len(args.readers) == 2:
            a, b = (statistics.median(times[k]) for k in args.readers)
            out[f"ratio_{args.readers[0]}_over_{args.readers[1]}"] = round(a / b, 2)
        return out

    if args.endpoint:
        report = run(args.endpoint, args.populate)
    else:
        with moto_server() as endpoint:
            report = run(endpoint, True)
    if report:
        print(json.dumps({"benchmark": "committed_reads", **report, "machine": machine()}))


if __name__ == "__main__":
    main()
