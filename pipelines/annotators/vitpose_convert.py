"""Converting the original ViTPose-H whole-body checkpoint to transformers' ``VitPoseForPoseEstimation``.

HyperHuman (arXiv 2310.08579, §4) annotates 133 COCO-WholeBody keypoints with ViTPose-H (Xu et al.,
"ViTPose: Simple Vision Transformer Baselines for Human Pose Estimation", 2022; the whole-body
model is ViTPose++-H's COCO-WholeBody head). No Hugging Face checkpoint predicts those 133
keypoints, so the original weights are converted:

* a *split* file, ``wholebody.pth`` from the ViTPose repository's ``tools/model_split.py`` (also
  mirrored as ``JunkyByte/easy_ViTPose`` ``torch/wholebody/vitpose-h-wholebody.pth``): a plain ViT
  whose ``mlp.fc2`` already holds the whole-body expert, with ``keypoint_head.*`` predicting 133
  heatmaps (leftover ``mlp.experts.*`` and ``associate_*`` keys are dropped);
* an *unsplit* ViTPose++-H file: ``mlp.fc2`` (the shared part) is concatenated with the whole-body
  expert ``mlp.experts.5`` (``dataset_index`` 5), and the head is ``associate_keypoint_heads.4``.

Key map (original -> transformers), per the original architecture (``mmpose/models/backbones/vit.py``
and ``TopdownHeatmapSimpleHead`` of the ViTPose repository):

==========================================  =====================================================
``backbone.patch_embed.proj.*``             ``backbone.embeddings.patch_embeddings.projection.*``
``backbone.pos_embed``                      ``backbone.embeddings.position_embeddings``
``backbone.blocks.i.norm1`` / ``norm2``     ``backbone.encoder.layer.i.layernorm_before`` / ``_after``
``backbone.blocks.i.attn.qkv`` (3C rows)    ``...attention.attention.{query,key,value}`` (thirds)
``backbone.blocks.i.attn.proj``             ``...attention.output.dense``
``backbone.blocks.i.mlp.fc1`` / ``fc2``     ``...mlp.fc1`` / ``fc2``
``backbone.last_norm``                      ``backbone.layernorm``
``keypoint_head.deconv_layers.{0,1,3,4}``   ``head.{deconv1,batchnorm1,deconv2,batchnorm2}``
``keypoint_head.final_layer``               ``head.conv``
==========================================  =====================================================

The configuration is the real one (``humanverse/configs/vitpose-wholebody.json``: hidden 1280,
32 layers, 16 heads, GELU, ``layer_norm_eps=1e-6``), with the widths and depth read from the
weights so smaller ViTPose variants convert too (their head count must then be given). The output
folder holds ``model.safetensors``, ``config.json``, the processor config and
``pose_decoding.json`` (non-UDP crop, flip test, heatmap shift: the original test config).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "WHOLEBODY_EXPERT",
    "convert_vitpose",
    "convert_vitpose_state_dict",
    "vitpose_config",
]

log = logging.getLogger(__name__)

#: Index of the COCO-WholeBody expert in ViTPose++ (``dataset_index``) and of its head among the
#: ``associate_keypoint_heads`` (which start at AIC, index 1): 5 and 4.
WHOLEBODY_EXPERT = 5
_WHOLEBODY_ASSOCIATE_HEAD = WHOLEBODY_EXPERT - 1
_NUM_WHOLEBODY_KEYPOINTS = 133

_BLOCK = re.compile(r"^backbone\.blocks\.(\d+)\.(.+)$")


def _unwrap(checkpoint: Any, source: str) -> Mapping[str, Any]:
    """The state dict inside a loaded checkpoint (``{"state_dict": ...}`` or the dict itself)."""
    if isinstance(checkpoint, Mapping) and isinstance(
        checkpoint.get("state_dict"), Mapping
    ):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, Mapping) or "backbone.pos_embed" not in checkpoint:
        raise ValueError(
            f"{source} is not an original ViTPose checkpoint (no backbone.pos_embed); expected ViTPose++-H's "
            "wholebody.pth (tools/model_split.py) or an unsplit ViTPose++-H file."
        )
    return checkpoint


def _head_prefix(state: Mapping[str, Any], source: str) -> str:
    """The head predicting the 133 whole-body keypoints: ``keypoint_head`` in a split file,
    ``associate_keypoint_heads.4`` in an unsplit ViTPose++ file."""
    for prefix in (
        "keypoint_head",
        f"associate_keypoint_heads.{_WHOLEBODY_ASSOCIATE_HEAD}",
    ):
        weight = state.get(f"{prefix}.final_layer.weight")
        if weight is not None and weight.shape[0] == _NUM_WHOLEBODY_KEYPOINTS:
            return prefix
    found = {
        k.rsplit(".final_layer", 1)[0]: int(v.shape[0])
        for k, v in state.items()
        if k.endswith("final_layer.weight")
    }
    raise ValueError(
        f"{source} has no head predicting {_NUM_WHOLEBODY_KEYPOINTS} COCO-WholeBody keypoints (heads: {found}); "
        "convert ViTPose++-H's whole-body split (wholebody.pth) or the unsplit ViTPose++-H file."
    )


def convert_vitpose_state_dict(
    state: Mapping[str, Any], source: str = "the checkpoint"
) -> dict[str, Any]:
    """Map an original ViTPose(++) whole-body state dict onto ``VitPoseForPoseEstimation``'s keys.

    Raises:
        ValueError: one sentence when the file is not a ViTPose whole-body checkpoint.
    """
    import torch

    state = _unwrap(state, source)
    head = _head_prefix(state, source)
    unsplit = head != "keypoint_head"
    out: dict[str, Any] = {
        "backbone.embeddings.patch_embeddings.projection.weight": state[
            "backbone.patch_embed.proj.weight"
        ],
        "backbone.embeddings.patch_embeddings.projection.bias": state[
            "backbone.patch_embed.proj.bias"
        ],
        "backbone.embeddings.position_embeddings": state["backbone.pos_embed"],
        "backbone.layernorm.weight": state["backbone.last_norm.weight"],
        "backbone.layernorm.bias": state["backbone.last_norm.bias"],
    }
    names = {
        "norm1": "layernorm_before",
        "norm2": "layernorm_after",
        "attn.proj": "attention.output.dense",
        "mlp.fc1": "mlp.fc1",
        "mlp.fc2": "mlp.fc2",
    }
    blocks = sorted({int(m.group(1)) for k in state if (m := _BLOCK.match(k))})
    if blocks != list(range(len(blocks))) or not blocks:
        raise ValueError(
            f"{source}: backbone.blocks.* are not numbered 0..N-1 ({blocks[:5]}...)."
        )
    for i in blocks:
        src, dst = f"backbone.blocks.{i}", f"backbone.encoder.layer.{i}"
        for kind in ("weight", "bias"):
            qkv = state[f"{src}.attn.qkv.{kind}"]
            for part, chunk in zip(("query", "key", "value"), qkv.chunk(3, dim=0)):
                out[f"{dst}.attention.attention.{part}.{kind}"] = chunk.contiguous()
            for old, new in names.items():
                out[f"{dst}.{new}.{kind}"] = state[f"{src}.{old}.{kind}"]
            if unsplit:
                # ViTPose++: fc2 holds the shared rows, each expert the rest; the whole-body model is
                # the concatenation with expert 5 (what tools/model_split.py writes).
                expert = state[f"{src}.mlp.experts.{WHOLEBODY_EXPERT}.{kind}"]
                out[f"{dst}.mlp.fc2.{kind}"] = torch.cat(
                    [state[f"{src}.mlp.fc2.{kind}"], expert], dim=0
                )
    layers = {0: "deconv1", 1: "batchnorm1", 3: "deconv2", 4: "batchnorm2"}
    for index, name in layers.items():
        for key in (
            "weight",
            "bias",
            "running_mean",
            "running_var",
            "num_batches_tracked",
        ):
            value = state.get(f"{head}.deconv_layers.{index}.{key}")
            if value is not None:
                out[f"head.{name}.{key}"] = value
    out["head.conv.weight"] = state[f"{head}.final_layer.weight"]
    out["head.conv.bias"] = state[f"{head}.final_layer.bias"]
    return out


def vitpose_config(state: Mapping[str, Any], num_attention_heads: int | None = None):
    """``VitPoseConfig`` of the real whole-body model, widths and depth read from the converted
    ``state`` (hidden size, layers, MLP ratio); heads default to the real 16 when the width is
    the real 1280 and must be given otherwise."""
    from transformers import VitPoseBackboneConfig, VitPoseConfig

    from humanverse.configs import section, shrunk
    from humanverse.testing.tiny_models import COCO_WHOLEBODY_KEYPOINTS

    real = section("vitpose-wholebody", "backbone")
    hidden = state["backbone.embeddings.position_embeddings"].shape[-1]
    layers = 1 + max(
        int(k.split(".")[3]) for k in state if k.startswith("backbone.encoder.layer.")
    )
    mlp_ratio = state["backbone.encoder.layer.0.mlp.fc1.weight"].shape[0] // hidden
    if num_attention_heads is None:
        if hidden != real["hidden_size"]:
            raise ValueError(
                f"The checkpoint is {hidden} wide (ViTPose-H: {real['hidden_size']}); give its number of "
                "attention heads."
            )
        num_attention_heads = real["num_attention_heads"]
    if mlp_ratio != real["mlp_ratio"]:
        raise ValueError(
            f"The checkpoint's MLP ratio is {mlp_ratio}, ViTPose's is {real['mlp_ratio']}."
        )
    backbone = VitPoseBackboneConfig(
        **shrunk(
            "vitpose-wholebody",
            "backbone",
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=num_attention_heads,
            out_indices=[layers],
        )
    )
    labels = dict(enumerate(COCO_WHOLEBODY_KEYPOINTS))
    model = section("vitpose-wholebody", "model")
    model.pop("num_labels")
    return VitPoseConfig(
        backbone_config=backbone,
        **model,
        id2label=labels,
        label2id={v: k for k, v in labels.items()},
    )


def convert_vitpose(
    src: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    num_attention_heads: int | None = None,
) -> Path:
    """Convert ``src`` (an original ViTPose whole-body ``.pth``) into ``out_dir``; returns ``out_dir``.

    The file is read with ``torch.load(weights_only=True)`` (numpy metadata allowed as data, never
    code); the converted weights are loaded strictly into ``VitPoseForPoseEstimation`` (every key
    and shape must match) and saved as safetensors with the real processor and decoding configs.

    Raises:
        ValueError: one sentence when ``src`` is missing or not a ViTPose whole-body checkpoint.
    """
    from transformers import VitPoseForPoseEstimation, VitPoseImageProcessor

    from humanverse.configs import section, write_pose_decoding
    from pipelines.annotators.checkpoints import torch_load_weights_only

    src, out = Path(src), Path(out_dir)
    if not src.is_file():
        raise ValueError(f"ViTPose checkpoint {src} does not exist.")
    if src.suffix not in (".pth", ".pt", ".ckpt", ".bin"):
        raise ValueError(
            f"{src} is not a PyTorch checkpoint (.pth); expected ViTPose++-H's wholebody.pth."
        )
    state = convert_vitpose_state_dict(torch_load_weights_only(src), str(src))
    config = vitpose_config(state, num_attention_heads)
    model = VitPoseForPoseEstimation(config).eval()
    expected = model.state_dict()
    shapes = {
        k: (tuple(v.shape), tuple(expected[k].shape))
        for k, v in state.items()
        if k in expected and v.shape != expected[k].shape
    }
    missing = sorted(
        set(expected)
        - set(state)
        - {k for k in expected if k.endswith("num_batches_tracked")}
    )
    if shapes or missing:
        raise ValueError(
            f"{src} does not fit VitPoseForPoseEstimation: shape mismatches {dict(list(shapes.items())[:3])}, "
            f"missing {missing[:3]}."
        )
    model.load_state_dict(state, strict=False)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    VitPoseImageProcessor(**section("vitpose-wholebody", "processor")).save_pretrained(
        out
    )
    write_pose_decoding(out)
    log.info(
        "Converted %s (%d layers, width %d) into %s",
        src,
        config.backbone_config.num_hidden_layers,
        config.backbone_config.hidden_size,
        out,
    )
    return out
