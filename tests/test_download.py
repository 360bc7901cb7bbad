"""``humanverse download`` (pipelines.download): img2dataset against a local HTTP server, read back by the readers.

Offline: the server runs on 127.0.0.1 in a thread and serves synthetic images written into tmp_path.
"""

from __future__ import annotations

import functools
import http.server
import io
import json
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from humanverse.cli import main
from pipelines.download import MISSING_EXTRA, DownloadConfig, detect_input_format, download, summarize
from pipelines.readers import discover_shards, read_shard
from fixtures_sources import image_bytes


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """A local HTTP server with 4 images >= 200 px, one small image, and (by omission) a 404."""
    root = tmp_path / "srv"
    root.mkdir()
    files = {
        "p0.jpg": image_bytes(0, 256, 320),
        "p1.png": image_bytes(1, 240, 300, "PNG"),
        "p2.jpg": image_bytes(2, 300, 220),
        "p3.jpg": image_bytes(3, 400, 520),
        "small.jpg": image_bytes(4, 120, 100),
    }
    for name, data in files.items():
        (root / name).write_bytes(data)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", files
    finally:
        httpd.shutdown()
        httpd.server_close()


ORDER = ["p0.jpg", "p1.png", "missing.jpg", "small.jpg", "p2.jpg", "p3.jpg"]


def all_rows(out: Path) -> list[dict]:
    return [r for s in discover_shards(str(out)) for b in read_shard(s) for r in b]


def test_webdataset_keeps_original_bytes_and_accounts_for_404(served, tmp_path):
    pytest.importorskip("img2dataset")
    base, files = served
    urls = tmp_path / "urls.csv"
    urls.write_text("url,caption\n" + "".join(f"{base}/{n},a photo of {n}\n" for n in ORDER))
    out = tmp_path / "wds"
    summary = download(str(urls), str(out), DownloadConfig(number_sample_per_shard=4, timeout=5, thread_count=4))

    # img2dataset's own output: successes in the tars (served bytes, untouched), the 404 in the stats
    assert sorted(p.name for p in out.iterdir()) == [
        "00000.parquet", "00000.tar", "00000_stats.json", "00001.parquet", "00001.tar", "00001_stats.json"]
    assert (summary.shards, summary.count, summary.successes, summary.failed_to_download) == (2, 6, 5, 1)
    assert summary.failed_to_resize == 0 and summary.unfinished_shards == ()
    assert list(summary.errors.values()) == [1] and "404" in next(iter(summary.errors))
    in_tars = {}
    for tar_path in sorted(out.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}
        for name, data in members.items():
            if name.endswith(".json"):
                meta = json.loads(data)
                in_tars[meta["url"].rsplit("/", 1)[1]] = members[name[: -len("json")] + "jpg"]
    # resize off: the small image is not filtered by img2dataset (the build's resolution stage does it)
    assert in_tars == {n: files[n] for n in ORDER if n != "missing.jpg"}

    # ... read back as source rows: every URL is a row, the 404 with source_error
    rows = all_rows(out)
    assert [(r["source_shard"], r["source_index"]) for r in rows] == [
        ("00000.tar", 0), ("00000.tar", 1), ("00000.tar", 2), ("00000.tar", 3), ("00001.tar", 0), ("00001.tar", 1)]
    by_url = {r["source_url"].rsplit("/", 1)[1]: r for r in rows}
    assert sorted(by_url) == sorted(ORDER)
    for name in ORDER:
        r = by_url[name]
        assert r["alt_text"] == f"a photo of {name}"
        if name == "missing.jpg":
            assert r["source_bytes"] is None and r["source_error"].startswith("failed_to_download: HTTP Error 404")
        else:
            assert r["source_bytes"] == files[name] and r["source_error"] is None

    # a re-run resumes: both shards are done, nothing is fetched again
    again = download(str(urls), str(out), DownloadConfig(number_sample_per_shard=4, timeout=5, thread_count=4))
    assert (again.shards, again.count, again.successes) == (2, 6, 5)


