"""``humanverse build`` end to end on a local Ray cluster with tiny models: the three input kinds,
bad inputs, resume, config checks."""

from __future__ import annotations

import re
import subprocess
import sys
import uuid
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

import humanverse
from humanverse.config import ConfigError
from humanverse.cli import main as cli_main
from pipelines.build import PRESETS, build, cpu_shortfall, load_config
from pipelines.steps import plan_steps

sys.path.insert(0, str(Path(__file__).parent))
import bad_images  # noqa: E402
from fixtures_sources import image_bytes, img2dataset_json, write_parquet, write_tar  # noqa: E402

EXT = {"png": ".png", "webp": ".webp", "bmp": ".bmp", "gif": ".gif", "tiff": ".tif"}


@pytest.fixture(scope="module")
def ray_cluster(tiny_zoo):
    import ray

    ray.init(address="local", num_cpus=4, include_dashboard=False, _temp_dir=f"/tmp/rt-{uuid.uuid4().hex[:6]}",
             runtime_env={"env_vars": {"HUMANVERSE_TINY_ZOO": str(tiny_zoo), "HF_HUB_OFFLINE": "1"}})
    yield
    ray.shutdown()


#: The builder's filtering stages (issue 3); the annotators have their own end-to-end test below.
FILTER_STAGES = ["decode", "resolution", "detect", "person_filter", "aesthetic"]


@pytest.fixture(scope="module")
def cfg():
    return load_config(PRESETS / "demo.yaml", {"stages": FILTER_STAGES})


def _counts(root) -> tuple[int, int]:
    ds = humanverse.open(root)
    return ds.num_rows("data"), ds.num_rows("rejects")


def _all_keys(root, column: str = "source_index") -> list[tuple[str, int | str]]:
    """(source_shard, ``column``) of every committed row, data and rejects."""
    ds = humanverse.open(root)
    keys = []
    for kind in ("data", "rejects"):
        t = ds.to_arrow(kind, columns=["source_shard", column])
        keys += list(zip(t.column(0).to_pylist(), t.column(1).to_pylist()))
    return keys


def test_folder_with_every_bad_input(ray_cluster, cfg, tmp_path):
    src = tmp_path / "in"
    (src / "good").mkdir(parents=True)
    (src / "bad").mkdir()
    for i in range(6):
        (src / "good" / f"p{i}.jpg").write_bytes(image_bytes(i))
    cases = bad_images.all_cases()
    for name, data in cases.items():
        ext = next((e for k, e in EXT.items() if k in name), ".jpg")
        (src / "bad" / f"{name}{ext}").write_bytes(data)
    out = tmp_path / "out"
    build(str(src), str(out), cfg, models="tiny")
    n_data, n_rej = _counts(out)
    assert n_data + n_rej == 6 + len(cases)
    keys = _all_keys(out)
    assert len(keys) == len(set(keys))
    ds = humanverse.open(out)
    rejects = {r["source_key"]: r for r in ds.to_arrow("rejects").to_pylist()}
    for name, reason in bad_images.EXPECTED_REASON.items():
        key = next(k for k in list(rejects) + ds.to_arrow(columns=["source_key"]).column(0).to_pylist()
                   if Path(k).stem == name)
        if reason is None:  # decodes fine: may be filtered later, but never at decode/resolution
            assert key not in rejects or rejects[key]["stage"] not in ("decode", "resolution"), rejects.get(key)
        else:
            assert rejects[key]["reason"] == reason, (name, rejects[key])
    # accepted rows are upright RGB and carry the models that annotated them
    rows = ds.query("SELECT source_key, image, width, height, orig_width, orig_height, models FROM hv").to_pylist()
    for r in rows:
        img = Image.open(__import__("io").BytesIO(r["image"]))
        assert img.mode == "RGB" and img.size == (r["width"], r["height"])
        assert {m["stage"] for m in r["models"]} >= {"detect", "aesthetic"}
    exif6 = [r for r in rows if Path(r["source_key"]).stem == "exif_6"]
    if exif6:  # orientation 6 stores the picture sideways: upright size swaps width and height
        assert (exif6[0]["width"], exif6[0]["height"]) == bad_images.UPRIGHT_SIZE
    # plain DuckDB over the files agrees with the reader
    n = duckdb.sql(f"SELECT count(*) FROM '{out}/data/*.parquet'").fetchall()[0][0]
    assert n == n_data


