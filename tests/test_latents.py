"""The VAE-latent cache (model/training/latents.py) with the tiny VAEs: what is stored is exactly the VAE
posterior of the training examples, flipped entries are the flipped examples, the manifest and
staleness checks, resume/update, and the latent reader."""

from __future__ import annotations

import os

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

import humanverse
from humanverse.testing.synthetic import synthetic_table
from model.training import data as D
from model.training import latents as L
from helpers import local_ray

R = 64


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _dataset(root, shards=(("s0", 0, 1), ("s1", 3, 2))):
    sink = humanverse.ShardSink.open(root)
    for name, start, seed in shards:
        w, h = (64, 80) if seed % 2 else (80, 64)
        sink.write(synthetic_table(3, shard=name, start=start, width=w, height=h, seed=seed), "data", name)
    sink.close()
    return root


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return _dataset(tmp_path_factory.mktemp("hv-lat"))


@pytest.fixture(scope="module")
def built(root, tiny_zoo, tmp_path_factory):
    out = tmp_path_factory.mktemp("cache") / "c"
    cfg = L.LatentCacheConfig(resolution=R, batch_size=4, files_per_chunk=1)
    report = L.build_latent_cache(root, out, cfg, "tiny", use_ray=False)
    return out, cfg, report


def _source_rows(root) -> dict[tuple[str, int], dict]:
    rows = humanverse.open(root).to_arrow(columns=list(D.ROW_COLUMNS)).to_pylist()
    return {(r["source_shard"], r["source_index"]): r for r in rows}


def _cache_rows(out) -> list[dict]:
    m = L.read_cache_manifest(out)
    rows = []
    for f in m["files"]:
        rows += pq.read_table(os.path.join(out, f["file"])).to_pylist()
    return rows


def _latent(row: dict, col: str, shape) -> torch.Tensor:
    return torch.from_numpy(np.frombuffer(row[col], "<f2").astype(np.float32)).reshape(shape)


# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kw, match", [
    ({"crop": "random"}, "crop must be 'center'"),
    ({"vae": "yolos-tiny"}, "vae must name a zoo VAE or diffusion pipeline"),
    ({"dtype": "int8"}, "dtype must be one of"),
    ({"resolution": 100}, "resolution must be a positive multiple of 8"),
    ({"where": "bogus ="}, "is not one SQL condition"),
    ({"batch_size": 0}, "batch_size must be a positive integer"),
])
def test_config_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        L.LatentCacheConfig(**kw)


