"""Surface-normal maps (HyperHuman §4: every HumanVerse image carries a surface-normal map from
Omnidata; stage 1 denoises it jointly with RGB and depth).

The model is Omnidata v2's DPT-Hybrid normal head (Eftekhar et al., "Omnidata: A Scalable Pipeline
for Making Multi-Task Mid-Level Vision Datasets from 3D Scans", ICCV 2021; the DPT of Ranftl et al.,
ICCV 2021), our :class:`~pipelines.annotators.omnidata.OmnidataDPT` loading the published weights
(non-commercial EULA, never vendored: pass the downloaded file or its directory; ``docs/models.md``).

Pre/post-processing is :class:`~pipelines.annotators.omnidata.OmnidataProcessor`: the whole canvas
resized bilinearly so its shorter side is about ``working_size`` (aspect kept, sides multiples of
32; no centre crop, so every pixel gets a normal), ``ToTensor`` to [0, 1] with no normalisation;
the [0, 1] output is clamped, resized back to the canvas size bilinearly, mapped with ``n = 2x - 1``
and renormalised to unit length.

Geometry, as for depth (:mod:`pipelines.stages.depth`): on the outpainted canvas if any, cropped
to the stored frame, resized to ``maps.size(width, height)`` when maps are capped (bilinear,
antialiased, per component) and renormalised after that resize. Pixels whose vector vanishes face
the camera, (0, 0, 1).

Stored with :func:`humanverse.codecs.encode_normal` (8-bit RGB PNG, ``n = rgb / 127.5 - 1``) in
the documented camera frame: +X right, +Y down, +Z towards the viewer. Omnidata's network outputs
+Z *away* from the viewer (its demo outputs and ground truth show a camera-facing surface as
(0, 0, -1) and a floor as (0, -1, 0)), so the processor negates z
(:data:`pipelines.annotators.omnidata.processing.NETWORK_TO_STORED_FRAME`); the frames are
described once, in docs/models.md.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from humanverse.config import check
from pipelines import rows as R
from pipelines.geometry import MapsConfig
from pipelines.stages.base import ModelStage
from pipelines.stages.depth import fit_map, reject_bad_inputs, set_map_size
from pipelines.stages.loading import Device, Dtype

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class NormalConfig:
    #: model spec overriding ``--models`` for this stage: a zoo spec, a directory holding
    #: ``omnidata_dpt_normal_v2.ckpt`` or a saved OmnidataDPT, or the checkpoint file itself
    model: str | None = None
    #: the shorter side the model sees (rounded to a multiple of 32, aspect kept); Omnidata was
    #: trained at 384
    working_size: int = 384
    device: Device = "auto"
    dtype: Dtype = "auto"

    def __post_init__(self):
        check(isinstance(self.working_size, int) and self.working_size >= 32 and self.working_size % 32 == 0,
              f"normal.working_size must be a positive multiple of 32, got {self.working_size!r}.")


def unit_normals(n: np.ndarray) -> np.ndarray:
    """Renormalise an (H, W, 3) field to unit length; vanishing vectors become (0, 0, 1)."""
    length = np.linalg.norm(n, axis=-1, keepdims=True)
    facing = np.array([0.0, 0.0, 1.0], np.float32)
    return np.where(length > 1e-6, n / np.maximum(length, 1e-6), facing).astype(np.float32)


class NormalEstimator(ModelStage):
    """Fills ``normal`` (unit camera-frame normals) and ``map_width``/``map_height``."""

    name = "normal"

    def __init__(self, config: NormalConfig, models: str = "paper", clip_dim: int | None = None,
                 maps: MapsConfig = MapsConfig()):
        super().__init__(clip_dim)
        from pipelines.annotators.omnidata import OmnidataProcessor, load_omnidata
        from pipelines.stages.loading import placed

        self.config = config
        self.maps = maps
        model, self.tag = load_omnidata("omnidata-normal", config.model or models, "normal")
        self.model, self.device, self.dtype = placed(model, config)
        self.processor = OmnidataProcessor(task="normal", size=config.working_size)
        log.info("normal: model %s, working size %d, maps %s", self.tag, config.working_size,
                 f"capped at {maps.max_side}" if maps.max_side else "at the stored size")

    def process(self, rows: list[dict]) -> None:
        from humanverse.codecs import encode_normal
        from pipelines.annotators.omnidata import predict_maps

        rows, images, canvases = reject_bad_inputs(self.name, rows)
        if not rows:
            return
        # grouped by working size inside predict_maps; each map (H_canvas, W_canvas, 3), unit length
        predictions = predict_maps(self.model, images, self.processor, batch_size=len(images))
        for r, canvas, pred in zip(rows, canvases, predictions):
            size = self.maps.size(canvas.width, canvas.height)
            normal = fit_map(canvas.crop_map(pred), size)  # (map_height, map_width, 3)
            if not np.isfinite(normal).all():  # e.g. a float16 overflow on one image
                log.warning("normal: rejecting row %s: the model produced non-finite values", r.get("id"))
                R.reject(r, self.name, "model_error", "normal: the model produced non-finite values.")
                continue
            r["normal"] = encode_normal(unit_normals(normal))
            set_map_size(r, size)
            R.add_model(r, self.name, self.tag)


__all__ = ["NormalConfig", "NormalEstimator", "unit_normals"]
