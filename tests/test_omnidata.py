"""Tests of the Omnidata v2 DPT-Hybrid (``pipelines/annotators/omnidata/``): offline, no mocks.

The published checkpoints cannot be downloaded here, so the full-size architecture is checked
against the checkpoint layout written out *independently* below from the public sources
(EPFL-VILAB/omnidata ``modules/midas/{dpt_depth,vit}.py``, timm 0.4.12 ``resnetv2.py`` and
``vision_transformer{,_hybrid}.py``, and the key list of transformers' DPT-hybrid converter), and the
loading paths are exercised with tiny models saved in the published formats.
"""

from __future__ import annotations

import argparse
import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipelines.annotators.omnidata import (
    TINY_BUILDERS,
    OmnidataConfig,
    OmnidataDPT,
    OmnidataProcessor,
    convert_omnidata_state_dict,
    make_tiny,
    make_tiny_omnidata_depth,
    make_tiny_omnidata_normal,
    predict_maps,
)
from pipelines.annotators.omnidata.model import _resize_pos_embed


# --------------------------------------------------------------------------------------------------
# The published layout, written from the architecture facts (not from our module)
# --------------------------------------------------------------------------------------------------


def published_layout(num_channels: int) -> dict[str, tuple[int, ...]]:
    """Key -> shape of ``omnidata_dpt_{depth,normal}_v2.ckpt`` after stripping ``model.``."""
    layout: dict[str, tuple[int, ...]] = {}
    vit = "pretrained.model."
    layout[vit + "cls_token"] = (1, 1, 768)
    layout[vit + "pos_embed"] = (1, 24 * 24 + 1, 768)
    # ResNetV2 (non-pre-activation, BiT StdConv + GroupNorm) stem and stages (3, 4, 9).
    resnet = vit + "patch_embed.backbone."
    layout[resnet + "stem.conv.weight"] = (64, 3, 7, 7)
    layout[resnet + "stem.norm.weight"] = (64,)
    layout[resnet + "stem.norm.bias"] = (64,)
    in_width = 64
    for stage, (blocks, width) in enumerate(zip((3, 4, 9), (256, 512, 1024))):
        mid = width // 4
        for block in range(blocks):
            prefix = f"{resnet}stages.{stage}.blocks.{block}."
            block_in = in_width if block == 0 else width
            if block == 0:
                layout[prefix + "downsample.conv.weight"] = (width, in_width, 1, 1)
                layout[prefix + "downsample.norm.weight"] = (width,)
                layout[prefix + "downsample.norm.bias"] = (width,)
            for name, shape in (
                ("conv1", (mid, block_in, 1, 1)),
                ("conv2", (mid, mid, 3, 3)),
                ("conv3", (width, mid, 1, 1)),
            ):
                layout[prefix + name + ".weight"] = shape
            for name, channels in (("norm1", mid), ("norm2", mid), ("norm3", width)):
                layout[prefix + name + ".weight"] = (channels,)
                layout[prefix + name + ".bias"] = (channels,)
        in_width = width
    layout[vit + "patch_embed.proj.weight"] = (768, 1024, 1, 1)
    layout[vit + "patch_embed.proj.bias"] = (768,)
    for block in range(12):
        prefix = f"{vit}blocks.{block}."
        for name, shape in (
            ("norm1.weight", (768,)),
            ("norm1.bias", (768,)),
            ("attn.qkv.weight", (2304, 768)),
            ("attn.qkv.bias", (2304,)),
            ("attn.proj.weight", (768, 768)),
            ("attn.proj.bias", (768,)),
            ("norm2.weight", (768,)),
            ("norm2.bias", (768,)),
            ("mlp.fc1.weight", (3072, 768)),
            ("mlp.fc1.bias", (3072,)),
            ("mlp.fc2.weight", (768, 3072)),
            ("mlp.fc2.bias", (768,)),
        ):
            layout[prefix + name] = shape
    layout[vit + "norm.weight"] = (768,)
    layout[vit + "norm.bias"] = (768,)
    layout[vit + "head.weight"] = (1000, 768)  # timm's ImageNet classifier, unused but saved
    layout[vit + "head.bias"] = (1000,)
    # Reassemble (act_postprocess1/2 are parameter-free in the hybrid).
    for index in (3, 4):
        prefix = f"pretrained.act_postprocess{index}."
        layout[prefix + "0.project.0.weight"] = (768, 1536)
        layout[prefix + "0.project.0.bias"] = (768,)
        layout[prefix + "3.weight"] = (768, 768, 1, 1)
        layout[prefix + "3.bias"] = (768,)
    layout["pretrained.act_postprocess4.4.weight"] = (768, 768, 3, 3)
    layout["pretrained.act_postprocess4.4.bias"] = (768,)
    # DPT decoder ("scratch"), features 256, use_bn=False.
    for index, width in enumerate((256, 512, 768, 768), start=1):
        layout[f"scratch.layer{index}_rn.weight"] = (256, width, 3, 3)
    for index in range(1, 5):
        prefix = f"scratch.refinenet{index}."
        for unit in ("resConfUnit1", "resConfUnit2"):
            for conv in ("conv1", "conv2"):
                layout[f"{prefix}{unit}.{conv}.weight"] = (256, 256, 3, 3)
                layout[f"{prefix}{unit}.{conv}.bias"] = (256,)
        layout[prefix + "out_conv.weight"] = (256, 256, 1, 1)
        layout[prefix + "out_conv.bias"] = (256,)
    layout["scratch.output_conv.0.weight"] = (128, 256, 3, 3)
    layout["scratch.output_conv.0.bias"] = (128,)
    layout["scratch.output_conv.2.weight"] = (32, 128, 3, 3)
    layout["scratch.output_conv.2.bias"] = (32,)
    layout["scratch.output_conv.4.weight"] = (num_channels, 32, 1, 1)
    layout["scratch.output_conv.4.bias"] = (num_channels,)
    return layout


