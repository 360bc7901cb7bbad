"""Omnidata v2 DPT-Hybrid: our implementation that loads the published depth/normal weights.

HyperHuman (arXiv 2310.08579, §4 "HumanVerse") annotates every image with a surface-normal map from
Omnidata (Eftekhar et al., ICCV 2021); the depth stage can use Omnidata's depth head instead of MiDaS.

* :mod:`.model`: the network (:class:`OmnidataDPT`, :class:`OmnidataConfig`), ``save_pretrained`` /
  ``from_pretrained``;
* :mod:`.convert`: reading the published ``.ckpt``/``.pth`` files into the model's key layout;
* :mod:`.processing`: pre/post-processing (:class:`OmnidataProcessor`, :func:`predict_maps`);
* here: loading from a model spec (:func:`load_omnidata`) and the tiny stand-ins of the zoo entries
  ``omnidata-depth`` and ``omnidata-normal`` (:data:`TINY_BUILDERS`).
"""

from __future__ import annotations

from pathlib import Path

import torch

from pipelines.annotators.omnidata.convert import convert_omnidata_state_dict, load_omnidata_state_dict
from pipelines.annotators.omnidata.model import CONFIG_NAME, WEIGHTS_NAME, OmnidataConfig, OmnidataDPT, Task
from pipelines.annotators.omnidata.processing import OmnidataProcessor, predict_maps

__all__ = [
    "CONFIG_NAME",
    "TINY_BUILDERS",
    "WEIGHTS_NAME",
    "OmnidataConfig",
    "OmnidataDPT",
    "OmnidataProcessor",
    "convert_omnidata_state_dict",
    "load_omnidata",
    "load_omnidata_state_dict",
    "make_tiny",
    "make_tiny_omnidata_depth",
    "make_tiny_omnidata_normal",
    "predict_maps",
]


def load_omnidata(name: str, spec: str, task: Task) -> tuple[OmnidataDPT, str]:
    """Load the Omnidata DPT of zoo entry ``name`` from a model spec; returns ``(model, tag)``.

    Besides every spec :func:`humanverse.zoo.resolve` takes, ``spec`` may be the downloaded
    checkpoint file itself (``omnidata_dpt_{depth,normal}_v2.ckpt`` or a torch-hub ``.pth``), and a
    resolved directory may hold that file instead of a ``save_pretrained`` folder.
    """
    from humanverse.zoo import ZOO, resolve

    path = Path(spec).expanduser()
    if path.is_file():
        return OmnidataDPT.from_pretrained(path, task=task), str(path.resolve())
    r = resolve(name, spec, builders=TINY_BUILDERS)
    if r.kind == "hub":
        raise ValueError(f"{name} weights are not on the Hugging Face hub ({spec!r}); download "
                         f"{', '.join(ZOO[name].files)} by hand and pass the file or its directory.")
    folder = Path(r.path)
    if (folder / CONFIG_NAME).is_file():
        return OmnidataDPT.from_pretrained(folder, task=task), r.tag
    for f in ZOO[name].files:
        if (folder / f).is_file():
            return OmnidataDPT.from_pretrained(folder / f, task=task), r.tag
    raise ValueError(f"{folder} holds neither a saved OmnidataDPT ({CONFIG_NAME} + {WEIGHTS_NAME}) nor "
                     f"{', '.join(ZOO[name].files)}.")


def make_tiny(out_dir: Path, seed: int = 0, task: Task = "normal") -> None:
    """Save a deterministic, randomly initialised tiny :class:`OmnidataDPT` with ``save_pretrained``.

    Same graph and loading path as the real model, sizes from :meth:`OmnidataConfig.tiny`. Weights
    come from a forked, seeded torch RNG, so equal seeds give byte-identical files and the caller's
    RNG state is untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = OmnidataDPT(OmnidataConfig.tiny(task))
    model.save_pretrained(out_dir)


def make_tiny_omnidata_depth(out_dir: Path, seed: int) -> None:
    """Zoo builder for ``omnidata-depth``: the tiny depth model."""
    make_tiny(out_dir, seed=seed, task="depth")


def make_tiny_omnidata_normal(out_dir: Path, seed: int) -> None:
    """Zoo builder for ``omnidata-normal``: the tiny surface-normal model."""
    make_tiny(out_dir, seed=seed, task="normal")


#: Tiny builders of the zoo entries whose class is defined here (``humanverse.zoo.make_tiny(builders=...)``).
TINY_BUILDERS = {"omnidata-depth": make_tiny_omnidata_depth, "omnidata-normal": make_tiny_omnidata_normal}
