"""The Omnidata v2 DPT-Hybrid network, rebuilt so that the published weights load with ``strict=True``.

HyperHuman (Liu et al. 2023, arXiv 2310.08579, §4 "HumanVerse") annotates every image with a
surface-normal map from Omnidata (Eftekhar et al., "Omnidata: A Scalable Pipeline for Making
Multi-Task Mid-Level Vision Datasets from 3D Scans", ICCV 2021). The network is the DPT-Hybrid of
Ranftl et al., "Vision Transformers for Dense Prediction" (ICCV 2021): a ResNet-50 (BiT-style
ResNetV2, 3 stages) + ViT-B/16 encoder, a "reassemble" step that turns tokens back into image-like
feature maps, RefineNet-style fusion blocks, and a small convolutional head.

Checkpoint layout (after stripping ``model.``, see :mod:`.convert`), which our module tree
reproduces name for name::

    pretrained.model.*                 timm ``vit_base_r50_s16_384`` (timm 0.4.12 when trained):
        patch_embed.backbone.stem.{conv,norm}            ResNetV2 stem (StdConv 7x7/2 + GroupNorm)
        patch_embed.backbone.stages.{0,1,2}.blocks.N.*   bottlenecks (conv1..3, norm1..3,
                                                         blocks.0.downsample.{conv,norm})
        patch_embed.proj                                 1x1 conv 1024 -> 768 (hybrid "patch" = 1)
        cls_token, pos_embed (1, 24*24+1, 768), blocks.0-11, norm, head (unused ImageNet classifier)
    pretrained.act_postprocess{3,4}.0.project.0        readout "project": Linear(2*768, 768) + GELU
    pretrained.act_postprocess3.3                      1x1 conv 768 -> 768   (1/16)
    pretrained.act_postprocess4.{3,4}                  1x1 conv, 3x3/2 conv  (1/32)
    scratch.layer{1-4}_rn.weight                       3x3 convs to ``features`` (no bias)
    scratch.refinenet{1-4}.{resConfUnit1,resConfUnit2,out_conv}
    scratch.output_conv.{0,2,4}                        head convs (1 and 3 are parameter-free)

``act_postprocess1/2`` hold no parameters in the hybrid: the 1/4 and 1/8 features are the outputs of
ResNet stages 0 and 1, not of ViT blocks (so ``hooks[0]`` and ``hooks[1]`` are unused, as upstream).

Which timm version these names come from: :mod:`.convert`.

Deviation from the upstream code, deliberate: fusion blocks upsample to the size of the next skip
connection instead of by a blind factor 2. For inputs whose sides are multiples of 32 (every input
the upstream code accepts) this is the same computation (bilinear with ``align_corners=True``
derives its sampling grid from the sizes); it also makes sides that are odd multiples of 16 work.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from pipelines.annotators.omnidata.convert import load_omnidata_state_dict

logger = logging.getLogger(__name__)

__all__ = ["CONFIG_NAME", "TASK_CHANNELS", "WEIGHTS_NAME", "OmnidataConfig", "OmnidataDPT", "Task"]

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
#: Output channels of the head per task.
TASK_CHANNELS = {"depth": 1, "normal": 3}
_ARCHITECTURE = "OmnidataDPT"
_READOUTS = ("project", "ignore", "add")

Task = Literal["depth", "normal"]


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------


@dataclass
class OmnidataConfig:
    """Hyper-parameters of the Omnidata DPT-Hybrid; the defaults are the published v2 models.

    ``patch_size`` is the hybrid's effective patch: the ResNet stem (/4) and stages 1-2 (/2 each)
    reduce by 16 before the ViT's 1x1 "patch" projection. ``image_size`` is the resolution the
    positional embedding was trained at (24x24 grid + class token); other sizes resize it.
    A tiny variant (:meth:`tiny`) changes only sizes, never the graph.
    """

    task: Task = "normal"
    num_channels: int | None = None  # head outputs; None -> 1 for depth, 3 for normal
    # ViT-B/16 on a ResNet-50 (3 stages) feature map.
    image_size: int = 384
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    hooks: tuple[int, ...] = (0, 1, 8, 11)
    readout: str = "project"
    imagenet_classes: int = 1000  # timm's unused classifier, kept because the checkpoint holds it
    # ResNetV2 hybrid stem/stages (BiT-style: StdConv2dSame + GroupNorm).
    resnet_layers: tuple[int, ...] = (3, 4, 9)
    resnet_stem_width: int = 64
    resnet_widths: tuple[int, ...] = (256, 512, 1024)
    resnet_num_groups: int = 32
    # DPT decoder.
    features: int = 256
    head_width: int = 32
    non_negative: bool = True

    def __post_init__(self) -> None:
        self.hooks = tuple(int(h) for h in self.hooks)
        self.resnet_layers = tuple(int(n) for n in self.resnet_layers)
        self.resnet_widths = tuple(int(w) for w in self.resnet_widths)
        if self.task not in TASK_CHANNELS:
            raise ValueError(f"OmnidataConfig.task is {self.task!r}; expected 'depth' or 'normal'.")
        expected_channels = TASK_CHANNELS[self.task]
        if self.num_channels is None:
            self.num_channels = expected_channels
        if self.num_channels != expected_channels:
            raise ValueError(
                f"OmnidataConfig.num_channels is {self.num_channels} but task {self.task!r} needs "
                f"{expected_channels}."
            )
        if self.readout not in _READOUTS:
            raise ValueError(f"OmnidataConfig.readout is {self.readout!r}; expected one of {_READOUTS}.")
        if len(self.hooks) != 4 or not all(0 <= h < self.depth for h in self.hooks):
            raise ValueError(
                f"OmnidataConfig.hooks is {self.hooks}; expected 4 block indices in [0, {self.depth})."
            )
        if self.hooks[2] >= self.hooks[3]:
            raise ValueError(f"OmnidataConfig.hooks is {self.hooks}; hooks[2] must come before hooks[3].")
        if len(self.resnet_layers) != 3 or len(self.resnet_widths) != 3:
            raise ValueError(
                "OmnidataConfig.resnet_layers and resnet_widths must each have 3 entries (the "
                f"hybrid's three ResNet stages), got {self.resnet_layers} and {self.resnet_widths}."
            )
        stride = 4 * 2 ** (len(self.resnet_layers) - 1)
        if self.patch_size != stride:
            raise ValueError(
                f"OmnidataConfig.patch_size is {self.patch_size} but the ResNet hybrid has stride {stride}."
            )
        if self.image_size % self.patch_size:
            raise ValueError(
                f"OmnidataConfig.image_size is {self.image_size}; it must be a multiple of "
                f"patch_size={self.patch_size}."
            )
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"OmnidataConfig.embed_dim={self.embed_dim} is not divisible by num_heads={self.num_heads}."
            )
        widths = (self.resnet_stem_width, *self.resnet_widths, *(w // 4 for w in self.resnet_widths))
        if any(w % self.resnet_num_groups for w in widths):
            raise ValueError(
                f"OmnidataConfig.resnet_num_groups={self.resnet_num_groups} must divide every ResNet "
                f"width {sorted(set(widths))}."
            )

    @property
    def reassemble_widths(self) -> tuple[int, int, int, int]:
        """Channels of the four encoder maps fed to ``scratch.layer{1-4}_rn`` (256, 512, 768, 768)."""
        return (self.resnet_widths[0], self.resnet_widths[1], self.embed_dim, self.embed_dim)

    def to_dict(self) -> dict[str, Any]:
        return {"architecture": _ARCHITECTURE, **asdict(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OmnidataConfig:
        data = dict(data)
        architecture = data.pop("architecture", _ARCHITECTURE)
        if architecture != _ARCHITECTURE:
            raise ValueError(f"Config architecture is {architecture!r}; expected {_ARCHITECTURE!r}.")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown OmnidataConfig fields {unknown}; accepted fields are {sorted(known)}.")
        return cls(**data)

    @classmethod
    def tiny(cls, task: Task = "normal") -> OmnidataConfig:
        """A few-thousand-parameter variant of the same graph, for tests and the offline zoo."""
        return cls(
            task=task,
            image_size=64,
            embed_dim=32,
            depth=4,
            num_heads=2,
            hooks=(0, 1, 2, 3),
            imagenet_classes=10,
            resnet_layers=(1, 1, 1),
            resnet_stem_width=8,
            resnet_widths=(16, 32, 64),
            resnet_num_groups=2,
            features=16,
            head_width=8,
        )


# --------------------------------------------------------------------------------------------------
# Building blocks (DPT, Ranftl et al. 2021, §3 and Fig. 1)
# --------------------------------------------------------------------------------------------------


class _ProjectReadout(nn.Module):
    """Readout "project" (DPT eq. 3): concatenate the class token to every patch token, then MLP."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.project = nn.Sequential(nn.Linear(2 * dim, dim), nn.GELU())

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:  # (B, 1+N, D) -> (B, N, D)
        patches = tokens[:, 1:]
        readout = tokens[:, :1].expand_as(patches)
        return self.project(torch.cat([patches, readout], dim=-1))


