"""Both depth maps (HyperHuman §4 / App. A.1 annotate MiDaS and Omnidata depth): the depth stage's
``also_omnidata`` fills the format-v2 ``depth_omnidata`` columns beside MiDaS's ``depth``, and the
trainer's ``data.depth`` picks which one it trains on."""

from __future__ import annotations

import numpy as np
import pytest
from test_depth_normal import OX, OY, H, W, _row, _table, _with_canvas

from humanverse.codecs import decode_depth, decode_image
from humanverse.config import ConfigError
from humanverse.testing.synthetic import make_sample
from pipelines.annotators.omnidata import OmnidataDPT, OmnidataProcessor, predict_maps
from pipelines.geometry import MapsConfig
from pipelines.stages.depth import DepthConfig, DepthEstimator, fit_map


@pytest.mark.slow  # two depth models plus a reference run
def test_depth_stage_stores_midas_and_omnidata(tiny_zoo):
    both = DepthEstimator(DepthConfig(device="cpu", also_omnidata=True), models="tiny", maps=MapsConfig(100))
    midas_only = DepthEstimator(DepthConfig(device="cpu"), models="tiny", maps=MapsConfig(100))
    row = _with_canvas(_row(make_sample(W, H, seed=7).image)["image"], 0)
    (r,) = both(_table([row])).to_pylist()
    (m,) = midas_only(_table([row])).to_pylist()
    assert r["models"] == [{"stage": "depth", "model": "tiny:midas-dpt-hybrid"},
                           {"stage": "depth_omnidata", "model": "tiny:omnidata-depth"}]
    assert r["depth"] == m["depth"] and m["depth_omnidata"] is None  # MiDaS unchanged; one model: null
    model = OmnidataDPT.from_pretrained(tiny_zoo / "omnidata-depth")
    (pred,) = predict_maps(model, [decode_image(row["canvas"])], OmnidataProcessor(task="depth"))
    ref = fit_map(1.0 - pred[OY:OY + H, OX:OX + W], (100, 75))  # the same canvas crop and map size
    d = decode_depth(r["depth_omnidata"], r["depth_omnidata_min"], r["depth_omnidata_max"])
    assert d.shape == (r["map_height"], r["map_width"]) == (75, 100)
    assert np.abs(d - ref).max() <= (ref.max() - ref.min()) / 65535 + 1e-5
    with pytest.raises(ConfigError, match="needs depth.backend 'midas'"):
        DepthConfig(backend="omnidata", also_omnidata=True)


def test_trainer_reads_the_depth_map_its_config_picks(tmp_path):
    import pyarrow as pa

    import humanverse
    from humanverse import codecs
    from humanverse.testing.synthetic import synthetic_table
    from model.training import data as D

    table = synthetic_table(4, shard="s0", width=96, height=128, seed=3)
    rows = table.to_pylist()
    for i, r in enumerate(rows):  # a second depth map (mirrored), on all rows but the last
        if i < 3:
            d = decode_depth(r["depth"], r["depth_min"], r["depth_max"])[:, ::-1]
            enc = codecs.encode_depth(np.ascontiguousarray(d))
            r.update(depth_omnidata=enc.png, depth_omnidata_min=enc.depth_min, depth_omnidata_max=enc.depth_max)
    root = tmp_path / "ds"
    sink = humanverse.ShardSink.open(root)
    sink.write(pa.Table.from_pylist(rows, schema=table.schema), "data", "s0")
    sink.close()

    midas = D.TrainDataConfig(resolution=64, crop="center", flip_prob=0.0, shuffle_buffer=0)
    omni = D.TrainDataConfig(resolution=64, crop="center", flip_prob=0.0, shuffle_buffer=0, depth="omnidata")
    assert D.row_columns(omni)[-2:] == ("depth_omnidata", "normal") and midas.depth == "midas"
    ds = humanverse.open(root)
    assert sum(len(v) for v in D.select_rows(ds, midas).values()) == 4
    assert sum(len(v) for v in D.select_rows(ds, omni).values()) == 3  # the row without the map is left out
    rng = lambda: np.random.default_rng(0)
    a = D.make_example(rows[0], omni, rng())
    swapped = dict(rows[0], depth=rows[0]["depth_omnidata"], depth_min=rows[0]["depth_omnidata_min"],
                   depth_max=rows[0]["depth_omnidata_max"])
    b = D.make_example(swapped, midas, rng())
    assert np.array_equal(a["depth"].numpy(), b["depth"].numpy())
    assert not np.array_equal(a["depth"].numpy(), D.make_example(rows[0], midas, rng())["depth"].numpy())
    with pytest.raises(ValueError, match="depth must be 'midas'"):
        D.TrainDataConfig(depth="zoe")
