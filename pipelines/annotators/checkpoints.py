"""Reading third-party PyTorch checkpoints without running code from them.

Published checkpoints (Omnidata's Lightning files, ViTPose's MMPose files) pickle metadata next to
their weights: epoch counters and losses as numpy scalars, dtypes, sometimes hyper-parameter
objects. ``torch.load(weights_only=True)`` refuses all of these, and ``weights_only=False`` would
execute whatever the file names. :func:`torch_load_weights_only` keeps ``weights_only`` on and
allowlists only numpy's data constructors, with inert stand-ins for every other object.
"""

from __future__ import annotations

import logging
import pickle
from collections import Counter
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

__all__ = ["torch_load_weights_only"]


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
