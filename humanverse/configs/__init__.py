"""The real configurations of the zoo's models, kept as data (``<entry>.json``).

Each file holds, per component (``model``, ``backbone``, ``processor``, ``unet``...), the fields of
the published checkpoint that change the computation (widths, depths, epsilons, activations,
heads, processor sizes, mean/std, decoding), with ``_source`` naming where they were read and
``_size_fields`` listing, per component, the fields a tiny stand-in may shrink. The tiny builders
(:mod:`humanverse.testing.tiny_models`) start from these dictionaries and change only those
fields; ``bench/gpu_check.py`` builds the real-size models from them; ``tests/test_zoo.py`` checks
that every other field of every tiny model equals the real one.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from importlib import resources
from typing import Any

__all__ = ["POSE_DECODING_FILE", "SIZE_FIELDS_KEY", "config_names", "real_config", "section", "shrunk",
           "write_pose_decoding"]

SIZE_FIELDS_KEY = "_size_fields"
#: The file in a ViTPose model folder that records how its heatmaps are decoded.
POSE_DECODING_FILE = "pose_decoding.json"


@cache
def _load(name: str) -> dict[str, Any]:
    path = resources.files(__name__) / f"{name}.json"
    if not path.is_file():
        raise ValueError(
            f"No real config is recorded for zoo entry {name!r}; have: {', '.join(config_names())}."
        )
    return json.loads(path.read_text(encoding="utf-8"))


def config_names() -> list[str]:
    """The zoo entries with a recorded real configuration."""
    return sorted(
        p.name[: -len(".json")]
        for p in resources.files(__name__).iterdir()
        if p.name.endswith(".json")
    )


def real_config(name: str) -> dict[str, Any]:
    """The whole recorded configuration of zoo entry ``name`` (a fresh copy)."""
    return copy.deepcopy(_load(name))


def section(name: str, part: str) -> dict[str, Any]:
    """Component ``part`` of ``name``'s real configuration, without the bookkeeping keys."""
    config = _load(name)
    if part not in config:
        raise ValueError(f"The real config of {name!r} has no {part!r} section.")
    return {
        k: copy.deepcopy(v) for k, v in config[part].items() if not k.startswith("_")
    }


def shrunk(name: str, part: str, **sizes: Any) -> dict[str, Any]:
    """Component ``part`` of ``name`` with only its declared size fields replaced by ``sizes``.

    Raises:
        ValueError: if a key of ``sizes`` is not one of the component's ``_size_fields`` (the
            tiny model would then differ from the real one in a field that changes the computation).
    """
    allowed = set(_load(name)[part].get(SIZE_FIELDS_KEY, ()))
    extra = sorted(set(sizes) - allowed)
    if extra:
        raise ValueError(
            f"{name}/{part}: {extra} are not size fields (allowed: {sorted(allowed)})."
        )
    return {**section(name, part), **sizes}


def write_pose_decoding(folder) -> None:
    """Record the whole-body model's decoding (the ``decoding`` section of ``vitpose-wholebody``:
    the original test config's non-UDP crop, flip test and heatmap shift) in ``folder``."""
    from pathlib import Path

    payload = json.dumps(section("vitpose-wholebody", "decoding"), indent=2, sort_keys=True) + "\n"
    (Path(folder) / POSE_DECODING_FILE).write_text(payload, encoding="utf-8")
