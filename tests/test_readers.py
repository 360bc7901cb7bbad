"""Source readers (pipelines.readers): discovery, order, provenance, bytes, skip/resume, errors."""

from __future__ import annotations

import json
import logging
import pickle
from dataclasses import asdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipelines.readers import ShardKeys, SourceShard, SourceShardError, discover, discover_shards, read_shard
from pipelines.rows import SOURCE_SCHEMA
from fixtures_sources import image_bytes, img2dataset_json, write_parquet, write_tar


def rows_of(shard: SourceShard, **kw) -> list[dict]:
    return [r for batch in read_shard(shard, **kw) for r in batch]


def by_name(shards: list[SourceShard]) -> dict[str, SourceShard]:
    return {s.name: s for s in shards}


# -- image folders --------------------------------------------------------------------------------


@pytest.fixture
def image_folder(tmp_path: Path) -> tuple[Path, dict[str, bytes]]:
    root = tmp_path / "imgs"
    files = {
        "a.jpg": image_bytes(0),
        "B.JPG": image_bytes(1),
        "sub/c.png": image_bytes(2, fmt="PNG"),
        "sub/d.jpg": image_bytes(3),
        "sub/e.webp": image_bytes(4, fmt="WEBP"),
        "sub/deeper/f.jpeg": image_bytes(5),
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    (root / "a.txt").write_text("a person walking\n")
    (root / "a.json").write_text(json.dumps({"url": "http://example.com/a.jpg", "key": "a"}))
    (root / "sub" / "d.txt").write_text("alt of d")
    (root / "notes.md").write_text("not an image")
    (root / ".hidden.jpg").write_bytes(image_bytes(6))
    (root / "_tmp").mkdir()
    (root / "_tmp" / "x.jpg").write_bytes(image_bytes(7))
    (root / "sub" / "looks.jpg.txt").write_text("a text file, not an image")
    return root, files


def test_folder_discovery(image_folder):
    root, _ = image_folder
    shards = discover_shards(str(root), folder_shard_size=2)
    assert [(s.name, s.kind, s.size, s.members, s.span) for s in shards] == [
        ("#B.JPG", "folder", 2, ("B.JPG", "a.jpg"), ("B.JPG", "a.jpg")),
        ("sub#c.png", "folder", 2, ("c.png", "d.jpg"), ("c.png", "d.jpg")),
        ("sub#e.webp", "folder", 1, ("e.webp",), ("e.webp", "e.webp")),
        ("sub/deeper#f.jpeg", "folder", 1, ("f.jpeg",), ("f.jpeg", "f.jpeg")),
    ]
    assert len({s.fingerprint for s in shards}) == 4 and all(s.fingerprint.startswith("names:") for s in shards)
    assert shards[0].uri == str(root) and shards[1].uri == f"{root}/sub"
    assert discover_shards(str(root), folder_shard_size=2) == shards  # deterministic
    assert pickle.loads(pickle.dumps(shards)) == shards  # shipped to Ray workers
    assert [SourceShard(**json.loads(json.dumps(asdict(s)))) for s in shards] == shards  # ... or as JSON
    assert [s.size for s in discover_shards(str(root))] == [2, 3, 1]


def test_folder_shards_keep_their_files_when_files_are_added(tmp_path):
    """Recorded shards own fixed ranges of file names: new files sorting before, between or after them
    become new shards, new files inside a range join that shard, and a recorded shard whose files
    are all gone is still listed (empty), so its committed rows can be reported."""
    root = tmp_path / "in"
    root.mkdir()
    for i in range(10, 20):
        (root / f"{i:03d}.jpg").write_bytes(b"x")
    first = discover(str(root), folder_shard_size=4).shards
    assert [(s.name, s.members) for s in first] == [
        ("#010.jpg", ("010.jpg", "011.jpg", "012.jpg", "013.jpg")),
        ("#014.jpg", ("014.jpg", "015.jpg", "016.jpg", "017.jpg")),
        ("#018.jpg", ("018.jpg", "019.jpg"))]
    spans = {s.name: s.span for s in first}
    for i in [1, 2, 3, 4, 5, 6, 7, 8, 9, 30, 31]:  # nine that sort first, two after the last
        (root / f"{i:03d}.jpg").write_bytes(b"x")
    (root / "0125.jpg").write_bytes(b"x")  # inside the range of #010.jpg
    again = by_name(discover(str(root), folder_shard_size=4, known_spans=spans).shards)
    for s in first:
        kept = again[s.name]
        assert kept.span == s.span and set(s.members) <= set(kept.members)
    assert again["#010.jpg"].members == ("010.jpg", "011.jpg", "012.jpg", "0125.jpg", "013.jpg")
    assert again["#010.jpg"].fingerprint != by_name(first)["#010.jpg"].fingerprint
    assert again["#014.jpg"].fingerprint == by_name(first)["#014.jpg"].fingerprint
    assert [(n, again[n].members) for n in sorted(set(again) - set(spans))] == [
        ("#001.jpg", ("001.jpg", "002.jpg", "003.jpg", "004.jpg")),
        ("#005.jpg", ("005.jpg", "006.jpg", "007.jpg", "008.jpg")),
        ("#009.jpg", ("009.jpg",)), ("#030.jpg", ("030.jpg", "031.jpg"))]
    for i in (14, 15, 16, 17):
        (root / f"{i:03d}.jpg").unlink()
    gone = by_name(discover(str(root), folder_shard_size=4, known_spans=spans).shards)["#014.jpg"]
    assert (gone.size, gone.members) == (0, ()) and rows_of(gone) == []


def test_keys_are_unique_within_a_shard_and_fingerprints_follow_the_file(tmp_path):
    path = write_parquet(tmp_path / "p.parquet", {"key": ["a", None, "a", "b"], "jpg": [b"1", b"2", b"3", b"4"]})
    (shard,) = discover_shards(str(path))
    assert [r["source_key"] for r in rows_of(shard)] == ["a", "#1", "a#2", "b"]
    assert shard.fingerprint.startswith("file:")
    write_parquet(path, {"key": ["a", None, "a", "b"], "jpg": [b"1", b"2", b"3", b"44"]})
    assert discover_shards(str(path))[0].fingerprint != shard.fingerprint


def test_folder_rows(image_folder):
    root, files = image_folder
    shards = by_name(discover_shards(str(root), folder_shard_size=2))
    rows = rows_of(shards["#B.JPG"])
    assert [list(r) for r in rows] == [SOURCE_SCHEMA.names] * 2
    assert [(r["source_shard"], r["source_index"], r["source_key"]) for r in rows] == [
        ("#B.JPG", 0, "B.JPG"), ("#B.JPG", 1, "a.jpg")]
    b, a = rows
    assert b["source_bytes"] == files["B.JPG"] and b["alt_text"] is None and b["source_url"] is None
    assert a["source_bytes"] == files["a.jpg"] and a["alt_text"] == "a person walking"
    assert a["source_url"] == "http://example.com/a.jpg" and a["source_error"] is None
    sub = rows_of(shards["sub#c.png"]) + rows_of(shards["sub#e.webp"])
    assert [(r["source_key"], r["source_index"], r["alt_text"]) for r in sub] == [
        ("sub/c.png", 0, None), ("sub/d.jpg", 1, "alt of d"), ("sub/e.webp", 0, None)]
    assert [r["source_bytes"] for r in sub] == [files["sub/c.png"], files["sub/d.jpg"], files["sub/e.webp"]]
    (deep,) = rows_of(shards["sub/deeper#f.jpeg"])
    assert deep["source_key"] == "sub/deeper/f.jpeg" and deep["source_bytes"] == files["sub/deeper/f.jpeg"]
    # rows convert to the source schema as they are
    assert pa.Table.from_pylist(sub, schema=SOURCE_SCHEMA).num_rows == 3


def test_folder_unreadable_file_is_a_row_not_an_exception(image_folder):
    root, files = image_folder
    (shard,) = [s for s in discover_shards(str(root)) if s.name == "sub#c.png"]
    (root / "sub" / "d.jpg").unlink()  # vanished after discovery
    rows = rows_of(shard)
    assert [r["source_index"] for r in rows] == [0, 1, 2]
    bad = rows[1]
    assert bad["source_key"] == "sub/d.jpg" and bad["source_bytes"] is None
    assert bad["source_error"].startswith("cannot read sub/d.jpg:")
    assert rows[2]["source_bytes"] == files["sub/e.webp"]


def test_folder_skip_and_batches(image_folder):
    root, _ = image_folder
    (shard,) = [s for s in discover_shards(str(root)) if s.name == "sub#c.png"]
    batches = list(read_shard(shard, batch_rows=2))
    assert [len(b) for b in batches] == [2, 1]
    keys = ShardKeys({"sub/c.png", "sub/e.webp", "sub/gone.jpg"})
    rows = rows_of(shard, skip=keys)
    assert [(r["source_index"], r["source_key"]) for r in rows] == [(1, "sub/d.jpg")]
    assert keys.vanished == ["sub/gone.jpg"]  # committed, but no longer in the shard
    assert list(read_shard(shard, skip=frozenset({"sub/c.png", "sub/d.jpg", "sub/e.webp"}))) == []


def test_empty_and_missing_inputs(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"^no images, \.tar or \.parquet files found under .*empty\.$"):
        discover_shards(str(tmp_path / "empty"))
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "readme.md").write_text("x")
    with pytest.raises(ValueError, match="no images, .tar or .parquet files found under"):
        discover_shards(str(tmp_path / "docs"))
    with pytest.raises(ValueError, match=r"^input .*nope does not exist\.$"):
        discover_shards(str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="is a file but not a .tar or .parquet shard"):
        discover_shards(str(tmp_path / "docs" / "readme.md"))
    with pytest.raises(ValueError, match="folder_shard_size must be at least 1"):
        discover_shards(str(tmp_path / "docs"), folder_shard_size=0)


