"""Depth maps (HyperHuman §4: every HumanVerse image carries a depth map; stage 1 denoises it).

The paper's depth annotator is MiDaS DPT-Hybrid (Ranftl et al., "Towards Robust Monocular Depth
Estimation: Mixing Datasets for Zero-shot Cross-dataset Transfer", TPAMI 2022; "Vision Transformers
for Dense Prediction", ICCV 2021), here ``Intel/dpt-hybrid-midas`` through transformers
(``DPTForDepthEstimation`` + ``DPTImageProcessor``; loading facts in ``docs/models.md``).

What is stored. MiDaS predicts *relative inverse depth* (disparity up to an unknown scale and shift;
larger = nearer, >= 0 before resampling). We store it as predicted, without any rescaling, in the
dataset's codec (:func:`humanverse.codecs.encode_depth`: 16-bit PNG min-max normalised per image, with
``depth_min``/``depth_max`` to restore the values).

Geometry (:mod:`pipelines.geometry`). The model runs on the outpainted canvas when
the row has one (so bodies cut by the frame are seen whole, as in the paper), otherwise on the
stored image. The prediction is resized back to the *canvas* size, cropped to the stored frame with
:meth:`~pipelines.geometry.Canvas.crop_map`, then resized to ``maps.size(width, height)`` when maps
are capped. ``map_width``/``map_height`` record the stored size.

Interpolation:

* preprocessing is the checkpoint's own ``DPTImageProcessor`` config, never overridden (hub:
  384x384 squash, bilinear, rescale 1/255, mean = std = 0.5; the class default would be bicubic);
* back to canvas size: bicubic, ``align_corners=False`` (transformers'
  ``post_process_depth_estimation``, the same as MiDaS's own ``run.py``); bicubic may overshoot
  slightly below 0 next to sharp edges: values are kept as computed;
* canvas crop -> capped map size: bilinear with antialiasing (:func:`fit_map`).

Backends (``DepthConfig.backend``):

* ``midas`` (default, the paper's) as above.
* ``omnidata``: the Omnidata v2 DPT-Hybrid depth head (Eftekhar et al., ICCV 2021; our
  :class:`~pipelines.annotators.omnidata.OmnidataDPT`). Omnidata predicts relative *depth* (larger =
  farther, clamped to [0, 1] as its demo does), not inverse depth, and its scale and shift are
  unknown, so a faithful conversion to disparity (1/z) is impossible. To keep the column's direction
  (larger = nearer) we store ``1 - d``, the v2 demo's own display. That is a monotone but *non-linear*
  proxy for MiDaS's disparity: do not mix the two backends in one training set (the ``models``
  column and ``humanverse.json`` record which one produced each map).

Both maps (``DepthConfig.also_omnidata``, the paper preset): HyperHuman annotates every image with
MiDaS depth *and* Omnidata depth (§4, App. A.1). With ``also_omnidata`` the ``midas`` backend fills
``depth`` and the Omnidata depth model fills the format-v2 columns ``depth_omnidata``,
``depth_omnidata_min``, ``depth_omnidata_max`` (same codec, same geometry and map size, stored as
``1 - d`` as above); the trainer's ``data.depth`` picks which one it trains on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image

from humanverse.config import check
from pipelines import rows as R
from pipelines.geometry import Canvas, MapsConfig
from pipelines.stages.base import ModelStage
from pipelines.stages.loading import Device, Dtype

log = logging.getLogger(__name__)


# -- shared by the map stages (depth, normal) --------------------------------------------------------


class MapInputError(ValueError):
    """A row's image/canvas bytes or geometry are inconsistent (a per-row problem, not a batch one)."""


def map_input(row: dict) -> tuple[Image.Image, Canvas]:
    """The image a map model sees for ``row`` (the outpainted canvas if any, else the stored image)
    and the :class:`Canvas` that maps its pixels back to the stored frame.

    Raises :class:`MapInputError` when the bytes do not decode or their size disagrees with the
    row's ``width``/``height`` and ``outpaint`` record.
    """
    from humanverse.codecs import decode_image

    width, height = int(row["width"]), int(row["height"])
    outpaint = row.get("outpaint")
    if row.get("canvas") is not None:
        try:
            canvas = Canvas.from_record(width, height, outpaint)
        except (KeyError, TypeError, ValueError) as e:
            raise MapInputError(f"the outpaint record {outpaint!r} does not describe a canvas for a "
                                f"{width}x{height} image: {e}") from e
        what, data, expected = "canvas", row["canvas"], (canvas.canvas_width, canvas.canvas_height)
    else:
        if outpaint and outpaint.get("applied"):
            raise MapInputError("the outpaint record says a canvas was applied but the row carries no canvas bytes.")
        canvas = Canvas.identity(width, height)
        what, data, expected = "image", row["image"], (width, height)
    try:
        image = decode_image(data)
    except Exception as e:  # noqa: BLE001 - PIL raises many types for bad bytes
        raise MapInputError(f"the {what} bytes do not decode: {type(e).__name__}: {e}") from e
    if image.size != expected:
        raise MapInputError(f"the {what} is {image.width}x{image.height} but the row's geometry says "
                            f"{expected[0]}x{expected[1]}.")
    return image, canvas