# Literal spot checks (as a reader of the checkpoint would list them).
SPOT_CHECKS: dict[str, tuple[int, ...]] = {
    "pretrained.model.cls_token": (1, 1, 768),
    "pretrained.model.pos_embed": (1, 577, 768),
    "pretrained.model.patch_embed.backbone.stem.conv.weight": (64, 3, 7, 7),
    "pretrained.model.patch_embed.backbone.stem.norm.bias": (64,),
    "pretrained.model.patch_embed.backbone.stages.0.blocks.0.downsample.conv.weight": (256, 64, 1, 1),
    "pretrained.model.patch_embed.backbone.stages.0.blocks.0.conv1.weight": (64, 64, 1, 1),
    "pretrained.model.patch_embed.backbone.stages.0.blocks.2.norm3.weight": (256,),
    "pretrained.model.patch_embed.backbone.stages.1.blocks.0.downsample.norm.weight": (512,),
    "pretrained.model.patch_embed.backbone.stages.1.blocks.3.conv2.weight": (128, 128, 3, 3),
    "pretrained.model.patch_embed.backbone.stages.2.blocks.0.conv1.weight": (256, 512, 1, 1),
    "pretrained.model.patch_embed.backbone.stages.2.blocks.8.conv3.weight": (1024, 256, 1, 1),
    "pretrained.model.patch_embed.proj.weight": (768, 1024, 1, 1),
    "pretrained.model.blocks.0.attn.qkv.weight": (2304, 768),
    "pretrained.model.blocks.8.mlp.fc1.weight": (3072, 768),
    "pretrained.model.blocks.11.mlp.fc2.bias": (768,),
    "pretrained.model.norm.weight": (768,),
    "pretrained.model.head.weight": (1000, 768),
    "pretrained.act_postprocess3.0.project.0.weight": (768, 1536),
    "pretrained.act_postprocess3.3.weight": (768, 768, 1, 1),
    "pretrained.act_postprocess4.0.project.0.bias": (768,),
    "pretrained.act_postprocess4.3.bias": (768,),
    "pretrained.act_postprocess4.4.weight": (768, 768, 3, 3),
    "scratch.layer1_rn.weight": (256, 256, 3, 3),
    "scratch.layer2_rn.weight": (256, 512, 3, 3),
    "scratch.layer3_rn.weight": (256, 768, 3, 3),
    "scratch.layer4_rn.weight": (256, 768, 3, 3),
    "scratch.refinenet1.out_conv.weight": (256, 256, 1, 1),
    "scratch.refinenet4.resConfUnit1.conv1.weight": (256, 256, 3, 3),
    "scratch.refinenet2.resConfUnit2.conv2.bias": (256,),
    "scratch.output_conv.0.weight": (128, 256, 3, 3),
    "scratch.output_conv.2.weight": (32, 128, 3, 3),
}
ABSENT = [
    "scratch.layer1_rn.bias",
    "pretrained.act_postprocess1.3.weight",
    "pretrained.act_postprocess2.4.weight",
    "pretrained.model.patch_embed.backbone.norm.weight",  # non-pre-activation ResNetV2: Identity
    "pretrained.model.patch_embed.backbone.head.fc.weight",  # num_classes=0
    "scratch.output_conv.1.weight",
    "scratch.output_conv.6.weight",
]


