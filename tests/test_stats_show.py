"""Run report (humanverse.stats) and gallery (humanverse.show) on small synthetic datasets."""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

import humanverse
from humanverse.schema import REJECT_SCHEMA, data_schema
from humanverse.show import (GalleryStyle, load_thumbnail, overlay_annotations, render_gallery,
                             render_sample)
from humanverse.stats import compute_stats, format_stats, plot_stats
from humanverse.testing.synthetic import make_sample, sample_row, synthetic_table

BANNER = "Annotations come from tiny random models & are meaningless."

# (shard, index, stage, reason), written out of pipeline order on purpose
REJECTS = [
    ("s0", 6, "detect", "no_person"),
    ("s0", 7, "decode", "undecodable"),
    ("s0", 8, "resolution", "too_small"),
    ("s0", 9, "resolution", "too_small"),
    ("s1", 4, "aesthetic", "low_aesthetic"),
    ("s1", 5, "detect", "too_many_persons"),
    ("s1", 6, "detect", "no_person"),
    ("s1", 7, "mystery", "model_error"),
]


def _rejects_table(items) -> pa.Table:
    rows = [{"id": hashlib.sha256(f"{s}/{i}".encode()).hexdigest(), "source_url": None, "source_key": None,
             "source_shard": s, "source_index": i, "orig_width": 120, "orig_height": 90, "stage": st,
             "reason": r, "detail": f"{r} at {s}#{i}"} for s, i, st, r in items]
    return pa.Table.from_pylist(rows, schema=REJECT_SCHEMA)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """Two shards: s0 (6 rows: 3,3,3,1,1,1 persons) and s1 (4 rows: 3,1,2,3), 8 rejects."""
    root = tmp_path_factory.mktemp("stats") / "ds"
    s0 = synthetic_table(6, shard="s0", seed=3).to_pylist()
    s0[1].update(depth=None, depth_min=None, depth_max=None, normal=None)  # depth stage skipped
    s0[2]["outpaint"] = {"applied": True, "canvas_width": 256, "canvas_height": 320, "offset_x": 40,
                         "offset_y": 30}
    s0[2].update(orig_width=180, orig_height=250)
    s0[3].update(caption="alt text fallback", caption_source="alt_text")
    s0_t = pa.Table.from_pylist(s0, schema=data_schema())
    s1_t = synthetic_table(4, shard="s1", seed=2)
    sink = humanverse.ShardSink.open(root, manifest={"config": {"min_side": 200, "outpaint": "truncated"}})
    sink.write(s0_t, "data", "s0")
    sink.write(s1_t, "data", "s1")
    sink.write(_rejects_table([r for r in REJECTS if r[0] == "s0"]), "rejects", "s0")
    sink.write(_rejects_table([r for r in REJECTS if r[0] == "s1"]), "rejects", "s1")
    sink.close()
    table = pa.concat_tables([s0_t, s1_t])
    return humanverse.open(root), table


# ---------------------------------------------------------------------------------------------
# stats