# -- webdataset tars ------------------------------------------------------------------------------


def plain_tar(path: Path) -> dict[str, bytes]:
    """A webdataset tar in img2dataset's member layout, with the awkward cases."""
    img = {"0": image_bytes(10), "1": image_bytes(11, fmt="PNG"), "sub/4": image_bytes(14)}
    write_tar(path, [
        ("000000000.jpg", img["0"]),
        ("000000000.txt", b"first caption"),
        ("000000000.json", img2dataset_json("000000000", "http://h/0.jpg", caption="json caption")),
        ("000000001.json", img2dataset_json("000000001", "http://h/1.png", caption="only in json")),
        ("000000001.png", img["1"]),
        ("000000002.json", img2dataset_json("000000002", "http://h/2.jpg", status="failed_to_download",
                                             error="HTTP Error 404: Not Found")),
        ("000000003.txt", b"text but no image"),
        ("noext", b"ignored: no suffix"),
        ("sub/4.jpg", img["sub/4"]),
        ("000000000.extra.cls", b"7"),  # a late member of the first sample: not a new row
    ], dirs=("sub",))
    return img


def test_webdataset_rows(tmp_path):
    img = plain_tar(tmp_path / "wds" / "00000.tar")
    (shard,) = discover_shards(str(tmp_path / "wds"))
    assert (shard.name, shard.kind, shard.size, shard.uri) == ("00000.tar", "webdataset", 5, f"{tmp_path}/wds/00000.tar")
    rows = rows_of(shard)
    assert [(r["source_index"], r["source_key"]) for r in rows] == [
        (0, "000000000"), (1, "000000001"), (2, "000000002"), (3, "000000003"), (4, "sub/4")]
    r0, r1, r2, r3, r4 = rows
    assert (r0["source_bytes"], r0["alt_text"], r0["source_url"]) == (img["0"], "first caption", "http://h/0.jpg")
    assert (r1["source_bytes"], r1["alt_text"], r1["source_url"]) == (img["1"], "only in json", "http://h/1.png")
    assert r2["source_bytes"] is None and r2["source_error"] == "failed_to_download: HTTP Error 404: Not Found"
    assert r2["source_url"] == "http://h/2.jpg"
    assert r3["source_bytes"] is None and r3["source_error"] == "no image in sample"
    assert r3["alt_text"] == "text but no image"
    assert r4["source_bytes"] == img["sub/4"] and r4["source_error"] is None
    assert [r["source_index"] for r in rows_of(shard, skip=frozenset({"000000000", "000000003"}))] == [1, 2, 4]
    assert [len(b) for b in read_shard(shard, batch_rows=2)] == [2, 2, 1]