class _IgnoreReadout(nn.Module):
    """Readout "ignore": drop the class token."""

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens[:, 1:]


class _AddReadout(nn.Module):
    """Readout "add": add the class token to every patch token."""

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens[:, 1:] + tokens[:, :1]


def _make_readout(kind: str, dim: int) -> nn.Module:
    if kind == "project":
        return _ProjectReadout(dim)
    if kind == "add":
        return _AddReadout()
    return _IgnoreReadout()


class _Reassemble(nn.Module):
    """DPT "Reassemble" for one ViT layer: tokens -> readout -> image-like map -> resample.

    Children are registered under the numeric names the upstream ``nn.Sequential`` used (``0`` the
    readout, ``3`` the 1x1 projection, ``4`` the optional resampling conv; ``1``/``2`` were the
    parameter-free transpose/unflatten), so checkpoint keys such as ``act_postprocess4.4.weight`` map
    onto this module directly.
    """

    def __init__(self, readout: nn.Module, dim: int, out_channels: int, downsample: bool) -> None:
        super().__init__()
        self.add_module("0", readout)
        self.add_module("3", nn.Conv2d(dim, out_channels, kernel_size=1))
        if downsample:
            self.add_module("4", nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=2, padding=1))

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        x = self._modules["0"](tokens)  # (B, N, D)
        x = x.transpose(1, 2).unflatten(2, grid)  # (B, D, gh, gw)
        x = self._modules["3"](x)
        if "4" in self._modules:
            x = self._modules["4"](x)  # (B, C, ceil(gh/2), ceil(gw/2))
        return x