def test_all_stages_produce_complete_rows(ray_cluster, tmp_path):
    """Every annotator runs (tiny models): persons with 133 keypoints, depth and normal maps at the
    stored size, a caption, the outpaint record and the model of every stage (HyperHuman §4)."""
    from humanverse.codecs import decode_depth, decode_keypoints, decode_normal

    src = tmp_path / "in"
    src.mkdir()
    for i in range(4):
        (src / f"p{i}.jpg").write_bytes(image_bytes(40 + i, 224, 288))
        (src / f"p{i}.txt").write_text(f"alt text of picture {i}")  # the caption fallback
    out = tmp_path / "out"
    cfg_all = load_config(PRESETS / "demo.yaml", {"outpaint.working_size": 64, "outpaint.steps": 2})
    build(str(src), str(out), cfg_all, models="tiny")
    ds = humanverse.open(out)
    rows = ds.to_arrow().to_pylist()
    assert len(rows) + ds.num_rows("rejects") == 4 and rows, "the demo thresholds should let rows through"
    for r in rows:
        assert r["num_persons"] >= 1
        for p in r["persons"]:
            kp = decode_keypoints(p["keypoints"])
            assert kp.shape == (133, 3) and np.isfinite(kp).all()
        assert (r["map_width"], r["map_height"]) == (r["width"], r["height"])
        assert decode_depth(r["depth"], r["depth_min"], r["depth_max"]).shape == (r["height"], r["width"])
        n = decode_normal(r["normal"])
        assert n.shape == (r["height"], r["width"], 3)
        assert r["caption"] and r["caption_source"] in ("model", "alt_text")
        op = r["outpaint"]
        assert op["applied"] and op["canvas_width"] > r["width"] and op["canvas_height"] > r["height"]
        assert {m["stage"] for m in r["models"]} == {"detect", "aesthetic", "outpaint", "pose", "depth", "normal",
                                                      "caption"}


def test_webdataset_and_parquet_inputs(ray_cluster, cfg, tmp_path):
    wds = tmp_path / "wds"
    wds.mkdir()
    for shard in range(2):
        members = []
        for i in range(5):
            key = f"{shard:05d}{i:04d}"
            members += [(f"{key}.jpg", image_bytes(10 * shard + i)), (f"{key}.txt", f"alt {key}".encode()),
                        (f"{key}.json", img2dataset_json(key, f"http://example.com/{key}.jpg"))]
        members += [("000009999.json", img2dataset_json("000009999", "http://x/404", status="failed_to_download",
                                                         error="HTTP Error 404"))] if shard == 1 else []
        write_tar(wds / f"{shard:05d}.tar", members)
    out = tmp_path / "out-wds"
    build(str(wds), str(out), cfg, models="tiny")
    assert sum(_counts(out)) == 11
    ds = humanverse.open(out)
    failed = ds.query("SELECT reason, detail, source_url FROM rejects WHERE reason = 'download_failed'").to_pylist()
    assert len(failed) == 1 and "404" in failed[0]["detail"] and failed[0]["source_url"] == "http://x/404"
    alts = ds.query("SELECT alt_text, source_url FROM hv").to_pylist()
    assert all(a["alt_text"].startswith("alt ") and a["source_url"].startswith("http://example.com/") for a in alts)

    pqdir = tmp_path / "pq"
    write_parquet(pqdir / "part-0.parquet", {
        "key": [f"k{i}" for i in range(6)], "url": [f"http://e/{i}" for i in range(6)],
        "txt": [f"caption {i}" for i in range(6)],
        "jpg": [image_bytes(100 + i) if i != 3 else None for i in range(6)],
        "status": ["success" if i != 3 else "failed_to_download" for i in range(6)],
        "error_message": [None if i != 3 else "timeout" for i in range(6)],
    })
    out2 = tmp_path / "out-pq"
    build(str(pqdir), str(out2), cfg, models="tiny")
    assert sum(_counts(out2)) == 6
    assert humanverse.open(out2).query("SELECT count(*) AS n FROM rejects WHERE reason='download_failed'").column("n")[0].as_py() == 1