def test_manifest(built, root):
    out, cfg, report = built
    m = L.read_cache_manifest(out)
    assert report.rows == m["rows"] == 12 and report.chunks_done == 2 and report.chunks_kept == 0
    assert m["complete"] and m["config"] == cfg.content() and m["storage_dtype"] == "float16"
    assert m["vae"]["tag"] == "tiny:sd-vae-ft-mse" and m["vae"]["subfolder"] is None
    assert m["vae"]["scaling_factor"] == pytest.approx(0.18215) and m["latent_shape"] == [4, R // 8, R // 8]
    assert m["source"]["num_files"] == 2 and len(m["files"]) == 2
    for f in m["files"]:
        t = pq.read_table(os.path.join(out, f["file"]))
        assert t.num_rows == f["rows"]
        assert t.schema.equals(L.cache_schema(m["latent_shape"]), check_metadata=False)
    assert not os.listdir(os.path.join(out, "_staging"))


def test_stored_posterior_is_the_vae_posterior_of_the_examples(built, root):
    """(1) mean/std equal a direct vae.encode(x).latent_dist of make_example's tensors (centre
    crop); flipped entries equal encoding the flipped example."""
    out, cfg, _ = built
    vae, _ = L.load_vae("sd-vae-ft-mse", "tiny")
    shape = (4, R // 8, R // 8)
    src = _source_rows(root)
    rows = _cache_rows(out)
    assert sorted((r["source_shard"], r["source_index"], r["flipped"]) for r in rows) == \
        sorted((s, i, f) for (s, i) in src for f in (False, True))
    for row in rows:
        flip = row["flipped"]
        dcfg = D.TrainDataConfig(resolution=R, crop="center", flip_prob=1.0 if flip else 0.0)
        ex = D.make_example(src[(row["source_shard"], row["source_index"])], dcfg, np.random.default_rng(123))
        assert row["id"] == ex["id"] and row["caption"] == ex["caption"]
        assert tuple(row["original_size"]) == ex["original_size"] and tuple(row["crop_top_left"]) == ex["crop_top_left"]
        assert row["resolution"] == R and row["vae"] == "tiny:sd-vae-ft-mse"
        for m in L.MODALITIES:
            with torch.no_grad():
                dist = vae.encode(ex[m][None]).latent_dist
            torch.testing.assert_close(_latent(row, f"{m}_mean", shape), dist.mean[0], rtol=2e-3, atol=1e-4)
            torch.testing.assert_close(_latent(row, f"{m}_std", shape), dist.std[0], rtol=2e-3, atol=1e-4)
    # a flipped entry is not its unflipped twin (the flip really happened before encoding)
    by = {(r["source_shard"], r["source_index"], r["flipped"]): r for r in rows}
    a, b = by[("s0", 0, False)], by[("s0", 0, True)]
    assert not torch.equal(_latent(a, "image_mean", shape), _latent(b, "image_mean", shape))


def test_pipeline_folder_vae(root, tiny_zoo, tmp_path):
    """sd2-base keeps its VAE in vae/: the cache loads it from there and records the subfolder."""
    cfg = L.LatentCacheConfig(resolution=R, flips=False, vae="sd2-base", where="num_persons >= 2")
    L.build_latent_cache(root, tmp_path / "c", cfg, "tiny", use_ray=False)
    m = L.check_cache(tmp_path / "c", root, cfg, "tiny")
    assert m["vae"]["subfolder"] == "vae" and m["vae"]["tag"] == "tiny:sd2-base"
    want = D.selected_keys(humanverse.open(root), cfg.data_config())
    rows = _cache_rows(tmp_path / "c")
    assert {(r["source_shard"], r["source_index"]) for r in rows} == want and not any(r["flipped"] for r in rows)
    vae, _ = L.load_vae("sd2-base", "tiny")
    row = rows[0]
    ex = D.make_example(_source_rows(root)[(row["source_shard"], row["source_index"])], cfg.data_config(),
                        np.random.default_rng(0))
    with torch.no_grad():
        dist = vae.encode(ex["pose"][None]).latent_dist
    torch.testing.assert_close(_latent(row, "pose_mean", (4, R // 8, R // 8)), dist.mean[0], rtol=2e-3, atol=1e-4)


def test_staleness_resume_and_update(tiny_zoo, tmp_path):
    root = _dataset(tmp_path / "ds")
    out = tmp_path / "cache"
    cfg = L.LatentCacheConfig(resolution=R, batch_size=8, files_per_chunk=1)
    with pytest.raises(L.StaleCacheError, match="no latent cache"):
        L.check_cache(out, root, cfg)
    L.build_latent_cache(root, out, cfg, "tiny", use_ray=False)
    L.check_cache(out, root, cfg, "tiny")

    for other, match in [(L.LatentCacheConfig(resolution=2 * R), "resolution 64 \\(cache\\) vs 128"),
                         (L.LatentCacheConfig(resolution=R, flips=False), "flips True \\(cache\\) vs False"),
                         (L.LatentCacheConfig(resolution=R, vae="sd2-base"), "vae 'sd-vae-ft-mse'"),
                         (L.LatentCacheConfig(resolution=R, where="num_persons = 1"), "where None")]:
        with pytest.raises(L.StaleCacheError, match=match) as e:
            L.check_cache(out, root, other)
        assert "\n" not in str(e.value)
    with pytest.raises(L.StaleCacheError, match="vae tag 'tiny:sd-vae-ft-mse'"):
        L.check_cache(out, root, cfg, "paper")

    # a killed build's leftovers are cleaned; nothing is re-encoded
    junk = os.path.join(out, "data", "lat-deadbeef-00000.parquet")
    open(junk, "wb").write(b"partial")
    os.makedirs(os.path.join(out, "_staging", "x"))
    rep = L.build_latent_cache(root, out, cfg, "tiny", use_ray=False)
    assert rep.chunks_done == 0 and rep.chunks_kept == 2 and rep.rows == 12
    assert not os.path.exists(junk) and not os.listdir(os.path.join(out, "_staging"))

    # the dataset gains a file: stale; an update encodes only the new file
    sink = humanverse.ShardSink.open(root)
    sink.write(synthetic_table(2, shard="s2", start=6, width=64, height=64, seed=9), "data", "s2")
    sink.close()
    with pytest.raises(L.StaleCacheError, match="gained 1 and lost 0 data files"):
        L.check_cache(out, root, cfg)
    rep = L.build_latent_cache(root, out, cfg, "tiny", use_ray=False)
    assert rep.chunks_done == 1 and rep.chunks_kept == 2 and rep.rows == 16
    L.check_cache(out, root, cfg)

    # the dataset loses a file (a commit that retires it, as a refilter does): stale; an update drops it
    sink = humanverse.ShardSink.open(root)
    (gone,) = [r for r in sink.state.records if r.file.endswith("-s1.parquet")]
    sink.commit({}, "drop-s1", retires=[gone])
    sink.close()
    with pytest.raises(L.StaleCacheError, match="gained 0 and lost 1 data files"):
        L.check_cache(out, root, cfg)
    rep = L.build_latent_cache(root, out, cfg, "tiny", use_ray=False)
    assert rep.chunks_done == 0 and rep.rows == 10
    L.check_cache(out, root, cfg)
    assert {r["source_shard"] for r in _cache_rows(out)} == {"s0", "s2"}

    # another config into the same OUT: refused unless overwrite
    small = L.LatentCacheConfig(resolution=R, flips=False, files_per_chunk=4)
    with pytest.raises(L.StaleCacheError, match="holds a latent cache of another config"):
        L.build_latent_cache(root, out, small, "tiny", use_ray=False)
    rep = L.build_latent_cache(root, out, small, "tiny", use_ray=False, overwrite=True)
    assert rep.rows == 5 and rep.chunks_done == 1
    L.check_cache(out, root, small)

    # an unfinished build (no manifest yet) is not a cache
    os.remove(os.path.join(out, "latents.json"))
    with pytest.raises(L.StaleCacheError, match="unfinished latent cache build"):
        L.read_cache_manifest(out)


def _items(batches) -> list[dict]:
    out = []
    for b in batches:
        for j in range(len(b["id"])):
            out.append({k: v[j] for k, v in b.items()})
    return out


def test_iter_latent_batches(built):
    out, cfg, _ = built
    shape = (4, R // 8, R // 8)
    stored = {(r["id"], r["flipped"]): r for r in _cache_rows(out)}
    batches = list(L.iter_latent_batches(out, batch_size=4, drop_last=False, sample=False, shuffle_buffer=3))
    assert [len(b["id"]) for b in batches] == [4, 2]
    b = batches[0]
    for m in L.MODALITIES:
        assert b[m].shape == (4, *shape) and b[m].dtype == torch.float32
    assert b["added_cond"].shape == (4, 4) and b["flipped"].dtype == torch.bool
    items = _items(batches)
    assert len({it["id"] for it in items}) == 6  # each source row once per epoch
    for it in items:  # the mean, exactly as stored, with the entry's own conditioning
        row = stored[(it["id"], bool(it["flipped"]))]
        for m in L.MODALITIES:
            assert torch.equal(it[m], _latent(row, f"{m}_mean", shape))
        assert it["added_cond"].tolist() == [*row["original_size"], *row["crop_top_left"]]

    s1 = list(L.iter_latent_batches(out, batch_size=3, seed=5))
    s2 = list(L.iter_latent_batches(out, batch_size=3, seed=5))
    s3 = list(L.iter_latent_batches(out, batch_size=3, seed=6))
    assert all(torch.equal(x["image"], y["image"]) for x, y in zip(s1, s2))
    it = _items(s1)[0]
    row = stored[(it["id"], bool(it["flipped"]))]
    mean, std = _latent(row, "image_mean", shape), _latent(row, "image_std", shape)
    z = (it["image"] - mean) / std  # the sampled noise: standard normal-ish, not zero
    assert z.abs().max() > 0.1 and z.std() == pytest.approx(1.0, abs=0.5)
    assert not all(torch.equal(x["image"], y["image"]) for x, y in zip(s1, s3))

    assert not any(i["flipped"] for i in _items(L.iter_latent_batches(out, batch_size=1, flip_prob=0.0)))
    assert all(i["flipped"] for i in _items(L.iter_latent_batches(out, batch_size=1, flip_prob=1.0)))

    full = list(L.iter_latent_batches(out, batch_size=2, epoch=3, seed=1))
    tail = list(L.iter_latent_batches(out, batch_size=2, epoch=3, seed=1, skip_batches=1))
    assert len(full) == 3 and len(tail) == 2
    for x, y in zip(full[1:], tail):
        assert x["id"] == y["id"] and all(torch.equal(x[m], y[m]) for m in L.MODALITIES)

    ranks = [[i["id"] for i in _items(L.iter_latent_batches(out, batch_size=1, rank=k, world_size=2))]
             for k in range(2)]
    assert sorted(ranks[0] + ranks[1]) == sorted({i for i, _ in stored}) and not set(ranks[0]) & set(ranks[1])


def test_no_flip_cache_refuses_flip_prob(root, tiny_zoo, tmp_path):
    cfg = L.LatentCacheConfig(resolution=R, flips=False, where="num_persons = 1")
    L.build_latent_cache(root, tmp_path / "c", cfg, "tiny", use_ray=False)
    with pytest.raises(ValueError, match="needs a cache built with flips=True"):
        next(L.iter_latent_batches(tmp_path / "c", batch_size=1))
    assert len(list(L.iter_latent_batches(tmp_path / "c", batch_size=1, flip_prob=0.0))) == \
        len(D.selected_keys(humanverse.open(root), cfg.data_config()))


@pytest.mark.slow
def test_ray_build_matches_local(built, root, tiny_zoo, tmp_path):
    """The Ray Data job (decode tasks -> VaeEncoder actor pool -> staged files) writes the same
    rows as the plain loop. One chunk (files_per_chunk is not part of the content): each chunk is
    its own Ray Data job whose actor pool loads torch + diffusers afresh (~10-60 s here)."""
    pytest.importorskip("ray")
    out_local, local_cfg, _ = built
    cfg = L.LatentCacheConfig(**{**local_cfg.__dict__, "files_per_chunk": 8})
    with local_ray({"HUMANVERSE_TINY_ZOO": str(tiny_zoo), "HF_HUB_OFFLINE": "1"}):
        res = L.EncoderResources(encoders=1, num_gpus=0, num_cpus=0.5, prepare_num_cpus=0.25, read_num_cpus=0.25)
        rep = L.build_latent_cache(root, tmp_path / "ray", cfg, "tiny", use_ray=True, resources=res)
    assert rep.rows == 12
    L.check_cache(tmp_path / "ray", root, cfg, "tiny")
    shape = (4, R // 8, R // 8)
    local = {(r["source_shard"], r["source_index"], r["flipped"]): r for r in _cache_rows(out_local)}
    remote = {(r["source_shard"], r["source_index"], r["flipped"]): r for r in _cache_rows(tmp_path / "ray")}
    assert local.keys() == remote.keys()
    for k, a in local.items():
        b = remote[k]
        assert {c: a[c] for c in L.META_COLUMNS} == {c: b[c] for c in L.META_COLUMNS}
        for m in L.MODALITIES:
            for s in ("mean", "std"):
                torch.testing.assert_close(_latent(a, f"{m}_{s}", shape), _latent(b, f"{m}_{s}", shape),
                                           rtol=2e-3, atol=1e-4)


def test_training_refuses_a_cache_of_another_pose_style_or_depth(built, root):
    """The cache records how its pose maps were drawn and which depth map it encoded; a training
    config that asks for another one is refused in one sentence (the paper's: humansd, midas)."""
    from model.training.loop import Stage1TrainConfig, check_latent_cache

    out, cfg, _ = built
    assert L.read_cache_manifest(out)["config"]["pose_style"] == "humansd"
    same = Stage1TrainConfig(data=D.TrainDataConfig(resolution=R))
    check_latent_cache(str(out), str(root), same, "tiny")
    for change, match in (({"pose_style": "wholebody"}, "pose_style 'humansd' \\(cache\\) vs 'wholebody'"),
                          ({"depth": "omnidata"}, "depth 'midas' \\(cache\\) vs 'omnidata'")):
        other = Stage1TrainConfig(data=D.TrainDataConfig(resolution=R, **change))
        with pytest.raises(L.StaleCacheError, match=match):
            check_latent_cache(str(out), str(root), other, "tiny")
