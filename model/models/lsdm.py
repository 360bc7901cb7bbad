"""Latent Structural Diffusion Model UNet: structural expert branches on a shared SD-2 trunk.

HyperHuman §3.2 ("Structural Expert Branches with Shared Backbone", Fig. 2): the RGB, depth and
surface-normal latents are denoised jointly by one UNet. Each modality keeps its own input and
output layers, the parts that see modality-specific low-level statistics; the rest of the network
is shared, so every modality sees the others' features:

* per branch (``branches[k]``, k = 0 rgb, 1 depth, 2 normal): ``conv_in`` (latent + pose latent =
  8 input channels), the FIRST down block, the LAST up block, ``conv_norm_out``, ``conv_act``,
  ``conv_out``; each last up block consumes its own branch's skip connections;
* shared: the time embedding (one timestep for all modalities), the SDXL-style micro-conditioning
  embedding, down blocks 1.., the mid block, up blocks ..-2, and the text cross-attention inputs.

Where the branches meet (the output of the first down blocks, i.e. their downsamplers), depth and
normal features are normalised to the RGB branch's per-sample mean and std and the three are
averaged (:func:`fuse_branch_features`). The shared output (the input of the last up blocks)
feeds every branch.

Skip connections, in diffusers' order for SD-2 (``L`` = layers per block, ``n`` = levels)::

    [conv_in, db0.resnet_1 .. db0.resnet_L, db0.downsample, db1.resnet_1 .., db1.downsample, ...]
     \\__________ branch-specific (L+1) ___/  \\_ fused _/   \\________ shared trunk _________/

Up block ``i`` pops ``len(resnets) = L+1`` from the end. Up blocks 0 .. n-2 (shared) therefore use
the shared part, whose first entry (the last one they pop) is the first down block's downsampler
output: the feature entering the trunk, so the FUSED feature is used there. Up block n-1 (per
branch) pops the branch's own ``conv_in`` output and first-down-block resnet outputs.

Freshly converted from SD-2 (:meth:`LatentStructuralUNet.from_sd2`) with zero pose weights and a
zero micro-conditioning embedding, three identical inputs give three copies of the SD-2 output
(the authors' answer in their repository's issue #4): identical features normalise to themselves, so the fusion is the identity.

Latent statistics used to normalise depth/normal latents to the RGB latent statistics (§3.2)
belong to the trainer, not to this module.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.activations import get_activation
from diffusers.models.attention import AttentionMixin
from diffusers.models.embeddings import TimestepEmbedding, Timesteps
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.unets.unet_2d_blocks import get_down_block, get_mid_block, get_up_block
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
from diffusers.utils import BaseOutput
from torch import nn

log = logging.getLogger(__name__)

BRANCH_NAMES = ("rgb", "depth", "normal")
#: How much of the UNet each expert branch owns at each end (HyperHuman Table 2 ablation): "half"
#: the first half of the first down block's layers (and the mirrored up layers), "one" the first
#: down block and last up block (the paper's choice), "two" the first two down and last two up blocks.
EXPERT_DEPTHS = ("half", "one", "two")
MICRO_CONDITIONS = ("orig_height", "orig_width", "crop_top", "crop_left")  # added_cond columns (SDXL-style micro-conditioning)
FUSION_EPS = 1e-6

_DOWN_TYPES = ("CrossAttnDownBlock2D", "DownBlock2D")
_UP_TYPES = ("CrossAttnUpBlock2D", "UpBlock2D")
_MID_TYPE = "UNetMidBlock2DCrossAttn"

# SD-2 UNet config keys copied verbatim by ``from_sd2``.
_COPIED_CONFIG = (
    "sample_size",
    "in_channels",
    "out_channels",
    "flip_sin_to_cos",
    "freq_shift",
    "down_block_types",
    "up_block_types",
    "block_out_channels",
    "layers_per_block",
    "downsample_padding",
    "mid_block_scale_factor",
    "dropout",
    "act_fn",
    "norm_num_groups",
    "norm_eps",
    "cross_attention_dim",
    "transformer_layers_per_block",
    "attention_head_dim",
    "use_linear_projection",
    "upcast_attention",
)
# UNet2DConditionModel config values this module does not implement: anything else is refused.
_REQUIRED_CONFIG: dict[str, Any] = {
    "center_input_sample": False,
    "mid_block_type": _MID_TYPE,
    "only_cross_attention": False,
    "dual_cross_attention": False,
    "num_attention_heads": None,
    "class_embed_type": None,
    "num_class_embeds": None,
    "addition_embed_type": None,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "resnet_time_scale_shift": "default",
    "resnet_skip_time_act": False,
    "resnet_out_scale_factor": 1.0,
    "time_embedding_type": "positional",
    "time_embedding_dim": None,
    "time_embedding_act_fn": None,
    "timestep_post_act": None,
    "time_cond_proj_dim": None,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "projection_class_embeddings_input_dim": None,
    "attention_type": "default",
    "class_embeddings_concat": False,
    "mid_block_only_cross_attention": None,
    "cross_attention_norm": None,
    "reverse_transformer_layers_per_block": None,
}


@dataclass
class LSDMOutput(BaseOutput):
    """Per-branch predictions of :class:`LatentStructuralUNet` (v-prediction in the trainer).

    Args:
        rgb: ``(B, 4, h, w)`` RGB latent prediction.
        depth: ``(B, 4, h, w)`` depth latent prediction.
        normal: ``(B, 4, h, w)`` surface-normal latent prediction.
    """

    rgb: torch.Tensor = None
    depth: torch.Tensor = None
    normal: torch.Tensor = None


def match_statistics(x: torch.Tensor, reference: torch.Tensor, eps: float = FUSION_EPS) -> torch.Tensor:
    """Shift and scale ``x`` so each sample has ``reference``'s mean and std over (C, H, W).

    ``std = sqrt(var + eps)`` (population variance) on both sides, so a tensor matched to itself
    comes back unchanged up to rounding, and a constant ``x`` does not divide by zero. Statistics
    are computed in float32 and the result is cast back to ``x``'s dtype.

    Args:
        x: ``(B, C, H, W)`` features to renormalise.
        reference: ``(B, C, H, W)`` features whose per-sample statistics are imposed.
    """
    if x.shape != reference.shape:
        raise ValueError(f"match_statistics needs equal shapes, got {tuple(x.shape)} and {tuple(reference.shape)}.")
    dims = tuple(range(1, x.ndim))
    var_x, mean_x = torch.var_mean(x.float(), dim=dims, keepdim=True, correction=0)  # (B, 1, 1, 1)
    var_r, mean_r = torch.var_mean(reference.float(), dim=dims, keepdim=True, correction=0)  # (B, 1, 1, 1)
    scale = torch.sqrt(var_r + eps) / torch.sqrt(var_x + eps)  # (B, 1, 1, 1)
    return ((x.float() - mean_x) * scale + mean_r).to(x.dtype)  # (B, C, H, W)


def fuse_branch_features(features: Sequence[torch.Tensor], eps: float = FUSION_EPS) -> torch.Tensor:
    """Fuse the branch features entering the shared trunk (HyperHuman §3.2, Fig. 2).

    ``features[0]`` is the RGB branch; every other branch (depth, normal) is first normalised to
    the RGB branch's per-sample mean and std (:func:`match_statistics`), then all are averaged.

    Args:
        features: ``num_branches`` tensors of shape ``(B, C, H, W)``, RGB first.

    Returns:
        ``(B, C, H, W)`` fused feature.
    """
    if not features:
        raise ValueError("fuse_branch_features needs at least one branch feature, got none.")
    rgb = features[0]
    aligned = [rgb] + [match_statistics(f, rgb, eps) for f in features[1:]]
    return torch.stack(aligned, dim=0).mean(dim=0)  # (B, C, H, W)


def _run_down_block(
    block: nn.Module, h: torch.Tensor, emb: torch.Tensor, block_kwargs: dict[str, Any]
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """One diffusers down block; text goes only to blocks with cross-attention."""
    if getattr(block, "has_cross_attention", False):
        return block(hidden_states=h, temb=emb, **block_kwargs)
    return block(hidden_states=h, temb=emb)


def _run_up_block(
    block: nn.Module,
    h: torch.Tensor,
    skips: tuple[torch.Tensor, ...],
    emb: torch.Tensor,
    block_kwargs: dict[str, Any],
    upsample_size: torch.Size | None,
) -> torch.Tensor:
    """One diffusers up block; it pops ``skips`` from the end, one per resnet."""
    if getattr(block, "has_cross_attention", False):
        return block(
            hidden_states=h, res_hidden_states_tuple=skips, temb=emb, upsample_size=upsample_size, **block_kwargs
        )
    return block(hidden_states=h, res_hidden_states_tuple=skips, temb=emb, upsample_size=upsample_size)


class StructuralExpertBranch(nn.Module):
    """One modality's own layers (HyperHuman §3.2, Fig. 2): ``conv_in``, the first down block, the
    last up block and the output head (``conv_norm_out``, ``conv_act``, ``conv_out``).

    Built and owned by :class:`LatentStructuralUNet`. :meth:`encode` returns the feature entering
    the shared trunk and the branch's own skips (``conv_in`` output, first-down-block resnet
    outputs); :meth:`decode` consumes those skips in its last up block.
    """

    def __init__(
        self,
        conv_in: nn.Conv2d,
        down_block: nn.Module,
        up_block: nn.Module,
        conv_norm_out: nn.GroupNorm | None,
        conv_act: nn.Module | None,
        conv_out: nn.Conv2d,
        more_down_blocks: Sequence[nn.Module] = (),
        more_up_blocks: Sequence[nn.Module] = (),
    ):
        super().__init__()
        self.conv_in = conv_in
        self.down_block = down_block  # level 0 (all of it, or its first layers for expert_depth "half")
        self.more_down_blocks = nn.ModuleList(more_down_blocks)  # levels 1.. (expert_depth "two")
        self.more_up_blocks = nn.ModuleList(more_up_blocks)  # mirror of more_down_blocks, run first
        self.up_block = up_block  # level 0's up block (or its last layers for "half")
        self.conv_norm_out = conv_norm_out
        self.conv_act = conv_act
        self.conv_out = conv_out

    def encode(
        self, x: torch.Tensor, emb: torch.Tensor, block_kwargs: dict[str, Any]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """``x`` (B, latent + pose, h, w) -> (trunk input, own skips).

        With ``expert_depth`` "one": trunk input (B, C0, h/2, w/2) and L + 1 skips."""
        h0 = self.conv_in(x)  # (B, C0, h, w)
        h, res = _run_down_block(self.down_block, h0, emb, block_kwargs)  # "one": h (B, C0, h/2, w/2)
        for block in self.more_down_blocks:
            h, more = _run_down_block(block, h, emb, block_kwargs)
            res = (*res, *more)
        # res ends with the last output (a downsample, or a resnet for "half"), which is ``h``
        # itself: the shared trunk replaces it by the fused feature.
        return h, (h0, *res[:-1])

    def decode(
        self,
        h: torch.Tensor,
        skips: tuple[torch.Tensor, ...],
        emb: torch.Tensor,
        block_kwargs: dict[str, Any],
        forward_upsample_size: bool = False,
    ) -> torch.Tensor:
        """Shared feature ``h`` and own skips -> prediction (B, out, h, w)."""
        for block in (*self.more_up_blocks, self.up_block):
            n = len(block.resnets)
            own, skips = skips[-n:], skips[:-n]
            size = skips[-1].shape[2:] if forward_upsample_size and skips else None
            h = _run_up_block(block, h, own, emb, block_kwargs, upsample_size=size)
        # h: (B, C0, h, w)
        if self.conv_norm_out is not None:
            h = self.conv_act(self.conv_norm_out(h))
        return self.conv_out(h)  # (B, out, h, w)


def _per_level(value: Any, levels: int, name: str) -> tuple:
    """Broadcast an int config value to one per UNet level, or check a tuple's length."""
    if isinstance(value, (list, tuple)):
        if len(value) != levels:
            raise ValueError(f"{name} has {len(value)} entries, expected one per level ({levels}).")
        return tuple(value)
    return (value,) * levels


