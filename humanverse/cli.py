"""``humanverse``: the one front door. Subcommands import what they need only when they run.

    humanverse query ROOT SQL [--format table|csv|json|parquet] [--out FILE]
    humanverse stats ROOT [--plot FILE.png] [--json FILE]
    humanverse show ROOT [--where SQL] [--limit N] --out FILE.html|FILE.png
    humanverse zoo list
    humanverse zoo make-tiny DIR [--only NAME,...]
    humanverse build INPUT OUTPUT [--config FILE.yaml] [--models tiny|paper|DIR] [--address ADDR]
    humanverse download URLS OUT [...]
    humanverse latents ROOT OUT [--models ...]
    humanverse train stage1|stage2 --data ROOT [--latents OUT] [--config FILE.yaml] [--models ...] --out RUN
    humanverse sample --prompt TEXT --pose POSE.json|--pose-from ROOT[#ID]|--testset FILE.jsonl --out DIR
    humanverse eval --real REAL --generated GEN [--poses TESTSET.jsonl] [--out report.json]
    humanverse demo [--out out/demo]

This module is the only place in ``humanverse`` that reaches into ``pipelines`` and ``model``
(lazily), e.g. to collect the tiny-model builders of classes that live there (DESIGN.md §6).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("humanverse")


def extra_tiny_builders() -> dict[str, Callable[[Path, int], None]]:
    """Tiny builders for zoo entries whose classes live outside ``humanverse`` (DESIGN.md §6)."""
    from model.lsdm import make_tiny_lsdm
    from pipelines.annotators.omnidata import TINY_BUILDERS

    return {**TINY_BUILDERS, "lsdm": make_tiny_lsdm}


# -- commands -------------------------------------------------------------------------------------


def cmd_query(args: argparse.Namespace) -> int:
    import duckdb

    import humanverse

    try:
        table = humanverse.open(args.root).query(args.sql)
    except duckdb.Error as e:
        raise ValueError(f"the SQL query failed: {e}") from e
    fmt = args.format
    if fmt == "table":
        if args.out:
            raise SystemExit("--out needs --format csv, json or parquet.")
        _print_table(table, args.max_rows)
        return 0
    if fmt == "parquet":
        if not args.out:
            raise SystemExit("--format parquet needs --out FILE.parquet.")
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
    w = csv.writer(buf)
    w.writerow(table.column_names)
    for r in table.to_pylist():
        w.writerow([json.dumps(_jsonable(v)) if isinstance(v, (list, dict, bytes)) else v for v in r.values()])
    return buf.getvalue()


def cmd_stats(args: argparse.Namespace) -> int:
    import humanverse
    from humanverse.stats import format_stats, plot_stats

    stats = humanverse.open(args.root).stats()
    sys.stdout.write(format_stats(stats) + "\n")
    if args.json:
        Path(args.json).write_text(json.dumps(stats, indent=2, default=str))
        log.info("wrote %s", args.json)
    if args.plot:
        plot_stats(stats, args.plot)
        log.info("wrote %s", args.plot)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    import humanverse
    from humanverse.show import GalleryStyle, render_gallery

    ds = humanverse.open(args.root)
    banner = args.banner if args.banner is not None else ds.manifest.get("banner")
    out = render_gallery(ds, args.out, where=args.where, limit=args.limit, banner=banner,
                         style=GalleryStyle(keypoint_threshold=args.keypoint_threshold))
    log.info("wrote %s", out)
    return 0


def cmd_zoo(args: argparse.Namespace) -> int:
    from humanverse import zoo

    if args.zoo_cmd == "list":
        sys.stdout.write(zoo.format_table() + "\n")
        return 0
    names = args.only.split(",") if args.only else None
    built = zoo.make_tiny(args.dir, names, seed=args.seed, builders=extra_tiny_builders(), force=args.force)
    for name, path in built.items():
        sys.stdout.write(f"{name:22s} {path}\n")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    from pipelines.build import run_from_args

    return run_from_args(args)


def cmd_download(args: argparse.Namespace) -> int:
    from pipelines.download import main as download_main

    return download_main(args.download_args)


#: Subcommands whose own parsers (in ``model``) take every argument after the command name, with
#: their help lines; importing those parsers here would load torch for every command.
PASSTHROUGH = {
    "train": ("model.train", "train stage 1 (LSDM) or stage 2 on a dataset (Ray Train)"),
    "latents": ("model.latents", "build the VAE-latent cache of a dataset (a Ray job)"),
    "sample": ("model.pipeline", "generate: stage 1 (RGB, depth, normal) then the refiner"),
    "eval": ("model.evaluate", "FID, KID, FID-CLIP, CLIP score, pose AP/AR (paper Table 1)"),
}


def run_passthrough(command: str, argv: list[str]) -> int:
    if command == "eval":
        return eval_main(argv)
    import importlib

    return importlib.import_module(PASSTHROUGH[command][0]).main(argv)


def eval_main(argv: list[str]) -> int:
    """``humanverse eval``: :mod:`model.evaluate` with the builder's pose annotators injected
    (``model`` and ``pipelines`` never import each other; this dispatcher joins them)."""
    from model.evaluate import main as evaluate_main
    from pipelines.eval_pose import BuilderPoseEstimator

    return evaluate_main(argv, pose_factory=BuilderPoseEstimator)


def cmd_demo(args: argparse.Namespace) -> int:
    from humanverse.demo import run_demo

    run_demo(Path(args.out))
    return 0


# -- parser ---------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="humanverse", description=__doc__.split("\n\n")[0])
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    sub = p.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    q = sub.add_parser("query", help="run SQL over a dataset (tables: hv, rejects)")
    q.add_argument("root")
    q.add_argument("sql")
    q.add_argument("--format", choices=["table", "csv", "json", "parquet"], default="table")
    q.add_argument("--out", help="write the result to FILE instead of stdout")
    q.add_argument("--max-rows", type=int, default=50, help="rows printed with --format table")
    q.set_defaults(func=cmd_query)

    s = sub.add_parser("stats", help="counts, reject funnel and distributions")
    s.add_argument("root")
    s.add_argument("--plot", help="write a PNG figure")
    s.add_argument("--json", help="write the statistics as JSON")
    s.set_defaults(func=cmd_stats)

    g = sub.add_parser("show", help="a gallery of rows (boxes, skeletons, depth, normals) and rejects")
    g.add_argument("root")
    g.add_argument("--where", help="SQL condition on table hv, e.g. \"num_persons = 1 AND aesthetic >= 5\"")
    g.add_argument("--limit", type=int, default=24)
    g.add_argument("--out", required=True, help="FILE.html or FILE.png")
    g.add_argument("--banner", help="text shown above the gallery (default: the dataset's own banner)")
    g.add_argument("--keypoint-threshold", type=float, default=0.3, help="hide keypoints scoring below this")
    g.set_defaults(func=cmd_show)

    z = sub.add_parser("zoo", help="the table of pretrained models and their tiny stand-ins")
    zs = z.add_subparsers(dest="zoo_cmd", required=True, metavar="ZOO_COMMAND")
    zs.add_parser("list", help="print the model table")
    mt = zs.add_parser("make-tiny", help="build tiny random models of every entry into DIR (offline)")
    mt.add_argument("dir")
    mt.add_argument("--only", help="comma-separated entry names")
    mt.add_argument("--seed", type=int, default=0)
    mt.add_argument("--force", action="store_true", help="rebuild entries that already exist")
    z.set_defaults(func=cmd_zoo)

    b = sub.add_parser("build", help="build a HumanVerse dataset from image shards (Ray Data)")
    from pipelines.build import add_arguments  # argparse definitions only; no heavy imports

    add_arguments(b)
    b.set_defaults(func=cmd_build)

    dl = sub.add_parser("download", help="download URL lists with img2dataset (the 'download' extra)",
                        add_help=False)
    dl.add_argument("download_args", nargs=argparse.REMAINDER)
    dl.set_defaults(func=cmd_download)

    for name, (_, help_text) in PASSTHROUGH.items():
        sp = sub.add_parser(name, help=help_text, add_help=False)
        sp.add_argument("rest", nargs=argparse.REMAINDER)
        sp.set_defaults(func=lambda args, name=name: run_passthrough(name, args.rest))

    d = sub.add_parser("demo", help="the offline demo on tiny random models (make demo)")
    d.add_argument("--out", default="out/demo")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # argparse's REMAINDER drops a leading --option: hand these commands their arguments as given
    level = argv[:2] if argv[:1] == ["--log-level"] else []
    rest = argv[len(level):]
    if rest and rest[0] in PASSTHROUGH:
        return run_passthrough(rest[0], rest[1:] + level)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        log.debug("details", exc_info=True)
        log.error("%s", e)
        return 2


if __name__ == "__main__":
    sys.exit(main())