class _ResidualConvUnit(nn.Module):
    """Residual conv unit of the fusion block: x + conv(relu(conv(relu(x)))) (no BN: ``use_bn=False``)."""

    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, kernel_size=3, padding=1, bias=True)
        self.conv2 = nn.Conv2d(features, features, kernel_size=3, padding=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(x))
        out = self.conv2(F.relu(out))
        return out + x


class _FusionBlock(nn.Module):
    """DPT fusion block (RefineNet-style): add the residual-refined skip, refine, upsample, 1x1 conv.

    Attribute names (``resConfUnit1`` ...) are the upstream ones, kept for checkpoint compatibility.
    """

    def __init__(self, features: int) -> None:
        super().__init__()
        self.resConfUnit1 = _ResidualConvUnit(features)
        self.resConfUnit2 = _ResidualConvUnit(features)
        self.out_conv = nn.Conv2d(features, features, kernel_size=1, bias=True)

    def forward(
        self,
        x: torch.Tensor,
        skip: torch.Tensor | None = None,
        size: Sequence[int] | None = None,
    ) -> torch.Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        if size is None:
            size = (2 * x.shape[-2], 2 * x.shape[-1])
        x = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=True)
        return self.out_conv(x)


class _Interpolate(nn.Module):
    """Parameter-free bilinear upsampling layer of the head (``output_conv[1]``)."""

    def __init__(self, scale_factor: float) -> None:
        super().__init__()
        self.scale_factor = scale_factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x, scale_factor=self.scale_factor, mode="bilinear", align_corners=True)


