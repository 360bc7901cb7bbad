"""Stage 2 of HyperHuman: the Structure-Guided Refiner's trainable part (paper §3.3).

The refiner is SDXL-base (frozen, ε-prediction, 1024²) steered by one trainable ControlNet copy of
the SDXL encoder (Zhang et al. 2023, diffusers ``ControlNetModel.from_unet``). ControlNet's own
conditioning embedding (one image → latent-resolution features) is replaced by three embedders,
one per structure condition (pose skeleton, depth, surface normal), whose outputs are summed
position-wise (§3.3: "we use ... lightweight embedders ... and sum up the features"):

    e = E_pose(pose) + E_depth(depth) + E_normal(normal)    # (B, C0, H/8, W/8)
    residuals = ControlNet(z_t, t, text, e)                  # added to the frozen UNet's skips

Each embedder stacks 4×4 stride-2 convolutions with ReLU, widths 16/32/96/256 as in the paper.
With SDXL's ×8 VAE only the first three may halve the resolution to land at the latent size;
the fourth (and any further width) is a 3×3 stride-1 conv. The output projection to the UNet's
first block width is zero-initialised, as are ControlNet's zero convolutions, so a fresh refiner
adds exactly nothing to the frozen UNet: training starts from SDXL's own prediction.

Condition inputs, all (B, ·, H, W) at the refiner's pixel resolution (see
:func:`structure_inputs`): pose as the rendered skeleton in [0, 1] (black canvas = 0), depth as one
channel in [0, 1], normal as unit vectors (x, y, z) in [−1, 1]. A dropped condition is all zeros
(§3.3's robust conditioning, see :mod:`model.training.stage2`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
from diffusers import ControlNetModel, UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

log = logging.getLogger(__name__)

#: Structure conditions and their input channels, in the order they are stacked in ``cond``.
CONDITIONS: dict[str, int] = {"pose": 3, "depth": 1, "normal": 3}


class StructureEmbedder(nn.Module):
    """One condition image -> features at the latent resolution (zero at initialisation)."""

    def __init__(self, in_channels: int, out_channels: int, widths: Sequence[int] = (16, 32, 96, 256),
                 num_downsamples: int = 3):
        super().__init__()
        if num_downsamples > len(widths):
            raise ValueError(f"{num_downsamples} stride-2 convolutions need at least as many widths, got {list(widths)}.")
        layers: list[nn.Module] = []
        c = in_channels
        for i, w in enumerate(widths):
            if i < num_downsamples:
                layers.append(nn.Conv2d(c, w, kernel_size=4, stride=2, padding=1))  # exactly halves even sizes
            else:
                layers.append(nn.Conv2d(c, w, kernel_size=3, stride=1, padding=1))
            layers.append(nn.ReLU(inplace=True))
            c = w
        self.body = nn.Sequential(*layers)
        self.proj_out = nn.Conv2d(c, out_channels, kernel_size=3, padding=1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj_out(self.body(x))


class StructureGuidedControlNet(ModelMixin, ConfigMixin):
    """The refiner's trainable part: three structure embedders + a ControlNet copy of the SDXL encoder.

    ``forward`` returns ControlNet's ``(down_block_res_samples, mid_block_res_sample)`` for the
    frozen SDXL UNet's ``down_block_additional_residuals`` / ``mid_block_additional_residual``.
    Saved with ``save_pretrained`` as one model (config + safetensors); ControlNet's architecture
    is kept in the config as ``controlnet_config``.
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(self, controlnet_config: dict | None = None, embedder_widths: Sequence[int] = (16, 32, 96, 256),
                 vae_scale_factor: int = 8, conditions: Sequence[str] = tuple(CONDITIONS)):
        super().__init__()
        if controlnet_config is None:
            raise ValueError("controlnet_config is required; build the refiner with StructureGuidedControlNet.from_unet(sdxl_unet).")
        unknown = [c for c in conditions if c not in CONDITIONS]
        if unknown or not conditions:
            raise ValueError(f"conditions must be a non-empty subset of {list(CONDITIONS)}, got {list(conditions)}.")
        n_down = int(round(math.log2(vae_scale_factor)))
        if 2 ** n_down != vae_scale_factor:
            raise ValueError(f"vae_scale_factor must be a power of two, got {vae_scale_factor}.")
        cfg = {k: v for k, v in dict(controlnet_config).items() if not k.startswith("_")}
        self.controlnet = ControlNetModel.from_config(cfg)
        # the three embedders replace ControlNet's single conditioning embedding (fed pre-embedded)
        self.controlnet.controlnet_cond_embedding = nn.Identity()
        width0 = self.controlnet.config.block_out_channels[0]
        self.embedders = nn.ModuleDict({c: StructureEmbedder(CONDITIONS[c], width0, tuple(embedder_widths), n_down)
                                        for c in conditions})

    @classmethod
    def from_unet(cls, unet: UNet2DConditionModel, *, embedder_widths: Sequence[int] = (16, 32, 96, 256),
                  vae_scale_factor: int = 8, conditions: Sequence[str] = tuple(CONDITIONS)) -> "StructureGuidedControlNet":
        """A fresh refiner: the ControlNet encoder copies ``unet``'s (SDXL) weights, all outputs start at zero."""
        cn = ControlNetModel.from_unet(unet, load_weights_from_unet=True)
        cn_config = {k: v for k, v in dict(cn.config).items() if not k.startswith("_")}
        model = cls(controlnet_config=_jsonable(cn_config), embedder_widths=tuple(embedder_widths),
                    vae_scale_factor=vae_scale_factor, conditions=tuple(conditions))
        missing, unexpected = model.controlnet.load_state_dict(
            {k: v for k, v in cn.state_dict().items() if not k.startswith("controlnet_cond_embedding.")}, strict=False)
        if missing or unexpected:
            raise RuntimeError(f"ControlNet copy mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}.")
        return model

    @property
    def conditions(self) -> tuple[str, ...]:
        return tuple(self.config.conditions)

    @property
    def in_channels(self) -> int:
        return sum(CONDITIONS[c] for c in self.conditions)

    def embed(self, cond: torch.Tensor) -> torch.Tensor:
        """``cond``: (B, Σ channels, H, W), conditions stacked in :attr:`conditions` order -> (B, C0, H/8, W/8)."""
        if cond.shape[1] != self.in_channels:
            raise ValueError(f"the structure input has {cond.shape[1]} channels; expected {self.in_channels} "
                             f"({', '.join(f'{c} {CONDITIONS[c]}' for c in self.conditions)}).")
        out, i = None, 0
        for c in self.conditions:
            k = CONDITIONS[c]
            e = self.embedders[c](cond[:, i:i + k])
            out = e if out is None else out + e
            i += k
        return out

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                cond: torch.Tensor, added_cond_kwargs: dict | None = None, conditioning_scale: float = 1.0):
        emb = self.embed(cond.to(sample.dtype))
        if emb.shape[-2:] != sample.shape[-2:]:
            raise ValueError(f"structure maps of {tuple(cond.shape[-2:])} px embed to {tuple(emb.shape[-2:])}, but the "
                             f"latent is {tuple(sample.shape[-2:])}: give maps at the image resolution "
                             f"(latent × {self.config.vae_scale_factor}).")
        down, mid = self.controlnet(sample, timestep, encoder_hidden_states=encoder_hidden_states, controlnet_cond=emb,
                                    conditioning_scale=conditioning_scale, added_cond_kwargs=added_cond_kwargs,
                                    return_dict=False)
        return down, mid

    def enable_gradient_checkpointing(self, *args, **kwargs) -> None:
        self.controlnet.enable_gradient_checkpointing(*args, **kwargs)


