"""How the commit log scales: open a dataset's log and count its rows at N committed files per kind.

Builds two synthetic logs of ``--files N`` data files and N reject files (256 rows each, one source
shard per file, no data files on disk: only the log is read):

* ``parquet``: today's log, one Parquet snapshot (``_log/snapshot-*.parquet``);
* ``json``: the first log version, one JSON snapshot with a record object per file, read by the
  reader of that version (taken from git at ``--json-reader-commit``, the last commit with it).

Each measurement runs in a fresh subprocess: seconds to open the log and count the committed data
rows (what ``count(*)`` over ``hv`` returns: every committed row is in exactly one file), and the
peak resident memory the open added over the imports. ``humanverse.open`` is measured too (the
manifest, the log, and no listing of data folders beyond ``EAGER_CHECK_FILES`` files).

    python bench/log_scale.py --files 1300000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from humanverse.dataset import EAGER_CHECK_FILES  # noqa: E402

ROWS_PER_FILE = 256
JSON_READER_COMMIT = "fdb9934"


def make_parquet_log(root: Path, n: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from humanverse.shards import RECORD_SCHEMA, write_manifest

    (root / "_log").mkdir(parents=True)
    run = "20260101T000000-bench"
    files, kinds, shards = [], [], []
    for kind in ("data", "rejects"):
        files += [f"{kind}/part-{run}-{i:08d}.parquet" for i in range(n)]
        kinds += [kind] * n
        shards += [f"shard-{i // 4:08d}" for i in range(n)]
    m = len(files)
    shard_rows = pa.ListArray.from_arrays(
        pa.array(range(0, m + 1), pa.int32()),
        pa.StructArray.from_arrays([pa.array(shards), pa.array([ROWS_PER_FILE] * m, pa.int64())], ["shard", "rows"]))
    t = pa.table({"file": files, "kind": kinds, "rows": pa.array([ROWS_PER_FILE] * m, pa.int64()),
                  "run": [run] * m, "created": pa.array([1.7e9 + i for i in range(m)], pa.float64()),
                  "shard_rows": shard_rows, "op": ["add"] * m}, schema=RECORD_SCHEMA)
    pq.write_table(t, root / "_log" / f"snapshot-{run}.parquet", compression="zstd")
    write_manifest(str(root), {"config": {}})


def make_json_log(root: Path, n: int) -> None:
    from humanverse.shards import write_manifest

    (root / "_log").mkdir(parents=True)
    run = "20260101T000000-bench"
    with open(root / "_log" / f"snapshot-{run}.json", "w") as f:
        f.write('{"records": [')
        first = True
        for kind in ("data", "rejects"):
            for i in range(n):
                rec = {"file": f"{kind}/part-{run}-{i:08d}.parquet", "kind": kind, "rows": ROWS_PER_FILE,
                       "shard_rows": {f"shard-{i // 4:08d}": ROWS_PER_FILE}, "run": run, "created": 1.7e9 + i}
                f.write(("" if first else ", ") + json.dumps(rec, sort_keys=True))
                first = False
        f.write("]}")
    write_manifest(str(root), {"config": {}})


def json_reader(dest: Path, commit: str) -> Path:
    """The first log version's ``humanverse`` package, from git, in ``dest``."""
    if not (dest / "humanverse").exists():
        dest.mkdir(parents=True, exist_ok=True)
        out = subprocess.run(["git", "-C", str(REPO), "archive", commit, "humanverse"], check=True,
                             capture_output=True).stdout
        subprocess.run(["tar", "-x", "-C", str(dest)], input=out, check=True)
    return dest


MEASURE = r"""
import json, resource, sys, time
sys.path.insert(0, {path!r})
import pyarrow, pyarrow.parquet, pyarrow.compute
{imports}
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
{body}
dt = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"seconds": round(dt, 3), "rows": int(rows), "added_peak_mib": round((peak - base) / 1024, 1),
                   "peak_mib": round(peak / 1024, 1)}}))
"""


def measure(path: str, imports: str, body: str) -> dict:
    code = MEASURE.format(path=path, imports=imports, body=body)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=path)
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--files", type=int, default=100_000, help="committed files per kind (default 100000)")
    p.add_argument("--json-reader-commit", default=JSON_READER_COMMIT)
    p.add_argument("--dir", default=None, help="where to build the logs (default: a temp folder)")
    p.add_argument("--make", nargs=2, metavar=("KIND", "ROOT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.make:
        (make_parquet_log if args.make[0] == "parquet" else make_json_log)(Path(args.make[1]), args.files)
        return
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        # built in child processes: a child measured later would inherit this process's peak memory
        for kind in ("parquet", "json"):
            subprocess.run([sys.executable, __file__, "--make", kind, str(tmp / kind), "--files", str(args.files)],
                           check=True)
        built = time.perf_counter() - t0
        old = json_reader(tmp / "old", args.json_reader_commit)
        expected = args.files * ROWS_PER_FILE
        results = {
            "parquet_log": measure(str(REPO), "from humanverse.shards import read_log",
                                   f"rows = read_log({str(tmp / 'parquet')!r}).rows('data')"),
            # (a log of up to EAGER_CHECK_FILES files is checked against the data folders at open,
            # and these synthetic logs have no data files: measured above that size only)
            **({"parquet_humanverse_open": measure(
                str(REPO), "import humanverse",
                f"rows = humanverse.open({str(tmp / 'parquet')!r}).num_rows('data')")}
               if 2 * args.files > EAGER_CHECK_FILES else {}),
            "json_log": measure(str(old), "from humanverse.shards import read_log",
                                f"rows = read_log({str(tmp / 'json')!r}).rows('data')"),
            "json_log_read_by_current_reader": measure(
                str(REPO), "from humanverse.shards import read_log",
                f"rows = read_log({str(tmp / 'json')!r}).rows('data')"),
        }
        sizes = {name: sum(f.stat().st_size for f in (tmp / name / "_log").iterdir()) for name in ("parquet", "json")}
    for r in results.values():
        assert r["rows"] == expected, (r, expected)
    print(json.dumps({
        "files_per_kind": args.files, "rows_per_file": ROWS_PER_FILE, "data_rows": expected,
        "log_bytes": sizes, "seconds_to_build_logs": round(built, 1), **results,
        "ratio_open_json_over_parquet": round(results["json_log"]["seconds"] / results["parquet_log"]["seconds"], 1),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
                    "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)},
        "max_rss_of_this_process_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }, indent=2))


if __name__ == "__main__":
    main()