def test_webdataset_single_file_and_nested(tmp_path):
    plain_tar(tmp_path / "in" / "b" / "00001.tar")
    plain_tar(tmp_path / "in" / "a" / "00000.tar")
    (tmp_path / "in" / "00000_stats.txt").write_text("not a shard")
    assert [s.name for s in discover_shards(str(tmp_path / "in"))] == ["a/00000.tar", "b/00001.tar"]
    (single,) = discover_shards(str(tmp_path / "in" / "a" / "00000.tar"))
    assert (single.name, single.size) == ("00000.tar", 5)
    assert rows_of(single)[0]["source_shard"] == "00000.tar"


def test_corrupt_tar_is_a_shard_error(tmp_path):
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "00000.tar").write_bytes(b"this is not a tar file " * 100)
    with pytest.raises(SourceShardError, match=r"^cannot read the tar shard 00000\.tar"):
        discover_shards(str(tmp_path / "bad"))


def test_unreadable_shards_are_left_out_of_discovery(tmp_path):
    """A truncated tar and a Parquet file whose footer is damaged cannot be counted: ``discover``
    lists them as failed, with one sentence each, and returns the good shards."""
    plain_tar(tmp_path / "wds" / "00000.tar")
    plain_tar(tmp_path / "wds" / "00001.tar")
    bad = tmp_path / "wds" / "00001.tar"
    bad.write_bytes(bad.read_bytes()[:3000])  # cut off inside the first image
    found = discover(str(tmp_path / "wds"))
    assert [s.name for s in found.shards] == ["00000.tar"]
    assert found.failed == {"00001.tar": f"cannot read the tar shard 00001.tar ({bad}): unexpected end of data"}
    with pytest.raises(SourceShardError, match="unexpected end of data"):
        discover_shards(str(tmp_path / "wds"))  # the strict form
    img2dataset_parquet(tmp_path / "pq" / "00000.parquet")
    img2dataset_parquet(tmp_path / "pq" / "00001.parquet")
    bad = tmp_path / "pq" / "00001.parquet"
    bad.write_bytes(bad.read_bytes()[:-12] + b"\0" * 12)  # footer length and magic gone
    found = discover(str(tmp_path / "pq"))
    assert [s.name for s in found.shards] == ["00000.parquet"] and list(found.failed) == ["00001.parquet"]
    assert found.failed["00001.parquet"].startswith("cannot open the parquet shard 00001.parquet")
    single = discover(str(bad))
    assert single.shards == [] and list(single.failed) == ["00001.parquet"]


