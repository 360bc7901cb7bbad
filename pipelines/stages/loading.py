"""Where a model stage's model runs and how it gets there: device and dtype choice (GPU-minded
defaults that also run on a CPU), and loading a zoo entry with the pinned revision, placed and in
eval mode. What is loaded for each stage, and from where, is in ``docs/models.md``.

Torch and the model libraries are imported inside the functions: this module is imported wherever
the stage configs are (the driver, CPU tasks), and only model-stage actors load models.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple, Protocol

#: Where a model stage runs (``auto``: the GPU when torch sees one).
Device = Literal["auto", "cpu", "cuda"]
#: The dtype a model stage computes in (``auto``: see :func:`pick_dtype`).
Dtype = Literal["auto", "float32", "float16", "bfloat16"]


def pick_device(name: str = "auto"):
    """``auto``: the GPU when torch sees one, else the CPU; ``cuda`` without a GPU is an error."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but torch sees no GPU on this worker.")
    return torch.device(name)


def pick_dtype(name: str, device):
    """``auto``: bfloat16 on GPUs that support it, else float16 on GPUs, float32 on CPUs."""
    import torch

    if name != "auto":
        return getattr(torch, name)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def place(model, device, dtype=None):
    """``model`` moved to ``device`` (and cast to ``dtype`` unless None), in eval mode when it is a
    torch module (a diffusers pipeline has no mode)."""
    import torch

    model = model.to(device) if dtype is None else model.to(device, dtype)
    if isinstance(model, torch.nn.Module):
        model.eval()
    return model


class DeviceSettings(Protocol):
    """Where a model stage's config says its model runs: ``auto``/``cpu``/``cuda``, ``auto`` or a torch dtype."""

    device: Device
    dtype: Dtype


class ModelSettings(DeviceSettings, Protocol):
    """A model stage's config: a model spec overriding ``--models`` (None: use it), and where it runs."""

    model: str | None


def placed(model, config: DeviceSettings):
    """(``model`` placed on ``config.device`` and ``config.dtype`` in eval mode, that device, that dtype)."""
    device = pick_device(config.device)
    dtype = pick_dtype(config.dtype, device)
    return place(model, device, dtype), device, dtype


class Pretrained(NamedTuple):
    """A loaded zoo entry: the model (placed, eval mode), its processor if any, and where it runs."""

    model: Any
    processor: Any
    #: what the ``models`` column records for the annotations it makes
    tag: str
    device: Any
    dtype: Any


def load_pretrained(entry: str, config: ModelSettings, models: str, model_class, *, processor_class=None,
                    load_in_dtype: bool = False, **kwargs) -> Pretrained:
    """Load zoo entry ``entry`` from the model spec ``config.model or models``
    (:func:`humanverse.zoo.resolve`) with ``model_class.from_pretrained`` (and
    ``processor_class.from_pretrained``), pinned to the entry's revision, then place it on
    ``config.device`` and ``config.dtype``.

    ``load_in_dtype``: the weights are loaded in the dtype (``from_pretrained(dtype=...)``, which
    keeps the modules a model marks as float32 in float32) and only moved; otherwise they are loaded
    as stored and cast as a whole. ``kwargs`` go to the model's ``from_pretrained``.

    Raises:
        ValueError: one sentence naming the zoo entry, its hub id and pin, and how to fetch it
            (``humanverse zoo prepare``) when the files are not there (offline, not downloaded).
    """
    from humanverse.zoo import loading, resolve

    r = resolve(entry, config.model or models)
    dev = pick_device(config.device)
    dt = pick_dtype(config.dtype, dev)
    pinned = r.pretrained_kwargs()
    if load_in_dtype:
        kwargs["dtype"] = dt
    with loading(entry, r):  # the hub's "cannot find the requested files", a missing local file
        processor = processor_class.from_pretrained(r.path, **pinned) if processor_class is not None else None
        model = model_class.from_pretrained(r.path, **pinned, **kwargs)
    return Pretrained(place(model, dev, None if load_in_dtype else dt), processor, r.tag, dev, dt)


__all__ = ["Device", "DeviceSettings", "Dtype", "ModelSettings", "Pretrained", "load_pretrained", "pick_device", "pick_dtype", "place",
           "placed"]
