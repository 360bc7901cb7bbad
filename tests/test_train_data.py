"""The training reader (model/training/data.py): geometry shared by every modality, flips, selection,
determinism, rank sharding, step-exact skipping, and the Ray path's agreement with the local one."""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

import humanverse
from humanverse import codecs
from humanverse.schema import NUM_KEYPOINTS
from humanverse.skeleton import flip_keypoints, render_pose, render_skeleton
from humanverse.testing.synthetic import synthetic_table
from model.training import data as D
from helpers import assert_batches_equal, local_ray

R = 128


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    """12 synthetic rows in two committed files (shards s0: portrait, s1: landscape)."""
    root = tmp_path_factory.mktemp("hv-train")
    sink = humanverse.ShardSink.open(root)
    sink.write(synthetic_table(6, shard="s0", width=256, height=320, seed=1), "data", "s0")
    sink.write(synthetic_table(6, shard="s1", start=6, width=320, height=256, seed=2), "data", "s1")
    sink.close()
    return root


def _rows(root) -> list[dict]:
    ds = humanverse.open(root)
    return ds.to_arrow(columns=list(D.ROW_COLUMNS) + ["num_persons"]).to_pylist()


def _all(root, cfg, **kw) -> list[dict]:
    return list(D.iter_examples(root, cfg, **kw))


def _ids(batches) -> list[str]:
    return [i for b in batches for i in b["id"]]



# ---------------------------------------------------------------------------------------------
# Config


@pytest.mark.parametrize("kw, match", [
    ({"resolution": 500}, "resolution must be a positive multiple of 8"),
    ({"resolution": 0}, "resolution"),
    ({"crop": "left"}, "crop must be 'random' or 'center'"),
    ({"flip_prob": 1.5}, "flip_prob must be a probability"),
    ({"shuffle_buffer": -1}, "shuffle_buffer"),
    ({"seed": -3}, "seed"),
    ({"where": "num_persons = "}, "is not one SQL condition on the columns of hv"),
    ({"where": "no_such_column = 1"}, "not a valid SQL predicate on table hv"),
    ({"where": "aesthetic > (SELECT avg(aesthetic) FROM hv)"}, "uses a subquery"),
    ({"where": "  "}, "non-empty SQL condition"),
])
def test_config_errors_are_one_sentence(kw, match):
    with pytest.raises(ValueError, match=match) as e:
        D.TrainDataConfig(**kw)
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------------
# Shapes, ranges, geometry


def test_shapes_and_ranges(root):
    cfg = D.TrainDataConfig(resolution=R, shuffle_buffer=4)
    batches = _all(root, cfg, epoch=0, batch_size=4)
    assert len(batches) == 3
    b = batches[0]
    for k in ("image", "depth", "normal", "pose"):
        assert b[k].shape == (4, 3, R, R) and b[k].dtype == torch.float32, k
        assert b[k].min() >= -1 and b[k].max() <= 1, k
    assert torch.equal(b["depth"][:, 0], b["depth"][:, 1]) and torch.equal(b["depth"][:, 0], b["depth"][:, 2])
    assert torch.allclose(b["normal"].norm(dim=1), torch.ones(4, R, R), atol=1e-4)
    assert b["added_cond"].shape == (4, 4) and b["added_cond"].dtype == torch.float32
    assert torch.equal(b["added_cond"], torch.cat([b["original_size"], b["crop_top_left"]], 1).float())
    assert b["flipped"].dtype == torch.bool and len(b["caption"]) == 4 and len(b["id"]) == 4
    assert all(isinstance(c, str) and c for c in b["caption"])
    for (h, w), (top, left) in zip(b["original_size"].tolist(), b["crop_top_left"].tolist()):
        assert (h, w) in ((320, 256), (256, 320))
        rw, rh = (R, round(320 * R / 256)) if w < h else (round(320 * R / 256), R)
        assert 0 <= top <= rh - R and 0 <= left <= rw - R


