"""ViTPose whole-body converter against an independent reference forward.

The reference below is written from the original ViTPose architecture (ViTAE-Transformer/ViTPose
``mmpose/models/backbones/vit.py`` and ``TopdownHeatmapSimpleHead``): a patch embedding with
padding 2, the position embedding's first row added to every token, pre-norm blocks with a *fused*
qkv projection and LayerNorm eps 1e-6, a last norm, two stride-2 deconvolutions with BatchNorm and
ReLU, and a 1x1 conv to 133 heatmaps. It runs on a tiny random state dict in the original key
layout; the converted ``VitPoseForPoseEstimation`` must give the same heatmaps to 1e-5.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipelines.annotators.vitpose_convert import (
    convert_vitpose,
    convert_vitpose_state_dict,
)

DIM, DEPTH, HEADS, K = 32, 2, 2, 133


def original_state_dict(
    seed: int = 0, *, unsplit: bool = False
) -> dict[str, torch.Tensor]:
    """A random ViTPose(++) whole-body state dict in the original key layout (tiny widths).

    ``unsplit``: the ViTPose++ layout, where ``mlp.fc2`` holds only the shared rows, six experts
    hold the rest, and the whole-body head is ``associate_keypoint_heads.4`` (the COCO head stays
    ``keypoint_head``, 17 outputs).
    """
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.2):
        return torch.randn(*shape, generator=g) * scale

    sd = {
        "backbone.patch_embed.proj.weight": r(DIM, 3, 16, 16, scale=0.05),
        "backbone.patch_embed.proj.bias": r(DIM),
        "backbone.pos_embed": r(1, 16 * 12 + 1, DIM),
        "backbone.last_norm.weight": 1 + r(DIM),
        "backbone.last_norm.bias": r(DIM),
    }
    part = 8
    for i in range(DEPTH):
        b = f"backbone.blocks.{i}"
        sd |= {
            f"{b}.norm1.weight": 1 + r(DIM), f"{b}.norm1.bias": r(DIM),
            f"{b}.attn.qkv.weight": r(3 * DIM, DIM), f"{b}.attn.qkv.bias": r(3 * DIM),
            f"{b}.attn.proj.weight": r(DIM, DIM), f"{b}.attn.proj.bias": r(DIM),
            f"{b}.norm2.weight": 1 + r(DIM), f"{b}.norm2.bias": r(DIM),
            f"{b}.mlp.fc1.weight": r(4 * DIM, DIM), f"{b}.mlp.fc1.bias": r(4 * DIM),
        }  # fmt: skip
        if unsplit:
            sd[f"{b}.mlp.fc2.weight"], sd[f"{b}.mlp.fc2.bias"] = (
                r(DIM - part, 4 * DIM),
                r(DIM - part),
            )
            for e in range(6):
                sd[f"{b}.mlp.experts.{e}.weight"], sd[f"{b}.mlp.experts.{e}.bias"] = (
                    r(part, 4 * DIM),
                    r(part),
                )
        else:
            sd[f"{b}.mlp.fc2.weight"], sd[f"{b}.mlp.fc2.bias"] = r(DIM, 4 * DIM), r(DIM)
            sd[f"{b}.mlp.experts.0.weight"] = r(
                part, 4 * DIM
            )  # leftovers of model_split.py: dropped

    def head(prefix: str, outputs: int) -> None:
        sd[f"{prefix}.deconv_layers.0.weight"] = r(DIM, 256, 4, 4, scale=0.05)
        sd[f"{prefix}.deconv_layers.3.weight"] = r(256, 256, 4, 4, scale=0.02)
        for j in (1, 4):
            sd[f"{prefix}.deconv_layers.{j}.weight"] = 1 + r(256)
            sd[f"{prefix}.deconv_layers.{j}.bias"] = r(256)
            sd[f"{prefix}.deconv_layers.{j}.running_mean"] = r(256)
            sd[f"{prefix}.deconv_layers.{j}.running_var"] = 0.5 + torch.rand(
                256, generator=g
            )
            sd[f"{prefix}.deconv_layers.{j}.num_batches_tracked"] = torch.tensor(100)
        sd[f"{prefix}.final_layer.weight"] = r(outputs, 256, 1, 1)
        sd[f"{prefix}.final_layer.bias"] = r(outputs)

    if unsplit:
        head("keypoint_head", 17)
        for a, n in enumerate((14, 16, 17, 17, K)):
            head(f"associate_keypoint_heads.{a}", n)
    else:
        head("keypoint_head", K)
        head("associate_keypoint_heads.0", 14)  # leftovers of model_split.py: dropped
    return sd


def reference_forward(
    sd: dict[str, torch.Tensor], x: torch.Tensor, *, unsplit: bool = False
) -> torch.Tensor:
    """The original ViTPose forward (backbone + TopdownHeatmapSimpleHead), written independently."""
    B = x.shape[0]
    t = F.conv2d(
        x,
        sd["backbone.patch_embed.proj.weight"],
        sd["backbone.patch_embed.proj.bias"],
        stride=16,
        padding=2,
    )
    Hp, Wp = t.shape[2:]
    t = t.flatten(2).transpose(1, 2)
    pos = sd["backbone.pos_embed"]
    t = t + pos[:, 1:] + pos[:, :1]
    hd = DIM // HEADS
    for i in range(DEPTH):
        b = f"backbone.blocks.{i}"
        y = F.layer_norm(
            t, (DIM,), sd[f"{b}.norm1.weight"], sd[f"{b}.norm1.bias"], eps=1e-6
        )
        qkv = F.linear(y, sd[f"{b}.attn.qkv.weight"], sd[f"{b}.attn.qkv.bias"])
        q, k, v = qkv.reshape(B, -1, 3, HEADS, hd).permute(2, 0, 3, 1, 4)
        attn = ((q * hd**-0.5) @ k.transpose(-2, -1)).softmax(-1)
        y = (attn @ v).transpose(1, 2).reshape(B, -1, DIM)
        t = t + F.linear(y, sd[f"{b}.attn.proj.weight"], sd[f"{b}.attn.proj.bias"])
        y = F.layer_norm(
            t, (DIM,), sd[f"{b}.norm2.weight"], sd[f"{b}.norm2.bias"], eps=1e-6
        )
        y = F.linear(y, sd[f"{b}.mlp.fc1.weight"], sd[f"{b}.mlp.fc1.bias"])
        y = 0.5 * y * (1 + torch.erf(y / math.sqrt(2)))  # exact GELU
        if unsplit:
            shared = F.linear(y, sd[f"{b}.mlp.fc2.weight"], sd[f"{b}.mlp.fc2.bias"])
            expert = F.linear(
                y, sd[f"{b}.mlp.experts.5.weight"], sd[f"{b}.mlp.experts.5.bias"]
            )
            y = torch.cat([shared, expert], dim=-1)
        else:
            y = F.linear(y, sd[f"{b}.mlp.fc2.weight"], sd[f"{b}.mlp.fc2.bias"])
        t = t + y
    t = F.layer_norm(
        t,
        (DIM,),
        sd["backbone.last_norm.weight"],
        sd["backbone.last_norm.bias"],
        eps=1e-6,
    )
    f = t.transpose(1, 2).reshape(B, DIM, Hp, Wp)
    h = "associate_keypoint_heads.4" if unsplit else "keypoint_head"
    for deconv, bn in ((0, 1), (3, 4)):
        f = F.conv_transpose2d(
            f, sd[f"{h}.deconv_layers.{deconv}.weight"], stride=2, padding=1
        )
        p = f"{h}.deconv_layers.{bn}"
        f = F.batch_norm(f, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"],
                         training=False, eps=1e-5)  # fmt: skip
        f = F.relu(f)
    return F.conv2d(f, sd[f"{h}.final_layer.weight"], sd[f"{h}.final_layer.bias"])


def _save(sd: dict, path: Path) -> Path:
    # Checkpoints carry metadata next to the weights, numpy scalars included.
    torch.save(
        {"state_dict": sd, "meta": {"epoch": np.int64(210), "best": np.float64(0.612)}},
        path,
    )
    return path


@pytest.mark.parametrize(
    "unsplit", [False, True], ids=["split-wholebody.pth", "unsplit-vitpose++"]
)
def test_converted_model_matches_the_original_architecture(
    tmp_path: Path, unsplit: bool
) -> None:
    from transformers import VitPoseForPoseEstimation

    sd = original_state_dict(1, unsplit=unsplit)
    out = convert_vitpose(
        _save(sd, tmp_path / "wholebody.pth"),
        tmp_path / "hf",
        num_attention_heads=HEADS,
    )
    names = sorted(p.name for p in out.iterdir())
    assert names == [
        "config.json",
        "model.safetensors",
        "pose_decoding.json",
        "preprocessor_config.json",
    ]
    model = VitPoseForPoseEstimation.from_pretrained(out).eval()
    assert (
        model.config.backbone_config.layer_norm_eps == 1e-6
        and model.config.num_labels == K
    )
    x = torch.randn(2, 3, 256, 192, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ours = model(pixel_values=x).heatmaps
        ref = reference_forward(sd, x, unsplit=unsplit)
    assert ours.shape == ref.shape == (2, K, 64, 48)
    assert torch.allclose(ours, ref, atol=1e-5, rtol=0), (ours - ref).abs().max()


def test_the_key_map_covers_every_target_key() -> None:
    from transformers import VitPoseForPoseEstimation

    from pipelines.annotators.vitpose_convert import vitpose_config

    mapped = convert_vitpose_state_dict(original_state_dict())
    target = VitPoseForPoseEstimation(vitpose_config(mapped, HEADS)).state_dict()
    assert set(mapped) == set(target)
    assert all(mapped[k].shape == target[k].shape for k in target)
    assert not any("experts" in k or "associate" in k for k in mapped)


def test_anything_else_is_refused_with_one_sentence(tmp_path: Path, caplog) -> None:
    coco = original_state_dict()
    coco["keypoint_head.final_layer.weight"] = coco["keypoint_head.final_layer.weight"][
        :17
    ]
    coco["keypoint_head.final_layer.bias"] = coco["keypoint_head.final_layer.bias"][:17]
    with pytest.raises(
        ValueError, match=r"no head predicting 133 COCO-WholeBody keypoints"
    ):
        convert_vitpose(
            _save(coco, tmp_path / "coco.pth"),
            tmp_path / "out",
            num_attention_heads=HEADS,
        )
    torch.save({"model": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match=r"is not an original ViTPose checkpoint"):
        convert_vitpose(tmp_path / "other.pth", tmp_path / "out")
    with pytest.raises(ValueError, match=r"does not exist"):
        convert_vitpose(tmp_path / "missing.pth", tmp_path / "out")
    with pytest.raises(ValueError, match=r"give its number of attention heads"):
        convert_vitpose(
            _save(original_state_dict(), tmp_path / "w.pth"), tmp_path / "out"
        )

    from humanverse.cli import main

    assert main(["zoo", "convert-vitpose", str(tmp_path / "coco.pth"), str(tmp_path / "cli-out"),
                 "--heads", str(HEADS)]) == 2  # fmt: skip
    assert "no head predicting 133" in caplog.text and "Traceback" not in caplog.text


def test_models_paper_accepts_the_converted_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once converted into the prepared models folder, ``--models paper`` loads vitpose-wholebody."""
    from humanverse.zoo import resolve
    from pipelines.stages.pose import PoseConfig, PoseEstimator

    monkeypatch.setenv("HUMANVERSE_MODELS", str(tmp_path / "models"))
    with pytest.raises(ValueError, match=r"zoo prepare DIR"):
        resolve("vitpose-wholebody", "paper")
    from humanverse.cli import main

    src = _save(original_state_dict(3), tmp_path / "wholebody.pth")
    out = tmp_path / "models" / "vitpose-wholebody"
    assert main(["zoo", "convert-vitpose", str(src), str(out), "--heads", str(HEADS)]) == 0
    r = resolve("vitpose-wholebody", "paper")
    assert (
        r.kind == "local"
        and Path(r.path) == (tmp_path / "models" / "vitpose-wholebody").resolve()
    )
    assert r.tag == "JunkyByte/easy_ViTPose@e83805274e89428969355ec4afffcbc413e79188 (prepared)"
    stage = PoseEstimator(PoseConfig(device="cpu"), models="paper")
    assert stage.backend.decoding.use_udp is False and stage.backend.decoding.flip_test
    assert stage.backend.tag == r.tag  # the models column records the pin it was prepared from