def test_truncated_tar_with_its_sidecar_gives_undecodable_rows(tmp_path):
    """img2dataset's sidecar names every row of its tar, so a truncated tar can still be counted: the
    rows whose image it no longer holds become ``undecodable`` rows naming the damage."""
    out = tmp_path / "dl"
    img = img2dataset_webdataset(out, "00000")
    tar = out / "00000.tar"
    data = tar.read_bytes()
    tar.write_bytes(data[:data.index(img["000000002"]) + 100])  # inside the second image
    (shard,) = discover_shards(str(out))
    rows = rows_of(shard)
    assert [r["source_key"] for r in rows] == ["000000000", "000000001", "000000002"]
    assert [r["source_reason"] for r in rows] == [None, "download_failed", "undecodable"]
    assert rows[0]["source_bytes"] == img["000000000"]
    assert rows[1]["source_error"] == "failed_to_download: HTTP Error 404: Not Found"
    assert rows[2]["source_error"].startswith("cannot read sample 000000002: member 000000002.jpg is truncated (100 of")
    tar.write_bytes(data[:data.index(img["000000002"]) - 600])  # before the second image's header
    rows = rows_of(shard)
    assert [r["source_reason"] for r in rows] == [None, "download_failed", "undecodable"]
    assert rows[2]["source_error"] == f"cannot read the tar shard 00000.tar ({tar}): unexpected end of data"


