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

import logging
import os
import pickle
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

__all__ = ["convert_omnidata_state_dict", "load_omnidata_state_dict", "torch_load_weights_only"]

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


class _InertStandIn:
    """Inert placeholder for a non-tensor object pickled in a checkpoint's metadata.

    Lightning checkpoints may pickle e.g. ``argparse.Namespace`` or ``AttributeDict`` hyper-parameters
    next to the weights, which ``torch.load(weights_only=True)`` refuses. We allowlist this class
    under those names instead of the real ones: ``__new__`` returns an empty ``Counter`` (a dict type
    the restricted unpickler may fill with items *and* attribute state), so nothing from the file is
    imported or executed, and the metadata is discarded.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> Counter:  # type: ignore[misc]
        return Counter()


def _numpy_data_global(name: str) -> Any:
    """The numpy object behind a pickled global name when it only rebuilds data, else None.

    Scalars (``numpy._core.multiarray.scalar``), dtypes (``numpy.dtype``, ``numpy.dtypes.*DType``)
    and arrays (``numpy.ndarray`` + ``_reconstruct``) restore numbers from bytes: what Lightning
    and training loops leave in checkpoint metadata (epoch counters, losses, dtypes). Allowlisting
    them runs no code from the file; an object array would still need further globals, refused.
    """
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    known = {
        "numpy.dtype": np.dtype,
        "numpy.ndarray": np.ndarray,
        "numpy._core.multiarray.scalar": core.multiarray.scalar,
        "numpy.core.multiarray.scalar": core.multiarray.scalar,
        "numpy._core.multiarray._reconstruct": core.multiarray._reconstruct,
        "numpy.core.multiarray._reconstruct": core.multiarray._reconstruct,
    }
    if name in known:
        return known[name]
    prefix = "numpy.dtypes."
    if name.startswith(prefix) and name[len(prefix) :].endswith("DType"):
        return getattr(np.dtypes, name[len(prefix) :], None)
    return None


def _safe_globals_for(names: list[str]) -> list[Any]:
    """``torch.serialization.safe_globals`` entries for the pickled globals ``names``: the real
    numpy data constructors (:func:`_numpy_data_global`), inert stand-ins for everything else."""
    allowed: list[Any] = []
    for name in names:
        real = _numpy_data_global(name)
        allowed.append((real, name) if real is not None else (_InertStandIn, name))
    if "numpy.dtype" in names:
        # A rebuilt dtype is an instance of its numpy.dtypes class, which the scan does not list.
        import numpy as np

        allowed += [cls for cls in vars(np.dtypes).values() if isinstance(cls, type) and issubclass(cls, np.dtype)]
    return allowed


def torch_load_weights_only(path: Path) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``, tolerant of pickled metadata:
    numpy scalars, dtypes and arrays load as themselves, other objects as inert stand-ins; no code
    from the file runs (``weights_only`` stays on)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        try:
            names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # legacy (non-zip) files cannot be scanned
            names = []
        if not names:
            raise ValueError(f"Cannot read {path} with torch.load(weights_only=True): {error}") from error
        try:
            with torch.serialization.safe_globals(_safe_globals_for(names)):
                loaded = torch.load(path, map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, TypeError, AttributeError) as second:
            raise ValueError(
                f"Cannot read {path} with torch.load(weights_only=True) even with inert stand-ins for "
                f"its pickled objects {names}: {second}; re-save its state dict on its own."
            ) from second
        ignored = [name for name in names if _numpy_data_global(name) is None]
        if ignored:
            logger.warning("Ignored pickled metadata objects in %s: %s", path, ", ".join(ignored))
        return loaded


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