def meta_model(config: OmnidataConfig) -> OmnidataDPT:
    with torch.device("meta"):
        return OmnidataDPT(config)


@pytest.mark.parametrize("task, channels", [("normal", 3), ("depth", 1)])
def test_full_size_layout_matches_published_checkpoint(task: str, channels: int) -> None:
    state = meta_model(OmnidataConfig(task=task)).state_dict()
    shapes = {key: tuple(value.shape) for key, value in state.items()}

    expected = published_layout(channels)
    assert sorted(set(shapes) - set(expected)) == []
    assert sorted(set(expected) - set(shapes)) == []
    assert shapes == expected

    for key, shape in SPOT_CHECKS.items():
        assert shapes[key] == shape, key
    assert shapes["scratch.output_conv.4.weight"] == (channels, 32, 1, 1)
    for key in ABSENT:
        assert key not in shapes
    assert sum(1 for key in shapes if key.startswith("scratch.refinenet")) == 4 * 10
    assert sum(1 for key in shapes if key.startswith("pretrained.model.blocks.")) == 12 * 12
    parameters = sum(int(np.prod(shape)) for shape in shapes.values())
    assert 120_000_000 < parameters < 125_000_000  # DPT-Hybrid: ~123M


def test_full_size_forward_at_a_non_384_size() -> None:
    model = meta_model(OmnidataConfig(task="normal")).to_empty(device="cpu")
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.02, generator=generator)
        output = model.eval()(torch.rand(1, 3, 64, 96, generator=generator))
    assert output.shape == (1, 3, 64, 96)
    assert torch.isfinite(output).all() and (output >= 0).all()


# --------------------------------------------------------------------------------------------------
# Tiny models: shapes, pos-embed resizing, loading paths
# --------------------------------------------------------------------------------------------------


def tiny_model(task: str, seed: int = 0) -> OmnidataDPT:
    torch.manual_seed(seed)
    return OmnidataDPT(OmnidataConfig.tiny(task)).eval()


@pytest.mark.parametrize(
    "task, height, width",
    [("depth", 64, 64), ("normal", 64, 64), ("depth", 256, 320), ("normal", 256, 320), ("normal", 80, 112)],
)
def test_output_shapes_and_ranges(task: str, height: int, width: int) -> None:
    model = tiny_model(task)
    with torch.no_grad():
        output = model(torch.rand(2, 3, height, width) * 2 - 1)
    expected = (2, height, width) if task == "depth" else (2, 3, height, width)
    assert output.shape == expected
    assert output.dtype == torch.float32
    assert torch.isfinite(output).all() and (output >= 0).all()  # final ReLU (non_negative)


def test_input_size_must_be_a_multiple_of_16() -> None:
    with pytest.raises(ValueError, match="multiple of 16"):
        tiny_model("depth")(torch.zeros(1, 3, 70, 64))


def test_resize_pos_embed() -> None:
    pos_embed = torch.randn(1, 1 + 24 * 24, 8)
    assert _resize_pos_embed(pos_embed, 24, 24) is pos_embed  # native grid: untouched

    resized = _resize_pos_embed(pos_embed, 16, 20)  # a 256x320 input
    assert resized.shape == (1, 1 + 16 * 20, 8)
    assert torch.equal(resized[:, 0], pos_embed[:, 0])  # class token kept

    constant = torch.ones(1, 1 + 24 * 24, 8) * 3.0
    assert torch.allclose(_resize_pos_embed(constant, 32, 40), torch.full((1, 1 + 32 * 40, 8), 3.0))

    # Bilinear, align_corners=False: 2x upsampling of a 2x2 grid gives the known 4x4 stencil.
    grid = torch.tensor([[0.0, 1.0], [2.0, 3.0]]).reshape(1, 4, 1)
    up = _resize_pos_embed(torch.cat([torch.zeros(1, 1, 1), grid], 1), 4, 4)[0, 1:, 0].reshape(4, 4)
    assert torch.allclose(up[0], torch.tensor([0.0, 0.25, 0.75, 1.0]))
    assert torch.allclose(up[:, 0], torch.tensor([0.0, 0.5, 1.5, 2.0]))


