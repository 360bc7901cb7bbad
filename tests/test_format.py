"""The format: schema validation messages, column descriptions, derived person part fields, codecs' error bounds,
keypoint layout, skeleton drawing."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import humanverse
from humanverse import codecs, skeleton
from humanverse.schema import (COLUMN_DESCRIPTIONS, KEYPOINT_PARTS, VISIBLE_SCORE, FormatError, data_schema,
                               person_parts, validate_data, validate_rejects, with_person_parts)
from humanverse.testing.synthetic import make_sample, synthetic_table


@pytest.fixture(scope="module")
def table():
    return synthetic_table(6, clip_dim=16)


def _set(table: pa.Table, column: str, row: int, value) -> pa.Table:
    rows = table.to_pylist()
    rows[row][column] = value
    return pa.Table.from_pylist(rows, schema=table.schema)


def test_valid_table_passes(table):
    validate_data(table)


@pytest.mark.parametrize("column,value,message", [
    ("id", "not-a-hash", "row 2: column 'id' has value 'not-a-hash', expected a 64-character"),
    ("width", 0, "row 2: column 'width' has value 0, expected a positive pixel count"),
    ("num_persons", 9, "row 2: column 'num_persons' has value 9, expected len(persons)"),
    ("aesthetic", float("nan"), "row 2: column 'aesthetic' has value nan"),
    ("person_area", 1.5, "row 2: column 'person_area' has value 1.5, expected a fraction"),
    ("source_index", -1, "row 2: column 'source_index' has value -1"),
])
def test_bad_values_name_column_row_and_value(table, column, value, message):
    with pytest.raises(FormatError) as e:
        validate_data(_set(table, column, 2, value))
    assert message in str(e.value)


def test_bad_person_fields(table):
    rows = table.to_pylist()
    rows[3]["persons"][0]["bbox"] = [10.0, 10.0, 5.0, 20.0]
    with pytest.raises(FormatError, match="row 3: column 'persons.bbox'"):
        validate_data(pa.Table.from_pylist(rows, schema=table.schema))
    rows = table.to_pylist()
    kp = rows[4]["persons"][-1]["keypoints"]
    kp[7] = float("inf")
    with pytest.raises(FormatError, match="row 4: column 'persons.keypoints' has value 'non-finite value'"):
        validate_data(pa.Table.from_pylist(rows, schema=table.schema))


def test_schema_mismatch_messages(table):
    with pytest.raises(FormatError, match=r"missing column\(s\) \['caption'\]"):
        validate_data(table.drop(["caption"]))
    with pytest.raises(FormatError, match="column 'width' has type int64, expected int32"):
        validate_data(table.set_column(table.schema.get_field_index("width"), "width",
                                       pa.array(table.column("width").to_pylist(), pa.int64())))
    with pytest.raises(FormatError, match=r"unknown column\(s\) \['extra'\]"):
        validate_data(table.append_column("extra", pa.array([1] * table.num_rows)))


def test_rejects_reason_vocabulary():
    row = {"id": "0" * 64, "source_url": None, "source_key": "k", "source_shard": "s", "source_index": 0,
           "orig_width": None, "orig_height": None, "stage": "decode", "reason": "undecodable", "detail": "x"}
    validate_rejects(pa.Table.from_pylist([row], schema=humanverse.REJECT_SCHEMA))
    with pytest.raises(FormatError, match="column 'reason' has value 'meh', expected one of"):
        validate_rejects(pa.Table.from_pylist([{**row, "reason": "meh"}], schema=humanverse.REJECT_SCHEMA))


def _described_paths(fields, prefix=""):
    """(dotted path, description) of every field, nested struct fields included."""
    for f in fields:
        yield prefix + f.name, (f.metadata or {}).get(b"description", b"").decode()
        t = f.type.value_type if pa.types.is_list(f.type) else f.type
        if pa.types.is_struct(t):
            yield from _described_paths(list(t), prefix + f.name + ".")


def test_every_column_carries_its_description_in_the_parquet_file(tmp_path):
    pq.write_table(synthetic_table(2, clip_dim=4), tmp_path / "d.parquet")
    pq.write_table(humanverse.REJECT_SCHEMA.empty_table(), tmp_path / "r.parquet")
    seen = set()
    for name in ("d", "r"):
        schema = pq.read_schema(tmp_path / f"{name}.parquet")
        for path, description in _described_paths(list(schema)):
            assert description == COLUMN_DESCRIPTIONS[path], path
            seen.add(path)
    assert seen == set(COLUMN_DESCRIPTIONS)  # no description for a column that does not exist
    meta = pq.read_schema(tmp_path / "d.parquet").metadata
    assert meta[b"humanverse_format_version"] == b"2" and float(meta[b"humanverse_visible_score"]) == VISIBLE_SCORE


def test_person_parts_counts_visible_points_and_mean_scores():
    kp = np.zeros((2, 133, 3), np.float32)
    kp[0, :, 2] = 0.9
    kp[0, 91:103, 2] = VISIBLE_SCORE  # 12 left-hand points exactly at the threshold: visible
    kp[0, 103:112, 2] = 0.29  # 9 just below
    kp[0, 112:133, 2] = 0.0
    kp[0, 23:91, 2] = np.nan  # a non-finite score counts as 0
    kp[1, 0:5, 2] = 1.0  # only 5 body points
    got = person_parts(kp)
    assert set(got) == {f"{p}_{k}" for p in KEYPOINT_PARTS for k in ("visible", "confidence")}
    assert got["body_visible"].tolist() == [17, 5] and got["feet_visible"].tolist() == [6, 0]
    assert got["face_visible"].tolist() == [0, 0] and got["left_hand_visible"].tolist() == [12, 0]
    assert got["right_hand_visible"].tolist() == [0, 0] and got["body_visible"].dtype == np.int8
    assert got["left_hand_confidence"][0] == pytest.approx((12 * 0.3 + 9 * 0.29) / 21, abs=1e-6)
    assert got["body_confidence"].tolist() == pytest.approx([0.9, 5 / 17])
    assert got["face_confidence"][0] == 0.0
    with pytest.raises(ValueError, match=r"shape \(P, 133, 3\), got \(133, 3\)"):
        person_parts(kp[0])


def test_with_person_parts_fills_from_keypoints_and_leaves_nulls(table):
    rows = table.to_pylist()
    for r in rows:  # as a writer before format v2 left them
        for p in r["persons"]:
            for f in list(p):
                if f.endswith(("_visible", "_confidence")):
                    p[f] = None
    rows[1]["persons"][0]["keypoints"] = None  # the pose stage did not run for this person
    bare = pa.Table.from_pylist(rows, schema=table.schema)
    validate_data(bare)  # null derived fields are allowed
    filled = with_person_parts(bare.slice(1, 4))  # a sliced table: offsets handled
    assert filled.schema.equals(data_schema(16), check_metadata=True)
    for r, want in zip(filled.to_pylist(), table.slice(1, 4).to_pylist()):
        for p, q in zip(r["persons"], want["persons"]):
            if p["keypoints"] is None:
                assert all(p[f] is None for f in p if f.endswith(("_visible", "_confidence")))
            else:
                assert p == q
    validate_data(filled)


def test_derived_part_fields_must_match_the_keypoints(table):
    rows = table.to_pylist()
    rows[3]["persons"][0]["left_hand_visible"] = 3
    with pytest.raises(FormatError, match=r"row 3: column 'persons.left_hand_visible' has value 3, expected 21 "):
        validate_data(pa.Table.from_pylist(rows, schema=table.schema))
    rows = table.to_pylist()
    rows[5]["persons"][0]["keypoints"] = None
    with pytest.raises(FormatError, match=r"row 5: column 'persons.body_visible' .* expected null"):
        validate_data(pa.Table.from_pylist(rows, schema=table.schema))


@pytest.mark.parametrize("lo,hi", [(0.0, 1.0), (-3.5, 1200.25), (5.0, 5.0)])
def test_depth_roundtrip_bound(lo, hi):
    rng = np.random.default_rng(0)
    d = (lo + (hi - lo) * rng.random((61, 47))).astype(np.float32)
    enc = codecs.encode_depth(d)
    back = codecs.decode_depth(enc.png, enc.depth_min, enc.depth_max)
    assert back.shape == d.shape and back.dtype == np.float32
    bound = (hi - lo) / 65535 + 1e-6 * max(1.0, abs(hi))
    assert np.abs(back - d).max() <= bound
    assert enc.depth_min == pytest.approx(d.min()) and enc.depth_max == pytest.approx(d.max())


def test_depth_rejects_bad_input():
    with pytest.raises(ValueError, match="NaN or infinite"):
        codecs.encode_depth(np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError, match=r"non-empty \(H, W\) array"):
        codecs.encode_depth(np.zeros((4, 4, 3)))


def test_normal_roundtrip_bound_and_unit_length():
    rng = np.random.default_rng(1)
    n = rng.normal(size=(40, 30, 3))
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    raw = codecs.decode_normal(codecs.encode_normal(n), renormalise=False)
    assert np.abs(raw - n).max() <= 1 / 127.5
    unit = codecs.decode_normal(codecs.encode_normal(n))
    assert np.allclose(np.linalg.norm(unit, axis=-1), 1.0, atol=1e-5)
    assert np.abs(unit - n).max() <= 1 / 127.5


def test_keypoints_codec():
    kp = np.random.default_rng(2).random((133, 3)).astype(np.float32)
    flat = codecs.encode_keypoints(kp)
    assert len(flat) == 399 and flat[:3] == pytest.approx(kp[0].tolist())
    assert np.array_equal(codecs.decode_keypoints(flat), kp)
    with pytest.raises(ValueError, match=r"shape \(133, 3\), got \(17, 3\)"):
        codecs.encode_keypoints(np.zeros((17, 3)))


def test_skeleton_layout():
    assert len(skeleton.KEYPOINT_NAMES) == 133 and len(skeleton.FLIP_PAIRS) == 61
    names = skeleton.KEYPOINT_NAMES
    for a, b in skeleton.FLIP_PAIRS:  # every pair really swaps a left and a right part
        na, nb = names[a], names[b]
        if a < 23 or a >= 91:
            assert na.replace("left", "right") == nb, (na, nb)
    assert sorted(skeleton.FLIP_INDEX) == list(range(133))
    assert np.array_equal(skeleton.FLIP_INDEX[skeleton.FLIP_INDEX], np.arange(133))
    assert skeleton.OKS_SIGMAS[0] == pytest.approx(0.026) and skeleton.OKS_SIGMAS[-1] == pytest.approx(0.031)


def test_flip_keypoints_mirrors_and_swaps():
    kp = np.zeros((133, 3), np.float32)
    kp[9] = [10.0, 50.0, 0.9]  # left wrist
    kp[10] = [70.0, 52.0, 0.8]  # right wrist
    f = skeleton.flip_keypoints(kp, width=100)
    assert f[10].tolist() == pytest.approx([90.0, 50.0, 0.9])  # old left wrist is now the right one
    assert f[9].tolist() == pytest.approx([30.0, 52.0, 0.8])
    assert np.allclose(skeleton.flip_keypoints(f, 100), kp)


def test_render_skeleton_draws_where_the_keypoints_are():
    s = make_sample(200, 260, num_persons=1, seed=3)
    img = np.asarray(humanverse.render_skeleton(s.keypoints, 200, 260))
    assert img.shape == (260, 200, 3)
    for j in (0, 5, 6, 11, 12, 15, 16):  # body joints get a filled dot
        x, y = s.keypoints[0, j, :2].astype(int)
        assert img[y, x].sum() > 0, j
    assert img[0:3, 0:3].sum() == 0  # black background
    # below the threshold nothing is drawn
    low = s.keypoints.copy()
    low[..., 2] = 0.1
    assert np.asarray(humanverse.render_skeleton(low, 200, 260)).sum() == 0
    # face points are white dots
    fx, fy = s.keypoints[0, 40, :2].astype(int)
    assert tuple(img[fy, fx]) == (255, 255, 255)


def test_render_skeleton_shapes_and_errors():
    assert np.asarray(humanverse.render_skeleton([], 32, 16)).shape == (16, 32, 3)
    flat = [np.zeros(399, np.float32).tolist()] * 2
    humanverse.render_skeleton(flat, 32, 32)
    with pytest.raises(ValueError, match="keypoints must be"):
        humanverse.render_skeleton(np.zeros((5, 17, 3)), 32, 32)
    with pytest.raises(ValueError, match="width and height must be positive"):
        humanverse.render_skeleton(np.zeros((133, 3)), 0, 32)