class LatentStructuralUNet(ModelMixin, AttentionMixin, ConfigMixin):
    """The Latent Structural Diffusion Model's denoiser (HyperHuman §3.2, Fig. 2).

    Jointly denoises RGB, depth and surface-normal latents conditioned on text (cross-attention),
    the pose skeleton latent (concatenated to every branch's input) and SDXL-style size/crop
    micro-conditioning. See the module docstring for which layers are per branch and which are
    shared, and for the skip-connection bookkeeping.

    The constructor arguments are the SD-2 UNet's (defaults: ``stabilityai/stable-diffusion-2-base``,
    MODELS §9) plus ``pose_channels``, ``num_branches`` and ``addition_time_embed_dim``. Use
    :meth:`from_sd2` to initialise every branch from SD-2 weights.

    Args:
        sample_size: latent side (64 for 512 px).
        in_channels: channels of each modality's latent (4).
        out_channels: channels of each branch's prediction (4).
        pose_channels: channels of the pose-skeleton latent concatenated to each branch's input.
        num_branches: the modalities, rgb, depth, normal in this order; must be 3.
        addition_time_embed_dim: sinusoidal width of each of the four micro-conditions.
        (the rest): as in ``diffusers.UNet2DConditionModel``; ``attention_head_dim`` is the number
            of heads per level, as there.
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["BasicTransformerBlock", "ResnetBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"]
    _skip_layerwise_casting_patterns = ["norm"]

    @register_to_config
    def __init__(
        self,
        sample_size: int = 64,
        in_channels: int = 4,
        out_channels: int = 4,
        pose_channels: int = 4,
        num_branches: int = 3,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        down_block_types: tuple[str, ...] = (
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ),
        up_block_types: tuple[str, ...] = (
            "UpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
        ),
        block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280),
        layers_per_block: int | tuple[int, ...] = 2,
        downsample_padding: int = 1,
        mid_block_scale_factor: float = 1.0,
        dropout: float = 0.0,
        act_fn: str = "silu",
        norm_num_groups: int | None = 32,
        norm_eps: float = 1e-5,
        cross_attention_dim: int | tuple[int, ...] = 1024,
        transformer_layers_per_block: int | tuple[int, ...] = 1,
        attention_head_dim: int | tuple[int, ...] = (5, 10, 20, 20),
        use_linear_projection: bool = True,
        upcast_attention: bool = False,
        addition_time_embed_dim: int = 256,
        expert_depth: str = "one",
    ):
        super().__init__()
        levels = len(block_out_channels)
        if not 1 <= num_branches <= len(BRANCH_NAMES):
            raise ValueError(
                f"num_branches must be 1 (rgb), 2 (rgb, depth) or 3 (rgb, depth, normal), got {num_branches}."
            )
        if expert_depth not in EXPERT_DEPTHS:
            raise ValueError(f"expert_depth must be one of {', '.join(EXPERT_DEPTHS)}, got {expert_depth!r}.")
        owned = 2 if expert_depth == "two" else 1  # levels whose blocks (or part of one) the branches own
        if levels < owned + 1:
            raise ValueError(
                f"block_out_channels needs at least {owned + 1} levels for expert_depth {expert_depth!r} (the "
                f"branches own {owned} at each end), got {levels}."
            )
        if len(down_block_types) != levels or len(up_block_types) != levels:
            raise ValueError(
                f"down_block_types ({len(down_block_types)}) and up_block_types ({len(up_block_types)}) need one "
                f"entry per block_out_channels level ({levels})."
            )
        for kind, allowed in ((down_block_types, _DOWN_TYPES), (up_block_types, _UP_TYPES)):
            bad = [t for t in kind if t not in allowed]
            if bad:
                raise ValueError(f"block type {bad[0]!r} is not supported; use one of {allowed}.")
        if in_channels < 1 or out_channels < 1 or pose_channels < 0:
            raise ValueError(
                f"in_channels and out_channels must be >= 1 and pose_channels >= 0, got "
                f"{in_channels}, {out_channels}, {pose_channels}."
            )
        layers = _per_level(layers_per_block, levels, "layers_per_block")
        if expert_depth == "half" and layers[0] < 2:
            raise ValueError(
                f"expert_depth 'half' splits the first down block's layers, which needs layers_per_block >= 2 at "
                f"the first level, got {layers[0]}."
            )
        transformer_layers = _per_level(transformer_layers_per_block, levels, "transformer_layers_per_block")
        heads = _per_level(attention_head_dim, levels, "attention_head_dim")
        cross_dims = _per_level(cross_attention_dim, levels, "cross_attention_dim")
        self.sample_size = sample_size
        self.num_upsamplers = levels - 1

        # -- time and micro-conditioning (shared: one timestep for all modalities) --
        time_embed_dim = block_out_channels[0] * 4
        self.time_proj = Timesteps(block_out_channels[0], flip_sin_to_cos, freq_shift)
        self.time_embedding = TimestepEmbedding(block_out_channels[0], time_embed_dim, act_fn=act_fn)
        self.add_time_proj = Timesteps(addition_time_embed_dim, flip_sin_to_cos, freq_shift)
        self.add_embedding = TimestepEmbedding(len(MICRO_CONDITIONS) * addition_time_embed_dim, time_embed_dim)
        # Zero last layer: a fresh model ignores size/crop conditioning (the SD-2 identity).
        nn.init.zeros_(self.add_embedding.linear_2.weight)
        nn.init.zeros_(self.add_embedding.linear_2.bias)

        def down_block(i: int, num_layers: int | None = None, add_downsample: bool | None = None) -> nn.Module:
            return get_down_block(
                down_block_types[i],
                num_layers=layers[i] if num_layers is None else num_layers,
                transformer_layers_per_block=transformer_layers[i],
                in_channels=block_out_channels[max(i - 1, 0)],
                out_channels=block_out_channels[i],
                temb_channels=time_embed_dim,
                add_downsample=(i < levels - 1) if add_downsample is None else add_downsample,
                resnet_eps=norm_eps,
                resnet_act_fn=act_fn,
                resnet_groups=norm_num_groups,
                cross_attention_dim=cross_dims[i],
                num_attention_heads=heads[i],
                downsample_padding=downsample_padding,
                use_linear_projection=use_linear_projection,
                upcast_attention=upcast_attention,
                attention_head_dim=heads[i],
                dropout=dropout,
            )

        rev = levels - 1  # up block i mirrors down level rev - i

        def up_block(i: int, num_layers: int | None = None, prev_output_channel: int | None = None) -> nn.Module:
            return get_up_block(
                up_block_types[i],
                num_layers=layers[rev - i] + 1 if num_layers is None else num_layers,
                transformer_layers_per_block=transformer_layers[rev - i],
                in_channels=block_out_channels[max(rev - i - 1, 0)],
                out_channels=block_out_channels[rev - i],
                prev_output_channel=(
                    block_out_channels[min(rev - i + 1, rev)] if prev_output_channel is None else prev_output_channel
                ),
                temb_channels=time_embed_dim,
                add_upsample=i < levels - 1,
                resnet_eps=norm_eps,
                resnet_act_fn=act_fn,
                resolution_idx=i,
                resnet_groups=norm_num_groups,
                cross_attention_dim=cross_dims[rev - i],
                num_attention_heads=heads[rev - i],
                use_linear_projection=use_linear_projection,
                upcast_attention=upcast_attention,
                attention_head_dim=heads[rev - i],
                dropout=dropout,
            )

        # "half": level 0's down block is split after its first `half` layers (branch | trunk), and its
        # up block (layers + 1 resnets) after the resnets that consume the trunk's skips (trunk | branch).
        # Level 0 keeps one width (C0) throughout, so the split blocks take the same channels.
        half = layers[0] // 2
        c0 = block_out_channels[0]

        def branch() -> StructuralExpertBranch:
            has_norm = norm_num_groups is not None
            if expert_depth == "half":
                first_down, last_up = down_block(0, half, add_downsample=False), up_block(rev, half, c0)
            else:
                first_down, last_up = down_block(0), up_block(rev)
            return StructuralExpertBranch(
                conv_in=nn.Conv2d(in_channels + pose_channels, block_out_channels[0], kernel_size=3, padding=1),
                down_block=first_down,
                up_block=last_up,
                more_down_blocks=[down_block(1)] if expert_depth == "two" else [],
                more_up_blocks=[up_block(rev - 1)] if expert_depth == "two" else [],
                conv_norm_out=(
                    nn.GroupNorm(num_channels=block_out_channels[0], num_groups=norm_num_groups, eps=norm_eps)
                    if has_norm
                    else None
                ),
                conv_act=get_activation(act_fn) if has_norm else None,
                conv_out=nn.Conv2d(block_out_channels[0], out_channels, kernel_size=3, padding=1),
            )

        # -- structure: branches own level 0 at both ends; the trunk is everything in between --
        self.branches = nn.ModuleList([branch() for _ in range(num_branches)])  # rgb[, depth[, normal]]
        trunk_down = [down_block(i) for i in range(owned, levels)]
        trunk_up = [up_block(i) for i in range(levels - owned)]
        if expert_depth == "half":  # the rest of level 0, in the trunk
            trunk_down.insert(0, down_block(0, layers[0] - half, add_downsample=True))
            trunk_up.append(up_block(rev, layers[0] + 1 - half))
        self.shared_down_blocks = nn.ModuleList(trunk_down)
        self.mid_block = get_mid_block(
            _MID_TYPE,
            temb_channels=time_embed_dim,
            in_channels=block_out_channels[-1],
            resnet_eps=norm_eps,
            resnet_act_fn=act_fn,
            resnet_groups=norm_num_groups,
            output_scale_factor=mid_block_scale_factor,
            transformer_layers_per_block=transformer_layers[-1],
            num_attention_heads=heads[-1],
            cross_attention_dim=cross_dims[-1],
            use_linear_projection=use_linear_projection,
            upcast_attention=upcast_attention,
            attention_head_dim=heads[-1],
            dropout=dropout,
        )
        self.shared_up_blocks = nn.ModuleList(trunk_up)

    # -- forward ----------------------------------------------------------------------------------

    def _embed_time(
        self, timestep: torch.Tensor | float | int, added_cond: torch.Tensor | None, like: torch.Tensor
    ) -> torch.Tensor:
        """Time embedding plus micro-conditioning embedding -> ``(B, 4 * C0)``."""
        batch = like.shape[0]
        t = timestep if torch.is_tensor(timestep) else torch.tensor(timestep, device=like.device)
        t = t.to(like.device).reshape(-1)  # (1,) or (B,)
        if t.shape[0] not in (1, batch):
            raise ValueError(f"timestep must be a scalar or have one entry per sample ({batch}), got {t.shape[0]}.")
        t = t.expand(batch)  # (B,) one timestep for all three modalities
        t_emb = self.time_proj(t).to(like.dtype)  # (B, C0); Timesteps returns float32
        emb = self.time_embedding(t_emb)  # (B, T)

        if added_cond is None:
            added_cond = torch.zeros(batch, len(MICRO_CONDITIONS), device=like.device)
        if added_cond.shape != (batch, len(MICRO_CONDITIONS)):
            raise ValueError(
                f"added_cond must have shape ({batch}, {len(MICRO_CONDITIONS)}) = {MICRO_CONDITIONS}, "
                f"got {tuple(added_cond.shape)}."
            )
        cond_emb = self.add_time_proj(added_cond.to(like.device).flatten())  # (B * 4, D)
        cond_emb = cond_emb.reshape(batch, -1).to(emb.dtype)  # (B, 4 * D)
        return emb + self.add_embedding(cond_emb)  # (B, T)

    @property
    def modalities(self) -> tuple[str, ...]:
        """The modalities this model denoises, in branch order (Table 2: rgb, + depth, + normal)."""
        return BRANCH_NAMES[: self.config.num_branches]

    def _check_inputs(self, latents: Sequence[torch.Tensor | None], pose: torch.Tensor) -> None:
        given = [name for name, x in zip(BRANCH_NAMES, latents) if x is not None]
        if tuple(given) != self.modalities:
            raise ValueError(
                f"this LSDM denoises {', '.join(self.modalities)} (num_branches {self.config.num_branches}); got "
                f"latents for {', '.join(given) or 'none'}: pass None for a modality it does not model."
            )
        latents = [x for x in latents if x is not None]
        expected = latents[0].shape
        if len(expected) != 4 or expected[1] != self.config.in_channels:
            raise ValueError(
                f"rgb must have shape (B, {self.config.in_channels}, h, w), got {tuple(expected)}."
            )
        for name, x in zip(BRANCH_NAMES, latents):
            if x.shape != expected:
                raise ValueError(f"{name} has shape {tuple(x.shape)}, expected the rgb shape {tuple(expected)}.")
        pose_shape = (expected[0], self.config.pose_channels, *expected[2:])
        if pose.shape != pose_shape:
            raise ValueError(f"pose must have shape {pose_shape}, got {tuple(pose.shape)}.")

    def forward(
        self,
        rgb: torch.Tensor,
        depth: torch.Tensor | None,
        normal: torch.Tensor | None,
        pose: torch.Tensor,
        timestep: torch.Tensor | float | int,
        encoder_hidden_states: torch.Tensor,
        added_cond: torch.Tensor | None = None,
        cross_attention_kwargs: dict[str, Any] | None = None,
        return_dict: bool = True,
    ) -> LSDMOutput | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Predict all three modalities from their noisy latents (HyperHuman §3.2, Fig. 2).

        Args:
            rgb, depth, normal: ``(B, 4, h, w)`` noisy latents (noised independently, one timestep);
                ``None`` for a modality the model does not denoise (``num_branches`` < 3).
            pose: ``(B, pose_channels, h, w)`` VAE latent of the rendered skeleton; concatenated to
                every branch's input.
            timestep: scalar or ``(B,)``, shared by the three modalities.
            encoder_hidden_states: ``(B, 77, cross_attention_dim)`` text features, the same for
                every branch.
            added_cond: ``(B, 4)`` = (orig_height, orig_width, crop_top, crop_left) in pixels, SDXL
                micro-conditioning; ``None`` means zeros.
            cross_attention_kwargs: passed to the attention processors, as in diffusers.
            return_dict: return :class:`LSDMOutput` rather than a tuple ``(rgb, depth, normal)``.

        Returns:
            Per-branch ``(B, out_channels, h, w)`` predictions.
        """
        self._check_inputs((rgb, depth, normal), pose)
        latents = (rgb, depth, normal)[: self.config.num_branches]
        emb = self._embed_time(timestep, added_cond, rgb)  # (B, T)
        block_kwargs = {
            "encoder_hidden_states": encoder_hidden_states,  # (B, 77, D), the same for every branch
            "cross_attention_kwargs": cross_attention_kwargs,
        }
        factor = 2**self.num_upsamplers
        forward_upsample_size = any(side % factor != 0 for side in rgb.shape[-2:])

        # 1. branches: conv_in + first down block, each with its own skips.
        trunk_inputs, branch_skips = [], []
        for branch, x in zip(self.branches, latents):
            h, skips = branch.encode(torch.cat([x, pose], dim=1), emb, block_kwargs)  # (B, C0, h/2, w/2)
            trunk_inputs.append(h)
            branch_skips.append(skips)

        # 2. fuse where the branches enter the trunk; the fused feature is also the trunk's first skip.
        h = fuse_branch_features(trunk_inputs)  # (B, C0, h/2, w/2)
        shared_skips: list[torch.Tensor] = [h]
        for block in self.shared_down_blocks:
            h, res = _run_down_block(block, h, emb, block_kwargs)
            shared_skips.extend(res)
        h = self.mid_block(h, emb, **block_kwargs)  # (B, C_last, h / 2^(n-1), w / 2^(n-1))

        # 3. shared up blocks pop their skips from the end, len(resnets) each, as diffusers does.
        for block in self.shared_up_blocks:
            n = len(block.resnets)
            skips = tuple(shared_skips[-n:])
            del shared_skips[-n:]
            upsample_size = None
            if forward_upsample_size:  # the size of the next skip, the branch's own at the last block
                upsample_size = (shared_skips[-1] if shared_skips else branch_skips[0][-1]).shape[2:]
            h = _run_up_block(block, h, skips, emb, block_kwargs, upsample_size)
        if shared_skips:
            raise RuntimeError(f"{len(shared_skips)} shared skip connections left unused; the blocks do not mirror.")
        # h: (B, C1, h, w), the shared output feeding every branch's last up block.

        # 4. branches: last up block (own skips) + output head.
        outputs = tuple(
            branch.decode(h, skips, emb, block_kwargs, forward_upsample_size)
            for branch, skips in zip(self.branches, branch_skips)
        )  # num_branches x (B, out, h, w)
        outputs = outputs + (None,) * (len(BRANCH_NAMES) - len(outputs))  # modalities not modelled: None
        if not return_dict:
            return outputs
        return LSDMOutput(*outputs)

    # -- conversion from SD-2 ---------------------------------------------------------------------

    @classmethod
    def from_sd2(
        cls,
        unet: UNet2DConditionModel,
        pose_channels: int = 4,
        addition_time_embed_dim: int = 256,
        expert_depth: str = "one",
        num_branches: int = 3,
    ) -> LatentStructuralUNet:
        """Build an LSDM from a standard SD-2 UNet (HyperHuman §3.2).

        Every branch starts as a copy of SD-2's ``conv_in``, first down block, last up block,
        ``conv_norm_out`` and ``conv_out``; the shared parts are SD-2's. The pose input channels of
        each ``conv_in`` start at zero, as does the micro-conditioning embedding's last layer, so
        the fresh model reproduces SD-2 when the three branches get the same latent. The result
        has ``unet``'s dtype and device; ``add_embedding.linear_1`` is freshly initialised from
        torch's global RNG (seed it for reproducibility).

        Args:
            unet: a ``diffusers.UNet2DConditionModel`` with the SD-2 structure (no class or
                addition embedding, 4 input channels, positional time embedding).
            expert_depth: how much each branch owns (:data:`EXPERT_DEPTHS`, Table 2); the SD-2
                weights are split accordingly, so the identity holds for every choice.
            num_branches: 3 (rgb, depth, normal; the paper), 2 (rgb, depth) or 1 (rgb) (Table 2).
        """
        _check_sd2_unet(unet)
        config = {key: _as_tuple(unet.config[key]) for key in _COPIED_CONFIG}
        model = cls(**config, pose_channels=pose_channels, addition_time_embed_dim=addition_time_embed_dim,
                    expert_depth=expert_depth, num_branches=num_branches)
        model.to(device=unet.device)
        if unet.dtype != model.dtype:
            model.to(dtype=unet.dtype)

        levels = len(config["block_out_channels"])
        target = model.state_dict()
        loaded: set[str] = set()
        first_layers = _per_level(config["layers_per_block"], levels, "layers_per_block")[0]
        for key, value in unet.state_dict().items():
            for name in _lsdm_keys(key, levels, len(model.branches), expert_depth, first_layers):
                if name not in target:
                    raise ValueError(f"SD-2 weight {key!r} maps to {name!r}, which this model does not have.")
                weight = value.detach()
                if name.endswith("conv_in.weight"):  # (C0, 4 + pose, 3, 3): new pose channels at zero
                    pose_part = weight.new_zeros(weight.shape[0], pose_channels, *weight.shape[2:])
                    weight = torch.cat([weight, pose_part], dim=1)
                if target[name].shape != weight.shape:
                    raise ValueError(
                        f"SD-2 weight {key!r} has shape {tuple(weight.shape)}, but {name!r} needs "
                        f"{tuple(target[name].shape)}."
                    )
                target[name] = weight  # load_state_dict copies it into the parameter
                loaded.add(name)
        missing = sorted(k for k in set(target) - loaded if not k.startswith("add_embedding."))
        if missing:
            raise ValueError(f"the SD-2 UNet has no weights for {missing[:3]} ({len(missing)} in all).")
        model.load_state_dict(target, strict=True)
        log.info(
            "LSDM from SD-2: %d levels, %d branches (%s), expert depth %s, %.1fM parameters",
            levels,
            len(model.branches),
            ", ".join(model.modalities),
            expert_depth,
            sum(p.numel() for p in model.parameters()) / 1e6,
        )
        return model