def test_token_path_matches_timm_forward_at_the_native_size() -> None:
    """Our hybrid ResNet -> 1x1 proj -> ViT path reproduces timm's own forward_features."""
    model = tiny_model("normal")
    vit = model.pretrained.model
    captured: list[torch.Tensor] = []
    handle = vit.blocks[model.config.hooks[3]].register_forward_hook(lambda m, i, o: captured.append(o))
    image = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        model(image)
        handle.remove()
        reference = vit.forward_features(image)  # (B, 1+16, D) at the 64x64 training size
    assert torch.allclose(vit.norm(captured[0]), reference, atol=1e-6)


def test_decoder_equals_upstream_factor_2_fusion_at_multiples_of_32() -> None:
    """Upstream's fusion blocks upsample by a fixed factor 2; ours to the skip's size: same maps."""
    import torch.nn.functional as F

    def residual(unit: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        return unit.conv2(F.relu(unit.conv1(F.relu(x)))) + x

    def fuse(block: torch.nn.Module, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if skip is not None:
            x = x + residual(block.resConfUnit1, skip)
        x = residual(block.resConfUnit2, x)
        x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True)
        return block.out_conv(x)

    model = tiny_model("depth")
    scratch = model.scratch
    image = torch.rand(1, 3, 96, 160) * 2 - 1
    with torch.no_grad():
        layers = model._encode(image)
        l1, l2, l3, l4 = (getattr(scratch, f"layer{i}_rn")(x) for i, x in enumerate(layers, start=1))
        path = fuse(scratch.refinenet4, l4)
        path = fuse(scratch.refinenet3, path, l3)
        path = fuse(scratch.refinenet2, path, l2)
        path = fuse(scratch.refinenet1, path, l1)
        reference = scratch.output_conv(path).squeeze(1)
        assert torch.equal(model(image), reference)


def test_pos_embed_is_resized_inside_the_model() -> None:
    model = tiny_model("normal")
    image = torch.rand(1, 3, 96, 128)
    with torch.no_grad():
        reference = model(image)
        model.pretrained.model.pos_embed.add_(1.0)  # a model that ignored pos_embed would not change
        changed = model(image)
    assert not torch.equal(reference, changed)


def test_lightning_ckpt_and_plain_pth_round_trip(tmp_path: Path) -> None:
    model = tiny_model("normal", seed=3)
    state = model.state_dict()
    lightning = {"state_dict": {"model." + key: value for key, value in state.items()}, "epoch": 7}
    torch.save(lightning, tmp_path / "m.ckpt")
    torch.save(state, tmp_path / "m.pth")
    model.save_pretrained(tmp_path / "saved")

    config = OmnidataConfig.tiny("normal")
    image = torch.rand(1, 3, 64, 80)
    with torch.no_grad():
        reference = model(image)
        for source in (tmp_path / "m.ckpt", tmp_path / "m.pth"):
            loaded = OmnidataDPT.from_pretrained(source, config=config)
            assert not loaded.training
            assert torch.equal(loaded(image), reference)
        loaded = OmnidataDPT.from_pretrained(tmp_path / "saved")
        assert loaded.config == config
        assert torch.equal(loaded(image), reference)


class AttributeDict(dict):
    """Like Lightning's hyper-parameter container: a dict subclass that may carry attributes."""


def test_lightning_ckpt_with_pickled_hyperparameters(tmp_path: Path) -> None:
    hparams = AttributeDict(lr=1e-4, backbone="vitb_rn50_384")
    hparams.extra = "attribute state"
    model = tiny_model("depth", seed=1)
    checkpoint = {
        "state_dict": {"model." + key: value for key, value in model.state_dict().items()},
        "hyper_parameters": hparams,
        "args": argparse.Namespace(task="depth", image_size=384),
    }
    torch.save(checkpoint, tmp_path / "lightning.ckpt")
    with pytest.raises(Exception):
        torch.load(tmp_path / "lightning.ckpt", weights_only=True)  # plain weights_only refuses it

    loaded = OmnidataDPT.from_pretrained(tmp_path / "lightning.ckpt", config=OmnidataConfig.tiny("depth"))
    image = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(image), model(image))