def test_parquet_row_group_that_cannot_be_read_gives_undecodable_rows(tmp_path):
    """A damaged page in one row group: that group's rows (named by the key column, which still reads)
    become ``undecodable`` rows; the other row groups are read as usual."""
    path = write_parquet(tmp_path / "00000.parquet", {"key": [f"k{i}" for i in range(6)],
                                                      "jpg": [image_bytes(i) for i in range(6)]}, row_group_size=3)
    (shard,) = discover_shards(str(path))
    jpg = pq.ParquetFile(path).metadata.row_group(0).column(1)
    data = bytearray(path.read_bytes())
    data[jpg.data_page_offset:jpg.data_page_offset + 16] = b"\xff" * 16  # the data page header of row group 0
    path.write_bytes(bytes(data))
    rows = rows_of(shard)
    assert [(r["source_index"], r["source_key"], r["source_reason"]) for r in rows] == [
        (0, "k0", "undecodable"), (1, "k1", "undecodable"), (2, "k2", "undecodable"),
        (3, "k3", None), (4, "k4", None), (5, "k5", None)]
    assert rows[0]["source_error"].startswith("cannot read row group 0 of the parquet shard 00000.parquet")
    assert rows[3]["source_bytes"] == image_bytes(3)


def img2dataset_webdataset(out: Path, shard: str, *, finished: bool = True) -> dict[str, bytes]:
    """img2dataset's webdataset output for one shard: tar (successes only) + metadata parquet (+ stats)."""
    img = {"000000000": image_bytes(20), "000000002": image_bytes(22)}
    write_tar(out / f"{shard}.tar", [
        (f"{k}.{ext}", data) for k in img for ext, data in
        (("jpg", img[k]), ("txt", f"caption {k}".encode()), ("json", img2dataset_json(k, f"http://h/{k}")))])
    write_parquet(out / f"{shard}.parquet", {
        "url": ["http://h/000000000", "http://h/000000001", "http://h/000000002"],
        "caption": ["caption 000000000", "caption 000000001", "caption 000000002"],
        "key": ["000000000", "000000001", "000000002"],
        "status": ["success", "failed_to_download", "success"],
        "error_message": [None, "HTTP Error 404: Not Found", None],
        "width": [240, None, 240],
    })
    if finished:
        (out / f"{shard}_stats.json").write_text(json.dumps({"count": 3, "successes": 2}))
    return img


def test_img2dataset_webdataset_accounts_for_failed_downloads(tmp_path, caplog):
    out = tmp_path / "dl"
    img = img2dataset_webdataset(out, "00000")
    img2dataset_webdataset(out, "00001", finished=False)  # a download cut off mid-shard
    (out / "_tmp").mkdir()
    (out / "_tmp" / "1.feather").write_bytes(b"x")
    with caplog.at_level(logging.WARNING, logger="pipelines.readers"):
        shards = discover_shards(str(out))
    assert [(s.name, s.kind, s.size) for s in shards] == [("00000.tar", "webdataset", 3)]
    assert "skipping 00001.tar: img2dataset has not finished it" in caplog.text
    rows = rows_of(shards[0])
    assert [(r["source_index"], r["source_key"], r["source_url"]) for r in rows] == [
        (0, "000000000", "http://h/000000000"), (1, "000000001", "http://h/000000001"),
        (2, "000000002", "http://h/000000002")]
    assert rows[0]["source_bytes"] == img["000000000"] and rows[0]["alt_text"] == "caption 000000000"
    assert rows[1]["source_bytes"] is None
    assert rows[1]["source_error"] == "failed_to_download: HTTP Error 404: Not Found"
    assert rows[1]["alt_text"] == "caption 000000001"
    assert rows[2]["source_bytes"] == img["000000002"]
    assert [r["source_index"] for r in rows_of(shards[0], skip=frozenset({"000000000"}))] == [1, 2]