def _build_hybrid_vit(config: OmnidataConfig) -> nn.Module:
    """timm's R50+ViT hybrid (``vit_base_r50_s16_384`` at the default sizes), randomly initialised.

    Built from timm's classes rather than ``timm.create_model`` so the tiny variant can change sizes;
    ``pretrained`` is never requested, so nothing is downloaded.
    """
    from timm.layers import GroupNormAct, HybridEmbed, StdConv2dSame
    from timm.models.resnetv2 import ResNetV2
    from timm.models.vision_transformer import VisionTransformer

    backbone = ResNetV2(
        layers=list(config.resnet_layers),
        channels=config.resnet_widths,
        stem_chs=config.resnet_stem_width,
        num_classes=0,
        global_pool="",
        in_chans=3,
        preact=False,
        stem_type="same",
        # Same as timm's ``_resnetv2`` helper for the ViT hybrids (0.4.12 and 1.0.31): eps 1e-8.
        conv_layer=partial(StdConv2dSame, eps=1e-8),
        norm_layer=partial(GroupNormAct, num_groups=config.resnet_num_groups),
    )
    return VisionTransformer(
        img_size=config.image_size,
        patch_size=1,  # the 1x1 projection on the /16 ResNet map
        in_chans=3,
        num_classes=config.imagenet_classes,
        embed_dim=config.embed_dim,
        depth=config.depth,
        num_heads=config.num_heads,
        mlp_ratio=config.mlp_ratio,
        embed_layer=partial(HybridEmbed, backbone=backbone),
    )


def _resize_pos_embed(pos_embed: torch.Tensor, grid_h: int, grid_w: int) -> torch.Tensor:
    """Resize a ViT positional embedding (1, 1+g*g, D) to a (grid_h, grid_w) patch grid.

    As in DPT's ``forward_flex``: the class-token entry is kept, the square patch grid is resampled
    bilinearly (``align_corners=False``). At the training grid the embedding is returned unchanged.
    """
    prefix, grid = pos_embed[:, :1], pos_embed[:, 1:]
    old = math.isqrt(grid.shape[1])
    if old * old != grid.shape[1]:
        raise ValueError(f"Positional embedding has {grid.shape[1]} patch entries, not a square grid.")
    if (old, old) == (grid_h, grid_w):
        return pos_embed
    dim = grid.shape[-1]
    grid = grid.reshape(1, old, old, dim).permute(0, 3, 1, 2)  # (1, D, g, g)
    grid = F.interpolate(grid, size=(grid_h, grid_w), mode="bilinear", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, dim)
    return torch.cat([prefix, grid], dim=1)


# --------------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------------