# -- against MMPose itself (optional stack: `make mmpose`) -------------------------------------------

_MMPOSE_BLOCK_NAMES = {"norm1": "ln1", "norm2": "ln2", "mlp.fc1": "ffn.layers.0.0", "mlp.fc2": "ffn.layers.1"}


def mmpose_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The original ViTPose weights under MMPose 1.x's names (mmpretrain ``VisionTransformer`` +
    ``HeatmapHead``), a plain renaming that keeps the fused qkv.

    One value changes: the original adds the position embedding's first row to every patch token,
    while mmpretrain, loading a 193-row embedding into a model without a class token, drops that
    row. So the row is folded into the patch rows here.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if ".experts." in key or key.startswith("associate_"):
            continue
        if key == "backbone.pos_embed":
            out[key] = value[:, 1:] + value[:, :1]
            continue
        if key.startswith("backbone.blocks."):
            index, rest = key.removeprefix("backbone.blocks.").split(".", 1)
            for old, new in _MMPOSE_BLOCK_NAMES.items():
                rest = new + rest[len(old) :] if rest.startswith(old + ".") else rest
            key = f"backbone.layers.{index}.{rest}"
        key = key.replace("backbone.patch_embed.proj.", "backbone.patch_embed.projection.")
        key = key.replace("backbone.last_norm.", "backbone.ln1.").replace("keypoint_head.", "head.")
        out[key] = value
    return out