def test_unreadable_shards_do_not_stop_the_build(ray_cluster, tmp_path, caplog):
    """A truncated tar and a Parquet file with a damaged footer beside good shards: the good shards are
    built, the command exits 0, the bad shards are named once in the log and in the report, and stay
    to do, so a rerun (after the files are fixed) builds them."""
    decode_only = load_config(PRESETS / "demo.yaml", {"stages": ["decode"]})
    wds = tmp_path / "wds"
    for shard in range(3):
        write_tar(wds / f"{shard:05d}.tar", [(f"{shard}{i:04d}.jpg", image_bytes(10 * shard + i)) for i in range(4)])
    good_tar = (wds / "00001.tar").read_bytes()
    (wds / "00001.tar").write_bytes(good_tar[:2500])
    out = tmp_path / "out-wds"
    assert cli_main(["build", str(wds), str(out), "--models", "tiny", "--config", str(PRESETS / "demo.yaml"),
                     "--set", "stages=[decode]"]) == 0
    assert sum(_counts(out)) == 8
    assert caplog.text.count("source shard 00001.tar is left out of this run") == 1
    assert "1 source shard(s) could not be read and stay to do (rerun to retry them): 00001.tar" in caplog.text
    (wds / "00001.tar").write_bytes(good_tar)  # fixed: the rerun builds it, and only it
    again = build(str(wds), str(out), decode_only, models="tiny")
    assert again.failed_shards == {} and again.shards_skipped == 2 and again.rows_written == 4
    assert sorted(_all_keys(out)) == sorted((f"{s:05d}.tar", i) for s in range(3) for i in range(4))

    pq_dir = tmp_path / "pq"
    for part in range(2):
        write_parquet(pq_dir / f"part-{part}.parquet", {"jpg": [image_bytes(50 + 5 * part + i) for i in range(3)]})
    bad = pq_dir / "part-1.parquet"
    bad.write_bytes(bad.read_bytes()[:-8])  # no footer
    rep = build(str(pq_dir), str(tmp_path / "out-pq"), decode_only, models="tiny")
    assert list(rep.failed_shards) == ["part-1.parquet"] and "cannot open the parquet shard" in rep.failed_shards[
        "part-1.parquet"]
    assert rep.rows_written == 3 and rep.shards_total == 2
    # damaged where even the keys of a row group cannot be read: found while reading, the rows before it
    # are built and the shard stays to do
    path = write_parquet(pq_dir / "part-1.parquet", {"key": [f"k{i}" for i in range(6)],
                                                     "jpg": [image_bytes(60 + i) for i in range(6)]}, row_group_size=3)
    data = bytearray(path.read_bytes())
    for col in pq.ParquetFile(path).metadata.row_group(1).to_dict()["columns"]:
        data[col["data_page_offset"]:col["data_page_offset"] + 16] = b"\xff" * 16
    path.write_bytes(bytes(data))
    rep = build(str(pq_dir), str(tmp_path / "out-pq"), decode_only, models="tiny")
    assert list(rep.failed_shards) == ["part-1.parquet"] and rep.rows_written == 3
    assert "cannot read row group 1 of the parquet shard part-1.parquet, not even its keys" in rep.failed_shards[
        "part-1.parquet"]
    assert sorted(_all_keys(tmp_path / "out-pq")) == [(f"part-{p}.parquet", i) for p in range(2) for i in range(3)]