def fit_map(m: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an (H, W) or (H, W, C) float map to ``size`` = (width, height): bilinear,
    ``align_corners=False``, antialiased when shrinking; returned unchanged when already that size."""
    import torch
    import torch.nn.functional as F

    width, height = size
    if m.shape[:2] == (height, width):
        return m
    t = torch.from_numpy(np.ascontiguousarray(m, dtype=np.float32))
    t = t[None, None] if t.ndim == 2 else t.permute(2, 0, 1)[None]  # (1, C, H, W)
    t = F.interpolate(t, size=(height, width), mode="bilinear", align_corners=False, antialias=True)[0]
    return (t[0] if m.ndim == 2 else t.permute(1, 2, 0)).numpy()


def reject_bad_inputs(stage: str, rows: list[dict]) -> tuple[list[dict], list[Image.Image], list[Canvas]]:
    """Decode every row's model input; rows whose input is inconsistent are rejected (``model_error``
    with the reason as detail) so the rest of the batch goes on. Returns the good rows and inputs."""
    good, images, canvases = [], [], []
    for r in rows:
        try:
            image, canvas = map_input(r)
        except MapInputError as e:
            log.warning("%s: rejecting row %s: %s", stage, r.get("id"), e)
            R.reject(r, stage, "model_error", f"{stage} input: {e}")
            continue
        good.append(r)
        images.append(image)
        canvases.append(canvas)
    return good, images, canvases


def set_map_size(row: dict, size: tuple[int, int]) -> None:
    row["map_width"], row["map_height"] = int(size[0]), int(size[1])


# -- the depth stage -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DepthConfig:
    backend: Literal["midas", "omnidata"] = "midas"
    #: model spec overriding ``--models`` for this stage (a zoo spec; for ``omnidata`` also the
    #: checkpoint file)
    model: str | None = None
    #: ``omnidata`` only: the shorter side the model sees (rounded to a multiple of 32, aspect kept);
    #: ``midas`` always uses its checkpoint's processor config (384x384)
    working_size: int = 384
    device: Device = "auto"
    dtype: Dtype = "auto"
    #: also run Omnidata depth into ``depth_omnidata`` (the paper stores both; needs backend ``midas``)
    also_omnidata: bool = False
    #: model spec overriding ``--models`` for the Omnidata depth of ``also_omnidata``
    omnidata_model: str | None = None

    def __post_init__(self):
        check(self.backend in ("midas", "omnidata"),
              f"depth.backend must be 'midas' or 'omnidata', got {self.backend!r}.")
        check(isinstance(self.also_omnidata, bool), f"depth.also_omnidata must be true or false, got "
              f"{self.also_omnidata!r}.")
        check(not (self.also_omnidata and self.backend != "midas"),
              "depth.also_omnidata stores Omnidata depth beside MiDaS depth: it needs depth.backend 'midas'.")
        check(isinstance(self.working_size, int) and self.working_size >= 32 and self.working_size % 32 == 0,
              f"depth.working_size must be a positive multiple of 32, got {self.working_size!r}.")


class _MidasBackend:
    """``DPTForDepthEstimation`` with its checkpoint's ``DPTImageProcessor``: relative inverse depth."""

    def __init__(self, config: DepthConfig, models: str):
        import torch
        from transformers import DPTForDepthEstimation, DPTImageProcessor

        from pipelines.stages.loading import load_pretrained

        self.model, self.processor, self.tag, self.device, self.dtype = load_pretrained(
            "midas-dpt-hybrid", config, models, DPTForDepthEstimation, processor_class=DPTImageProcessor)
        self._torch = torch

    def predict(self, images: list[Image.Image]) -> list[np.ndarray]:
        """One (H, W) float32 map per image, at that image's size."""
        torch = self._torch
        # Preprocess one by one, then batch the images whose inputs share a shape (with the hub's
        # 384x384 squash: all of them; a keep-aspect processor config would give several groups).
        inputs = [self.processor(images=im, return_tensors="pt")["pixel_values"] for im in images]
        groups: dict[tuple[int, ...], list[int]] = {}
        for i, x in enumerate(inputs):
            groups.setdefault(tuple(x.shape), []).append(i)
        out: list = [None] * len(images)
        for idx in groups.values():
            x = torch.cat([inputs[i] for i in idx]).to(self.device, self.dtype)  # (B, 3, 384, 384)
            with torch.inference_mode():
                res = self.model(pixel_values=x)
            res.predicted_depth = res.predicted_depth.float()  # (B, h, w)
            post = self.processor.post_process_depth_estimation(
                res, target_sizes=[(images[i].height, images[i].width) for i in idx])  # bicubic
            for i, p in zip(idx, post):
                out[i] = p["predicted_depth"].reshape(images[i].height, images[i].width).cpu().numpy()
        return out