def _as_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _check_sd2_unet(unet: UNet2DConditionModel) -> None:
    """Refuse anything but a plain SD-2-structured ``UNet2DConditionModel``, in one sentence."""
    if not isinstance(unet, UNet2DConditionModel):
        raise TypeError(f"from_sd2 needs a diffusers UNet2DConditionModel, got {type(unet).__name__}.")
    config = unet.config
    for key, required in _REQUIRED_CONFIG.items():
        value = config.get(key, required)
        values = value if isinstance(value, (list, tuple)) and not isinstance(required, (list, tuple)) else [value]
        if any(v != required for v in values):
            raise ValueError(
                f"from_sd2 needs an SD-2-structured UNet, but its config has {key}={value!r} (needs {required!r})."
            )
    if config.in_channels != 4 or config.out_channels != 4:
        raise ValueError(
            f"from_sd2 needs a UNet with 4 latent input and output channels, got in_channels="
            f"{config.in_channels}, out_channels={config.out_channels}."
        )
    bad = [t for t in (*config.down_block_types, *config.up_block_types) if t not in _DOWN_TYPES + _UP_TYPES]
    if bad or len(config.block_out_channels) < 2:
        raise ValueError(
            f"from_sd2 needs at least 2 levels of {_DOWN_TYPES + _UP_TYPES} blocks, got "
            f"{tuple(config.down_block_types)} / {tuple(config.up_block_types)}."
        )