def test_img2dataset_first_shard_cut_off(tmp_path):
    img2dataset_webdataset(tmp_path / "dl", "00000", finished=False)
    with pytest.raises(ValueError, match=r"^no complete \.tar or \.parquet shards under .*dl \(img2dataset has not"):
        discover_shards(str(tmp_path / "dl"))


# -- parquet --------------------------------------------------------------------------------------


def img2dataset_parquet(path: Path) -> list[bytes | None]:
    img = [image_bytes(30), image_bytes(31), None, image_bytes(33), image_bytes(34, fmt="PNG")]
    write_parquet(path, {
        "url": [f"http://h/{i}" for i in range(5)],
        "caption": [f"cap {i}" for i in range(5)],
        "key": [f"00000000{i}" for i in range(5)],
        "status": ["success", "success", "failed_to_download", "success", "success"],
        "error_message": [None, None, "timed out", None, None],
        "width": [240] * 5,
        "txt": ["t0", None, None, "t3", "t4"],
        "jpg": img,
    }, row_group_size=2)
    return img


def test_parquet_img2dataset_rows(tmp_path):
    img = img2dataset_parquet(tmp_path / "pq" / "00000.parquet")
    (tmp_path / "pq" / "00000_stats.json").write_text("{}")
    (shard,) = discover_shards(str(tmp_path / "pq"))
    assert (shard.name, shard.kind, shard.size) == ("00000.parquet", "parquet", 5)
    rows = rows_of(shard)
    assert [(r["source_index"], r["source_key"], r["source_url"]) for r in rows] == [
        (i, f"00000000{i}", f"http://h/{i}") for i in range(5)]
    assert [r["source_bytes"] for r in rows] == img
    assert [r["alt_text"] for r in rows] == ["t0", "cap 1", "cap 2", "t3", "t4"]  # txt, else caption
    assert [r["source_error"] for r in rows] == [None, None, "failed_to_download: timed out", None, None]


def test_parquet_skip_keeps_indices_and_batches(tmp_path):
    img = img2dataset_parquet(tmp_path / "00000.parquet")
    (shard,) = discover_shards(str(tmp_path / "00000.parquet"))
    rows = rows_of(shard, skip=frozenset({"000000000", "000000001", "000000003"}))  # row group 0 committed
    assert [(r["source_index"], r["source_bytes"]) for r in rows] == [(2, None), (4, img[4])]
    assert [len(b) for b in read_shard(shard, batch_rows=3)] == [3, 2]
    assert [[r["source_index"] for r in b]
            for b in read_shard(shard, batch_rows=2, skip=frozenset({"000000001"}))] == [[0, 2], [3, 4]]
    with pytest.raises(ValueError, match="batch_rows must be at least 1"):
        list(read_shard(shard, batch_rows=0))


def test_parquet_hf_struct_image_column(tmp_path):
    a, b = image_bytes(40), image_bytes(41, fmt="PNG")
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema([("image", struct), ("text", pa.string()), ("alt_text", pa.string())])
    write_parquet(tmp_path / "hf" / "data" / "train-00000-of-00001.parquet", {
        "image": [{"bytes": a, "path": "a.jpg"}, {"bytes": None, "path": "/elsewhere/b.png"}, None,
                  {"bytes": b, "path": None}],
        "text": ["x", "y", "z", "w"],
        "alt_text": ["alt a", None, None, "alt b"],
    }, schema=schema)
    (shard,) = discover_shards(str(tmp_path / "hf"))
    assert (shard.name, shard.size) == ("data/train-00000-of-00001.parquet", 4)
    rows = rows_of(shard)
    assert [r["source_key"] for r in rows] == ["0", "1", "2", "3"]  # no key column: the index
    assert [r["source_bytes"] for r in rows] == [a, None, None, b]
    assert [r["alt_text"] for r in rows] == ["alt a", "y", "z", "alt b"]  # alt_text, else text
    assert rows[1]["source_error"] == ("no image bytes in column 'image' (it names the file /elsewhere/b.png, "
                                       "which is not embedded)")
    assert rows[2]["source_error"] == "no image bytes in column 'image'"