def _source_keys(root) -> list[tuple[str, str]]:
    """(source_shard, source_key) of every committed row, data and rejects: a source row's identity."""
    return _all_keys(root, "source_key")


def test_inputs_that_grow_end_exactly_once(ray_cluster, tmp_path, caplog):
    """A folder and a set of tars that grow between runs (five files that sort first, one inside a
    shard's range, a new directory; a tar rewritten with more samples, a new tar, a sample removed):
    each run builds exactly the new rows, every source row ends exactly once in data/ or rejects/,
    and a removed row is reported and stays."""
    cfg = load_config(PRESETS / "demo.yaml", {"stages": ["decode"], "input.folder_shard_size": 3})
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    files = [f"{i}.jpg" for i in range(10, 16)]
    for n, f in enumerate(files):
        (src / f).write_bytes(image_bytes(n))
    assert build(str(src), str(out), cfg, models="tiny").rows_written == 6
    added = [f"0{i}.jpg" for i in range(5)] + ["105.jpg", "sub/y.jpg"]
    (src / "sub").mkdir()
    for n, f in enumerate(added):
        (src / f).write_bytes(image_bytes(20 + n))
    rep = build(str(src), str(out), cfg, models="tiny")
    assert (rep.rows_written, rep.shards_skipped, rep.vanished_rows) == (7, 1, {})
    keys = _source_keys(out)
    assert len(keys) == len(set(keys)) and sorted(k for _, k in keys) == sorted(files + added)
    again = build(str(src), str(out), cfg, models="tiny")
    assert again.rows_written + again.rejects_written == 0 and again.shards_skipped == again.shards_total == 5

    wds, out2 = tmp_path / "wds", tmp_path / "out-wds"

    def tar(name: str, keys: list[str]) -> None:
        write_tar(wds / name, [(f"{k}.jpg", image_bytes(int(k[-3:]))) for k in keys])

    tar("00000.tar", ["k000", "k001", "k002"])
    tar("00001.tar", ["k100", "k101", "k102"])
    assert build(str(wds), str(out2), cfg, models="tiny").rows_written == 6
    tar("00001.tar", ["k099", "k100", "k101", "k102", "k103"])  # rewritten with a sample before and after
    tar("00002.tar", ["k200", "k201", "k202"])
    rep = build(str(wds), str(out2), cfg, models="tiny")
    assert (rep.rows_written, rep.shards_skipped) == (5, 1)
    tar("00000.tar", ["k000", "k002"])  # a sample removed: reported, and its row stays
    rep = build(str(wds), str(out2), cfg, models="tiny")
    assert rep.rows_written == 0 and rep.vanished_rows == {"00000.tar": 1}
    assert "source shard 00000.tar no longer holds 1 of its committed rows (e.g. k001)" in caplog.text
    keys = _source_keys(out2)
    assert len(keys) == len(set(keys)) == 11
    assert build(str(wds), str(out2), cfg, models="tiny").shards_skipped == 3  # reconciled: done


def test_a_different_input_is_refused_unless_added(ray_cluster, tmp_path, caplog):
    src, other, out = tmp_path / "in", tmp_path / "other", tmp_path / "out"
    for d, seed in ((src, 0), (other, 1)):
        d.mkdir()
        (d / f"{d.name}.jpg").write_bytes(image_bytes(seed))
    args = ["--models", "tiny", "--config", str(PRESETS / "demo.yaml"), "--set", "stages=[decode]"]
    assert cli_main(["build", str(src), str(out), *args]) == 0
    assert cli_main(["build", str(other), str(out), *args]) == 2
    assert (f"{out} was built from {src} and {other} shares no source shard with it; pass --add-input to build "
            f"{other} into it as well, or give another output.") in caplog.text
    assert sum(_counts(out)) == 1  # nothing read, nothing written
    assert cli_main(["build", str(other), str(out), *args, "--add-input"]) == 0
    assert sorted(k for _, k in _source_keys(out)) == ["in.jpg", "other.jpg"]
    assert cli_main(["build", str(src), str(out), *args]) == 0  # both are recorded inputs now


