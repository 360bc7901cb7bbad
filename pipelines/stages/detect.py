"""Person detection (HyperHuman §4: YOLOS finds the persons whose count and area filter the images).

Backends, chosen by ``DetectConfig.backend``:

* ``yolos`` (default, the paper's): transformers ``YolosForObjectDetection`` + ``YolosImageProcessor``
  (``hustvl/yolos-tiny``). YOLOS has no pixel mask, so padding a mixed-size batch changes its
  predictions: images are batched only with others of the same size.
* ``ultralytics``: a YOLO model from a ``.pt`` checkpoint or a ``.yaml`` architecture (the optional
  ``ultralytics`` extra). COCO-80 class 0 is person.

Boxes are xyxy in stored-image pixels, clipped to the image, sorted by score (descending).
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import Literal

from PIL import Image

from humanverse.config import check
from pipelines import rows as R
from pipelines.stages.base import ModelStage
from pipelines.stages.loading import Device, Dtype

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DetectConfig:
    backend: Literal["yolos", "ultralytics"] = "yolos"
    #: model spec overriding ``--models`` for this stage: a zoo spec (``tiny``, ``paper``, a
    #: directory, ``org/repo@rev``) for yolos; a ``.pt``/``.yaml`` path for ultralytics
    model: str | None = None
    score_threshold: float = 0.5
    #: keep at most this many persons per image (highest scores); None keeps all above threshold
    top_k: int | None = None
    device: Device = "auto"
    dtype: Dtype = "auto"

    def __post_init__(self):
        check(0.0 <= self.score_threshold <= 1.0,
              f"detect.score_threshold must be in [0, 1], got {self.score_threshold}.")
        check(self.top_k is None or self.top_k >= 1, f"detect.top_k must be >= 1 or null, got {self.top_k}.")
        check(self.backend != "ultralytics" or bool(self.model),
              "detect.model must name a YOLO .pt or .yaml file when detect.backend is 'ultralytics'.")


def _load_image(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as img:
        return img.convert("RGB")


class _YolosBackend:
    def __init__(self, config: DetectConfig, models: str):
        import torch
        from transformers import YolosForObjectDetection, YolosImageProcessor

        from pipelines.stages.loading import load_pretrained

        self.model, self.processor, self.tag, self.device, self.dtype = load_pretrained(
            "yolos-tiny", config, models, YolosForObjectDetection, processor_class=YolosImageProcessor,
            use_safetensors=True)
        label2id = {k.lower(): v for k, v in self.model.config.label2id.items()}
        self.person_id = int(label2id.get("person", 1))
        self.threshold = config.score_threshold
        self._torch = torch

    def detect(self, images: list[Image.Image]) -> list[list[tuple[list[float], float]]]:
        torch = self._torch
        out: list = [None] * len(images)
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, im in enumerate(images):
            by_size.setdefault(im.size, []).append(i)
        for (w, h), idx in by_size.items():
            enc = self.processor(images=[images[i] for i in idx], return_tensors="pt")
            pixel_values = enc["pixel_values"].to(self.device, self.dtype)
            with torch.inference_mode():
                res = self.model(pixel_values=pixel_values)
            res.logits, res.pred_boxes = res.logits.float(), res.pred_boxes.float()
            post = self.processor.post_process_object_detection(res, threshold=self.threshold,
                                                                target_sizes=[(h, w)] * len(idx))
            for i, p in zip(idx, post):
                keep = p["labels"] == self.person_id
                out[i] = [(b.tolist(), float(s)) for b, s in zip(p["boxes"][keep], p["scores"][keep])]
        return out


class _UltralyticsBackend:
    def __init__(self, config: DetectConfig, models: str):
        try:
            from ultralytics import YOLO
        except ImportError as e:
            raise ImportError("detect.backend 'ultralytics' needs the 'ultralytics' extra: "
                              "pip install -e '.[ultralytics]'") from e
        from pipelines.stages.loading import pick_device

        self.model = YOLO(config.model)
        self.tag = f"ultralytics:{config.model}"
        self.device = str(pick_device(config.device))
        self.threshold = config.score_threshold

    def detect(self, images: list[Image.Image]) -> list[list[tuple[list[float], float]]]:
        results = self.model.predict(images, conf=self.threshold, classes=[0], device=self.device, verbose=False)
        out = []
        for r in results:
            b = r.boxes
            out.append([(xyxy.tolist(), float(c)) for xyxy, c in zip(b.xyxy.cpu(), b.conf.cpu())])
        return out


class PersonDetector(ModelStage):
    """Detects persons; fills ``persons`` (bbox, score; keypoints null) and ``num_persons``."""

    name = "detect"

    def __init__(self, config: DetectConfig, models: str = "paper", clip_dim: int | None = None):
        super().__init__(clip_dim)
        self.config = config
        backend = _YolosBackend if config.backend == "yolos" else _UltralyticsBackend
        self.backend = backend(config, models)
        log.info("detect: %s backend, model %s", config.backend, self.backend.tag)

    def process(self, rows: list[dict]) -> None:
        images = [_load_image(r["image"]) for r in rows]
        dets = self.backend.detect(images)
        for r, im, d in zip(rows, images, dets):
            w, h = im.size
            boxes = []
            for (x0, y0, x1, y1), s in sorted(d, key=lambda t: -t[1]):
                x0, x1 = min(max(x0, 0.0), w), min(max(x1, 0.0), w)
                y0, y1 = min(max(y0, 0.0), h), min(max(y1, 0.0), h)
                if x1 > x0 and y1 > y0:
                    boxes.append({"bbox": [x0, y0, x1, y1], "score": s, "keypoints": None})
            if self.config.top_k is not None:
                boxes = boxes[: self.config.top_k]
            r["persons"] = boxes
            r["num_persons"] = len(boxes)
            R.add_model(r, self.name, self.backend.tag)
