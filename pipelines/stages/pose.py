"""Whole-body pose (HyperHuman §4: ViTPose-H, 133 COCO-WholeBody keypoints per detected person).

Top-down: every detected person box is cropped and the model predicts one heatmap per keypoint
(ViTPose, Xu et al. 2022, "ViTPose: Simple Vision Transformer Baselines for Human Pose
Estimation"; the whole-body model is ViTPose++-H's COCO-WholeBody split).

Backends, chosen by ``PoseConfig.backend``:

* ``vitpose`` (default): transformers ``VitPoseForPoseEstimation`` + ``VitPoseImageProcessor``. The
  processor pads each box by 1.25 to the 192:256 aspect, crops it with the UDP affine warp (Huang
  et al. 2020) to 256x192, and :meth:`post_process_pose_estimation` decodes the 64x48 heatmaps
  with DARK-UDP refinement (Gaussian modulation, kernel 11) and the inverse warp -- the decoding of
  ViTPose's own whole-body test config (``use_udp=True``, ``modulate_kernel=11``), so it is used
  as is. The model must predict 133 heatmaps: no Hugging Face checkpoint does (``docs/models.md``), so a
  17-keypoint one is refused; convert ViTPose++-H's ``wholebody.pth`` (zoo entry
  ``vitpose-wholebody``). ViTPose+ (MoE) checkpoints get ``dataset_index`` 5 (the COCO-WholeBody
  expert).
* ``mmpose`` (the paper's route): MMPose 1.x ``init_model`` + ``inference_topdown``
  (:mod:`pipelines.annotators.mmpose_backend`, an optional extra).

Coordinates: the image the model sees is the outpainted canvas when there is one (``canvas``),
else the stored image; boxes (stored pixels) are moved to the canvas with
:meth:`pipelines.geometry.Canvas.boxes_to_canvas` and keypoints come back with
:meth:`~pipelines.geometry.Canvas.keypoints_to_stored`, which zero-scores keypoints outside the
original frame (the paper keeps only labels inside the original region). Our pixel convention puts
a pixel's centre at ``i + 0.5``; MMPose/ViTPose (cv2 warps) and COCO keypoints put it at ``i``
(as Detectron2 reads COCO), so boxes go in shifted by -0.5 and keypoints come out shifted by
+0.5: the crop samples the pixels the model was trained to see, and the decode is exact.

Scores are the heatmap maxima clipped at 0 (0 = not there, as outside the frame); a non-finite
decode (never seen with a real model) is written as (0, 0, 0). ``flip_test`` averages with the
horizontally flipped crop's heatmaps, flipped back with left/right swapped (``FLIP_PAIRS``); under
UDP the flip maps heatmap column j to 47 - j exactly, so no shift is applied (ViTPose's
``shift_heatmap=False`` with UDP).
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image

from humanverse.codecs import encode_keypoints
from humanverse.config import check
from humanverse.schema import NUM_KEYPOINTS
from humanverse.skeleton import FLIP_PAIRS
from pipelines import rows as R
from pipelines.geometry import Canvas
from pipelines.stages.base import ModelStage
from pipelines.stages.loading import Device, Dtype

log = logging.getLogger(__name__)

#: ViTPose+ expert index of COCO-WholeBody (transformers' ``dataset_index``).
WHOLEBODY_DATASET_INDEX = 5
#: The box padding ``VitPoseImageProcessor`` applies (hard-coded there); other values are reached
#: by scaling the boxes about their centres before the processor.
PROCESSOR_BOX_PADDING = 1.25
#: DARK modulation kernel of ViTPose's test config.
DARK_KERNEL = 11


@dataclass(frozen=True)
class PoseConfig:
    backend: Literal["vitpose", "mmpose"] = "vitpose"
    #: vitpose: a zoo spec overriding ``--models`` (entry ``vitpose-wholebody``: a local directory
    #: of a converted checkpoint, or ``tiny``); mmpose: the checkpoint file
    model: str | None = None
    #: mmpose: the MMPose 1.x config file
    mmpose_config: str | None = None
    #: box padding factor around the detected box (ViTPose's 1.25)
    box_padding: float = 1.25
    #: average with the flipped crop's heatmaps (ViTPose-H whole-body evaluation does)
    flip_test: bool = False
    #: person crops per forward pass
    batch_size: int = 32
    device: Device = "auto"
    dtype: Dtype = "auto"

    def __post_init__(self):
        check(self.backend in ("vitpose", "mmpose"),
              f"pose.backend must be 'vitpose' or 'mmpose', got {self.backend!r}.")
        check(1.0 <= self.box_padding <= 3.0, f"pose.box_padding must be in [1, 3], got {self.box_padding}.")
        check(self.batch_size >= 1, f"pose.batch_size must be >= 1, got {self.batch_size}.")
        if self.backend == "mmpose":
            check(bool(self.mmpose_config) and bool(self.model),
                  "pose.backend 'mmpose' needs pose.mmpose_config (an MMPose config file) and pose.model "
                  "(its checkpoint file).")
        else:
            check(self.mmpose_config is None,
                  "pose.mmpose_config is only used by pose.backend 'mmpose'; remove it or set the backend.")


def check_wholebody(num_labels: int, what: str) -> None:
    """Refuse a pose model that does not predict the 133 COCO-WholeBody keypoints."""
    if num_labels != NUM_KEYPOINTS:
        raise ValueError(
            f"pose model {what} predicts {num_labels} keypoints but HumanVerse needs the {NUM_KEYPOINTS} "
            "COCO-WholeBody ones; no Hugging Face ViTPose checkpoint is whole-body (see the notes of zoo entry "
            "'vitpose-wholebody': convert ViTPose++-H's wholebody.pth), or use pose.backend 'mmpose'.")


def _decode(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as img:
        return img.convert("RGB")


def pad_boxes(boxes_xyxy: np.ndarray, factor: float) -> np.ndarray:
    """Scale xyxy boxes about their centres by ``factor``."""
    b = np.asarray(boxes_xyxy, np.float64).reshape(-1, 4)
    c = (b[:, :2] + b[:, 2:]) / 2
    half = (b[:, 2:] - b[:, :2]) / 2 * factor
    return np.concatenate([c - half, c + half], axis=1)


def processor_boxes(boxes_xyxy, box_padding: float = PROCESSOR_BOX_PADDING) -> list[list[float]]:
    """xyxy boxes (our convention) -> ``VitPoseImageProcessor`` boxes: COCO xywh in its pixel-index
    convention (-0.5), pre-scaled so that its built-in 1.25 padding makes ``box_padding`` overall."""
    p = pad_boxes(boxes_xyxy, box_padding / PROCESSOR_BOX_PADDING) - 0.5
    return [[x0, y0, x1 - x0, y1 - y0] for x0, y0, x1, y1 in p.tolist()]


def sanitize_keypoints(kp: np.ndarray) -> np.ndarray:
    """(..., K, 3): non-finite rows -> (0, 0, 0); scores clipped at 0."""
    kp = np.array(kp, np.float32, copy=True)
    bad = ~np.isfinite(kp).all(axis=-1)
    kp[bad] = 0.0
    kp[..., 2] = np.maximum(kp[..., 2], 0.0)
    return kp


class _VitPoseBackend:
    """transformers ViTPose; boxes and keypoints in canvas pixels, our (centre at i + 0.5) convention."""

    def __init__(self, config: PoseConfig, models: str):
        import torch
        from transformers import VitPoseForPoseEstimation, VitPoseImageProcessor

        from pipelines.stages.loading import load_pretrained

        self.model, self.processor, self.tag, self.device, self.dtype = load_pretrained(
            "vitpose-wholebody", config, models, VitPoseForPoseEstimation, processor_class=VitPoseImageProcessor,
            use_safetensors=True)
        self.config = config
        check_wholebody(self.model.config.num_labels, self.tag)
        backbone = self.model.config.backbone_config
        size = self.processor.size
        if [size["height"], size["width"]] != list(backbone.image_size):
            raise ValueError(f"pose model {self.tag}: its processor crops {size['height']}x{size['width']} but the "
                             f"backbone expects {backbone.image_size[0]}x{backbone.image_size[1]}.")
        self.moe = getattr(backbone, "num_experts", 1) > 1
        self.flip_pairs = torch.tensor(FLIP_PAIRS, dtype=torch.long, device=self.device)
        self._torch = torch

    def _heatmaps(self, pixel_values):
        """(N, 3, 256, 192) crops -> (N, 133, 64, 48) float32 heatmaps on the CPU."""
        torch = self._torch
        out = []
        for i in range(0, len(pixel_values), self.config.batch_size):
            x = pixel_values[i:i + self.config.batch_size].to(self.device, self.dtype)
            kw = {}
            if self.moe:
                kw["dataset_index"] = torch.full((len(x),), WHOLEBODY_DATASET_INDEX, dtype=torch.long,
                                                 device=self.device)
            with torch.inference_mode():
                hm = self.model(pixel_values=x, **kw).heatmaps
                if self.config.flip_test:
                    hm_flip = self.model(pixel_values=x.flip(-1), flip_pairs=self.flip_pairs, **kw).heatmaps
                    hm = (hm + hm_flip) * 0.5
            out.append(hm.float().cpu())
        return torch.cat(out)

    def predict(self, images: list[Image.Image], boxes: list[np.ndarray]) -> list[np.ndarray]:
        """Per image, (N, 4) xyxy boxes -> (N, 133, 3) keypoints (x, y, score) in the same pixels."""
        from transformers.models.vitpose.modeling_vitpose import VitPoseEstimatorOutput

        torch = self._torch
        coco = [processor_boxes(b, self.config.box_padding) for b in boxes]
        crops = [self.processor(images=[im], boxes=[c], return_tensors="pt")["pixel_values"]
                 for im, c in zip(images, coco) if c]
        if not crops:
            return [np.zeros((0, NUM_KEYPOINTS, 3), np.float32) for _ in images]
        heatmaps = self._heatmaps(torch.cat(crops))
        results, start = [], 0
        for c in coco:
            n = len(c)
            if n == 0:
                results.append(np.zeros((0, NUM_KEYPOINTS, 3), np.float32))
                continue
            post = self.processor.post_process_pose_estimation(
                VitPoseEstimatorOutput(heatmaps=heatmaps[start:start + n]), boxes=[c], kernel_size=DARK_KERNEL)[0]
            start += n
            kp = np.zeros((n, NUM_KEYPOINTS, 3), np.float32)
            for k, p in enumerate(post):
                kp[k, :, :2] = p["keypoints"].numpy() + 0.5
                kp[k, :, 2] = p["scores"].numpy().reshape(-1)
            results.append(kp)
        return results


class _MMPoseAdapter:
    def __init__(self, config: PoseConfig):
        from pipelines.annotators.mmpose_backend import MMPoseBackend
        from pipelines.stages.loading import pick_device

        device = pick_device(config.device)
        self.backend = MMPoseBackend(config.mmpose_config, config.model,
                                     device="cuda:0" if device.type == "cuda" else "cpu",
                                     box_padding=config.box_padding, flip_test=config.flip_test)
        self.tag = f"mmpose:{Path(config.mmpose_config).name}:{Path(config.model).name}"

    def predict(self, images: list[Image.Image], boxes: list[np.ndarray]) -> list[np.ndarray]:
        return [self.backend.predict(np.asarray(im), b) for im, b in zip(images, boxes)]


class PoseEstimator(ModelStage):
    """Fills ``persons[i]["keypoints"]`` (133 x (x, y, score), stored pixels, flat 399) for alive rows."""

    name = "pose"

    def __init__(self, config: PoseConfig, models: str = "paper", clip_dim: int | None = None):
        super().__init__(clip_dim)
        self.config = config
        self.backend = _VitPoseBackend(config, models) if config.backend == "vitpose" else _MMPoseAdapter(config)
        log.info("pose: %s backend, model %s, flip_test %s", config.backend, self.backend.tag, config.flip_test)

    def process(self, rows: list[dict]) -> None:
        work = []  # (row, canvas, image, canvas boxes)
        for r in rows:
            persons = r.get("persons") or []
            if not persons:
                continue
            canvas = Canvas.from_record(r["width"], r["height"], r.get("outpaint"))
            img = _decode(r["canvas"] if r.get("canvas") else r["image"])
            if img.size != (canvas.canvas_width, canvas.canvas_height):
                R.reject(r, self.name, "model_error",
                         f"the pose input is {img.size[0]}x{img.size[1]} but the outpaint record says "
                         f"{canvas.canvas_width}x{canvas.canvas_height}.")
                continue
            work.append((r, canvas, img, canvas.boxes_to_canvas([p["bbox"] for p in persons])))
        if not work:
            return
        keypoints = self.backend.predict([w[2] for w in work], [w[3] for w in work])
        for (r, canvas, _, _), kp in zip(work, keypoints):
            kp = sanitize_keypoints(canvas.keypoints_to_stored(kp))
            r["persons"] = [dict(p, keypoints=encode_keypoints(k)) for p, k in zip(r["persons"], kp)]
            R.add_model(r, self.name, self.backend.tag)


__all__ = ["PoseConfig", "PoseEstimator", "check_wholebody", "pad_boxes", "processor_boxes", "sanitize_keypoints"]
