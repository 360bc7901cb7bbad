"""Whole-body pose (HyperHuman §4: ViTPose-H, 133 COCO-WholeBody keypoints per detected person).

Top-down: every detected person box is cropped and the model predicts one heatmap per keypoint
(ViTPose, Xu et al. 2022, "ViTPose: Simple Vision Transformer Baselines for Human Pose
Estimation"; the whole-body model is ViTPose++-H's COCO-WholeBody split).

Backends, chosen by ``PoseConfig.backend``:

* ``vitpose`` (default): transformers ``VitPoseForPoseEstimation``. The model must predict 133
  heatmaps: no Hugging Face checkpoint does (``docs/models.md``), so a 17-keypoint one is refused;
  convert ViTPose++-H's ``wholebody.pth`` (``humanverse zoo convert-vitpose``, zoo entry
  ``vitpose-wholebody``). ViTPose+ (MoE) checkpoints get ``dataset_index`` 5 (the COCO-WholeBody
  expert). Two decodings, chosen by the model folder's ``pose_decoding.json`` (written by the
  converter; ``PoseConfig.decoding`` overrides it):

  - ``classic``, the paper's whole-body model: its test config
    (``ViTPose_huge_wholebody_256x192.py``: ``use_udp`` off, ``flip_test=True``,
    ``shift_heatmap=True``, ``post_process='default'``) -- each box grown to 192:256 and padded by
    1.25, cropped with the non-UDP affine warp (box centre -> crop centre, box width -> 192 px),
    heatmaps argmax-decoded with the quarter-pixel shift towards the higher neighbour and mapped
    back with ``x = j * w / 48 + cx - w / 2`` (:func:`classic_affine`, :func:`classic_decode`). The
    flipped crop's heatmaps are flipped back, left/right swapped, and shifted one column right.
  - ``udp``, for checkpoints trained with UDP (Huang et al. 2020): ``VitPoseImageProcessor``'s
    UDP crop and :meth:`post_process_pose_estimation` with DARK-UDP refinement (kernel 11). Decoding
    the whole-body head this way stretches keypoints by ~1.6 % of the box.
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
``shift_heatmap=False`` with UDP); the classic crop maps it to 47.75 - j, hence the one-column
shift (``shift_heatmap=True``).
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass, fields
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
    #: average with the flipped crop's heatmaps (ViTPose-H whole-body evaluation does); None: as the
    #: model folder's ``pose_decoding.json`` says (off when it has none)
    flip_test: bool | None = None
    #: vitpose: ``auto`` (the model folder's ``pose_decoding.json``; UDP when it has none),
    #: ``classic`` (non-UDP crop, the whole-body model's own) or ``udp``
    decoding: Literal["auto", "classic", "udp"] = "auto"
    #: person crops per forward pass
    batch_size: int = 32
    device: Device = "auto"
    dtype: Dtype = "auto"

    def __post_init__(self):
        check(self.backend in ("vitpose", "mmpose"),
              f"pose.backend must be 'vitpose' or 'mmpose', got {self.backend!r}.")
        check(1.0 <= self.box_padding <= 3.0, f"pose.box_padding must be in [1, 3], got {self.box_padding}.")
        check(self.batch_size >= 1, f"pose.batch_size must be >= 1, got {self.batch_size}.")
        check(self.decoding in ("auto", "classic", "udp"),
              f"pose.decoding must be 'auto', 'classic' or 'udp', got {self.decoding!r}.")
        if self.backend == "mmpose":
            check(bool(self.mmpose_config) and bool(self.model),
                  "pose.backend 'mmpose' needs pose.mmpose_config (an MMPose config file) and pose.model "
                  "(its checkpoint file).")
        else:
            check(self.mmpose_config is None,
                  "pose.mmpose_config is only used by pose.backend 'mmpose'; remove it or set the backend.")


@dataclass(frozen=True)
class PoseDecoding:
    """How a pose model's heatmaps are decoded (``pose_decoding.json`` beside the weights; the
    ``decoding`` section of ``humanverse/configs/vitpose-wholebody.json`` for the paper's model)."""

    use_udp: bool = True
    flip_test: bool = False
    shift_heatmap: bool = False
    #: ``default``: argmax + quarter-pixel shift (classic); UDP always uses DARK-UDP
    post_process: str = "default"
    box_padding: float = 1.25
    heatmap_size: tuple[int, int] = (64, 48)

    @classmethod
    def read(cls, folder: str | Path) -> PoseDecoding | None:
        """The decoding recorded in ``folder``, or None when it records none."""
        from humanverse.configs import POSE_DECODING_FILE

        path = Path(folder) / POSE_DECODING_FILE
        if not path.is_file():
            return None
        return cls.from_dict(json.loads(path.read_text(encoding="utf-8")), str(path))

    @classmethod
    def from_dict(cls, data: dict, where: str = "the decoding") -> PoseDecoding:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{where} has unknown keys {unknown}; expected some of {sorted(known)}.")
        if "heatmap_size" in data:
            data = {**data, "heatmap_size": tuple(data["heatmap_size"])}
        return cls(**data)