def test_full_size_config_and_task_are_inferred_from_a_checkpoint(tmp_path: Path) -> None:
    # A full-size state dict with the published layout; expanded scalars keep the file tiny.
    state = {key: torch.zeros(1).expand(shape) for key, shape in published_layout(1).items()}
    torch.save({"state_dict": {"model." + key: value for key, value in state.items()}}, tmp_path / "d.ckpt")
    model = OmnidataDPT.from_pretrained(tmp_path / "d.ckpt")
    assert model.config == OmnidataConfig(task="depth")
    assert next(model.parameters()).device.type == "cpu"
    with pytest.raises(ValueError, match="1-channel head but task 'normal' needs 3"):
        OmnidataDPT.from_pretrained(tmp_path / "d.ckpt", task="normal")


def test_mismatched_checkpoint_raises_one_clear_error(tmp_path: Path) -> None:
    state = tiny_model("normal").state_dict()
    config = OmnidataConfig.tiny("normal")

    missing = dict(state)
    del missing["scratch.refinenet2.out_conv.bias"]
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match=r"1 missing keys \(e\.g\. scratch\.refinenet2\.out_conv\.bias\)"):
        OmnidataDPT.from_pretrained(tmp_path / "missing.pth", config=config)

    extra = dict(state, **{"scratch.refinenet5.out_conv.bias": torch.zeros(16)})
    torch.save(extra, tmp_path / "extra.pth")
    with pytest.raises(ValueError, match="1 unexpected keys"):
        OmnidataDPT.from_pretrained(tmp_path / "extra.pth", config=config)

    wrong = dict(state, **{"scratch.output_conv.4.bias": torch.zeros(1)})
    torch.save(wrong, tmp_path / "wrong.pth")
    message = r"1 shape mismatches \(e\.g\. scratch\.output_conv\.4\.bias \(1,\) != \(3,\)\)"
    with pytest.raises(ValueError, match=message):
        OmnidataDPT.from_pretrained(tmp_path / "wrong.pth", config=config)

    with pytest.raises(FileNotFoundError):
        OmnidataDPT.from_pretrained(tmp_path / "nowhere.ckpt")


def test_convert_strips_only_the_lightning_prefix() -> None:
    tensor = torch.zeros(1)
    converted = convert_omnidata_state_dict(
        {"model.pretrained.model.cls_token": tensor, "scratch.layer1_rn.weight": tensor}
    )
    assert list(converted) == ["pretrained.model.cls_token", "scratch.layer1_rn.weight"]


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="task"):
        OmnidataConfig(task="albedo")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_channels is 3 but task 'depth' needs 1"):
        OmnidataConfig(task="depth", num_channels=3)
    assert OmnidataConfig(task="depth").num_channels == 1
    assert OmnidataConfig.from_dict(OmnidataConfig.tiny("depth").to_dict()) == OmnidataConfig.tiny("depth")
    with pytest.raises(ValueError, match="Unknown OmnidataConfig fields"):
        OmnidataConfig.from_dict({"task": "depth", "size": 3})


# --------------------------------------------------------------------------------------------------
# Pre/post-processing
# --------------------------------------------------------------------------------------------------


def test_working_size_keeps_aspect_and_rounds() -> None:
    processor = OmnidataProcessor(task="normal")
    assert processor.working_size(480, 640) == (384, 512)
    assert processor.working_size(640, 480) == (512, 384)
    assert processor.working_size(1000, 1000) == (384, 384)
    height, width = processor.working_size(300, 533)
    assert height == 384 and width % 32 == 0 and abs(width / height - 533 / 300) < 0.05
    assert OmnidataProcessor(ensure_multiple_of=16).working_size(300, 533)[1] % 16 == 0
    assert OmnidataProcessor(center_crop=True).working_size(300, 533) == (384, 384)
    with pytest.raises(ValueError, match="multiple of 16"):
        OmnidataProcessor(ensure_multiple_of=24)