class _OmnidataDepthBackend:
    """Omnidata v2 depth, stored as ``1 - d`` (larger = nearer; see the module docstring)."""

    def __init__(self, config: DepthConfig, models: str):
        from pipelines.annotators.omnidata import OmnidataProcessor, load_omnidata
        from pipelines.stages.loading import placed

        model, self.tag = load_omnidata("omnidata-depth", config.model or models, "depth")
        self.model, self.device, self.dtype = placed(model, config)
        self.processor = OmnidataProcessor(task="depth", size=config.working_size)
        log.warning("depth: the omnidata backend stores 1 - depth (larger = nearer), a non-linear proxy "
                    "for MiDaS's inverse depth; do not mix backends in one training set.")

    def predict(self, images: list[Image.Image]) -> list[np.ndarray]:
        from pipelines.annotators.omnidata import predict_maps

        maps = predict_maps(self.model, images, self.processor, batch_size=max(1, len(images)))  # in [0, 1]
        return [(1.0 - m).astype(np.float32) for m in maps]


class DepthEstimator(ModelStage):
    """Fills ``depth``, ``depth_min``, ``depth_max`` (relative inverse depth, larger = nearer) and
    ``map_width``/``map_height`` for every alive row."""

    name = "depth"

    def __init__(self, config: DepthConfig, models: str = "paper", clip_dim: int | None = None,
                 maps: MapsConfig = MapsConfig()):
        super().__init__(clip_dim)
        self.config = config
        self.maps = maps
        backend = _MidasBackend if config.backend == "midas" else _OmnidataDepthBackend
        self.backend = backend(config, models)
        self.omnidata = None
        if config.also_omnidata:
            import dataclasses

            self.omnidata = _OmnidataDepthBackend(dataclasses.replace(config, model=config.omnidata_model), models)
        log.info("depth: %s backend, model %s%s, maps %s", config.backend, self.backend.tag,
                 f", and Omnidata depth {self.omnidata.tag} into depth_omnidata" if self.omnidata else "",
                 f"capped at {maps.max_side}" if maps.max_side else "at the stored size")

    def process(self, rows: list[dict]) -> None:
        from humanverse.codecs import encode_depth

        rows, images, canvases = reject_bad_inputs(self.name, rows)
        if not rows:
            return
        predictions = self.backend.predict(images)  # each (H_canvas, W_canvas)
        second = self.omnidata.predict(images) if self.omnidata else [None] * len(rows)
        for r, canvas, pred, pred2 in zip(rows, canvases, predictions, second):
            size = self.maps.size(canvas.width, canvas.height)
            depth = fit_map(canvas.crop_map(pred), size)  # (map_height, map_width)
            depth2 = None if pred2 is None else fit_map(canvas.crop_map(pred2), size)
            if not np.isfinite(depth).all() or (depth2 is not None and not np.isfinite(depth2).all()):
                log.warning("depth: rejecting row %s: the model produced non-finite values", r.get("id"))
                R.reject(r, self.name, "model_error", "depth: the model produced non-finite values.")
                continue
            enc = encode_depth(depth)
            r["depth"], r["depth_min"], r["depth_max"] = enc.png, enc.depth_min, enc.depth_max
            set_map_size(r, size)
            R.add_model(r, self.name, self.backend.tag)
            if depth2 is not None:
                enc2 = encode_depth(depth2)
                r["depth_omnidata"], r["depth_omnidata_min"], r["depth_omnidata_max"] = (
                    enc2.png, enc2.depth_min, enc2.depth_max)
                R.add_model(r, "depth_omnidata", self.omnidata.tag)


__all__ = ["DepthConfig", "DepthEstimator", "MapInputError", "fit_map", "map_input", "reject_bad_inputs",
           "set_map_size"]