def box_center_scale(boxes_xywh, input_hw: tuple[int, int] = (256, 192), padding: float = PROCESSOR_BOX_PADDING):
    """COCO xywh boxes -> (centres (N, 2), sizes (N, 2) in pixels): grown to the input's aspect and
    padded, as ViTPose's ``_xywh2cs`` (the ``/200`` scale unit folded in)."""
    b = np.asarray(boxes_xywh, np.float64).reshape(-1, 4)
    center = b[:, :2] + b[:, 2:] * 0.5
    w, h = b[:, 2].copy(), b[:, 3].copy()
    aspect = input_hw[1] / input_hw[0]
    wide = w > aspect * h
    h[wide] = w[wide] / aspect
    w[~wide] = h[~wide] * aspect
    return center, np.stack([w, h], axis=1) * padding


def classic_affine(center, size, output_hw: tuple[int, int]) -> np.ndarray:
    """The non-UDP crop warp (ViTPose's ``get_affine_transform`` with ``rot=0``, no UDP): a 2x3
    matrix taking image pixels to crop pixels, box centre -> crop centre, box width -> crop width."""
    out_h, out_w = output_hw
    s = out_w / float(size[0])
    return np.array([[s, 0.0, out_w * 0.5 - s * center[0]], [0.0, s, out_h * 0.5 - s * center[1]]], np.float64)


