"""Run report for a HumanVerse dataset: totals, the reject funnel and distributions (docs/format.md).

Everything is aggregated by DuckDB over the ``hv`` and ``rejects`` views of
:meth:`humanverse.dataset.HumanVerseDataset.connect`; only small scalar columns are ever read
(never ``image``, ``depth`` or ``normal``), so a report over millions of rows costs one column scan.

>>> ds = humanverse.open("out/demo/dataset")
>>> stats = compute_stats(ds)
>>> print(format_stats(stats))
>>> plot_stats(stats, "out/demo/stats.png")

The funnel is a true funnel: it starts at the source rows (accepted + rejected, since every
source row ends in exactly one of the two) and subtracts each stage's rejects in pipeline order,
so the last survivor count equals the accepted rows.
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

from humanverse.schema import REJECT_REASONS

log = logging.getLogger(__name__)

#: Builder stages in pipeline order (HyperHuman §4; docs/architecture.md). The funnel lists reject stages in this order;
#: stages not named here come after, ordered by the first of their reasons in
#: :data:`humanverse.schema.REJECT_REASONS`, then by name.
PIPELINE_STAGES: tuple[str, ...] = (
    "download", "decode", "dedup", "resolution", "detect", "person_filter", "aesthetic",
    "outpaint", "pose", "depth", "normal", "caption", "encode", "write",
)

#: Quantiles reported for every continuous column.
QUANTILES: tuple[float, ...] = (0.05, 0.25, 0.5, 0.75, 0.95)
#: Bins of the aesthetic, min-side and person-area histograms.
HISTOGRAM_BINS = 20
#: How many source shards the report lists by name (the largest first).
TOP_SHARDS = 10


# ---------------------------------------------------------------------------------------------
# SQL helpers


def _rows(con, sql: str) -> list[tuple]:
    return con.sql(sql).fetchall()


def _one(con, sql: str) -> tuple:
    return _rows(con, sql)[0]


def _num(v: Any) -> Any:
    """Python scalar suitable for JSON: floats rounded to 6 significant digits, NaN -> None."""
    if v is None:
        return None
    if isinstance(v, bool):
        return v
    if isinstance(v, int):
        return int(v)
    f = float(v)
    if not math.isfinite(f):
        return None
    return float(f"{f:.6g}")


def _quantiles(con, expr: str, table: str = "hv") -> dict:
    """count, nulls, min, p5..p95, max and mean of a numeric SQL expression over ``table``."""
    qs = ", ".join(str(q) for q in QUANTILES)
    n, nonnull, lo, hi, mean, qv = _one(
        con,
        f"SELECT count(*), count({expr}), min({expr}), max({expr}), avg({expr}), "
        f"quantile_cont({expr}, [{qs}]) FROM {table}",
    )
    out = {"count": int(nonnull), "nulls": int(n - nonnull), "min": _num(lo)}
    for q, v in zip(QUANTILES, qv or [None] * len(QUANTILES)):
        out[f"p{round(q * 100)}"] = _num(v)
    out["max"] = _num(hi)
    out["mean"] = _num(mean)
    return out


def _histogram(con, expr: str, lo: float | None, hi: float | None, bins: int = HISTOGRAM_BINS,
               table: str = "hv") -> dict:
    """``bins`` equal-width bins over [lo, hi] (the last bin closed); empty when lo is None."""
    if lo is None or hi is None:
        return {"edges": [], "counts": []}
    lo, hi = float(lo), float(hi)
    if hi <= lo:  # every value is the same: one bin of width 1 centred on it
        lo, hi = lo - 0.5, hi + 0.5
    width = (hi - lo) / bins
    counts = [0] * bins
    sql = (f"SELECT least(greatest(floor(({expr} - {lo!r}) / {width!r}), 0), {bins - 1})::INTEGER AS b, "
           f"count(*) FROM {table} WHERE {expr} IS NOT NULL GROUP BY b")
    for b, c in _rows(con, sql):
        counts[int(b)] = int(c)
    edges = [_num(lo + i * width) for i in range(bins + 1)]
    return {"edges": edges, "counts": counts}


def _stage_key(stage: str, reasons: list[str]) -> tuple:
    if stage in PIPELINE_STAGES:
        return (0, PIPELINE_STAGES.index(stage), 0, stage)
    vocab = list(REJECT_REASONS)
    first = min((vocab.index(r) for r in reasons if r in REJECT_REASONS), default=len(vocab))
    return (1, 0, first, stage)


def _reason_key(reason: str) -> tuple:
    vocab = list(REJECT_REASONS)
    return (0, vocab.index(reason), reason) if reason in REJECT_REASONS else (1, 0, reason)


def _manifest_summary(manifest: dict, max_items: int = 60, max_len: int = 80) -> dict:
    """Flatten the manifest (minus format fields) to dotted scalar keys; lists become their length."""
    flat: dict[str, Any] = {}

    def walk(prefix: str, v: Any) -> None:
        if len(flat) >= max_items:
            return
        if isinstance(v, dict):
            for k in sorted(v):
                walk(f"{prefix}.{k}" if prefix else str(k), v[k])
        elif isinstance(v, (list, tuple)):
            flat[prefix] = f"[{len(v)} items]"
        elif v is None or isinstance(v, (bool, int, float)):
            flat[prefix] = v
        else:
            s = str(v)
            flat[prefix] = s if len(s) <= max_len else s[: max_len - 1] + "…"

    # the fingerprint repeats the config; per-shard sizes are summarised by the shards table
    skip = ("format", "format_version", "fingerprint", "source_shards")
    walk("", {k: v for k, v in manifest.items() if k not in skip})
    return flat


# ---------------------------------------------------------------------------------------------
# compute


def compute_stats(ds, top_shards: int = TOP_SHARDS) -> dict:
    """Counts, the reject funnel and distributions of a dataset, as a JSON-serialisable dict.

    ``ds`` is a :class:`humanverse.dataset.HumanVerseDataset`. Keys: ``dataset`` (root, format
    version, manifest summary), ``totals``, ``shards``, ``funnel`` (one entry per reject stage in
    pipeline order with its reasons and the rows surviving it), ``reasons``, ``distributions``
    (``num_persons``, ``aesthetic``, ``resolution``, ``person_area``, ``outpaint``,
    ``caption_source``) and ``models``. An empty dataset gives zeros, empty lists and nulls.
    """
    if top_shards < 0:
        raise ValueError(f"top_shards must be a non-negative integer, got {top_shards!r}.")
    con = ds.connect()
    try:
        return _compute(ds, con, top_shards)
    finally:
        con.close()


def _compute(ds, con, top_shards: int) -> dict:
    accepted = int(_one(con, "SELECT count(*) FROM hv")[0])
    rejected = int(_one(con, "SELECT count(*) FROM rejects")[0])
    source = accepted + rejected
    totals = {
        "accepted": accepted,
        "rejected": rejected,
        "source_rows": source,
        "acceptance_rate": _num(accepted / source) if source else None,
    }

    # -- per source shard
    shard_rows = _rows(con, """
        SELECT source_shard, sum(a)::BIGINT AS accepted, sum(r)::BIGINT AS rejected,
               (sum(a) + sum(r))::BIGINT AS total
        FROM (SELECT source_shard, 1 AS a, 0 AS r FROM hv
              UNION ALL SELECT source_shard, 0, 1 FROM rejects)
        GROUP BY source_shard ORDER BY total DESC, source_shard""")
    shards = {
        "count": len(shard_rows),
        "top": [{"shard": s, "accepted": int(a), "rejected": int(r), "total": int(t)}
                for s, a, r, t in shard_rows[:top_shards]],
    }

    # -- reject funnel
    by_stage: dict[str, dict[str, int]] = {}
    for stage, reason, n in _rows(con, "SELECT stage, reason, count(*) FROM rejects GROUP BY ALL"):
        by_stage.setdefault(stage, {})[reason] = int(n)
    survivors = source
    funnel = []
    for stage in sorted(by_stage, key=lambda s: _stage_key(s, list(by_stage[s]))):
        reasons = by_stage[stage]
        n = sum(reasons.values())
        survivors -= n
        funnel.append({
            "stage": stage,
            "rejected": n,
            "survivors": survivors,
            "reasons": [{"reason": r, "count": reasons[r]} for r in sorted(reasons, key=_reason_key)],
        })
    if survivors != accepted:  # cannot happen: source = accepted + rejected
        log.warning("funnel ends at %d rows but %d are accepted", survivors, accepted)
    reasons_total: dict[str, int] = {}
    for st in funnel:
        for r in st["reasons"]:
            reasons_total[r["reason"]] = reasons_total.get(r["reason"], 0) + r["count"]
    reasons = [{"reason": r, "count": reasons_total[r]} for r in sorted(reasons_total, key=_reason_key)]

    # -- distributions
    persons = [{"num_persons": int(k), "count": int(c)}
               for k, c in _rows(con, "SELECT num_persons, count(*) FROM hv GROUP BY 1 ORDER BY 1")]
    aesthetic = _quantiles(con, "aesthetic")
    aesthetic["histogram"] = _histogram(con, "aesthetic", aesthetic["min"], aesthetic["max"])
    resolution = {
        "stored": {"width": _quantiles(con, "width"), "height": _quantiles(con, "height"),
                   "min_side": _quantiles(con, "least(width, height)")},
        "original": {"width": _quantiles(con, "orig_width"), "height": _quantiles(con, "orig_height"),
                     "min_side": _quantiles(con, "least(orig_width, orig_height)")},
    }
    ms = resolution["stored"]["min_side"]
    resolution["stored"]["min_side"]["histogram"] = _histogram(con, "least(width, height)", ms["min"], ms["max"])
    person_area = _quantiles(con, "person_area")
    person_area["histogram"] = _histogram(con, "person_area", 0.0, 1.0)
    op_applied, op_known = _one(
        con, "SELECT count(*) FILTER (WHERE outpaint.applied), count(outpaint) FROM hv")
    outpaint = {"applied": int(op_applied), "recorded": int(op_known),
                "fraction": _num(op_applied / accepted) if accepted else None}
    caption_source = {("null" if s is None else s): int(c) for s, c in _rows(
        con, "SELECT caption_source, count(*) FROM hv GROUP BY 1 ORDER BY 2 DESC, 1 NULLS LAST")}
    # depth_min is set iff the depth map is (reading the map columns themselves would be costly)
    maps = {"depth": int(_one(con, "SELECT count(depth_min) FROM hv")[0])}

    models = [{"stage": s, "model": m, "rows": int(n)} for s, m, n in _rows(con, """
        SELECT m.stage, m.model, count(*) FROM (SELECT unnest(models) AS m FROM hv)
        GROUP BY ALL ORDER BY 1, 2""")]

    manifest = ds.manifest or {}
    root = getattr(ds.root, "path", str(ds.root))
    stats = {
        "dataset": {
            "root": os.fspath(root),
            "format": manifest.get("format"),
            "format_version": manifest.get("format_version"),
            "manifest": _manifest_summary(manifest),
        },
        "totals": totals,
        "shards": shards,
        "funnel": funnel,
        "reasons": reasons,
        "distributions": {
            "num_persons": persons,
            "aesthetic": aesthetic,
            "resolution": resolution,
            "person_area": person_area,
            "outpaint": outpaint,
            "caption_source": caption_source,
            "maps": maps,
        },
        "models": models,
    }
    log.info("stats for %s: %d accepted, %d rejected, %d shards", root, accepted, rejected, shards["count"])
    return stats


# ---------------------------------------------------------------------------------------------
# text report


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v.is_integer() and abs(v) < 1e15:
            return str(int(v))
        return f"{v:.{digits}f}"
    return str(v)


def _pct(n: int, d: int) -> str:
    return f"{100.0 * n / d:.1f}%" if d else "-"


def _table(headers: list[str], rows: list[list[Any]], right: set[int] | None = None) -> list[str]:
    """Aligned plain-text table; columns in ``right`` (default: all but the first) right-aligned."""
    right = set(range(1, len(headers))) if right is None else right
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r: list[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()

    out = ["  " + line(cells[0]), "  " + "  ".join("-" * w for w in widths)]
    out += ["  " + line(r) for r in cells[1:]]
    return out


def _quantile_row(name: str, q: dict) -> list[Any]:
    return [name, q["count"], q["min"], *(q[f"p{round(p * 100)}"] for p in QUANTILES), q["max"]]


_Q_HEADERS = ["", "n", "min", *(f"p{round(p * 100)}" for p in QUANTILES), "max"]


def format_stats(stats: dict) -> str:
    """A readable plain-text report of :func:`compute_stats`' output (aligned tables)."""
    t = stats["totals"]
    d = stats["distributions"]
    src = t["source_rows"]
    ds = stats["dataset"]
    out = [f"HumanVerse dataset {ds['root']}  (format {ds.get('format') or 'humanverse'} "
           f"v{_fmt(ds.get('format_version'))})", ""]

    out.append("Totals")
    out += _table(["", "rows", "% of source"], [
        ["source rows", src, _pct(src, src)],
        ["accepted", t["accepted"], _pct(t["accepted"], src)],
        ["rejected", t["rejected"], _pct(t["rejected"], src)],
    ])
    out.append("")

    out.append("Reject funnel (rows surviving each stage, % of source rows)")
    rows: list[list[Any]] = [["source rows", "", "", src, _pct(src, src)]]
    for st in stats["funnel"]:
        rows.append([st["stage"], "", st["rejected"], st["survivors"], _pct(st["survivors"], src)])
        for r in st["reasons"]:
            rows.append(["", r["reason"], r["count"], "", _pct(r["count"], src)])
    rows.append(["accepted", "", "", t["accepted"], _pct(t["accepted"], src)])
    out += _table(["stage", "reason", "rejected", "survivors", "%"], rows, right={2, 3, 4})
    out.append("")

    sh = stats["shards"]
    out.append(f"Source shards: {sh['count']} (largest {len(sh['top'])} listed)")
    if sh["top"]:
        out += _table(["shard", "accepted", "rejected", "total"],
                      [[s["shard"], s["accepted"], s["rejected"], s["total"]] for s in sh["top"]])
    out.append("")

    out.append("Persons per image")
    acc = t["accepted"]
    out += _table(["persons", "images", "%"],
                  [[p["num_persons"], p["count"], _pct(p["count"], acc)] for p in d["num_persons"]])
    out.append("")

    res = d["resolution"]
    out.append("Distributions")
    out += _table(_Q_HEADERS, [
        _quantile_row("aesthetic", d["aesthetic"]),
        _quantile_row("person_area", d["person_area"]),
        _quantile_row("width", res["stored"]["width"]),
        _quantile_row("height", res["stored"]["height"]),
        _quantile_row("min side", res["stored"]["min_side"]),
        _quantile_row("orig width", res["original"]["width"]),
        _quantile_row("orig height", res["original"]["height"]),
        _quantile_row("orig min side", res["original"]["min_side"]),
    ])
    out.append("")

    op = d["outpaint"]
    out.append(f"Outpainting applied: {op['applied']} of {acc} images ({_pct(op['applied'], acc)})")
    maps = d.get("maps", {})
    if maps:
        out.append(f"Depth maps computed: {maps.get('depth', 0)} of {acc} images")
    out.append("Caption source: " + (", ".join(f"{k} {v} ({_pct(v, acc)})" for k, v in d["caption_source"].items())
                                     or "-"))
    out.append("")

    out.append("Models")
    if stats["models"]:
        out += _table(["stage", "model", "rows"], [[m["stage"], m["model"], m["rows"]] for m in stats["models"]],
                      right={2})
    else:
        out.append("  -")
    man = ds.get("manifest") or {}
    if man:
        out.append("")
        out.append("Manifest")
        out += _table(["key", "value"], [[k, v] for k, v in man.items()], right=set())
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------
# plot