def _planted_row(fmt: str, W: int, H: int, mw: int, mh: int) -> tuple[dict, tuple, np.ndarray]:
    """Black image with a white square at stored pixels x in [2/3 W, 2/3 W + W/15), y in
    [0.3 H, 0.4 H); depth high and normal tilted over the same square (maps at their own size);
    one person whose only visible keypoint (left wrist, COCO 9) sits at the square's centre."""
    x0, x1, y0, y1 = 2 * W / 3, 2 * W / 3 + W / 15, 0.3 * H, 0.4 * H
    img = np.zeros((H, W, 3), np.uint8)
    img[round(y0):round(y1), round(x0):round(x1)] = 255
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    sx, sy = mw / W, mh / H
    ys, xs = slice(round(y0 * sy), round(y1 * sy)), slice(round(x0 * sx), round(x1 * sx))
    depth = np.zeros((mh, mw), np.float32)
    depth[ys, xs] = 1.0
    normal = np.zeros((mh, mw, 3), np.float32)
    normal[..., 2] = 1.0
    normal[ys, xs] = (0.6, 0.0, 0.8)
    kp = np.zeros((NUM_KEYPOINTS, 3), np.float32)
    kp[9] = ((x0 + x1) / 2, (y0 + y1) / 2, 1.0)
    d = codecs.encode_depth(depth)
    return {"id": "planted", "source_shard": "p", "source_index": 0, "image": buf.getvalue(),
            "width": W, "height": H, "caption": None,
            "persons": [{"bbox": [x0, y0, x1, y1], "score": 1.0, "keypoints": codecs.encode_keypoints(kp)}],
            "map_width": mw, "map_height": mh, "depth": d.png, "depth_min": d.depth_min,
            "depth_max": d.depth_max, "normal": codecs.encode_normal(normal)}, (x0, x1, y0, y1), kp


def _centroid(w: torch.Tensor) -> tuple[float, float]:
    """(x, y) centre of mass of a non-negative (R, R) weight map, pixel centres at i + 0.5."""
    w = w.double()
    w = w * (w > 0.2 * w.max())  # ignore quantisation and JPEG ringing away from the square
    ys, xs = torch.meshgrid(torch.arange(R) + 0.5, torch.arange(R) + 0.5, indexing="ij")
    return float((w * xs).sum() / w.sum()), float((w * ys).sum() / w.sum())


@pytest.mark.parametrize("fmt, W, H, mw, mh", [("PNG", 300, 200, 150, 100),   # maps at half size
                                               ("JPEG", 1200, 800, 300, 200)])  # JPEG draft path
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_same_window_for_every_modality(fmt, W, H, mw, mh, seed):
    row, (x0, x1, y0, y1), kp = _planted_row(fmt, W, H, mw, mh)
    cfg = D.TrainDataConfig(resolution=R, crop="random", flip_prob=0.0, pose_style="wholebody")  # a lone wrist dot
    ex = D.make_example(row, cfg, np.random.default_rng(seed))
    top, left = ex["crop_top_left"]
    s = R / min(W, H)
    rw, rh = round(W * s), round(H * s)
    assert 0 <= top <= rh - R and 0 <= left <= rw - R and ex["original_size"] == (H, W)
    ex_x, ex_y = (x0 + x1) / 2 * rw / W - left, (y0 + y1) / 2 * rh / H - top
    assert 0 < ex_x < R and 0 < ex_y < R
    tol = 1.0
    for name, weight in [("image", (ex["image"] + 1).mean(0)), ("depth", ex["depth"][0] + 1),
                         ("normal", ex["normal"][0].abs()), ("pose", (ex["pose"] + 1).mean(0))]:
        cx, cy = _centroid(weight)
        assert abs(cx - ex_x) < tol and abs(cy - ex_y) < tol, (name, cx, cy, ex_x, ex_y)
    # values inside the square: depth top of the range, normal (0.6, 0, 0.8), wrist dot colour
    iy, ix = int(ex_y), int(ex_x)
    assert ex["depth"][0, iy, ix] > 0.9
    assert torch.allclose(ex["normal"][:, iy, ix], torch.tensor([0.6, 0.0, 0.8]), atol=0.03)
    assert ((ex["pose"][:, iy, ix] + 1) * 127.5).round().tolist() == [0, 255, 85]  # OpenPose left wrist
    assert ex["caption"] == "" and ex["flipped"] is False