def classic_decode(heatmaps: np.ndarray, centers: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """(N, K, h, w) heatmaps -> (N, K, 3) keypoints (x, y, max) in image pixels, classic decoding.

    ViTPose's ``keypoints_from_heatmaps(post_process='default', use_udp=False)``: the argmax,
    shifted a quarter cell towards the higher neighbour (away from the border), then
    ``x = j * w / heatmap_w + cx - w / 2`` (and the same for y).
    """
    hm = np.asarray(heatmaps, np.float32)
    n, k, h, w = hm.shape
    flat = hm.reshape(n, k, -1)
    idx = flat.argmax(-1)
    maxval = np.take_along_axis(flat, idx[..., None], -1)[..., 0]
    px, py = (idx % w).astype(np.float64), (idx // w).astype(np.float64)
    coords = np.stack([px, py], axis=-1)
    ii, kk = np.meshgrid(np.arange(n), np.arange(k), indexing="ij")
    ix, iy = px.astype(int), py.astype(int)
    inner = (ix > 1) & (ix < w - 1) & (iy > 1) & (iy < h - 1)
    xr, xl = hm[ii, kk, iy, np.minimum(ix + 1, w - 1)], hm[ii, kk, iy, np.maximum(ix - 1, 0)]
    yd, yu = hm[ii, kk, np.minimum(iy + 1, h - 1), ix], hm[ii, kk, np.maximum(iy - 1, 0), ix]
    coords += np.where(inner[..., None], np.sign(np.stack([xr - xl, yd - yu], -1)) * 0.25, 0.0)
    coords[maxval <= 0] = 0.0
    scale = sizes[:, None, :] / np.array([w, h], np.float64)
    xy = coords * scale + centers[:, None, :] - sizes[:, None, :] * 0.5
    return np.concatenate([xy, maxval[..., None]], axis=-1)


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
        from humanverse.zoo import resolve

        folder = Path(resolve("vitpose-wholebody", config.model or models).path)
        recorded = PoseDecoding.read(folder) if folder.is_dir() else None
        if config.decoding == "udp" or (config.decoding == "auto" and recorded is None):
            self.decoding = PoseDecoding()  # UDP, DARK-UDP decoding, no flip unless configured
        elif recorded is not None and not recorded.use_udp:
            self.decoding = recorded
        else:  # classic asked for a model that records none: the whole-body test config
            from humanverse.configs import section

            self.decoding = PoseDecoding.from_dict(section("vitpose-wholebody", "decoding"))
        self.input_hw = (size["height"], size["width"])
        self.mean = np.asarray(self.processor.image_mean, np.float32)
        self.std = np.asarray(self.processor.image_std, np.float32)

    @property
    def flip_test(self) -> bool:
        """The config's ``flip_test`` when set, else the model's recorded decoding."""
        return self.decoding.flip_test if self.config.flip_test is None else self.config.flip_test

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
                if self.flip_test:
                    # flipped back with left/right swapped by the model (flip_pairs)
                    hm_flip = self.model(pixel_values=x.flip(-1), flip_pairs=self.flip_pairs, **kw).heatmaps
                    if self.decoding.shift_heatmap:
                        hm_flip = hm_flip.clone()
                        hm_flip[..., 1:] = hm_flip[..., :-1].clone()
                    hm = (hm + hm_flip) * 0.5
            out.append(hm.float().cpu())
        return torch.cat(out)

    def classic_crops(self, image: Image.Image, coco: list[list[float]]):
        """(crops (N, 3, H, W) normalised, centres, sizes) with the non-UDP affine warp."""
        import cv2

        torch = self._torch
        arr = np.asarray(image.convert("RGB"))
        centers, sizes = box_center_scale(coco, self.input_hw, PROCESSOR_BOX_PADDING)
        out_h, out_w = self.input_hw
        crops = []
        for c, wh in zip(centers, sizes):
            crop = cv2.warpAffine(arr, classic_affine(c, wh, self.input_hw), (out_w, out_h), flags=cv2.INTER_LINEAR)
            crops.append((crop.astype(np.float32) / 255.0 - self.mean) / self.std)
        return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous(), centers, sizes

    def predict(self, images: list[Image.Image], boxes: list[np.ndarray]) -> list[np.ndarray]:
        """Per image, (N, 4) xyxy boxes -> (N, 133, 3) keypoints (x, y, score) in the same pixels."""
        coco = [processor_boxes(b, self.config.box_padding) for b in boxes]
        used = [(im, c) for im, c in zip(images, coco) if c]
        if not used:
            return [np.zeros((0, NUM_KEYPOINTS, 3), np.float32) for _ in images]
        kp = self._predict_udp(used) if self.decoding.use_udp else self._predict_classic(used)
        return np.split(kp, np.cumsum([len(c) for c in coco])[:-1])

    def _predict_classic(self, used: list[tuple[Image.Image, list[list[float]]]]) -> np.ndarray:
        """The original ViTPose test pipeline: non-UDP affine crops, heatmap argmax with the quarter-cell
        shift (:func:`classic_decode`). Returns (sum N, 133, 3) in our pixel convention."""
        work = [self.classic_crops(im, c) for im, c in used]
        heatmaps = self._heatmaps(self._torch.cat([w[0] for w in work])).numpy()
        kp = classic_decode(heatmaps, np.concatenate([w[1] for w in work]), np.concatenate([w[2] for w in work]))
        kp = kp.astype(np.float32)
        kp[..., :2] += 0.5  # cv2 pixel centres at i -> ours at i + 0.5
        return kp

    def _predict_udp(self, used: list[tuple[Image.Image, list[list[float]]]]) -> np.ndarray:
        """transformers' processor: UDP crops and DARK-UDP decoding. Returns (sum N, 133, 3)."""
        from transformers.models.vitpose.modeling_vitpose import VitPoseEstimatorOutput

        crops = [self.processor(images=[im], boxes=[c], return_tensors="pt")["pixel_values"] for im, c in used]
        heatmaps = self._heatmaps(self._torch.cat(crops))
        posts = self.processor.post_process_pose_estimation(
            VitPoseEstimatorOutput(heatmaps=heatmaps), boxes=[c for _, c in used], kernel_size=DARK_KERNEL)
        people = [person for post in posts for person in post]
        kp = np.zeros((len(people), NUM_KEYPOINTS, 3), np.float32)
        for k, person in enumerate(people):
            kp[k, :, :2] = person["keypoints"].numpy() + 0.5
            kp[k, :, 2] = person["scores"].numpy().reshape(-1)
        return kp


class _MMPoseAdapter:
    def __init__(self, config: PoseConfig):
        from pipelines.annotators.mmpose_backend import MMPoseBackend
        from pipelines.stages.loading import pick_device

        device = pick_device(config.device)
        self.backend = MMPoseBackend(config.mmpose_config, config.model,
                                     device="cuda:0" if device.type == "cuda" else "cpu",
                                     box_padding=config.box_padding, flip_test=bool(config.flip_test))
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
        decoding = getattr(self.backend, "decoding", None)
        log.info("pose: %s backend, model %s, %s", config.backend, self.backend.tag,
                 f"{'UDP' if decoding.use_udp else 'classic (non-UDP)'} decoding, flip test {self.backend.flip_test}"
                 if decoding else f"flip_test {config.flip_test}")

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


__all__ = ["PoseConfig", "PoseDecoding", "PoseEstimator", "box_center_scale", "check_wholebody", "classic_affine",
           "classic_decode", "pad_boxes", "processor_boxes", "sanitize_keypoints"]