def _duplicates(root) -> dict[str, str]:
    """source_key -> detail of every ``duplicate`` reject."""
    rows = humanverse.open(root).query("SELECT source_key, detail FROM rejects WHERE reason = 'duplicate'").to_pylist()
    return {r["source_key"]: r["detail"] for r in rows}


def test_duplicates_are_rejected_right_after_decode(ray_cluster, tmp_path):
    """The same image within a shard, across shards, through a symlink, and in a later run (a copy of
    a committed row, and of a committed row a later stage rejected): the first copy is kept, by
    (source_shard, source_index) and committed rows first, and each copy is a ``duplicate`` reject
    naming it. Broken bytes twice are two ``undecodable`` rows, not duplicates."""
    cfg = load_config(PRESETS / "demo.yaml", {"stages": ["decode", "dedup", "resolution"],
                                              "input.folder_shard_size": 4, "dedup.id_sets": 3})
    x, y, z, w = (image_bytes(seed) for seed in (1, 2, 3, 4))
    small = image_bytes(5, 120, 150)  # below resolution.min_side: rejected after dedup kept it
    src = tmp_path / "in"
    files = {"a/0.jpg": x, "a/1.jpg": y, "a/2.jpg": x, "a/3.jpg": z, "a/4.jpg": b"broken", "a/5.jpg": b"broken",
             "b/0.jpg": y, "b/1.jpg": w, "e/small.jpg": small}
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    (src / "c").mkdir()
    (src / "c" / "link.jpg").symlink_to(src / "a" / "3.jpg")
    first = {}
    for attempt in range(2):  # the same verdicts on a second, fresh build
        out = tmp_path / f"out{attempt}"
        build(str(src), str(out), cfg, models="tiny")
        dups = _duplicates(out)
        assert dups == {
            "a/2.jpg": "same image as the kept row source_shard='a#0.jpg' source_key='a/0.jpg'",
            "b/0.jpg": "same image as the kept row source_shard='a#0.jpg' source_key='a/1.jpg'",
            "c/link.jpg": "same image as the kept row source_shard='a#0.jpg' source_key='a/3.jpg'"}
        first = first or dups
        assert dups == first
        reasons = humanverse.open(out).query("SELECT reason, count(*) AS n FROM rejects GROUP BY 1").to_pylist()
        assert {r["reason"]: r["n"] for r in reasons} == {"duplicate": 3, "undecodable": 2, "too_small": 1}
        assert _counts(out) == (4, 6)
    # a later run: a new folder holds copies of a committed row and of a committed too_small row
    (src / "f").mkdir()
    (src / "f" / "again.jpg").write_bytes(x)
    (src / "f" / "small-again.jpg").write_bytes(small)
    (src / "f" / "new.jpg").write_bytes(image_bytes(6))
    rep = build(str(src), str(out), cfg, models="tiny")
    assert rep.rows_written == 1 and rep.rejects_written == 2
    dups = _duplicates(out)
    assert dups["f/again.jpg"] == "same image as the kept row source_shard='a#0.jpg' source_key='a/0.jpg'"
    assert dups["f/small-again.jpg"] == "same image as the kept row source_shard='e#small.jpg' source_key='e/small.jpg'"
    ids = humanverse.open(out).to_arrow("data", columns=["id"]).column(0).to_pylist()
    assert len(ids) == len(set(ids)) == 5


