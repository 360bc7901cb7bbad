"""Readable everywhere: the dataset card (checked against ``datasets`` itself), the derived person
part columns and the named-keypoint macros of ``humanverse query``, on new and format-v1 datasets."""

from __future__ import annotations

import json
import logging

import duckdb
import numpy as np
import pyarrow as pa
import pytest
import yaml

import humanverse
from humanverse import card
from humanverse.cli import main
from humanverse.schema import (COLUMN_DESCRIPTIONS, KEYPOINT_PARTS, REJECT_SCHEMA, VISIBLE_SCORE, data_schema,
                               with_person_parts)
from humanverse.shards import ParquetWriteOptions
from humanverse.skeleton import KEYPOINT_NAMES
from humanverse.sql import register_keypoint_macros, where_expression
from humanverse.testing.synthetic import synthetic_table

#: The issue's example filter: one plain WHERE over documented columns.
BOTH_HANDS = ("num_persons = 1 AND persons[1].left_hand_visible >= 11 AND persons[1].right_hand_visible >= 11 "
              "AND aesthetic >= 5")


def _varied(n: int = 14) -> pa.Table:
    """Synthetic rows with varied aesthetic scores and, on the first person, hands hidden in different
    ways (all points below the threshold, 10 of 21 visible, 11 of 21 visible, untouched)."""
    rows = synthetic_table(n, seed=5).to_pylist()
    for i, r in enumerate(rows):
        r["aesthetic"] = 4.0 + 0.25 * i
        kp = np.asarray(r["persons"][0]["keypoints"], np.float32).reshape(133, 3)
        mode = i % 4
        if mode == 1:
            kp[KEYPOINT_PARTS["left_hand"].start:KEYPOINT_PARTS["left_hand"].stop, 2] = 0.1
        elif mode == 2:
            kp[KEYPOINT_PARTS["right_hand"].start + 10:KEYPOINT_PARTS["right_hand"].stop, 2] = 0.29
        elif mode == 3:
            kp[KEYPOINT_PARTS["right_hand"].start + 11:KEYPOINT_PARTS["right_hand"].stop, 2] = 0.0
        r["persons"][0]["keypoints"] = kp.reshape(-1).tolist()
    return with_person_parts(pa.Table.from_pylist(rows, schema=data_schema()))


def _expected_both_hands(table: pa.Table) -> set[str]:
    """The issue's filter computed from the raw keypoints with numpy (no derived column involved)."""
    out = set()
    for r in table.to_pylist():
        if len(r["persons"]) != 1 or r["aesthetic"] < 5:
            continue
        s = np.asarray(r["persons"][0]["keypoints"], np.float32).reshape(133, 3)[:, 2]
        if (s[91:112] >= 0.3).sum() >= 11 and (s[112:133] >= 0.3).sum() >= 11:
            out.add(r["id"])
    return out


@pytest.fixture(scope="module")
def varied_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("card") / "ds"
    table = _varied()
    sink = humanverse.ShardSink.open(root, manifest={"models": {"detect": "tiny:yolos"}})
    sink.write(table, "data", "a")
    sink.close()
    return root, table


# -- the card --------------------------------------------------------------------------------------


@pytest.mark.parametrize("schema", [data_schema(), data_schema(16), REJECT_SCHEMA], ids=["data", "clip", "rejects"])
def test_card_features_are_what_datasets_infers_with_images(schema):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features.from_arrow_schema(schema)
    for name in card.IMAGE_COLUMNS:
        if name in features:
            features[name] = datasets.Image()
    assert card.card_features(schema) == features._to_yaml_list()
    back = datasets.Features._from_yaml_list(card.card_features(schema))
    assert back == features


