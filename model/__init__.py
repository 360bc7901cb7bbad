"""HyperHuman models (arXiv 2310.08579), built from diffusers' own blocks.

* :mod:`model.models.lsdm`: :class:`LatentStructuralUNet`, the stage-1 Latent Structural Diffusion Model
  denoiser (§3.2): RGB, depth and normal expert branches around a shared SD-2 trunk, converted
  from an SD-2 UNet with :meth:`LatentStructuralUNet.from_sd2`; :func:`make_tiny_lsdm` builds the
  zoo's tiny ``lsdm`` entry.

The names below are re-exported from :mod:`model.models.lsdm` on first access (PEP 562), so importing a
light submodule such as ``model.training.data`` does not import diffusers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from model.models.lsdm import (
        LatentStructuralUNet,
        LSDMOutput,
        StructuralExpertBranch,
        fuse_branch_features,
        make_tiny_lsdm,
        match_statistics,
    )

__all__ = [
    "LSDMOutput",
    "LatentStructuralUNet",
    "StructuralExpertBranch",
    "fuse_branch_features",
    "make_tiny_lsdm",
    "match_statistics",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from model.models import lsdm

        return getattr(lsdm, name)
    raise AttributeError(f"module 'model' has no attribute {name!r}")