def test_parquet_with_resize_through_the_cli(served, tmp_path, capsys):
    pytest.importorskip("img2dataset")
    base, files = served
    urls = tmp_path / "urls.txt"
    urls.write_text("".join(f"{base}/{n}\n" for n in ORDER))
    out = tmp_path / "pq"
    assert main(["download", str(urls), str(out), "--output-format", "parquet", "--resize-mode", "keep_ratio_largest",
                 "--image-size", "256", "--threads", "4", "--timeout", "5"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert (printed["count"], printed["successes"], printed["failed_to_download"], printed["failed_to_resize"]) == (
        6, 4, 1, 1)

    table = pq.read_table(out / "00000.parquet")
    status = dict(zip([u.rsplit("/", 1)[1] for u in table.column("url").to_pylist()],
                      table.column("status").to_pylist()))
    assert status == {"p0.jpg": "success", "p1.png": "success", "missing.jpg": "failed_to_download",
                      "small.jpg": "failed_to_resize", "p2.jpg": "success", "p3.jpg": "success"}

    rows = all_rows(out)
    assert [(r["source_shard"], r["source_index"]) for r in rows] == [("00000.parquet", i) for i in range(6)]
    by_url = {r["source_url"].rsplit("/", 1)[1]: r for r in rows}
    assert by_url["missing.jpg"]["source_error"].startswith("failed_to_download: HTTP Error 404")
    assert by_url["small.jpg"]["source_error"] == "failed_to_resize: image too small"
    for name in ("p0.jpg", "p1.png", "p2.jpg", "p3.jpg"):
        r = by_url[name]
        assert r["source_error"] is None and r["alt_text"] is None
        with Image.open(io.BytesIO(r["source_bytes"])) as im:
            w0, h0 = Image.open(io.BytesIO(files[name])).size
            assert im.format == "JPEG"
            assert max(im.size) == min(256, max(w0, h0))  # shrunk to 256, never enlarged


def test_config_and_url_list_errors(tmp_path):
    with pytest.raises(ValueError, match=r"^output_format 'tfrecord' is not one of \['webdataset', 'parquet'\]\.$"):
        DownloadConfig(output_format="tfrecord").validate()
    with pytest.raises(ValueError, match=r"^resize_mode 'border' is not one of"):
        DownloadConfig(resize_mode="border").validate()
    with pytest.raises(ValueError, match="thread_count must be at least 1, got 0"):
        DownloadConfig(thread_count=0).validate()
    assert DownloadConfig().disable_all_reencoding
    assert not DownloadConfig(resize_mode="keep_ratio_largest").disable_all_reencoding

    (tmp_path / "a.parquet").write_bytes(b"")
    (tmp_path / "list.tsv.gz").write_bytes(b"")
    (tmp_path / "list.xlsx").write_bytes(b"")
    assert detect_input_format(str(tmp_path / "a.parquet")) == "parquet"
    assert detect_input_format(str(tmp_path / "list.tsv.gz")) == "tsv.gz"
    with pytest.raises(ValueError, match="cannot tell the format of the URL list .*list.xlsx from its suffix"):
        detect_input_format(str(tmp_path / "list.xlsx"))
    with pytest.raises(ValueError, match="holds .* URL-list formats, not exactly one; pass --input-format"):
        detect_input_format(str(tmp_path))

    if not _has_img2dataset():
        pytest.skip("the URL-list column checks run after the img2dataset check (pip install -e '.[download]')")
    laion = tmp_path / "laion.csv"
    laion.write_text("URL,TEXT\nhttp://x/a.jpg,a cat\n")
    with pytest.raises(ValueError, match=r"has no URL column 'url'; its columns are \['URL', 'TEXT'\]: pass --url-col"):
        download(str(laion), str(tmp_path / "o"))
    with pytest.raises(ValueError, match=r"has no caption column 'caption'.*--caption-col NAME or --no-caption"):
        download(str(laion), str(tmp_path / "o"), DownloadConfig(url_col="URL"))
    with pytest.raises(ValueError, match="URL list .*nope.txt does not exist"):
        download(str(tmp_path / "nope.txt"), str(tmp_path / "o"))
    records = tmp_path / "coyo.jsonl"
    records.write_text('{"URL": "http://x/a.jpg", "text": "a cat"}\n')
    with pytest.raises(ValueError, match=r"coyo.jsonl has no URL column 'url'; its columns are \['URL', 'text'\]"):
        download(str(records), str(tmp_path / "o"))
    assert not (tmp_path / "o").exists()

    # output folders img2dataset could not resume in
    ok = tmp_path / "ok.txt"
    ok.write_text("http://127.0.0.1:9/a.jpg\n")
    (tmp_path / "o1").mkdir()
    (tmp_path / "o1" / "notes.json").write_text("{}")
    with pytest.raises(ValueError, match=r"holds notes.json, which img2dataset cannot resume next to"):
        download(str(ok), str(tmp_path / "o1"))
    (tmp_path / "o2").mkdir()
    for name in ("00000.tar", "00000.parquet", "00000_stats.json"):
        (tmp_path / "o2" / name).write_bytes(b"{}")
    with pytest.raises(ValueError, match=r"holds webdataset shards from an earlier download, so it cannot resume as "
                                         r"parquet; use --output-format webdataset or another folder\.$"):
        download(str(ok), str(tmp_path / "o2"), DownloadConfig(output_format="parquet"))


def test_img2dataset_failure_is_an_error_not_a_hang(tmp_path):
    pytest.importorskip("img2dataset")
    bad = tmp_path / "list.json"
    bad.write_text("this is not json")
    with pytest.raises(RuntimeError, match=r"^img2dataset failed with exit status 1: ValueError: "):
        download(str(bad), str(tmp_path / "o"))


def test_missing_extra_is_one_clear_error(tmp_path):
    """Without img2dataset installed (hidden by an import hook in a child interpreter) -> the one message."""
    code = (
        "import sys\n"
        "class Hide:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] == 'img2dataset': raise ModuleNotFoundError(name)\n"
        "sys.meta_path.insert(0, Hide())\n"
        "from pipelines.download import download\n"
        "try:\n"
        "    download(sys.argv[1], sys.argv[2])\n"
        "except ModuleNotFoundError as e:\n"
        "    print(e)\n"
    )
    (tmp_path / "u.txt").write_text("http://127.0.0.1:9/x.jpg\n")
    res = subprocess.run([sys.executable, "-c", code, str(tmp_path / "u.txt"), str(tmp_path / "o")],
                         capture_output=True, text=True, timeout=60, cwd=Path(__file__).resolve().parents[1])
    assert res.stdout.strip() == MISSING_EXTRA, res.stderr
    assert MISSING_EXTRA == "humanverse download needs the 'download' extra: pip install -e '.[download]'"


def test_summarize_reports_unfinished_shards(tmp_path):
    (tmp_path / "00000_stats.json").write_text(json.dumps({
        "count": 3, "successes": 2, "failed_to_download": 1, "failed_to_resize": 0,
        "status_dict": {"success": 2, "timed out": 1}}))
    for name in ("00000.tar", "00000.parquet", "00001.tar", "00001.parquet"):
        (tmp_path / name).write_bytes(b"")
    s = summarize(str(tmp_path))
    assert (s.shards, s.count, s.successes, s.failed, s.errors) == (1, 3, 2, 1, {"timed out": 1})
    assert s.unfinished_shards == ("00001.parquet", "00001.tar")


def _has_img2dataset() -> bool:
    import importlib.util

    return importlib.util.find_spec("img2dataset") is not None