def test_the_first_copy_wins_even_when_a_later_shard_is_read_first(ray_cluster, tmp_path):
    """Shard ``a`` holds 60 images and a copy of ``b``'s only image at its end: ``b`` is read long
    before ``a`` is, yet ``a``'s copy is kept (rows reach the dedup stage in shard order; without
    that, ``b``'s copy won about half the time when this test was written)."""
    src = tmp_path / "in"
    (src / "a").mkdir(parents=True)
    (src / "b").mkdir()
    for i in range(60):
        (src / "a" / f"{i:03d}.jpg").write_bytes(image_bytes(100 + i))
    (src / "a" / "zzz.jpg").write_bytes(image_bytes(999))
    (src / "b" / "000.jpg").write_bytes(image_bytes(999))
    cfg = load_config(PRESETS / "demo.yaml", {"stages": ["decode", "dedup"], "input.batch_rows": 8})
    build(str(src), str(tmp_path / "out"), cfg, models="tiny")
    assert _duplicates(tmp_path / "out") == {
        "b/000.jpg": "same image as the kept row source_shard='a#000.jpg' source_key='a/zzz.jpg'"}


def test_rerun_resumes_and_changed_config_is_refused(ray_cluster, cfg, tmp_path):
    src = tmp_path / "in"
    for j, d in enumerate(("a", "b")):
        (src / d).mkdir(parents=True)
        for i in range(4):
            (src / d / f"{i}.jpg").write_bytes(image_bytes(10 * j + i))
    out = tmp_path / "out"
    first = build(str(src), str(out), cfg, models="tiny")
    assert first.rows_written + first.rejects_written == 8
    again = build(str(src), str(out), cfg, models="tiny")
    assert again.shards_skipped == again.shards_total == 2 and again.rows_written + again.rejects_written == 0
    assert sum(_counts(out)) == 8
    changed = load_config(PRESETS / "demo.yaml", {"detect.score_threshold": 0.9, "stages": FILTER_STAGES})
    with pytest.raises(ConfigError, match=r"different config \(detect.score_threshold: 0.82 -> 0.9\).*--force-new-config"):
        build(str(src), str(out), changed, models="tiny")
    # a new input shard added later is picked up; the old ones stay done
    (src / "c").mkdir()
    (src / "c" / "x.jpg").write_bytes(image_bytes(5))
    third = build(str(src), str(out), changed, models="tiny", force_new_config=True)
    assert third.shards_skipped == 2 and sum(_counts(out)) == 9
    assert len(set(_all_keys(out))) == 9


def test_each_shard_is_its_own_read_task_and_blocks_stream(ray_cluster, tmp_path):
    """Throughput regressions (issue 3): every source shard gets its own read task
    (a batch_size on a CPU stage fused after the reader once bundled every shard into one task), and
    the model stages see blocks of input.batch_rows rows, not one block per shard."""

    src = tmp_path / "in"
    for j, d in enumerate(("a", "b")):
        (src / d).mkdir(parents=True)
        for i in range(6):
            (src / d / f"{i}.jpg").write_bytes(image_bytes(20 * j + i))
    cfg_small = load_config(PRESETS / "demo.yaml", {"stages": FILTER_STAGES, "input.batch_rows": 2,
                                                    "resources.detect.batch_size": 2})
    rep = build(str(src), str(tmp_path / "out"), cfg_small, models="tiny")
    assert rep.rows_written + rep.rejects_written == 12
    tasks = {m.group(1): int(m.group(2))
             for m in re.finditer(r"Operator \d+ (.+?): (\d+) tasks executed", rep.ray_stats)}
    assert tasks.get("MapBatches(_read_shards)") == 2, rep.ray_stats
    assert tasks.get("MapBatches(PersonDetector)", 0) >= 6, rep.ray_stats  # 12 rows in blocks of 2