class OmnidataDPT(nn.Module):
    """Omnidata v2 DPT-Hybrid for monocular depth or surface normals (Eftekhar et al. 2021).

    ``forward(pixel_values)`` takes (B, 3, H, W) with H and W multiples of 16 (32 reproduces the
    upstream graph exactly), normalised as :class:`OmnidataProcessor` does, and returns (B, H, W)
    for depth or (B, 3, H, W) for normals: the ReLU head's raw output (the demo clamps it to [0, 1]).
    """

    def __init__(self, config: OmnidataConfig) -> None:
        super().__init__()
        self.config = config
        dim = config.embed_dim
        features = config.features

        self.pretrained = nn.Module()
        self.pretrained.model = _build_hybrid_vit(config)
        self.pretrained.act_postprocess3 = _Reassemble(
            _make_readout(config.readout, dim), dim, config.reassemble_widths[2], downsample=False
        )
        self.pretrained.act_postprocess4 = _Reassemble(
            _make_readout(config.readout, dim), dim, config.reassemble_widths[3], downsample=True
        )

        self.scratch = nn.Module()
        for index, width in enumerate(config.reassemble_widths, start=1):
            conv = nn.Conv2d(width, features, kernel_size=3, padding=1, bias=False)
            setattr(self.scratch, f"layer{index}_rn", conv)
        for index in range(1, 5):
            setattr(self.scratch, f"refinenet{index}", _FusionBlock(features))
        self.scratch.output_conv = nn.Sequential(
            nn.Conv2d(features, features // 2, kernel_size=3, padding=1),
            _Interpolate(scale_factor=2),
            nn.Conv2d(features // 2, config.head_width, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(config.head_width, config.num_channels, kernel_size=1),
            nn.ReLU() if config.non_negative else nn.Identity(),
            nn.Identity(),
        )

    # -- forward ----------------------------------------------------------------------------------

    def _encode(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The four encoder maps at 1/4, 1/8, 1/16 and 1/32 of the input (DPT-Hybrid, §3)."""
        vit = self.pretrained.model
        resnet = vit.patch_embed.backbone
        batch = pixel_values.shape[0]

        x = resnet.stem(pixel_values)  # (B, stem, H/4, W/4)
        stage_maps = []
        for stage in resnet.stages:
            x = stage(x)
            stage_maps.append(x)  # (B, w0, H/4, W/4), (B, w1, H/8, W/8), (B, w2, H/16, W/16)
        x = vit.patch_embed.proj(resnet.norm(x))  # (B, D, gh, gw)
        grid = (x.shape[-2], x.shape[-1])

        tokens = x.flatten(2).transpose(1, 2)  # (B, gh*gw, D)
        cls = vit.cls_token.expand(batch, -1, -1)
        tokens = torch.cat([cls, tokens], dim=1) + _resize_pos_embed(vit.pos_embed, *grid)
        tokens = vit.norm_pre(vit.pos_drop(tokens))  # (B, 1+gh*gw, D)

        hook3, hook4 = self.config.hooks[2], self.config.hooks[3]
        hidden: dict[int, torch.Tensor] = {}
        for index, block in enumerate(vit.blocks):
            tokens = block(tokens)
            if index in (hook3, hook4):
                hidden[index] = tokens
            if index == hook4:
                break  # later blocks and the final norm feed nothing in DPT

        layer_3 = self.pretrained.act_postprocess3(hidden[hook3], grid)  # (B, D, H/16, W/16)
        layer_4 = self.pretrained.act_postprocess4(hidden[hook4], grid)  # (B, D, H/32, W/32)
        return stage_maps[0], stage_maps[1], layer_3, layer_4

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
            raise ValueError(
                f"pixel_values has shape {tuple(pixel_values.shape)}; expected (batch, 3, height, width)."
            )
        height, width = pixel_values.shape[-2:]
        patch = self.config.patch_size
        if height % patch or width % patch:
            raise ValueError(
                f"Input size {height}x{width} is not a multiple of {patch}; resize it with "
                "OmnidataProcessor (which rounds to a multiple of 32)."
            )
        layer_1, layer_2, layer_3, layer_4 = self._encode(pixel_values)
        scratch = self.scratch
        layer_1 = scratch.layer1_rn(layer_1)  # all (B, F, ·, ·)
        layer_2 = scratch.layer2_rn(layer_2)
        layer_3 = scratch.layer3_rn(layer_3)
        layer_4 = scratch.layer4_rn(layer_4)

        path = scratch.refinenet4(layer_4, size=layer_3.shape[-2:])  # (B, F, H/16, W/16)
        path = scratch.refinenet3(path, layer_3, size=layer_2.shape[-2:])  # (B, F, H/8, W/8)
        path = scratch.refinenet2(path, layer_2, size=layer_1.shape[-2:])  # (B, F, H/4, W/4)
        path = scratch.refinenet1(path, layer_1)  # (B, F, H/2, W/2)
        out = scratch.output_conv(path)  # (B, C, H, W)
        return out.squeeze(1)  # depth: (B, H, W); normal: (B, 3, H, W)

    # -- persistence --------------------------------------------------------------------------------

    def save_pretrained(self, save_directory: str | os.PathLike[str]) -> None:
        """Write ``config.json`` and ``model.safetensors`` (fp32 as stored; deterministic bytes)."""
        from safetensors.torch import save_file

        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {key: value.detach().cpu().contiguous() for key, value in self.state_dict().items()}
        _atomic_write_bytes(
            directory / CONFIG_NAME,
            (json.dumps(self.config.to_dict(), indent=2, sort_keys=True) + "\n").encode(),
        )
        temporary = directory / f".{WEIGHTS_NAME}.tmp"
        save_file(state, str(temporary), metadata={"format": "pt"})
        os.replace(temporary, directory / WEIGHTS_NAME)

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike[str],
        task: Task | None = None,
        config: OmnidataConfig | None = None,
    ) -> OmnidataDPT:
        """Load a saved directory, an Omnidata Lightning ``.ckpt`` or a plain state-dict file.

        * A directory written by :meth:`save_pretrained` carries its own config.
        * A ``.ckpt``/``.pth``/``.pt``/``.safetensors`` file is read as a state dict
          (``torch.load(map_location="cpu", weights_only=True)``); the Lightning ``model.`` prefix is
          stripped. Its architecture is ``config`` if given, else the published DPT-Hybrid with the
          head width found in the file; ``task`` defaults to what the head width implies.

        Keys and shapes must match exactly (``strict=True``); otherwise a ``ValueError`` names a few
        of the differences. The model is returned in eval mode on the CPU.
        """
        path = Path(path)
        if path.is_dir():
            config_file, weights_file = path / CONFIG_NAME, path / WEIGHTS_NAME
            if not config_file.is_file() or not weights_file.is_file():
                raise FileNotFoundError(
                    f"{path} is not a saved OmnidataDPT: it needs {CONFIG_NAME} and {WEIGHTS_NAME}."
                )
            if config is None:
                config = OmnidataConfig.from_dict(json.loads(config_file.read_text()))
            state_dict = load_omnidata_state_dict(weights_file)
        elif path.is_file():
            state_dict = load_omnidata_state_dict(path)
            if config is None:
                head = state_dict.get("scratch.output_conv.4.weight")
                channels = int(head.shape[0]) if isinstance(head, torch.Tensor) else None
                inferred = {1: "depth", 3: "normal"}.get(channels) if channels else None
                if task is None and inferred is None:
                    raise ValueError(
                        f"Cannot tell the task of {path}: its head 'scratch.output_conv.4.weight' has "
                        f"{channels} output channels; pass task='depth' or task='normal'."
                    )
                task_to_build = task or inferred
                if channels is not None and channels != TASK_CHANNELS[task_to_build]:
                    raise ValueError(
                        f"{path} has a {channels}-channel head but task {task_to_build!r} needs "
                        f"{TASK_CHANNELS[task_to_build]} channels."
                    )
                config = OmnidataConfig(task=task_to_build)
        else:
            raise FileNotFoundError(f"No Omnidata checkpoint at {path}.")

        if task is not None and config.task != task:
            raise ValueError(f"{path} holds an Omnidata {config.task!r} model but task {task!r} was requested.")
        with torch.device("meta"):  # no random init of ~123M parameters: the checkpoint replaces them
            model = cls(config)
        model.load_omnidata_state_dict(state_dict, source=str(path), assign=True)
        model.eval()
        logger.info("Loaded Omnidata DPT-Hybrid (%s) from %s", config.task, path)
        return model

    def load_omnidata_state_dict(
        self,
        state_dict: Mapping[str, torch.Tensor],
        source: str = "state dict",
        assign: bool = False,
    ) -> None:
        """``load_state_dict(strict=True)`` with one clear error sentence on any mismatch.

        ``assign=True`` (used on a model built on the meta device) adopts the checkpoint's tensors,
        cast to float32, instead of copying them into existing parameters.
        """
        expected = self.state_dict()
        missing = [key for key in expected if key not in state_dict]
        unexpected = [key for key in state_dict if key not in expected]
        wrong_shape = [
            f"{key} {tuple(state_dict[key].shape)} != {tuple(value.shape)}"
            for key, value in expected.items()
            if key in state_dict and tuple(state_dict[key].shape) != tuple(value.shape)
        ]
        if missing or unexpected or wrong_shape:
            problems = []
            if missing:
                problems.append(f"{len(missing)} missing keys (e.g. {', '.join(missing[:3])})")
            if unexpected:
                problems.append(f"{len(unexpected)} unexpected keys (e.g. {', '.join(unexpected[:3])})")
            if wrong_shape:
                problems.append(f"{len(wrong_shape)} shape mismatches (e.g. {'; '.join(wrong_shape[:3])})")
            raise ValueError(
                f"{source} does not match the Omnidata DPT-Hybrid layout for this config: "
                f"{', '.join(problems)}."
            )
        if assign:
            state_dict = {
                key: value.to(torch.float32) if value.is_floating_point() else value
                for key, value in state_dict.items()
            }
        self.load_state_dict(dict(state_dict), strict=True, assign=assign)


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)
