"""Reading the published Omnidata checkpoints into :class:`~.model.OmnidataDPT`'s key layout.

The published files (the weights are under a non-commercial EULA that forbids redistribution, see
``docs/models.md``: never vendor them; users download them and pass the file):

* ``omnidata_dpt_depth_v2.ckpt`` / ``omnidata_dpt_normal_v2.ckpt`` (Zenodo record 10447888), a
  PyTorch-Lightning checkpoint ``{"state_dict": {"model.<key>": tensor}}``;
* the torch-hub files ``omnidata_{depth,normal}_dpt_hybrid.pth`` (a plain state dict, no prefix).

timm versions. The checkpoints were written with timm 0.4.12; we build the backbone from timm 1.0.31's
``ResNetV2``/``HybridEmbed``/``VisionTransformer``. Reading both versions' sources, every parameter
name and shape of this model is the same in the two (the downsample projection already lives in
``stages.N.blocks.0.downsample`` in 0.4.12; the ViT block names ``norm1/attn.qkv/attn.proj/norm2/
mlp.fc1/mlp.fc2`` are unchanged; the hybrid ResNet uses ``StdConv2dSame(eps=1e-8)`` and
``GroupNormAct(32, eps=1e-5)`` in both). So :func:`convert_omnidata_state_dict` only strips the
Lightning ``model.`` prefix; the test suite pins the full key/shape layout independently.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from pipelines.annotators.checkpoints import torch_load_weights_only

__all__ = ["convert_omnidata_state_dict", "load_omnidata_state_dict"]

_LIGHTNING_PREFIX = "model."


def convert_omnidata_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a published Omnidata state dict onto :class:`OmnidataDPT`'s keys.

    The Lightning checkpoints prefix every key with ``model.`` (the demo strips it with ``k[6:]``);
    the torch-hub files have no prefix. No timm renaming is needed: the timm 0.4.12 layout the
    weights were saved with and timm 1.0.31's are identical for ``vit_base_r50_s16_384`` (see the
    module docstring), which ``tests/test_omnidata.py`` pins key by key.
    """
    converted: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        new_key = key[len(_LIGHTNING_PREFIX) :] if key.startswith(_LIGHTNING_PREFIX) else key
        if new_key in converted:
            raise ValueError(f"Checkpoint key {key!r} collides with another key after stripping 'model.'.")
        converted[new_key] = value
    return converted


def load_omnidata_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors``, a Lightning ``.ckpt`` or a plain ``.pth``/``.pt``."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        loaded: Any = load_file(str(path), device="cpu")
    else:
        loaded = torch_load_weights_only(path)
    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        loaded = loaded["state_dict"]  # Lightning checkpoint
    if not isinstance(loaded, Mapping):
        raise ValueError(f"{path} holds a {type(loaded).__name__}, not a state dict.")
    not_tensors = [key for key, value in loaded.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise ValueError(
            f"{path} is not a plain state dict: entries such as {not_tensors[:3]} are not tensors."
        )
    return convert_omnidata_state_dict(loaded)