def test_stages_take_whole_blocks_and_return_one_chunk_per_column():
    """Ray Data calls a stage on whole blocks; the stage runs ``batch_size`` rows at a time, in order,
    and returns one chunk per column (Ray serialises a block chunk by chunk, and the next stage would
    combine them again). A block no larger than a batch is one call."""
    import pyarrow as pa

    from pipelines import rows as R
    from pipelines.stages.base import Stage

    calls = []

    class Indexer(Stage):
        def process(self, rows):
            calls.append([r["source_index"] for r in rows])
            for r in rows:
                r["num_persons"] = 2 * r["source_index"]

    rows = [{"source_shard": "s", "source_index": i} for i in range(10)]
    block = pa.concat_tables([R.from_source_rows(rows[:5]), R.from_source_rows(rows[5:])])
    out = Indexer()(block, batch_size=4)
    assert calls == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert out["num_persons"].to_pylist() == [2 * i for i in range(10)]
    assert out.schema == block.schema and all(c.num_chunks == 1 for c in out.columns)
    calls.clear()
    assert Indexer()(block.slice(0, 4), batch_size=4).num_rows == 4
    assert calls == [[0, 1, 2, 3]]


def test_actor_pools_that_leave_no_cpu_for_the_tasks_are_caught():
    """Actors hold their CPUs for the whole run: a config whose pools leave less than one CPU for
    Ray Data's tasks would wait forever, so it is named up front (the presets all fit)."""
    def shortfall(cfg, cpus):
        return cpu_shortfall(cfg, plan_steps(cfg, "tiny", None), cpus)

    greedy = load_config(PRESETS / "demo.yaml", {"stages": FILTER_STAGES, "resources.detect.num_cpus": 3.5})
    msg = shortfall(greedy, 4)
    assert msg and "actor pools hold 3.75 CPUs" in msg and "need 1 more" in msg and "has 4 CPUs" in msg
    assert shortfall(load_config(PRESETS / "cpu.yaml"), 4) is None  # every stage: 7 actors x 0.25
    assert shortfall(load_config(PRESETS / "cpu.yaml"), 2) is not None  # hence its ray.num_cpus: 4
    assert shortfall(load_config(PRESETS / "gpu-node.yaml"), 96) is None


@pytest.mark.parametrize("args,message", [
    (["--set", "detect.score_threshold=1.5"], "detect.score_threshold must be in [0, 1], got 1.5."),
    (["--set", "detect.colour=red"], "detect: unknown key(s) ['colour']"),
    (["--set", "stages=[decode, fly]"], "stages: unknown stage(s) ['fly']"),
    (["--config", "/nonexistent.yaml"], "config file /nonexistent.yaml does not exist."),
    (["--models", "/no/such/dir"], "--models must be 'tiny', 'paper' or an existing directory"),
])
def test_config_errors_are_one_sentence_and_write_nothing(tmp_path, caplog, args, message):
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.jpg").write_bytes(image_bytes(0))
    out = tmp_path / "out"
    assert cli_main(["build", str(src), str(out), "--models", "tiny", *args]) == 2
    assert message in caplog.text
    assert not out.exists()


def test_missing_input_and_gpu_request_on_a_cpu_cluster(ray_cluster, tmp_path, caplog):
    assert cli_main(["build", str(tmp_path / "nope"), str(tmp_path / "out"), "--models", "tiny"]) == 2
    assert "does not exist" in caplog.text
    src = tmp_path / "in"
    src.mkdir()
    (src / "a.jpg").write_bytes(image_bytes(0))
    # resources chosen by a config (here --set) are honoured: refused (the defaults fall back to CPUs)
    with pytest.raises(ConfigError, match="resources.detect.num_gpus is 0.5 but the Ray cluster has no GPUs"):
        build(str(src), str(tmp_path / "out"), load_config(None, {"resources.detect.num_gpus": 0.5}), models="tiny")
    from pipelines.build import _check_gpus

    caplog.clear()
    gpu_node = load_config(PRESETS / "gpu-node.yaml")
    _check_gpus(gpu_node, plan_steps(gpu_node, "paper", None))  # autoscaling: GPU nodes may still come, a warning
    assert "waiting for the autoscaler" in caplog.text


def test_python_m_entrypoint_help():
    out = subprocess.run([sys.executable, "-m", "pipelines.build", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("usage: humanverse build") and "--force-new-config" in out.stdout