def test_card_text_front_matter_and_columns():
    manifest = {"format_version": 2, "clip_dim": 8, "models": {"pose": "tiny:vitpose"}, "banner": "TINY MODELS",
                "inputs": ["/in/a"]}
    text = card.card_text(manifest)
    assert text.startswith("---\n")
    meta = yaml.safe_load(text.split("---\n")[1])
    configs = {c["config_name"]: c for c in meta["configs"]}
    assert configs["data"]["default"] is True and "default" not in configs["rejects"]
    assert configs["data"]["data_files"] == [{"split": "train", "path": "data/part-*.parquet"}]
    assert configs["rejects"]["data_files"] == [{"split": "train", "path": "rejects/part-*.parquet"}]
    info = {c["config_name"]: c["features"] for c in meta["dataset_info"]}
    data = {f["name"]: f for f in info["data"]}
    assert {data[c]["dtype"] for c in ("image", "depth", "depth_omnidata", "normal")} == {"image"}
    assert data["clip_embedding"] == {"name": "clip_embedding", "list": "float16", "length": 8}
    body = text.split("---\n", 2)[2]
    for path, description in COLUMN_DESCRIPTIONS.items():  # every column, nested ones included
        assert f"| `{path}` |" in body and description.replace("|", "\\|") in body, path
    assert "> **TINY MODELS**" in body and "`tiny:vitpose`" in body and "`/in/a`" in body
    assert BOTH_HANDS.split(" AND ")[1] in body  # the filter example uses the documented columns


def test_card_lists_the_acceptance_settings_of_the_stages_run():
    config = {"stages": ["decode", "resolution", "detect", "person_filter"], "resolution": {"min_side": 200},
              "person_filter": {"min_persons": 1, "max_persons": 3, "min_area": 0.15},
              "aesthetic": {"threshold": 4.5}, "detect": {"score_threshold": 0.5}}
    text = card.card_text({"config": config})
    assert "- at most 3 persons (`person_filter.max_persons`)" in text and "`resolution.min_side`" in text
    assert "aesthetic.threshold" not in text  # the aesthetic stage did not run: no such filter
    config["stages"].append("aesthetic")
    assert "- aesthetic score at least 4.5 (`aesthetic.threshold`)" in card.card_text({"config": config})


def test_write_card_follows_the_manifest(tmp_path):
    card.write_card(tmp_path, {"models": {"pose": "tiny:vitpose"}})
    assert "`tiny:vitpose`" in (tmp_path / card.CARD).read_text()
    card.write_card(str(tmp_path), {"models": {"pose": "org/vitpose@abc"}, "clip_dim": 4})
    text = (tmp_path / card.CARD).read_text()
    assert "`org/vitpose@abc`" in text and "tiny:vitpose" not in text and "clip_embedding" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == [card.CARD]  # no temp file left behind


# -- derived part columns and macros ------------------------------------------------------------


def test_kp_macros_match_the_stored_keypoints():
    table = _varied(6)
    con = duckdb.connect()
    register_keypoint_macros(con)
    con.register("hv", table)
    names = ["nose", "left_wrist", "right_big_toe", "face-0", "left_hand_root", "right_hand_pinky_finger4"]
    got = con.execute("SELECT " + ", ".join(f"kp(persons[1], '{n}')" for n in names) + " FROM hv").fetchall()
    for r, row in zip(table.to_pylist(), got):
        kp = np.asarray(r["persons"][0]["keypoints"], np.float32).reshape(133, 3)
        for name, point in zip(names, row):
            k = KEYPOINT_NAMES.index(name)
            assert [point["x"], point["y"], point["score"]] == pytest.approx(kp[k].tolist()), name
    assert con.execute("SELECT kp_index('left_wrist'), kp_index('right_hand_root')").fetchone() == (9, 112)
    # kp_visible at the default threshold is the stored column; at another threshold, numpy's count
    parts = list(KEYPOINT_PARTS)
    sql = ", ".join(f"kp_visible(p, '{q}'), p.{q}_visible, kp_visible(p, '{q}', 0.95)" for q in parts)
    rows = con.execute(f"SELECT {sql} FROM (SELECT unnest(persons) AS p FROM hv)").fetchall()
    flat = [p for r in table.to_pylist() for p in r["persons"]]
    assert len(rows) == len(flat)
    for p, row in zip(flat, rows):
        s = np.asarray(p["keypoints"], np.float32).reshape(133, 3)[:, 2]
        for j, q in enumerate(parts):
            r = KEYPOINT_PARTS[q]
            assert row[3 * j] == row[3 * j + 1] == int((s[r.start:r.stop] >= VISIBLE_SCORE).sum()), q
            assert row[3 * j + 2] == int((s[r.start:r.stop] >= 0.95).sum()), q
    with pytest.raises(duckdb.Error, match="unknown keypoint name 'wrist'"):
        con.execute("SELECT kp(persons[1], 'wrist') FROM hv").fetchall()
    with pytest.raises(duckdb.Error, match="unknown keypoint part 'hands'; parts are body, feet, face"):
        con.execute("SELECT kp_visible(persons[1], 'hands') FROM hv").fetchall()
    from humanverse.cli import query

    assert f"score >= {VISIBLE_SCORE}" in query.__doc__ and "kp_visible(person, part[, threshold])" in query.__doc__