def _jsonable(d: dict) -> dict:
    """Config values as plain JSON types (tuples -> lists) so the saved config round-trips."""
    out = {}
    for k, v in d.items():
        out[k] = list(v) if isinstance(v, tuple) else v
    return out


def structure_inputs(pose: torch.Tensor, depth: torch.Tensor, normal: torch.Tensor,
                     conditions: Sequence[str] = tuple(CONDITIONS)) -> torch.Tensor:
    """Stack the structure maps into the refiner's input.

    Args: ``pose`` (B, 3, H, W) skeleton image in [−1, 1] (black = −1, as the data reader gives it);
    ``depth`` (B, 1 or 3, H, W) in [−1, 1]; ``normal`` (B, 3, H, W) unit vectors. Returns
    (B, 7, H, W): pose and depth mapped to [0, 1] (so that "dropped" = 0 = a black canvas / no
    depth), normal as is (dropped = the zero vector).
    """
    parts = {"pose": (pose + 1) / 2, "depth": (depth[:, :1] + 1) / 2, "normal": normal}
    return torch.cat([parts[c] for c in conditions], dim=1)


def drop_conditions(cond: torch.Tensor, keep: torch.Tensor, conditions: Sequence[str] = tuple(CONDITIONS)) -> torch.Tensor:
    """Zero the dropped conditions: ``keep`` (B, n_conditions) bool -> ``cond`` with dropped maps zeroed."""
    scale = torch.cat([keep[:, j:j + 1].expand(-1, CONDITIONS[c]) for j, c in enumerate(conditions)], dim=1)
    return cond * scale.to(cond.dtype)[:, :, None, None]