def test_preprocess_normalisation_per_task() -> None:
    image = np.zeros((96, 128, 3), dtype=np.uint8)
    image[:, 64:] = 255  # left half black, right half white
    depth = OmnidataProcessor(task="depth", size=96).preprocess([Image.fromarray(image)])
    normal = OmnidataProcessor(task="normal", size=96).preprocess(image[None])  # ndarray batch
    assert depth.shape == normal.shape == (1, 3, 96, 128)
    assert depth.dtype == normal.dtype == torch.float32
    assert depth.min() == -1.0 and depth.max() == 1.0
    assert normal.min() == 0.0 and normal.max() == 1.0
    assert torch.allclose(depth, normal * 2 - 1)

    with pytest.raises(ValueError, match="different working sizes"):
        OmnidataProcessor().preprocess([Image.new("RGB", (64, 64)), Image.new("RGB", (128, 64))])
    with pytest.raises(ValueError, match="uint8"):
        OmnidataProcessor().preprocess(np.zeros((1, 32, 32, 3), dtype=np.float32))


def test_center_crop_matches_the_demo_transform() -> None:
    image = Image.new("RGB", (600, 400), (10, 20, 30))
    pixel_values = OmnidataProcessor(task="normal", center_crop=True).preprocess([image])
    assert pixel_values.shape == (1, 3, 384, 384)
    assert torch.allclose(pixel_values[0, :, 0, 0], torch.tensor([10, 20, 30]) / 255.0)


def test_postprocess_restores_size_and_unit_normals() -> None:
    sizes = [(97, 131), (64, 48)]
    normals = OmnidataProcessor(task="normal").postprocess(torch.rand(2, 3, 64, 96) * 1.4 - 0.2, sizes)
    for normal, (height, width) in zip(normals, sizes):
        assert normal.shape == (height, width, 3) and normal.dtype == np.float32
        assert np.allclose(np.linalg.norm(normal, axis=-1), 1.0, atol=1e-5)
    flat = OmnidataProcessor(task="normal").postprocess(torch.full((1, 3, 32, 32), 0.5), [(10, 12)])[0]
    assert np.allclose(flat, [0.0, 0.0, 1.0])  # degenerate -> facing the camera

    depths = OmnidataProcessor(task="depth").postprocess(torch.rand(2, 64, 96) * 2 - 0.5, sizes)
    for depth, (height, width) in zip(depths, sizes):
        assert depth.shape == (height, width) and depth.dtype == np.float32
        assert depth.min() >= 0.0 and depth.max() <= 1.0

    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        OmnidataProcessor(task="normal").postprocess(torch.rand(1, 64, 64), [(64, 64)])


def test_predict_maps_handles_mixed_sizes() -> None:
    model = tiny_model("normal")
    images = [Image.new("RGB", (70, 50)), Image.new("RGB", (33, 90)), Image.new("RGB", (71, 50))]
    maps = predict_maps(model, images, OmnidataProcessor(task="normal", size=64), batch_size=2)
    assert [m.shape for m in maps] == [(50, 70, 3), (90, 33, 3), (50, 71, 3)]
    depth = predict_maps(tiny_model("depth"), images[:1], OmnidataProcessor(task="depth", size=64))
    assert depth[0].shape == (50, 70)


# --------------------------------------------------------------------------------------------------
# Tiny zoo builders
# --------------------------------------------------------------------------------------------------