def test_compute_stats_exact(built):
    ds, table = built
    s = compute_stats(ds)
    json.dumps(s)  # serialisable
    assert s["totals"] == {"accepted": 10, "rejected": 8, "source_rows": 18, "acceptance_rate": pytest.approx(10 / 18)}
    assert s["dataset"]["format_version"] == humanverse.FORMAT_VERSION
    assert s["dataset"]["manifest"]["config.min_side"] == 200

    # funnel: pipeline order, unknown stage last, survivors cumulative from the 18 source rows
    assert [(f["stage"], f["rejected"], f["survivors"]) for f in s["funnel"]] == [
        ("decode", 1, 17), ("resolution", 2, 15), ("detect", 3, 12), ("aesthetic", 1, 11), ("mystery", 1, 10)]
    detect = s["funnel"][2]["reasons"]
    assert detect == [{"reason": "no_person", "count": 2}, {"reason": "too_many_persons", "count": 1}]
    assert {r["reason"]: r["count"] for r in s["reasons"]} == {
        "undecodable": 1, "too_small": 2, "no_person": 2, "too_many_persons": 1, "low_aesthetic": 1,
        "model_error": 1}
    assert s["funnel"][-1]["survivors"] == s["totals"]["accepted"]

    assert s["shards"]["count"] == 2
    assert s["shards"]["top"] == [{"shard": "s0", "accepted": 6, "rejected": 4, "total": 10},
                                  {"shard": "s1", "accepted": 4, "rejected": 4, "total": 8}]

    d = s["distributions"]
    counts = np.bincount(table.column("num_persons").to_numpy())
    assert d["num_persons"] == [{"num_persons": k, "count": int(c)} for k, c in enumerate(counts) if c]
    assert d["num_persons"] == [{"num_persons": 1, "count": 4}, {"num_persons": 2, "count": 1},
                                {"num_persons": 3, "count": 5}]

    a = d["aesthetic"]
    vals = table.column("aesthetic").to_numpy()
    assert a["count"] == 10 and a["nulls"] == 0
    keys = ["min", "p5", "p25", "p50", "p75", "p95", "max"]
    assert [a[k] for k in keys] == sorted(a[k] for k in keys)
    assert a["min"] == pytest.approx(vals.min(), rel=1e-5) and a["max"] == pytest.approx(vals.max(), rel=1e-5)
    assert a["p50"] == pytest.approx(float(np.quantile(vals, 0.5)), rel=1e-5)
    assert sum(a["histogram"]["counts"]) == 10 and len(a["histogram"]["counts"]) == 20
    assert len(a["histogram"]["edges"]) == 21

    res = d["resolution"]
    assert res["stored"]["min_side"]["p50"] == 256 and res["stored"]["height"]["max"] == 320
    assert res["original"]["min_side"]["min"] == 180 and res["original"]["height"]["min"] == 250
    pa_ = d["person_area"]
    assert 0 < pa_["min"] <= pa_["p50"] <= pa_["max"] <= 1
    assert sum(pa_["histogram"]["counts"]) == 10
    assert d["outpaint"] == {"applied": 1, "recorded": 10, "fraction": 0.1}
    assert d["caption_source"] == {"model": 9, "alt_text": 1}
    assert d["maps"] == {"depth": 9}
    assert s["models"] == [{"stage": "source", "model": "synthetic", "rows": 10}]


def test_format_and_plot(built, tmp_path):
    ds, _ = built
    s = compute_stats(ds)
    text = format_stats(s)
    for _, _, stage, reason in REJECTS:
        assert reason in text and stage in text
    assert "62.5%" not in text and "55.6%" in text  # 10 / 18 accepted
    # aligned: the survivors and percent columns of the funnel end at one column
    funnel = text.split("Reject funnel")[1].split("\n\n")[0].splitlines()[3:]
    assert len({len(line) for line in funnel if line.rstrip().endswith("%")}) == 1
    out = tmp_path / "stats.png"
    plot_stats(s, out)
    with Image.open(out) as im:
        assert im.format == "PNG" and im.width >= 1000 and im.height >= 600
        assert np.asarray(im.convert("L")).std() > 10  # not a blank canvas


def test_empty_dataset(tmp_path):
    root = tmp_path / "empty"
    humanverse.ShardSink.open(root, manifest={"config": {}}).close()
    ds = humanverse.open(root)
    s = compute_stats(ds)
    json.dumps(s)
    assert s["totals"] == {"accepted": 0, "rejected": 0, "source_rows": 0, "acceptance_rate": None}
    assert s["funnel"] == [] and s["shards"] == {"count": 0, "top": []}
    assert s["distributions"]["aesthetic"]["p50"] is None
    assert s["distributions"]["outpaint"]["fraction"] is None
    assert "source rows" in format_stats(s)
    plot_stats(s, tmp_path / "empty.png")
    with Image.open(tmp_path / "empty.png") as im:
        assert im.size[0] > 0
    html = render_gallery(ds, tmp_path / "empty.html").read_text()
    assert html.count('class="card"') == 0 and "No rows to show" in html
    with Image.open(render_gallery(ds, tmp_path / "empty_sheet.png")) as im:
        assert im.height > 50


# ---------------------------------------------------------------------------------------------
# gallery