@pytest.mark.parametrize("seed", [0, 5])
def test_flip_mirrors_everything_and_swaps_left_right(seed):
    row, _, kp = _planted_row("PNG", 300, 200, 150, 100)
    wb = {"pose_style": "wholebody"}  # the OpenPose wrist colours are checked below
    plain = D.make_example(row, D.TrainDataConfig(resolution=R, flip_prob=0.0, **wb), np.random.default_rng(seed))
    flip = D.make_example(row, D.TrainDataConfig(resolution=R, flip_prob=1.0, **wb), np.random.default_rng(seed))
    assert flip["flipped"] is True and plain["flipped"] is False
    assert torch.equal(flip["image"], plain["image"].flip(-1))
    assert torch.equal(flip["depth"], plain["depth"].flip(-1))
    assert torch.equal(flip["normal"][0], -plain["normal"][0].flip(-1))  # x negated
    assert torch.equal(flip["normal"][1:], plain["normal"][1:].flip(-1))  # y, z kept
    # crop coordinates: the same window, seen from the mirrored image's left edge
    top, left = plain["crop_top_left"]
    rw = round(300 * R / 200)
    assert flip["crop_top_left"] == (top, rw - R - left)
    # skeleton: rendered from flipped (left<->right swapped) keypoints, not mirrored pixels
    k = kp.copy()
    k[:, 0] = k[:, 0] * rw / 300 - left
    k[:, 1] = k[:, 1] * R / 200 - top
    expect = render_skeleton(flip_keypoints(k, R), R, R, 0.3)
    got = ((flip["pose"] + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    assert np.array_equal(got, np.asarray(expect))
    # the left wrist became a right wrist: its dot now carries the right-wrist colour
    cx, cy = _centroid((flip["pose"] + 1).mean(0))
    assert ((flip["pose"][:, int(cy), int(cx)] + 1) * 127.5).round().tolist() == [170, 255, 0]  # OpenPose right wrist
    pcx, _ = _centroid((plain["pose"] + 1).mean(0))
    assert abs(cx - (R - pcx)) < 0.5


@pytest.mark.parametrize("style", ["humansd", "wholebody"])
def test_skeleton_follows_keypoints_on_synthetic_rows(root, style):
    cfg = D.TrainDataConfig(resolution=R, flip_prob=0.5, skeleton_threshold=0.3, pose_style=style)
    assert D.TrainDataConfig().pose_style == "humansd"  # the paper's (App. A.13)
    for row in _rows(root):
        rng = D.sample_rng(cfg.seed, 3, row["source_shard"], row["source_index"])
        ex = D.make_example(row, cfg, rng)
        rw, rh, top, left, flip = D.plan_crop(row["width"], row["height"], R, cfg.crop, cfg.flip_prob,
                                              D.sample_rng(cfg.seed, 3, row["source_shard"], row["source_index"]))
        kp = np.stack([codecs.decode_keypoints(p["keypoints"]) for p in row["persons"]])
        kp[..., 0] = kp[..., 0] * rw / row["width"] - left
        kp[..., 1] = kp[..., 1] * rh / row["height"] - top
        if flip:
            kp = flip_keypoints(kp, R)
        expect = np.asarray(render_pose(kp, R, R, 0.3, style))
        got = ((ex["pose"] + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
        assert np.array_equal(got, expect)
        assert ex["flipped"] == flip


# ---------------------------------------------------------------------------------------------
# Selection


def test_where_selects_exactly_the_matching_rows(root):
    ds = humanverse.open(root)
    cfg = D.TrainDataConfig(resolution=64, where="num_persons = 1", shuffle_buffer=0)
    want = {(r["source_shard"], r["source_index"]) for r in
            ds.query("SELECT source_shard, source_index FROM hv WHERE num_persons = 1").to_pylist()}
    assert 0 < len(want) < 12
    assert D.selected_keys(ds, cfg) == want
    rows = {r["id"]: (r["source_shard"], r["source_index"]) for r in _rows(root)}
    got = _ids(_all(root, cfg, epoch=0, batch_size=1))
    assert {rows[i] for i in got} == want and len(got) == len(want)
    none = D.TrainDataConfig(resolution=64, where="num_persons > 3")
    assert _all(root, none, epoch=0, batch_size=1) == []


def test_rows_missing_depth_or_normal_are_excluded(tmp_path):
    t = synthetic_table(5, shard="m", width=64, height=80)
    depth = t.column("depth").to_pylist()
    normal = t.column("normal").to_pylist()
    depth[1], normal[3] = None, None
    t = t.set_column(t.schema.get_field_index("depth"), "depth", pa.array(depth, pa.binary()))
    t = t.set_column(t.schema.get_field_index("normal"), "normal", pa.array(normal, pa.binary()))
    sink = humanverse.ShardSink.open(tmp_path)
    sink.write(t, "data", "m")
    sink.write(synthetic_table(2, shard="n", width=64, height=80, seed=5), "data", "n")  # no nulls at all
    ds = humanverse.open(tmp_path)
    cfg = D.TrainDataConfig(resolution=64)
    assert D.selected_keys(ds, cfg) == {("m", 0), ("m", 2), ("m", 4), ("n", 0), ("n", 1)}
    got = _ids(_all(tmp_path, cfg, epoch=0, batch_size=1))
    ids = t.column("id").to_pylist()
    assert len(got) == 5 and ids[1] not in got and ids[3] not in got
    assert D.rows_per_rank(tmp_path, cfg, epoch=0, world_size=1) == [5]


# ---------------------------------------------------------------------------------------------
# Order, sharding, resume


def test_determinism_and_epochs(root):
    cfg = D.TrainDataConfig(resolution=64, shuffle_buffer=5, seed=7)
    a = _all(root, cfg, epoch=0, batch_size=3)
    b = _all(root, cfg, epoch=0, batch_size=3)
    assert_batches_equal(a, b)
    c = _all(root, cfg, epoch=1, batch_size=3)
    assert _ids(c) != _ids(a) and sorted(_ids(c)) == sorted(_ids(a))
    other_seed = _all(root, D.TrainDataConfig(resolution=64, shuffle_buffer=5, seed=8), epoch=0, batch_size=3)
    assert _ids(other_seed) != _ids(a)


def test_batches_are_collated_make_examples(root):
    """iter_examples converts to float once per batch; per sample it equals make_example with
    the row's own generator, whatever the batch."""
    cfg = D.TrainDataConfig(resolution=64, shuffle_buffer=4, seed=2)
    rows = list(D.iter_rows(root, cfg, epoch=1))
    exs = [D.make_example(r, cfg, D.sample_rng(cfg.seed, 1, r["source_shard"], r["source_index"])) for r in rows]
    batches = _all(root, cfg, epoch=1, batch_size=4)
    assert_batches_equal(batches, [D.collate(exs[i:i + 4]) for i in range(0, 12, 4)])


@pytest.mark.parametrize("world_size", [2, 3, 5])  # 2: file-level; 3, 5: more ranks than files (row striding)
def test_rank_shards_are_disjoint_and_complete(root, world_size):
    cfg = D.TrainDataConfig(resolution=64, shuffle_buffer=3)
    every = sorted(r["id"] for r in _rows(root))
    per_rank = [[r["id"] for r in D.iter_rows(root, cfg, epoch=2, rank=k, world_size=world_size)]
                for k in range(world_size)]
    flat = [i for ids in per_rank for i in ids]
    assert sorted(flat) == every and len(set(flat)) == len(flat)
    assert [len(ids) for ids in per_rank] == D.rows_per_rank(root, cfg, epoch=2, world_size=world_size)
    # the decoded batches follow iter_rows' order exactly
    got = _ids(_all(root, cfg, epoch=2, batch_size=1, rank=world_size - 1, world_size=world_size))
    assert got == per_rank[-1]
    if world_size == 2:  # file-level: each rank holds one whole source shard
        shards = [{r["source_shard"] for r in D.iter_rows(root, cfg, epoch=2, rank=k, world_size=2)} for k in range(2)]
        assert all(len(s) == 1 for s in shards) and shards[0] != shards[1]


def test_batches_per_rank_and_max_batches(root):
    cfg = D.TrainDataConfig(resolution=64)
    assert D.batches_per_rank(root, cfg, epoch=0, world_size=5, batch_size=2) == [1, 1, 1, 1, 1]
    # 12 rows over 5 ranks (row striding): 3, 3, 2, 2, 2
    assert D.batches_per_rank(root, cfg, epoch=0, world_size=5, batch_size=2, drop_last=False) == [2, 2, 1, 1, 1]
    assert len(_all(root, cfg, epoch=0, batch_size=2, max_batches=2)) == 2
    assert [len(b["id"]) for b in _all(root, cfg, epoch=0, batch_size=5, drop_last=False)] == [5, 5, 2]


def test_skip_batches_gives_exactly_the_tail(root):
    cfg = D.TrainDataConfig(resolution=64, shuffle_buffer=4, seed=3)
    full = _all(root, cfg, epoch=1, batch_size=2)
    assert len(full) == 6
    for skip in (1, 4, 6):
        assert_batches_equal(_all(root, cfg, epoch=1, batch_size=2, skip_batches=skip), full[skip:])
    assert_batches_equal(_all(root, cfg, epoch=1, batch_size=2, skip_batches=2, max_batches=4), full[2:4])


def test_bad_arguments(root):
    cfg = D.TrainDataConfig(resolution=64)
    with pytest.raises(ValueError, match="rank must be an integer in"):
        list(D.iter_examples(root, cfg, epoch=0, batch_size=2, rank=2, world_size=2))
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1"):
        list(D.iter_examples(root, cfg, epoch=0, batch_size=0))


# ---------------------------------------------------------------------------------------------
# Ray path


def test_ray_path_matches_local_path(root):
    """Same ids and bit-identical per-sample tensors (random crops and flips included: draws are
    keyed by the row, not by position)."""
    pytest.importorskip("ray")
    cfg = D.TrainDataConfig(resolution=64, crop="random", flip_prob=0.5, shuffle_buffer=0, seed=11)
    local = {}
    for b in _all(root, cfg, epoch=1, batch_size=1):
        local[b["id"][0]] = b
    with local_ray():
        rds = D.ray_dataset(root, cfg, epoch=1, batch_size=4, num_cpus=0.25, read_num_cpus=0.25)
        got = {}
        for b in rds.iter_torch_batches(**D.ray_iter_kwargs(cfg, epoch=1, batch_size=5, drop_last=False)):
            for j, i in enumerate(b["id"]):
                got[i] = {k: (v[j] if isinstance(v, torch.Tensor) else v[j]) for k, v in b.items()}
    assert sorted(got) == sorted(local) and len(got) == 12
    for i, g in got.items():
        ref = local[i]
        for k, v in g.items():
            if isinstance(v, torch.Tensor):
                assert torch.equal(v, ref[k][0]), (i, k)
            else:
                assert v == ref[k][0], (i, k)