def _lsdm_keys(key: str, levels: int, num_branches: int, expert_depth: str = "one", first_layers: int = 2) -> list[str]:
    """Where one SD-2 state-dict entry goes in the LSDM: once per branch or once in the trunk.

    ``first_layers`` is the first level's ``layers_per_block`` (L); with ``expert_depth`` "half" the
    branches own down-block-0 layers ``< L // 2`` and the last up block's resnets ``>= L + 1 - L // 2``.
    """
    head, _, rest = key.partition(".")
    per_branch: str | None = None
    half = first_layers // 2
    owned = 2 if expert_depth == "two" else 1
    if head in ("conv_in", "conv_norm_out", "conv_out"):
        per_branch = key
    elif head in ("time_embedding", "mid_block"):
        return [key]
    elif head in ("down_blocks", "up_blocks"):
        index_text, _, tail = rest.partition(".")
        index = int(index_text)
        part, _, layer_tail = tail.partition(".")
        layer_text, _, leaf = layer_tail.partition(".")
        if head == "down_blocks":
            if expert_depth == "half" and index == 0:
                if part in ("resnets", "attentions") and int(layer_text) < half:
                    per_branch = f"down_block.{tail}"
                elif part in ("resnets", "attentions"):
                    return [f"shared_down_blocks.0.{part}.{int(layer_text) - half}.{leaf}"]
                else:  # the downsampler stays with the trunk's part of level 0
                    return [f"shared_down_blocks.0.{tail}"]
            elif expert_depth == "half":
                return [f"shared_down_blocks.{index}.{tail}"]
            elif index == 0:
                per_branch = f"down_block.{tail}"
            elif index < owned:
                per_branch = f"more_down_blocks.{index - 1}.{tail}"
            else:
                return [f"shared_down_blocks.{index - owned}.{tail}"]
        elif expert_depth == "half" and index == levels - 1:
            trunk_layers = first_layers + 1 - half
            if part in ("resnets", "attentions") and int(layer_text) >= trunk_layers:
                per_branch = f"up_block.{part}.{int(layer_text) - trunk_layers}.{leaf}"
            else:
                return [f"shared_up_blocks.{index}.{tail}"]
        elif index == levels - 1 and expert_depth != "half":
            per_branch = f"up_block.{tail}"
        elif expert_depth == "two" and index == levels - 2:
            per_branch = f"more_up_blocks.0.{tail}"
        else:
            return [f"shared_up_blocks.{index}.{tail}"]
    if per_branch is None:
        raise ValueError(f"SD-2 weight {key!r} has no place in the LSDM; is this an SD-2 UNet?")
    return [f"branches.{k}.{per_branch}" for k in range(num_branches)]


# -- tiny builder (zoo entry "lsdm") ------------------------------------------------------------------


def make_tiny_lsdm(out_dir: Path, seed: int) -> None:
    """A tiny LSDM converted from the zoo's tiny SD-2-base UNet (same seed), for tests and demos.

    Deterministic: the same ``seed`` writes the same bytes. The SD-2 UNet comes from
    ``humanverse.testing.tiny_models.build_sd2_base`` (widths 32/64, heads 2/4, sample 8, text width
    32), so the tiny LSDM reproduces the tiny ``sd2-base`` UNet of the same seed.
    """
    from humanverse.testing.tiny_models import build_sd2_base

    out_dir = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="tiny-sd2-") as tmp:
        build_sd2_base(Path(tmp), seed)
        unet = UNet2DConditionModel.from_pretrained(Path(tmp) / "unet")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LatentStructuralUNet.from_sd2(unet)
    model.save_pretrained(out_dir, safe_serialization=True)