def test_query_single_person_both_hands_visible(varied_root, capsys, tmp_path):
    from model.training.data import check_where

    root, table = varied_root
    expected = _expected_both_hands(table)
    assert 0 < len(expected) < table.num_rows  # the data really exercises the filter
    assert where_expression(BOTH_HANDS) and check_where(BOTH_HANDS)  # a row filter for show and the trainer too
    html = tmp_path / "g.html"
    assert main(["show", str(root), "--where", BOTH_HANDS, "--limit", "2", "--out", str(html)]) == 0
    assert f"{len(expected)} match" in html.read_text()
    capsys.readouterr()
    assert main(["query", str(root), f"SELECT id FROM hv WHERE {BOTH_HANDS}", "--format", "json"]) == 0
    got = {json.loads(line)["id"] for line in capsys.readouterr().out.splitlines()}
    assert got == expected
    sql = ("SELECT id, kp(persons[1], 'left_wrist').score AS s FROM hv WHERE kp_visible(persons[1], 'left_hand') "
           ">= 11 ORDER BY id")
    assert main(["query", str(root), sql, "--format", "json"]) == 0
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert out and all(o["s"] is not None for o in out)


def test_query_macro_error_is_one_sentence(varied_root, caplog):
    root, _ = varied_root
    with caplog.at_level(logging.ERROR):
        assert main(["query", str(root), "SELECT kp(persons[1], 'left_wirst') FROM hv"]) == 2
    assert "unknown keypoint name 'left_wirst'" in caplog.text
    assert "Traceback" not in caplog.text


# -- a format-v1 dataset (no derived fields, no second depth map) still reads ------------------


def _v1_table(n: int) -> pa.Table:
    v2 = synthetic_table(n, seed=9)
    old_person = pa.struct([f for f in v2.schema.field("persons").type.value_type
                            if f.name in ("bbox", "score", "keypoints")])
    keep = [f for f in data_schema() if not f.name.startswith("depth_omnidata")]
    schema = pa.schema([f.with_type(pa.list_(old_person)) if f.name == "persons" else f for f in keep],
                       metadata={b"humanverse_format_version": b"1"})
    rows = v2.select([f.name for f in keep]).to_pylist()
    for r in rows:
        r["persons"] = [{k: p[k] for k in ("bbox", "score", "keypoints")} for p in r["persons"]]
    return pa.Table.from_pylist(rows, schema=schema)


def test_v1_dataset_still_reads(tmp_path, capsys):
    root = tmp_path / "v1"
    table = _v1_table(4)
    sink = humanverse.ShardSink.open(root, manifest={}, options=ParquetWriteOptions(validate=False))
    sink.write(table, "data", "old")
    sink.close()
    ds = humanverse.open(root)
    assert ds.num_rows() == 4
    got = ds.query("SELECT persons[1].keypoints AS kp FROM hv ORDER BY source_index").column("kp").to_pylist()
    assert got == [r[0]["keypoints"] for r in table.column("persons").to_pylist()]
    assert ds.stats()["totals"]["accepted"] == 4
    # the macros need only the keypoints, so they work on v1 files too
    capsys.readouterr()
    sql = "SELECT kp_visible(persons[1], 'left_hand') AS n, kp(persons[1], 'nose').score AS s FROM hv"
    assert main(["query", str(root), sql, "--format", "json"]) == 0
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [o["n"] for o in out] == [21] * 4 and all(o["s"] == pytest.approx(1.0) for o in out)