def _no_data(ax, title: str) -> None:
    ax.set_title(title)
    ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes, color="0.5", fontsize=12)
    ax.set_xticks([])
    ax.set_yticks([])


def _hist_panel(ax, hist: dict, title: str, xlabel: str, color: str) -> None:
    if not hist["counts"] or not any(hist["counts"]):
        _no_data(ax, title)
        return
    e = hist["edges"]
    ax.bar(e[:-1], hist["counts"], width=[b - a for a, b in zip(e[:-1], e[1:])], align="edge",
           color=color, edgecolor="white", linewidth=0.5)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("images")
    _integer_axis(ax.yaxis)


def _integer_axis(axis) -> None:
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


def plot_stats(stats: dict, path: "str | os.PathLike[str]") -> None:
    """Write one PNG figure of :func:`compute_stats`' output: funnel, reject reasons, persons per
    image, aesthetic, min-side resolution and person-area histograms (matplotlib, Agg, no display).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    t = stats["totals"]
    d = stats["distributions"]
    fig = Figure(figsize=(16, 9.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 3)
    fig.suptitle(f"HumanVerse {stats['dataset']['root']}: {t['accepted']} accepted of "
                 f"{t['source_rows']} source rows ({_pct(t['accepted'], t['source_rows'])})", fontsize=13)

    # funnel
    ax = axes[0, 0]
    labels = ["source rows"] + [f"after {st['stage']}" for st in stats["funnel"]]
    values = [t["source_rows"]] + [st["survivors"] for st in stats["funnel"]]
    if t["source_rows"]:
        y = list(range(len(values)))
        ax.barh(y, values, color=["#4c72b0"] + ["#55a868"] * (len(values) - 1))
        ax.set_yticks(y, labels)
        ax.invert_yaxis()
        for yi, v in zip(y, values):
            ax.text(v, yi, f" {v} ({_pct(v, t['source_rows'])})", va="center", fontsize=9)
        ax.set_xlim(0, max(values) * 1.35)
        ax.set_xlabel("rows")
        _integer_axis(ax.xaxis)
        ax.set_title("Reject funnel: rows surviving each stage")
    else:
        _no_data(ax, "Reject funnel: rows surviving each stage")

    # reject reasons, coloured by stage
    ax = axes[0, 1]
    items = [(st["stage"], r["reason"], r["count"]) for st in stats["funnel"] for r in st["reasons"]]
    if items:
        from matplotlib import colormaps

        cmap = colormaps["tab10"]
        stages = list(dict.fromkeys(s for s, _, _ in items))
        y = list(range(len(items)))
        ax.barh(y, [c for _, _, c in items], color=[cmap(stages.index(s) % 10) for s, _, _ in items])
        ax.set_yticks(y, [f"{r}\n({s})" if len(items) <= 8 else f"{r} ({s})" for s, r, _ in items],
                      fontsize=9)
        ax.invert_yaxis()
        for yi, (_, _, c) in zip(y, items):
            ax.text(c, yi, f" {c}", va="center", fontsize=9)
        ax.set_xlim(0, max(c for _, _, c in items) * 1.2)
        ax.set_xlabel("rejected rows")
        _integer_axis(ax.xaxis)
        ax.set_title(f"Reject reasons ({t['rejected']} rejected)")
    else:
        _no_data(ax, "Reject reasons")

    # persons per image
    ax = axes[0, 2]
    if d["num_persons"]:
        xs = [p["num_persons"] for p in d["num_persons"]]
        cs = [p["count"] for p in d["num_persons"]]
        ax.bar(xs, cs, color="#8172b3")
        ax.set_xticks(xs)
        for x, c in zip(xs, cs):
            ax.text(x, c, str(c), ha="center", va="bottom", fontsize=9)
        ax.set_xlabel("persons per image")
        ax.set_ylabel("images")
        _integer_axis(ax.yaxis)
        ax.set_title("Persons per image")
    else:
        _no_data(ax, "Persons per image")

    a = d["aesthetic"]
    _hist_panel(axes[1, 0], a["histogram"],
                f"Aesthetic score (median {_fmt(a['p50'], 2)})", "LAION aesthetic score", "#dd8452")
    ms = d["resolution"]["stored"]["min_side"]
    _hist_panel(axes[1, 1], ms["histogram"],
                f"Shorter side, stored (median {_fmt(ms['p50'], 0)} px)", "min(width, height) [px]", "#64b5cd")
    pa_ = d["person_area"]
    _hist_panel(axes[1, 2], pa_["histogram"],
                f"Person area (median {_fmt(pa_['p50'], 2)})", "union of person boxes / image area", "#c44e52")

    fig.savefig(os.fspath(path), format="png")
    log.info("wrote stats plot %s", path)