def test_gallery_html(built, tmp_path):
    ds, table = built
    out = render_gallery(ds, tmp_path / "g.html", limit=7, rejects_limit=5, banner=BANNER)
    html = out.read_text()
    cards = re.findall(r'<div class="card" data-id="([0-9a-f]{64})"', html)
    keys = sorted(zip(table.column("source_shard").to_pylist(), table.column("source_index").to_pylist(),
                      table.column("id").to_pylist()))
    assert cards == [k[2] for k in keys[:7]]  # ORDER BY source_shard, source_index LIMIT 7
    assert 'class="banner">Annotations come from tiny random models &amp; are meaningless.' in html
    assert html.count('<tr class="reject">') == 5 and "Rejects (8 total, showing 5)" in html
    assert html.count("data:image/jpeg;base64,") == 3 * 7
    assert str(ds.root.path) in html
    assert "outpaint: canvas 256x320, original at (40, 30)" in html
    assert "<script" not in html and 'src="http' not in html  # self-contained

    one = render_gallery(ds, tmp_path / "one.html", where="num_persons = 1").read_text()
    expected = sum(1 for n in table.column("num_persons").to_pylist() if n == 1)
    assert expected == 4 and one.count('class="card"') == expected
    both = render_gallery(ds, tmp_path / "both.html", where="num_persons = 1 AND source_shard = 's1'").read_text()
    assert both.count('class="card"') == 1


def test_gallery_errors(built, tmp_path):
    ds, _ = built
    with pytest.raises(ValueError, match="is not one SQL condition on the columns of hv") as e:
        render_gallery(ds, tmp_path / "bad.html", where="num_persons = = 1")
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="not valid SQL"):
        render_gallery(ds, tmp_path / "bad.html", where="no_such_column > 1")
    with pytest.raises(ValueError, match=r"\.html, \.png"):
        render_gallery(ds, tmp_path / "bad.jpg")
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_gallery_png_grows_with_rows(built, tmp_path):
    ds, _ = built
    sizes = []
    for n in (1, 3):
        out = render_gallery(ds, tmp_path / f"g{n}.png", limit=n, banner=BANNER)
        with Image.open(out) as im:
            im.load()
            assert im.format == "PNG"
            sizes.append(im.size)
    assert sizes[0][0] == sizes[1][0] and sizes[1][1] > sizes[0][1] + 2 * 200
    with Image.open(render_gallery(ds, tmp_path / "many.png", limit=100)) as im:  # capped at 8 rows
        assert im.height < sizes[1][1] * 8


def test_overlay_lands_on_keypoints_of_a_large_image():
    s = make_sample(640, 800, num_persons=1, seed=5)
    row = sample_row(s, shard="big", index=0)
    thumb = load_thumbnail(row["image"], 256)
    assert thumb.size == (205, 256)
    sx, sy = thumb.width / 640, thumb.height / 800
    kp = np.asarray(row["persons"][0]["keypoints"], np.float32).reshape(133, 3)
    over = overlay_annotations(thumb, row["persons"], (sx, sy))
    base, drawn = np.asarray(thumb).astype(int), np.asarray(over).astype(int)
    for k in (5, 6, 11, 12):  # shoulders and hips: score 1, well inside the box
        x, y = int(kp[k, 0] * sx), int(kp[k, 1] * sy)
        assert np.abs(drawn[y, x] - base[y, x]).sum() > 30, f"keypoint {k} not drawn at ({x}, {y})"
    # keypoints below the 0.3 threshold are hidden: only the box outline and label change the image
    low = [{**row["persons"][0], "keypoints": np.where(np.arange(399) % 3 == 2, 0.1, kp.ravel()).tolist()}]
    hidden = np.asarray(overlay_annotations(thumb, low, (sx, sy))).astype(int)
    x, y = int(kp[11, 0] * sx), int(kp[11, 1] * sy)
    assert (hidden[y, x] == base[y, x]).all()


def test_render_sample_tiles(built):
    ds, _ = built
    rows = ds.query("SELECT * FROM hv WHERE source_shard = 's0' ORDER BY source_index LIMIT 3").to_pylist()
    views = [render_sample(r, GalleryStyle(thumb_size=128)) for r in rows]
    for v in views:
        assert v.image.size == v.depth.size == v.normal.size and max(v.image.size) == 128
    grey = np.asarray(views[1].depth)
    assert (grey[0, 0] == 128).all() and (np.asarray(views[1].normal)[0, 0] == 128).all()  # not computed
    assert np.asarray(views[0].depth).std() > 5  # a real colour-mapped map
    assert any(line.startswith("outpaint:") for line in views[2].lines)
    with pytest.raises(ValueError, match="thumb_size"):
        GalleryStyle(thumb_size=4)