def _mmpose_backend(tmp_path: Path, checkpoint: Path | None):
    from pipelines.annotators.mmpose_backend import MMPoseBackend, mmpose_available
    from test_pose import tiny_mmpose_config

    if not mmpose_available():
        pytest.skip("the optional MMPose stack is not installed (`make mmpose`)")
    config = tmp_path / "tiny_vitpose_wholebody.py"
    config.write_text(tiny_mmpose_config(dims=DIM, layers=DEPTH, heads=HEADS))
    return MMPoseBackend(str(config), None if checkpoint is None else str(checkpoint), "cpu")


def test_converted_model_matches_mmpose(tmp_path: Path) -> None:
    """The same original weights through MMPose 1.x's own ViT and heatmap head give the converted
    model's heatmaps."""
    from transformers import VitPoseForPoseEstimation

    sd = original_state_dict(4)
    torch.save({"state_dict": mmpose_state_dict(sd)}, tmp_path / "mmpose.pth")
    mm = _mmpose_backend(tmp_path, tmp_path / "mmpose.pth").model.eval()
    hf = VitPoseForPoseEstimation.from_pretrained(
        convert_vitpose(_save(sd, tmp_path / "wholebody.pth"), tmp_path / "hf", num_attention_heads=HEADS)
    ).eval()
    x = torch.randn(2, 3, 256, 192, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        theirs = mm.head(mm.extract_feat(x))
        ours = hf(pixel_values=x).heatmaps
    assert theirs.shape == ours.shape == (2, K, 64, 48)
    assert torch.allclose(ours, theirs, atol=1e-5, rtol=0), (ours - theirs).abs().max()


def test_mmpose_backend_refuses_checkpoints_that_leave_weights_unset(tmp_path: Path) -> None:
    """mmengine only logs missing keys; the backend refuses, naming the way to convert."""
    sd = original_state_dict(4)
    original = _save(sd, tmp_path / "wholebody.pth")
    with pytest.raises(ValueError, match="original ViTPose repository's layout.*zoo convert-vitpose"):
        _mmpose_backend(tmp_path, original)
    partial = mmpose_state_dict(sd)
    del partial["backbone.layers.1.attn.qkv.weight"]
    torch.save({"state_dict": partial}, tmp_path / "partial.pth")
    with pytest.raises(ValueError, match=r"1 of the model's weights are not in it \(first: backbone.layers.1.attn.qkv.weight\)"):
        _mmpose_backend(tmp_path, tmp_path / "partial.pth")
