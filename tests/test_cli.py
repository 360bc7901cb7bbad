"""The ``humanverse`` front door: query / stats / show / zoo on a small dataset, and its error paths."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
from PIL import Image

import humanverse
from humanverse.cli import main
from humanverse.testing.synthetic import synthetic_table

sys_path_tests = __import__("pathlib").Path(__file__).parent
sys.path.insert(0, str(sys_path_tests))
from shard_writer_proc import make_rows  # noqa: E402


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli") / "ds"
    sink = humanverse.ShardSink.open(root, manifest={"banner": "TEST BANNER", "clip_dim": 8})
    sink.write(synthetic_table(6, shard="a", clip_dim=8), "data", "a")
    sink.write(make_rows("b", [0, 5, 10])[1], "rejects", "b")
    sink.close()
    return root


def test_query_table_csv_json_parquet(dataset, tmp_path, capsys):
    assert main(["query", str(dataset), "SELECT source_index, num_persons FROM hv ORDER BY 1"]) == 0
    out = capsys.readouterr().out
    assert "source_index" in out and "(6 rows)" in out
    assert main(["query", str(dataset), "SELECT reason, count(*) AS n FROM rejects GROUP BY 1",
                 "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out.strip()) == {"reason": "too_small", "n": 3}
    csv_path = tmp_path / "q.csv"
    assert main(["query", str(dataset), "SELECT id, persons FROM hv", "--format", "csv", "--out", str(csv_path)]) == 0
    lines = csv_path.read_text().splitlines()
    assert lines[0] == "id,persons" and len(lines) == 7
    pq_path = tmp_path / "q.parquet"
    assert main(["query", str(dataset), "SELECT * FROM hv", "--format", "parquet", "--out", str(pq_path)]) == 0
    assert pq.read_table(pq_path).num_rows == 6


def test_query_errors_are_one_sentence(dataset, caplog):
    assert main(["query", str(dataset), "SELEC nonsense"]) == 2
    assert "the SQL query failed" in caplog.text
    assert main(["query", str(dataset) + "-missing", "SELECT 1"]) == 2
    assert "has no humanverse.json" in caplog.text


def test_stats_and_plot(dataset, tmp_path, capsys):
    plot, js = tmp_path / "s.png", tmp_path / "s.json"
    assert main(["stats", str(dataset), "--plot", str(plot), "--json", str(js)]) == 0
    text = capsys.readouterr().out
    assert "too_small" in text
    stats = json.loads(js.read_text())
    assert stats["totals"]["accepted"] == 6 and stats["totals"]["rejected"] == 3
    assert Image.open(plot).size[0] > 500


def test_show_html_png_and_bad_extension(dataset, tmp_path, caplog):
    html = tmp_path / "g.html"
    assert main(["show", str(dataset), "--where", "num_persons >= 1", "--limit", "4", "--out", str(html)]) == 0
    page = html.read_text()
    assert page.count('class="card"') == 4 and "TEST BANNER" in page
    png = tmp_path / "g.png"
    assert main(["show", str(dataset), "--out", str(png)]) == 0
    assert Image.open(png).mode in ("RGB", "RGBA")
    assert main(["show", str(dataset), "--out", str(tmp_path / "g.gif")]) == 2
    assert ".html" in caplog.text


def test_zoo_list(capsys):
    assert main(["zoo", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("yolos-tiny", "vitpose-wholebody", "midas-dpt-hybrid", "omnidata-normal", "blip2-opt-2.7b",
                 "sd2-inpainting", "sdxl-base"):
        assert name in out


def test_plain_duckdb_reads_our_parquet(dataset):
    n = duckdb.sql(f"SELECT count(*) FROM '{dataset}/data/*.parquet' WHERE num_persons >= 1").fetchall()[0][0]
    assert n == 6


def test_console_script_is_installed():
    out = subprocess.run([sys.executable, "-m", "humanverse.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "query" in out.stdout and "zoo" in out.stdout


def test_csv_lines_end_in_lf(dataset, tmp_path):
    out = tmp_path / "ids.csv"
    assert main(["query", str(dataset), "SELECT id FROM hv ORDER BY id", "--format", "csv", "--out", str(out)]) == 0
    assert b"\r" not in out.read_bytes() and out.read_text().count("\n") == 7


def test_show_writes_a_default_file(dataset, tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    assert main(["show", str(dataset)]) == 0
    assert (tmp_path / "gallery.html").is_file() and "gallery.html" in caplog.text


def test_pose_from_takes_an_id_prefix(dataset):
    from model.sampling.hyperhuman import pose_from_row

    ids = humanverse.open(dataset).query("SELECT id FROM hv WHERE num_persons > 0 ORDER BY id").column("id").to_pylist()
    pose, _ = pose_from_row(f"{dataset}#{ids[0][:12]}")
    assert pose.source.endswith(ids[0])
    with pytest.raises(ValueError, match="not a row id"):
        pose_from_row(f"{dataset}#x' OR 1=1 --")
    with pytest.raises(ValueError, match="no row with id"):
        pose_from_row(f"{dataset}#ffffffffffff")


def test_train_config_reads_its_section_of_a_combined_preset():
    from model.training.loop import load_train_config

    preset = Path(__file__).resolve().parents[1] / "model" / "presets" / "demo.yaml"
    s2 = load_train_config(str(preset), {"max_steps": 3}, "stage2")
    assert s2.stage == "stage2" and s2.max_steps == 3 and s2.data.resolution == 64
