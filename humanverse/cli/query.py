"""``humanverse query ROOT SQL``: SQL over a dataset's committed rows (tables ``hv`` and ``rejects``,
DuckDB), printed as a table or written as CSV, JSON lines or Parquet.

Per person (``persons[1]`` is the first: DuckDB lists are 1-based), the columns ``body_visible``,
``feet_visible``, ``face_visible``, ``left_hand_visible``, ``right_hand_visible`` count the visible
keypoints of each part (score >= 0.3) and ``<part>_confidence`` is the part's mean score. Macros:

    kp(person, name)                       one keypoint as {x, y, score}: kp(persons[1], 'left_wrist').score
    kp_index(name)                         its COCO-WholeBody index: kp_index('left_wrist') = 9
    kp_visible(person, part[, threshold])  a part's keypoints scoring >= threshold (default 0.3)

    humanverse query ROOT "SELECT id, caption FROM hv WHERE num_persons = 1
        AND persons[1].left_hand_visible >= 11 AND persons[1].right_hand_visible >= 11 AND aesthetic >= 5"
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from humanverse.cli.plumbing import add_root, log, open_dataset

NAME = "query"
HELP = "run SQL over a dataset (tables: hv, rejects)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_root(p)
    p.add_argument("sql", help="a SELECT over the tables hv (accepted rows) and rejects")
    p.add_argument("--format", choices=["table", "csv", "json", "parquet"], default="table")
    p.add_argument("--out", help="write the result to FILE instead of stdout")
    p.add_argument("--max-rows", type=int, default=50, help="rows printed with --format table")


def run(args: argparse.Namespace) -> int:
    import duckdb

    ds = open_dataset(args)
    con = ds.connect()  # with the keypoint macros
    try:
        with ds.loud_reads():
            result = con.sql(args.sql)
            if result is None:
                raise ValueError("the SQL returned no rows; give a query (SELECT …) over hv and rejects.")
            table = result.to_arrow_table()
    except duckdb.Error as e:
        from humanverse.errors import first_line

        first = first_line(e)
        raise ValueError(f"the SQL query failed: {first}") from e
    finally:
        con.close()
    fmt = args.format
    if fmt == "table":
        if args.out:
            raise ValueError("--out needs --format csv, json or parquet.")
        _print_table(table, args.max_rows)
        return 0
    if fmt == "parquet":
        if not args.out:
            raise ValueError("--format parquet needs --out FILE.parquet.")
        import pyarrow.parquet as pq

        pq.write_table(table, args.out)
    else:
        text = _to_csv(table) if fmt == "csv" else _to_json(table)
        if args.out:
            Path(args.out).write_text(text)
        else:
            sys.stdout.write(text)
    if args.out:
        log.info("wrote %d rows to %s", table.num_rows, args.out)
    return 0


def _cell(v, width: int = 40) -> str:
    if isinstance(v, (bytes, bytearray)):
        s = f"<{len(v)} bytes>"
    elif isinstance(v, float):
        s = f"{v:.4g}"
    else:
        s = str(v)
    return s if len(s) <= width else s[: width - 1] + "…"


def _print_table(table, max_rows: int) -> None:
    rows = table.slice(0, max_rows).to_pylist()
    names = table.column_names
    cells = [[_cell(r[n]) for n in names] for r in rows]
    widths = [max([len(n)] + [len(c[i]) for c in cells]) for i, n in enumerate(names)]
    line = "  ".join(n.ljust(w) for n, w in zip(names, widths))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells]
    if table.num_rows > max_rows:
        out.append(f"… {table.num_rows - max_rows} more rows (use --max-rows or --format csv --out FILE)")
    out.append(f"({table.num_rows} rows)")
    sys.stdout.write("\n".join(out) + "\n")


def _jsonable(v):
    if isinstance(v, (bytes, bytearray)):
        import base64

        return base64.b64encode(v).decode()
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_jsonable(x) for x in v]
    return v


def _to_json(table) -> str:
    return "\n".join(json.dumps(_jsonable(r), default=str) for r in table.to_pylist()) + "\n"


def _to_csv(table) -> str:
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")  # LF: a value captured in a shell keeps no \r
    w.writerow(table.column_names)
    for r in table.to_pylist():
        w.writerow([json.dumps(_jsonable(v)) if isinstance(v, (list, dict, bytes)) else v for v in r.values()])
    return buf.getvalue()