def test_parquet_needs_image_column(tmp_path):
    blobs = [image_bytes(50), image_bytes(51)]
    path = write_parquet(tmp_path / "custom.parquet", {"id": ["p", "q"], "pixels_blob": blobs, "URL": ["u0", "u1"],
                                                       "TEXT": ["t0", "t1"]})
    with pytest.raises(ValueError) as e:
        discover_shards(str(path))
    msg = str(e.value)
    assert "custom.parquet has none of the image columns" in msg and "['id', 'pixels_blob', 'URL', 'TEXT']" in msg
    assert "--image-column" in msg and msg.count(". ") == 0
    (shard,) = discover_shards(str(path), image_column="pixels_blob")
    rows = rows_of(shard, image_column="pixels_blob")
    assert [(r["source_bytes"], r["source_url"], r["alt_text"]) for r in rows] == [
        (blobs[0], "u0", "t0"), (blobs[1], "u1", "t1")]
    with pytest.raises(ValueError, match=r"has no image column 'nope' \(from --image-column\); its columns are"):
        discover_shards(str(path), image_column="nope")
    with pytest.raises(ValueError, match=r"column 'id' of custom\.parquet has type string, not image bytes"):
        discover_shards(str(path), image_column="id")


def test_mixed_tar_and_parquet_is_an_error(tmp_path):
    plain_tar(tmp_path / "mix" / "00000.tar")
    img2dataset_parquet(tmp_path / "mix" / "other.parquet")
    with pytest.raises(ValueError, match=r"mixes \.tar and \.parquet shards \(00000\.tar, other\.parquet\)"):
        discover_shards(str(tmp_path / "mix"))


def test_loose_images_beside_shards_are_ignored_with_a_warning(tmp_path, caplog):
    img2dataset_parquet(tmp_path / "in" / "00000.parquet")
    (tmp_path / "in" / "preview.jpg").write_bytes(image_bytes(1))
    with caplog.at_level(logging.WARNING, logger="pipelines.readers"):
        assert [s.name for s in discover_shards(str(tmp_path / "in"))] == ["00000.parquet"]
    assert "ignoring 1 loose image files" in caplog.text


def test_shard_changed_since_discovery(tmp_path):
    path = tmp_path / "00000.parquet"
    img2dataset_parquet(path)
    (shard,) = discover_shards(str(path))
    write_parquet(path, {"jpg": [image_bytes(1)]})
    with pytest.raises(SourceShardError, match="has 1 rows but was discovered with 5"):
        rows_of(shard)
    (tmp_path / "gone.parquet").write_bytes(b"PAR1 truncated")
    with pytest.raises(SourceShardError, match=r"^cannot open the parquet shard gone\.parquet"):
        discover_shards(str(tmp_path / "gone.parquet"))


def test_source_shard_validation():
    with pytest.raises(ValueError, match="kind 'zip' is not one of"):
        SourceShard("x", "/x", "zip", 1)
    with pytest.raises(ValueError, match="lists 1 members but has size 2"):
        SourceShard("x#a.jpg", "/x", "folder", 2, ("a.jpg",))


def test_non_local_filesystem():
    """Everything goes through pyarrow.fs: an fsspec in-memory filesystem works as an input."""
    import fsspec

    mem = fsspec.filesystem("memory")
    a, b = image_bytes(60), image_bytes(61)
    with mem.open("/hv-readers/in/x/a.jpg", "wb") as f:
        f.write(a)
    with mem.open("/hv-readers/in/x/a.txt", "wb") as f:
        f.write(b"alt a")
    with mem.open("/hv-readers/in/b.png", "wb") as f:
        f.write(b)
    try:
        shards = discover_shards("memory://hv-readers/in")
        assert [(s.name, s.size) for s in shards] == [("#b.png", 1), ("x#a.jpg", 1)]
        rows = [r for s in shards for r in rows_of(s)]
        assert [(r["source_key"], r["source_bytes"], r["alt_text"]) for r in rows] == [
            ("b.png", b, None), ("x/a.jpg", a, "alt a")]
    finally:
        mem.rm("/hv-readers", recursive=True)