def _digest(directory: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def test_make_tiny_is_deterministic_and_loadable(tmp_path: Path) -> None:
    torch.manual_seed(123)
    rng_before = torch.get_rng_state()
    make_tiny_omnidata_normal(tmp_path / "a", 0)
    assert torch.equal(torch.get_rng_state(), rng_before)  # caller's RNG untouched
    make_tiny(tmp_path / "b", seed=0, task="normal")
    make_tiny(tmp_path / "c", seed=1, task="normal")
    make_tiny_omnidata_depth(tmp_path / "d", 0)

    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["config.json", "model.safetensors"]
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a")["model.safetensors"] != _digest(tmp_path / "c")["model.safetensors"]

    normal = OmnidataDPT.from_pretrained(tmp_path / "a")
    depth = OmnidataDPT.from_pretrained(tmp_path / "d", task="depth")
    assert normal.config.task == "normal" and depth.config.num_channels == 1
    with pytest.raises(ValueError, match="holds an Omnidata 'normal' model but task 'depth'"):
        OmnidataDPT.from_pretrained(tmp_path / "a", task="depth")


def test_load_omnidata_takes_a_checkpoint_file_or_a_saved_folder(tmp_path: Path) -> None:
    """The depth and normal stages load through :func:`load_omnidata`: a directory through the zoo,
    a checkpoint file as the published (full-size) model; the tiny builders are one map."""
    from pipelines.annotators.omnidata import load_omnidata

    assert TINY_BUILDERS == {"omnidata-depth": make_tiny_omnidata_depth, "omnidata-normal": make_tiny_omnidata_normal}
    make_tiny_omnidata_depth(tmp_path / "d", 0)
    saved = OmnidataDPT.from_pretrained(tmp_path / "d")
    from_dir, _ = load_omnidata("omnidata-depth", str(tmp_path / "d"), "depth")
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(from_dir(x), saved(x))
    torch.save(saved.state_dict(), tmp_path / "depth.pth")  # a file is read as the published layout
    with pytest.raises(ValueError, match="does not match the Omnidata DPT-Hybrid layout"):
        load_omnidata("omnidata-depth", str(tmp_path / "depth.pth"), "depth")
    with pytest.raises(ValueError, match="has neither a 'omnidata-depth/' subfolder nor a model file"):
        load_omnidata("omnidata-depth", str(tmp_path), "depth")


def test_normals_are_stored_with_z_towards_the_viewer() -> None:
    """Omnidata's output frame has +Z away from the viewer (a camera-facing surface is (0, 0, -1),
    a floor (0, -1, 0)); the stored frame has +Z towards the viewer: z is negated, x and y kept."""
    network = {"facing": (0.0, 0.0, -1.0), "floor": (0.0, -1.0, 0.0), "wall_facing_left": (-1.0, 0.0, 0.0)}
    stored = {"facing": (0.0, 0.0, 1.0), "floor": (0.0, -1.0, 0.0), "wall_facing_left": (-1.0, 0.0, 0.0)}
    processor = OmnidataProcessor(task="normal")
    for name, n in network.items():
        rgb = (torch.tensor(n) + 1) / 2  # the network's [0, 1] output for that normal
        out = processor.postprocess(rgb.view(1, 3, 1, 1).expand(1, 3, 8, 8), [(8, 8)])[0]
        assert np.allclose(out, stored[name], atol=1e-6), name


def test_checkpoint_with_numpy_metadata_loads_without_unpickling_code(tmp_path: Path) -> None:
    """Real Lightning checkpoints carry numpy scalars, dtypes and arrays next to the weights; they
    load as themselves with ``weights_only`` kept on (allowlisted data constructors only)."""
    model = tiny_model("normal", seed=2)
    checkpoint = {
        "state_dict": {"model." + key: value for key, value in model.state_dict().items()},
        "epoch": np.int64(7),
        "best_loss": np.float64(0.25),
        "dtype": np.dtype("float32"),
        "history": np.arange(3, dtype=np.float32),
    }
    torch.save(checkpoint, tmp_path / "numpy.ckpt")
    with pytest.raises(pickle.UnpicklingError):
        torch.load(tmp_path / "numpy.ckpt", weights_only=True)  # plain weights_only refuses numpy
    loaded = OmnidataDPT.from_pretrained(tmp_path / "numpy.ckpt", config=OmnidataConfig.tiny("normal"))
    image = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(image), model(image))

    class Payload:  # a class in the file's metadata is never imported or called
        def __reduce__(self):
            return (print, ("this must not run",))

    torch.save({**checkpoint, "payload": Payload()}, tmp_path / "hostile.ckpt")
    from pipelines.annotators.omnidata.convert import load_omnidata_state_dict

    state = load_omnidata_state_dict(tmp_path / "hostile.ckpt")
    assert set(state) == set(model.state_dict())


def test_models_paper_takes_omnidata_from_the_prepared_models_folder(tmp_path: Path, monkeypatch) -> None:
    """Omnidata is not on the hub: ``--models paper`` finds it where ``zoo prepare`` put it
    (``$HUMANVERSE_MODELS/omnidata-normal/``) and otherwise says how to fetch it."""
    from pipelines.annotators.omnidata import load_omnidata

    monkeypatch.setenv("HUMANVERSE_MODELS", str(tmp_path / "models"))
    with pytest.raises(ValueError, match=r"zoo prepare DIR"):
        load_omnidata("omnidata-normal", "paper", "normal")
    make_tiny_omnidata_normal(tmp_path / "models" / "omnidata-normal", 0)
    model, tag = load_omnidata("omnidata-normal", "paper", "normal")
    assert model.config.task == "normal" and tag == "https://zenodo.org/records/10447888 (prepared)"
