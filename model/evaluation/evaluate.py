"""``humanverse eval``: the evaluation protocol of HyperHuman §5 (Table 1).

Generated images are compared with the real test images on three axes (paper §5.1, "Evaluation
Metrics"):

* image quality: FID, KID x 1000 (Inception pool3 features) and FID-CLIP (FID on CLIP image
  embeddings);
* text-image alignment: CLIP score of each generated image against its caption;
* pose accuracy: whole-body poses are estimated on the generated images and scored against the
  input (test-set) poses with COCO keypoint AP/AR (OKS, ``pycocotools``), and again on the 3 most
  salient (largest) people per image ("clean" AP/AR).

Every image, real or generated, is first brought to the paper's evaluation frame: the shorter side
resized to 512 (PIL bicubic) and a 512 x 512 centre crop (:func:`resize_center_crop`, the
geometry of torchvision's ``Resize(512)`` + ``CenterCrop(512)``). The math lives in
:mod:`model.evaluation.metrics`; this module loads images, runs the feature extractors and writes the
report.

Feature extractors are injected through three small protocols (:class:`InceptionExtractor`,
:class:`ClipExtractor`, :class:`PoseExtractor`); the defaults are

* :class:`CleanFIDInception` -- **clean-fid**'s Inception (the TF-2015 ``inception-2015-12-05.pt``
  TorchScript port NVIDIA publishes, 2048-d pool3) with clean-fid's "clean" resize to 299 (PIL
  bicubic per float channel, no quantisation). clean-fid is chosen over torch-fidelity and
  torchmetrics because its resize is the one that does not alias (Parmar et al. 2022, "On Aliased
  Resizing and Surprising Subtleties in GAN Evaluation") and its statistics are the ones recent
  text-to-image papers report; FID/KID arithmetic itself is ours (:mod:`model.evaluation.metrics`,
  tested equal to clean-fid's ``fid_from_feats`` / ``kernel_distance``). clean-fid therefore is a
  main dependency. Its weights are downloaded on first use into ``/tmp`` (clean-fid's own place);
  offline, pass the file with ``--inception-weights`` (or pre-place it there). The file is
  TorchScript (code + weights), the one load in the project that is not safetensors /
  ``weights_only``: it is the reference network and exists in no other format.
* FID-CLIP: :class:`CleanFIDClipB32` by default -- clean-fid's ``clip_vit_b_32`` features (the
  paper cites clean-fid for FID-CLIP): OpenAI CLIP ViT-B/32, bicubic shortest-side resize to 224 +
  centre crop, OpenAI mean/std, unnormalised ``encode_image`` features. Loaded through open_clip
  (``ViT-B-32-quickgelu``, ``openai`` weights, the same network as clean-fid's ``clip.load``), or
  from a local open_clip snapshot (``--fid-clip-weights DIR``); ``--models tiny`` gives a tiny random
  stand-in of the same geometry. ``fid_clip_backbone: vit-l14`` uses the CLIP-score model instead
  (the scale of FID-CLIP then differs from the paper's 7.82).
* CLIP score: :class:`OpenClipExtractor` -- the zoo's ``clip-vit-l14`` (OpenAI CLIP ViT-L/14,
  QuickGELU, via open_clip; ``--models tiny`` gives the tiny random CLIP, which works offline; the
  paper does not name its CLIP for this score, ViT-L/14 is torchmetrics' ``CLIPScore`` default).
* pose: ``humanverse eval`` passes :class:`pipelines.eval_pose.BuilderPoseEstimator`, the dataset
  builder's own stages run directly on a batch outside Ray (person detection, YOLOS, then
  whole-body pose, ViTPose, 133 keypoints), so generated images are annotated exactly as the
  training data were. ``model`` never imports ``pipelines`` (docs/architecture.md): the CLI injects it.

Test-set contract (JSONL, one object per line, one line per test image; written by
:mod:`model.evaluation.coco_testset`, read by the sampler and by this module)::

    {"id": "000000000139",                      # str, unique; the generated file is <id>.png
     "caption": "a man riding a horse ...",      # str, the prompt
     "image": "real/000000000139.png",          # real image, relative to the JSONL's folder, or null
     "width": 512, "height": 512,                # the evaluation frame (must equal the resolution)
     "persons": [{"keypoints": [x, y, v, ...],   # 399 floats = 133 x (x, y, v), COCO-WholeBody
                  "bbox": [x, y, w, h],          #   order; v > 0 means labelled
                  "area": 1234.5}]}              # OKS scale s^2 (COCO segment area, rescaled)

Coordinates are pixels of the 512 x 512 resized + centre-cropped frame, with a pixel's centre at
``i + 0.5`` (the builder's convention, which the pose stage writes). Unknown keys are ignored.
The generated folder holds ``<id>.png`` (any size; it is resized and cropped like the real
images). Without a test set only FID, KID and FID-CLIP are computed (unpaired folders).

Which output is scored (:func:`evaluate_outputs`): ``humanverse sample --testset`` writes the
stage-1 RGB to ``OUT/stage1/<id>.png`` and the refined image to ``OUT/refined/<id>.png``. The paper's
Table 1 scores "the RGB output of the first-stage Latent Structural Diffusion Model", so the
stage-1 folder gives the Table-1 row; the refined folder gives a second row, set beside the paper's
Table 7 (its refiner at 512: FID 12.38, KID×1k 2.55, FID-CLIP 6.76, CLIP 32.23). A plain folder of
``<id>.png`` is scored as one row of unknown output.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import tempfile
import urllib.request
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import numpy as np
from PIL import Image

from model.evaluation.metrics import PersonPose, clip_score, fid_from_features, kid_x1000, pose_ap_ar, salient_subset

log = logging.getLogger(__name__)

__all__ = [
    "IMAGE_SUFFIXES",
    "METRICS",
    "PAPER_TABLE1",
    "CleanFIDClipB32",
    "CleanFIDInception",
    "ClipExtractor",
    "CropGeometry",
    "EvalConfig",
    "InceptionExtractor",
    "OpenClipExtractor",
    "PoseExtractor",
    "TestImage",
    "crop_geometry",
    "evaluate",
    "evaluate_outputs",
    "format_table",
    "list_images",
    "load_eval_image",
    "load_testset",
    "resize_center_crop",
    "transform_keypoints",
]

#: Metric groups ``EvalConfig.metrics`` accepts.
METRICS = ("fid", "kid", "fid_clip", "clip", "pose")
#: Metrics that need the test set (captions, input poses).
PAIRED_METRICS = ("clip", "pose")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
REPORT_FORMAT = "humanverse-eval/2"

#: HyperHuman's row of Table 1 (paper §5.1, the stage-1 RGB output); pose AP/AR in percent.
PAPER_TABLE1: dict[str, float] = {"FID": 17.18, "KID_x1k": 4.11, "FID_CLIP": 7.82, "CLIP": 32.17,
                                  "AP": 30.38, "AR": 37.84, "AP_clean": 38.84, "AR_clean": 48.70}
#: HyperHuman's refiner at 512 px, paper Table 7 (appendix); no pose metrics reported there.
PAPER_TABLE7_512: dict[str, float] = {"FID": 12.38, "KID_x1k": 2.55, "FID_CLIP": 6.76, "CLIP": 32.23}
#: The outputs ``humanverse sample --testset`` writes: folder -> (what it holds, the paper row beside it).
OUTPUTS: dict[str, tuple[str, str]] = {
    "stage1": ("stage-1 RGB (LSDM)", "HyperHuman (paper, Table 1: stage-1 RGB)"),
    "refined": ("refined image (stage 2)", "HyperHuman (paper, Table 7: refiner at 512)"),
}
PAPER_ROWS: dict[str, dict[str, float]] = {"stage1": PAPER_TABLE1, "refined": PAPER_TABLE7_512}
#: FID-CLIP backbones: clean-fid's ViT-B/32 (default, the paper's scale) or the CLIP-score ViT-L/14.
FID_CLIP_BACKBONES = ("vit-b32", "vit-l14")
#: Table columns: report key, header, better direction.
TABLE_COLUMNS = (("FID", "FID", "↓"), ("KID_x1k", "KID×1k", "↓"), ("FID_CLIP", "FID-CLIP", "↓"),
                 ("CLIP", "CLIP", "↑"), ("AP", "AP", "↑"), ("AR", "AR", "↑"),
                 ("AP_clean", "AP_clean", "↑"), ("AR_clean", "AR_clean", "↑"))


# ----------------------------------------------------------------------------- config


@dataclass(frozen=True)
class EvalConfig:
    """How ``humanverse eval`` runs (paper §5: 512 x 512, resize shorter side + centre crop).

    Attributes:
        resolution: side of the square evaluation frame (the paper's 512).
        batch_size: images per extractor call.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        metrics: metric groups to compute (subset of :data:`METRICS`); None computes all that the
            inputs allow (``clip`` and ``pose`` need a test set).
        models: zoo spec for the CLIP and pose models: ``paper``, ``tiny`` or a directory.
        clip_model: zoo spec overriding ``models`` for ``clip-vit-l14`` (the CLIP score).
        fid_clip_backbone: FID-CLIP features: ``vit-b32`` (clean-fid's CLIP ViT-B/32, the paper's
            FID-CLIP) or ``vit-l14`` (the CLIP-score model).
        fid_clip_weights: a local open_clip ViT-B/32 snapshot (``open_clip_config.json`` +
            weights) for ``vit-b32``; None loads OpenAI's weights through open_clip (downloaded).
        inception_weights: local ``inception-2015-12-05.pt`` (clean-fid's TorchScript Inception);
            None downloads it into ``/tmp`` on first use.
        kid_subsets, kid_subset_size: KID's random subsets (clean-fid defaults 100 x 1000).
        seed: seed of KID's subset draws.
        pose_score_threshold: person-detection score threshold on generated images (the builder's
            default 0.5, so generated images are annotated as training images were).
        max_people: detections kept per image (COCOeval's ``maxDets`` 20).
        salient_people: people per image kept for AP_clean / AR_clean (the paper's 3).
        allow_missing: evaluate on the test ids that have a generated image (warning) instead of
            failing when some are missing.
    """

    resolution: int = 512
    batch_size: int = 32
    device: Literal["auto", "cpu", "cuda"] = "auto"
    metrics: tuple[str, ...] | None = None
    models: str = "paper"
    clip_model: str | None = None
    inception_weights: str | None = None
    kid_subsets: int = 100
    kid_subset_size: int = 1000
    seed: int = 0
    fid_clip_backbone: Literal["vit-b32", "vit-l14"] = "vit-b32"
    fid_clip_weights: str | None = None
    pose_score_threshold: float = 0.5
    max_people: int = 20
    salient_people: int = 3
    allow_missing: bool = False

    def __post_init__(self):
        if self.resolution < 16:
            raise ValueError(f"resolution must be at least 16 pixels, got {self.resolution}.")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}.")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be 'auto', 'cpu' or 'cuda', got {self.device!r}.")
        if self.metrics is not None:
            bad = [m for m in self.metrics if m not in METRICS]
            if bad or not self.metrics:
                raise ValueError(f"metrics {list(self.metrics)!r} are not understood; choose from "
                                 f"{', '.join(METRICS)}.")
            object.__setattr__(self, "metrics", tuple(dict.fromkeys(self.metrics)))
        if self.kid_subsets < 1 or self.kid_subset_size < 2:
            raise ValueError(f"KID needs kid_subsets >= 1 and kid_subset_size >= 2, got {self.kid_subsets} "
                             f"and {self.kid_subset_size}.")
        if self.fid_clip_backbone not in FID_CLIP_BACKBONES:
            raise ValueError(f"fid_clip_backbone must be one of {', '.join(FID_CLIP_BACKBONES)}, got "
                             f"{self.fid_clip_backbone!r}.")
        if not 0.0 <= self.pose_score_threshold <= 1.0:
            raise ValueError(f"pose_score_threshold must be in [0, 1], got {self.pose_score_threshold}.")
        if self.max_people < 1 or self.salient_people < 1:
            raise ValueError(f"max_people and salient_people must be >= 1, got {self.max_people} and "
                             f"{self.salient_people}.")


# ----------------------------------------------------------------------------- the 512 frame


@dataclass(frozen=True)
class CropGeometry:
    """Resize ``width x height`` to ``resized_width x resized_height`` (shorter side = ``size``),
    then crop ``size x size`` at (``left``, ``top``) of the resized image."""

    width: int
    height: int
    size: int
    resized_width: int
    resized_height: int
    left: int
    top: int

    @property
    def scale_x(self) -> float:
        return self.resized_width / self.width

    @property
    def scale_y(self) -> float:
        return self.resized_height / self.height


def crop_geometry(width: int, height: int, size: int = 512) -> CropGeometry:
    """The geometry of torchvision's ``Resize(size)`` + ``CenterCrop(size)``.

    The shorter side becomes ``size`` and the longer ``int(size * long / short)`` (truncated, as
    torchvision does); the crop starts at ``int(round((resized - size) / 2))`` on each axis.
    """
    if width < 1 or height < 1:
        raise ValueError(f"image size must be positive, got {width}x{height}.")
    if width <= height:
        rw, rh = size, int(size * height / width)
    else:
        rw, rh = int(size * width / height), size
    return CropGeometry(width, height, size, rw, rh, int(round((rw - size) / 2.0)), int(round((rh - size) / 2.0)))


def resize_center_crop(img: Image.Image, size: int = 512) -> Image.Image:
    """RGB ``img`` -> ``size x size``: shorter side resized to ``size`` (PIL bicubic), centre crop."""
    img = img.convert("RGB")
    g = crop_geometry(img.width, img.height, size)
    if (g.resized_width, g.resized_height) != img.size:
        img = img.resize((g.resized_width, g.resized_height), Image.BICUBIC)
    if g.resized_width == size and g.resized_height == size:
        return img
    return img.crop((g.left, g.top, g.left + size, g.top + size))


def transform_keypoints(xy: np.ndarray, g: CropGeometry) -> np.ndarray:
    """(..., 2) points in the original image (continuous pixels) -> the cropped frame."""
    xy = np.asarray(xy, np.float64)
    out = np.empty_like(xy)
    out[..., 0] = xy[..., 0] * g.scale_x - g.left
    out[..., 1] = xy[..., 1] * g.scale_y - g.top
    return out


def list_images(folder: str | os.PathLike, what: str = "image") -> dict[str, Path]:
    """``{stem: path}`` of the images directly in ``folder`` (sorted by stem)."""
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"the {what} folder {str(root)!r} does not exist or is not a directory.")
    found: dict[str, Path] = {}
    for p in sorted(root.iterdir()):
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES:
            if p.stem in found:
                raise ValueError(f"the {what} folder {str(root)!r} holds two images named {p.stem!r} "
                                 f"({found[p.stem].name} and {p.name}); keep one per id.")
            found[p.stem] = p
    if not found:
        raise ValueError(f"the {what} folder {str(root)!r} holds no images ({', '.join(IMAGE_SUFFIXES)}).")
    return found


def load_eval_image(path: str | os.PathLike, size: int = 512) -> Image.Image:
    """Open ``path`` and bring it to the ``size x size`` evaluation frame."""
    try:
        with Image.open(path) as im:
            im.load()
            return resize_center_crop(im, size)
    except (OSError, Image.DecompressionBombError, ValueError) as e:
        raise ValueError(f"the image {str(path)!r} cannot be decoded ({type(e).__name__}: {e}).") from e


# ----------------------------------------------------------------------------- test set


@dataclass(frozen=True)
class TestImage:
    """One test-set row (see the module docstring for the JSONL contract)."""

    __test__ = False  # not a pytest class

    id: str
    caption: str
    image: str | None
    width: int
    height: int
    persons: tuple[PersonPose, ...] = ()


def load_testset(path: str | os.PathLike, resolution: int = 512) -> list[TestImage]:
    """Read and validate a test-set JSONL file; every error names the line and the bad value."""
    from humanverse.schema import KEYPOINT_VALUES, NUM_KEYPOINTS

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"the test set {str(p)!r} does not exist.")
    rows: list[TestImage] = []
    seen: set[str] = set()
    with p.open(encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"test set {p.name} line {n}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where} is not valid JSON ({e.msg}).") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{where} is not a JSON object.")
            rid = obj.get("id")
            if not isinstance(rid, str) or not rid or "/" in rid or rid.startswith("."):
                raise ValueError(f"{where} has id {rid!r}; expected a non-empty string usable as a file name.")
            if rid in seen:
                raise ValueError(f"{where} repeats id {rid!r}; ids must be unique.")
            seen.add(rid)
            caption = obj.get("caption")
            if not isinstance(caption, str):
                raise ValueError(f"{where} (id {rid!r}) has caption {caption!r}; expected a string.")
            image = obj.get("image")
            if image is not None and not isinstance(image, str):
                raise ValueError(f"{where} (id {rid!r}) has image {image!r}; expected a relative path or null.")
            w, h = obj.get("width"), obj.get("height")
            if w != resolution or h != resolution:
                raise ValueError(f"{where} (id {rid!r}) is {w}x{h}; expected {resolution}x{resolution} (the "
                                 f"evaluation frame).")
            persons = obj.get("persons", [])
            if not isinstance(persons, list):
                raise ValueError(f"{where} (id {rid!r}) has persons of type {type(persons).__name__}; expected a list.")
            people = []
            for k, person in enumerate(persons):
                pw = f"{where} (id {rid!r}) person {k}"
                if not isinstance(person, dict):
                    raise ValueError(f"{pw} is not a JSON object.")
                kp = person.get("keypoints")
                if not isinstance(kp, list) or len(kp) != KEYPOINT_VALUES:
                    got = len(kp) if isinstance(kp, list) else type(kp).__name__
                    raise ValueError(f"{pw} has {got} keypoint values; expected {KEYPOINT_VALUES} "
                                     f"({NUM_KEYPOINTS} x (x, y, v)).")
                kp_a = _finite_array(kp, f"{pw} keypoints").reshape(NUM_KEYPOINTS, 3)
                bbox = person.get("bbox")
                if not isinstance(bbox, list) or len(bbox) != 4:
                    raise ValueError(f"{pw} has bbox {bbox!r}; expected [x, y, w, h].")
                x, y, bw, bh = _finite_array(bbox, f"{pw} bbox").tolist()
                if bw < 0 or bh < 0:
                    raise ValueError(f"{pw} has bbox {bbox!r} with a negative width or height.")
                area = person.get("area", bw * bh)
                if not isinstance(area, (int, float)) or isinstance(area, bool) or not math.isfinite(area) or area < 0:
                    raise ValueError(f"{pw} has area {area!r}; expected a non-negative number.")
                people.append(PersonPose(keypoints=kp_a, bbox=(x, y, x + bw, y + bh), area=float(area)))
            rows.append(TestImage(rid, caption, image, resolution, resolution, tuple(people)))
    if not rows:
        raise ValueError(f"the test set {str(p)!r} has no rows.")
    return rows


def _finite_array(values, what: str) -> np.ndarray:
    try:
        a = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be numbers.") from None
    if not np.isfinite(a).all():
        raise ValueError(f"{what} contain non-finite values.")
    return a


# ----------------------------------------------------------------------------- extractors


class InceptionExtractor(Protocol):
    """Images (RGB, ``resolution`` square) -> (N, D) features for FID and KID."""

    name: str

    def __call__(self, images: Sequence[Image.Image]) -> np.ndarray: ...


class ClipExtractor(Protocol):
    """CLIP image and text embeddings (not normalised), for FID-CLIP and the CLIP score."""

    name: str

    def image_features(self, images: Sequence[Image.Image]) -> np.ndarray: ...

    def text_features(self, texts: Sequence[str]) -> np.ndarray: ...


class PoseExtractor(Protocol):
    """Images -> per image, the people found, with 133 x (x, y, score) keypoints and a score."""

    name: str

    def __call__(self, images: Sequence[Image.Image]) -> list[list[PersonPose]]: ...


def _first_line(e: BaseException, limit: int = 160) -> str:
    text = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
    return text if len(text) <= limit else text[:limit - 1].rstrip() + "…"


def _torch_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for but torch sees no GPU.")
    return torch.device(name)


#: Where clean-fid keeps its Inception (``cleanfid.features.feature_extractor`` uses "/tmp" on Linux).
CLEANFID_INCEPTION_DIR = "./" if sys.platform.startswith("win") else "/tmp"
CLEANFID_INCEPTION_FILE = "inception-2015-12-05.pt"


def fetch_cleanfid_inception(folder: str = CLEANFID_INCEPTION_DIR) -> Path:
    """clean-fid's Inception file in ``folder``, downloaded there (atomically) when absent."""
    from cleanfid.downloads_helper import inception_url

    path = Path(folder) / CLEANFID_INCEPTION_FILE
    if path.is_file():
        return path
    log.info("downloading clean-fid's Inception weights from %s to %s", inception_url, path)
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".inception-", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as f, urllib.request.urlopen(inception_url, timeout=60) as response:
                shutil.copyfileobj(response, f)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    except OSError as e:  # URLError, timeouts and file errors are all OSErrors
        raise FileNotFoundError(
            f"clean-fid's Inception weights could not be downloaded from {inception_url} ({e}); fetch "
            f"that file where there is a network and pass it with --inception-weights PATH (or "
            f"EvalConfig.inception_weights), or place it at {path}.") from None
    return path


class CleanFIDInception:
    """clean-fid's "clean" FID features: PIL-bicubic float resize to 299, TF-2015 Inception pool3.

    Equivalent to ``cleanfid.features.build_feature_extractor("clean")`` applied to
    ``cleanfid.resize.build_resizer("clean")`` outputs (x in [0, 255] -> (x - 128) / 128 -> the
    TorchScript network's ``layers``), without its DataLoader and DataParallel wrappers.
    """

    def __init__(self, weights: str | os.PathLike | None = None, device: str = "auto"):
        import torch
        from cleanfid.resize import make_resizer

        path = Path(weights) if weights is not None else fetch_cleanfid_inception()
        if not path.is_file():
            raise FileNotFoundError(f"the Inception weights file {str(path)!r} does not exist; pass clean-fid's "
                                    f"{CLEANFID_INCEPTION_FILE}.")
        self.device = _torch_device(device)
        self.name = f"clean-fid Inception, clean mode ({path})"
        try:
            with warnings.catch_warnings():  # torch 2.14 flags TorchScript as deprecated; the file is TorchScript
                warnings.simplefilter("ignore", FutureWarning)
                self.model = torch.jit.load(str(path), map_location=self.device).eval()
        except (RuntimeError, ValueError) as e:
            raise ValueError(f"the Inception weights file {str(path)!r} is not clean-fid's TorchScript "
                             f"{CLEANFID_INCEPTION_FILE} ({type(e).__name__}).") from e
        self.resize = make_resizer("PIL", False, "bicubic", (299, 299))
        self._torch = torch

    def __call__(self, images: Sequence[Image.Image]) -> np.ndarray:
        torch = self._torch
        x = np.stack([self.resize(np.asarray(im.convert("RGB"))) for im in images])  # (N, 299, 299, 3) [0, 255]
        t = torch.from_numpy(x).permute(0, 3, 1, 2).to(self.device)  # (N, 3, 299, 299)
        with torch.inference_mode():
            feats = self.model.layers.forward((t - 128) / 128).reshape(len(images), -1)  # (N, 2048)
        return feats.float().cpu().numpy()


def write_tiny_inception(path: str | os.PathLike, dim: int = 64, seed: int = 0) -> Path:
    """A tiny random stand-in for clean-fid's TorchScript Inception (same ``layers`` interface:
    (N, 3, 299, 299) in [−1, 1] -> (N, dim) features), for tests and the offline demo; the numbers
    it gives are meaningless. Written atomically; deterministic in ``seed``."""
    import torch

    class TinyInception(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 8, stride=8), torch.nn.ReLU(),
                                              torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(),
                                              torch.nn.Linear(32, dim))

        def forward(self, x):
            return self.layers(x)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = TinyInception().eval()
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(net), str(tmp))
    os.replace(tmp, path)
    return path


class OpenClipExtractor:
    """open_clip CLIP from the zoo (``clip-vit-l14``): its own preprocessing (bicubic shortest-side
    resize to 224, centre crop, OpenAI mean/std) and tokenizer; float32."""

    def __init__(self, models: str = "paper", device: str = "auto"):
        import open_clip
        import torch

        from humanverse.zoo import resolve

        r = resolve("clip-vit-l14", models)
        name = ("hf-hub:" if r.kind == "hub" else "local-dir:") + r.path
        try:
            self.model, _, self.preprocess = open_clip.create_model_and_transforms(name)
            self.tokenizer = open_clip.get_tokenizer(name)
        except (OSError, RuntimeError) as e:
            raise FileNotFoundError(
                f"the CLIP model {r.tag} could not be loaded ({_first_line(e)}); pass --models DIR (holding "
                f"clip-vit-l14/) or --clip-model DIR with a downloaded open_clip snapshot.") from None
        self.device = _torch_device(device)
        self.model.to(self.device).eval()
        self.name = r.tag
        self._torch = torch

    def image_features(self, images: Sequence[Image.Image]) -> np.ndarray:
        torch = self._torch
        x = torch.stack([self.preprocess(im) for im in images]).to(self.device)
        with torch.inference_mode():
            return self.model.encode_image(x).float().cpu().numpy()

    def text_features(self, texts: Sequence[str]) -> np.ndarray:
        torch = self._torch
        tokens = self.tokenizer(list(texts)).to(self.device)
        with torch.inference_mode():
            return self.model.encode_text(tokens).float().cpu().numpy()


class CleanFIDClipB32:
    """clean-fid's ``clip_vit_b_32`` FID features (``cleanfid.clip_features``): OpenAI CLIP
    ViT-B/32, bicubic shortest-side resize to 224, centre crop, OpenAI mean/std, unnormalised
    ``encode_image``. open_clip's ``ViT-B-32-quickgelu`` with the ``openai`` weights is the same
    network and preprocessing; ``weights`` is a local open_clip snapshot folder instead."""

    def __init__(self, weights: str | os.PathLike | None = None, device: str = "auto", tiny: bool = False):
        import open_clip
        import torch

        try:
            if weights is not None:
                name = f"local-dir:{weights}"
                self.model, _, self.preprocess = open_clip.create_model_and_transforms(name)
                self.name = f"clean-fid CLIP ViT-B/32 ({weights})"
            else:
                self.model, _, self.preprocess = open_clip.create_model_and_transforms(
                    "ViT-B-32-quickgelu", pretrained="openai")
                self.name = "clean-fid CLIP ViT-B/32 (OpenAI weights via open_clip ViT-B-32-quickgelu)"
        except (OSError, RuntimeError, ValueError) as e:
            raise FileNotFoundError(
                f"the CLIP ViT-B/32 for FID-CLIP could not be loaded ({_first_line(e)}); pass --fid-clip-weights DIR "
                f"(a downloaded open_clip ViT-B-32 snapshot) or --fid-clip-backbone vit-l14.") from None
        if tiny:
            self.name = f"tiny:clip-vit-b32 (random stand-in for clean-fid's CLIP ViT-B/32, {weights})"
        self.device = _torch_device(device)
        self.model.to(self.device).eval()
        self._torch = torch

    image_features = OpenClipExtractor.image_features  # the same open_clip image encoding

    def text_features(self, texts: Sequence[str]) -> np.ndarray:
        raise NotImplementedError("CleanFIDClipB32 computes FID-CLIP image features only; the CLIP score "
                                  "uses OpenClipExtractor.")


def fid_clip_extractor(cfg: EvalConfig, score_clip=None):
    """The FID-CLIP extractor ``cfg`` asks for (``score_clip`` is reused for ``vit-l14``)."""
    if cfg.fid_clip_backbone == "vit-l14":
        return score_clip if score_clip is not None else OpenClipExtractor(cfg.clip_model or cfg.models, cfg.device)
    weights, tiny = cfg.fid_clip_weights, False
    if weights is None and cfg.models.strip().startswith("tiny"):
        from humanverse.testing.tiny_models import build_clip_vit_b32
        from humanverse.zoo import tiny_model

        # a tiny random open_clip CLIP with ViT-B/32's image geometry (meaningless features)
        weights, tiny = tiny_model("cleanfid-clip-vit-b32-tiny", build_clip_vit_b32), True
        log.warning("eval: --models tiny: FID-CLIP uses a tiny random stand-in for CLIP ViT-B/32 (meaningless numbers)")
    return CleanFIDClipB32(weights, cfg.device, tiny=tiny)


# ----------------------------------------------------------------------------- evaluation


@dataclass
class _Features:
    inception: list[np.ndarray] = field(default_factory=list)
    fid_clip: list[np.ndarray] = field(default_factory=list)
    clip: list[np.ndarray] = field(default_factory=list)
    poses: list[list[PersonPose]] = field(default_factory=list)


def _batches(items: Sequence, n: int) -> Iterable[Sequence]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


def _extract(paths: Sequence[Path], cfg: EvalConfig, what: str, *, inception: InceptionExtractor | None,
             clip: ClipExtractor | None, pose: PoseExtractor | None, fid_clip: ClipExtractor | None = None
             ) -> _Features:
    from humanverse.progress import Progress

    feats = _Features()
    show = Progress(f"eval {what}", total=len(paths), unit="images", logger=log)
    for batch in _batches(list(paths), cfg.batch_size):
        images = [load_eval_image(p, cfg.resolution) for p in batch]
        if inception is not None:
            feats.inception.append(_check_features(inception(images), len(images), f"{what} Inception"))
        if clip is not None:
            feats.clip.append(_check_features(clip.image_features(images), len(images), f"{what} CLIP image"))
        if fid_clip is not None:
            feats.fid_clip.append(feats.clip[-1] if fid_clip is clip else _check_features(
                fid_clip.image_features(images), len(images), f"{what} FID-CLIP image"))
        if pose is not None:
            people = [[_as_person(q) for q in ps] for ps in pose(images)]
            if len(people) != len(images):
                raise RuntimeError(f"the pose extractor returned {len(people)} results for {len(images)} images")
            feats.poses.extend(people)
        show.update(advance=len(images))
    show.close()
    return feats


def _as_person(q) -> PersonPose:
    """A pose extractor's person: a :class:`PersonPose` or a dict (keypoints (133, 3), bbox, score)."""
    if isinstance(q, PersonPose):
        return q
    return PersonPose(keypoints=np.asarray(q["keypoints"], np.float64), bbox=tuple(q["bbox"]), score=float(q["score"]))


def _check_features(x, n: int, what: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] != n:
        raise RuntimeError(f"the {what} extractor returned shape {x.shape} for {n} images; expected (N, D)")
    return x


def _match(rows: list[TestImage], generated: dict[str, Path], gen_dir, allow_missing: bool
           ) -> tuple[list[TestImage], int, int]:
    ids = {r.id for r in rows}
    missing = [r.id for r in rows if r.id not in generated]
    extra = [k for k in generated if k not in ids]
    if len(missing) == len(rows):
        raise ValueError(f"none of the {len(rows)} test-set ids has an image in the generated folder {str(gen_dir)!r} "
                         f"(expected <id>.png, e.g. {rows[0].id}.png).")
    if missing:
        msg = (f"{len(missing)} of {len(rows)} test-set ids have no generated image in {str(gen_dir)!r} "
               f"(e.g. {', '.join(missing[:3])})")
        if not allow_missing:
            raise ValueError(f"{msg}; generate them or pass --allow-missing to evaluate the rest.")
        log.warning("%s; evaluating the other %d.", msg, len(rows) - len(missing))
    if extra:
        log.warning("%d generated images are not in the test set and are ignored (e.g. %s).", len(extra),
                    ", ".join(extra[:3]))
    return [r for r in rows if r.id in generated], len(missing), len(extra)


def _pct(x: float) -> float | None:
    """COCOeval's 0..1 (-1 where undefined) -> percent or None."""
    return None if x < 0 else 100.0 * x


def evaluate(real_dir: str | os.PathLike, generated_dir: str | os.PathLike,
             testset: str | os.PathLike | Sequence[TestImage] | None = None, cfg: EvalConfig | None = None, *,
             inception: InceptionExtractor | None = None, clip: ClipExtractor | None = None,
             pose: PoseExtractor | None = None, pose_factory=None, fid_clip: ClipExtractor | None = None,
             output: str | None = None, shared: dict | None = None) -> dict[str, Any]:
    """Run the HyperHuman §5 evaluation and return the report (a JSON-ready dict).

    Args:
        real_dir: folder of real images (any size; FID/KID/FID-CLIP reference set, unpaired).
        generated_dir: folder of generated images; with a test set, ``<id>.<ext>`` per test row.
        testset: the test-set JSONL (or rows from :func:`load_testset`); needed for the CLIP score
            and the pose metrics, and then only the test ids' generated images are evaluated.
        cfg: the :class:`EvalConfig` (default: the paper's settings).
        inception, clip, pose, fid_clip: extractors overriding the defaults (built only for metrics
            asked for); ``fid_clip`` defaults to :func:`fid_clip_extractor` (clean-fid's ViT-B/32).
        output: which sampler output ``generated_dir`` holds (a key of :data:`OUTPUTS`); names the
            row and picks the paper row set beside it (None: unknown, Table 1 beside it).
        shared: a dict kept across calls that score several outputs against the same real folder and
            test set (:func:`evaluate_outputs`): the extractors, the real images' features, the parsed
            test set and the captions' CLIP text features are computed once.
        pose_factory: ``(models, device, score_threshold, max_people) -> PoseExtractor``, used when
            ``pose`` is None (``humanverse eval`` passes :class:`pipelines.eval_pose.BuilderPoseEstimator`).

    ``report["metrics"]`` holds FID, KID_x1k (and KID_x1k_std), FID_CLIP, CLIP, and pose AP, AR,
    AP50, AP75, AP_clean, AR_clean in percent; a metric not computed is absent, one that is
    undefined (e.g. AP with no labelled person) is None.
    """
    cfg = cfg or EvalConfig()
    wanted = cfg.metrics or tuple(m for m in METRICS if testset is not None or m not in PAIRED_METRICS)
    if testset is None and any(m in PAIRED_METRICS for m in wanted):
        raise ValueError(f"metrics {', '.join(m for m in wanted if m in PAIRED_METRICS)} need the test set "
                         f"(--poses TESTSET.jsonl) for captions and input poses.")

    real = list_images(real_dir, "real")
    generated = list_images(generated_dir, "generated")
    rows: list[TestImage] | None = None
    missing = extra = 0
    shared = shared if shared is not None else {}
    if testset is not None:
        if isinstance(testset, (str, os.PathLike)):
            if ("testset", str(testset)) not in shared:
                shared["testset", str(testset)] = load_testset(testset, cfg.resolution)
            rows = list(shared["testset", str(testset)])
        else:
            rows = list(testset)
        rows, missing, extra = _match(rows, generated, generated_dir, cfg.allow_missing)
        gen_paths = [generated[r.id] for r in rows]
    else:
        gen_paths = list(generated.values())
    if {"fid", "kid", "fid_clip"} & set(wanted) and (len(real) < 2 or len(gen_paths) < 2):
        raise ValueError(f"FID, KID and FID-CLIP need at least 2 images in each set; got {len(real)} real and "
                         f"{len(gen_paths)} generated.")

    need_inception = bool({"fid", "kid"} & set(wanted))
    need_clip = "clip" in wanted
    need_fid_clip = "fid_clip" in wanted
    inception = inception or shared.get("inception")
    clip = clip or shared.get("clip")
    fid_clip = fid_clip or shared.get("fid_clip")
    pose = pose or shared.get("pose")
    if need_inception and inception is None:
        weights = cfg.inception_weights
        if weights is None and cfg.models.strip().startswith("tiny"):  # everything tiny: a random stand-in
            from humanverse.zoo import tiny_root

            weights = tiny_root() / "cleanfid-inception-tiny.pt"
            if not weights.is_file():
                write_tiny_inception(weights)
            log.warning("eval: --models tiny: FID/KID use a tiny random stand-in for the Inception network "
                        "(meaningless numbers)")
        inception = CleanFIDInception(weights, cfg.device)
    if need_clip and clip is None:
        clip = OpenClipExtractor(cfg.clip_model or cfg.models, cfg.device)
    if need_fid_clip and fid_clip is None:
        fid_clip = fid_clip_extractor(cfg, clip)
    if "pose" in wanted and pose is None:
        if pose_factory is None:
            raise ValueError("the pose metrics need a pose estimator: run `humanverse eval` (it supplies the "
                             "builder's detector + ViTPose) or pass pose=... / pose_factory=....")
        pose = pose_factory(cfg.models, cfg.device, cfg.pose_score_threshold, cfg.max_people)
    log.info("eval: %d real, %d generated images; metrics %s", len(real), len(gen_paths), ", ".join(wanted))

    shared.update(inception=inception, clip=clip, fid_clip=fid_clip, pose=pose)
    key = ("real", str(real_dir), need_inception, need_fid_clip)
    if key not in shared:
        shared[key] = _extract(list(real.values()), cfg, "real", inception=inception if need_inception else None,
                               clip=None, pose=None, fid_clip=fid_clip if need_fid_clip else None)
    real_f = shared[key]
    gen_f = _extract(gen_paths, cfg, "generated", inception=inception if need_inception else None,
                     clip=clip if need_clip else None, pose=pose if "pose" in wanted else None,
                     fid_clip=fid_clip if need_fid_clip else None)

    metrics: dict[str, float | None] = {}
    if need_inception:
        fa, fb = np.concatenate(real_f.inception), np.concatenate(gen_f.inception)
        if "fid" in wanted:
            metrics["FID"] = fid_from_features(fa, fb)
        if "kid" in wanted:
            metrics["KID_x1k"], metrics["KID_x1k_std"] = kid_x1000(
                fa, fb, num_subsets=cfg.kid_subsets, subset_size=cfg.kid_subset_size, seed=cfg.seed)
    if "fid_clip" in wanted:
        metrics["FID_CLIP"] = fid_from_features(np.concatenate(real_f.fid_clip), np.concatenate(gen_f.fid_clip))
    if "clip" in wanted:
        captions = tuple(r.caption for r in rows)
        if ("text", captions) not in shared:
            shared["text", captions] = np.concatenate([_check_features(clip.text_features(list(b)), len(b), "CLIP text")
                                                       for b in _batches(list(captions), cfg.batch_size)])
        text = shared["text", captions]
        metrics["CLIP"] = clip_score(np.concatenate(gen_f.clip), text)
    num_persons = None
    if "pose" in wanted:
        from humanverse.skeleton import OKS_SIGMAS

        gts = {i: list(r.persons) for i, r in enumerate(rows)}
        preds = dict(enumerate(gen_f.poses))
        num_persons = sum(len(v) for v in gts.values())
        full = pose_ap_ar(gts, preds, OKS_SIGMAS)
        clean = pose_ap_ar(salient_subset(gts, cfg.salient_people), salient_subset(preds, cfg.salient_people),
                           OKS_SIGMAS)
        metrics.update(AP=_pct(full["AP"]), AR=_pct(full["AR"]), AP50=_pct(full["AP50"]), AP75=_pct(full["AP75"]),
                       AP_clean=_pct(clean["AP"]), AR_clean=_pct(clean["AR"]))

    names = {"inception": getattr(inception, "name", None) if need_inception else None,
             "fid_clip": getattr(fid_clip, "name", None) if need_fid_clip else None,
             "clip": getattr(clip, "name", None) if need_clip else None,
             "pose": getattr(pose, "name", None) if "pose" in wanted else None}
    tiny = cfg.models.strip().startswith("tiny") or any(
        isinstance(v, str) and (v.startswith("tiny:") or " tiny:" in v) for v in names.values())
    report = {
        "format": REPORT_FORMAT,
        "metrics": {k: (None if v is None or not math.isfinite(v) else float(v)) for k, v in metrics.items()},
        "output": output,
        "output_description": OUTPUTS[output][0] if output in OUTPUTS else "generated images (output not stated)",
        "paper_reference": {"method": OUTPUTS[output][1] if output in OUTPUTS else "HyperHuman (paper, Table 1)",
                            **PAPER_ROWS.get(output, PAPER_TABLE1)},
        "counts": {"real": len(real), "generated": len(gen_paths), "testset": len(rows) if rows is not None else None,
                   "missing": missing, "extra": extra, "persons": num_persons},
        "extractors": names,
        "tiny": tiny,
        "real_dir": str(real_dir), "generated_dir": str(generated_dir),
        "testset": str(testset) if isinstance(testset, (str, os.PathLike)) else None,
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()},
    }
    log.info("eval: %s", ", ".join(f"{k} {v:.3f}" if v is not None else f"{k} n/a"
                                   for k, v in report["metrics"].items()))
    return report


def output_folders(generated_dir: str | os.PathLike) -> dict[str, Path]:
    """The sampler's output folders under ``generated_dir`` (:data:`OUTPUTS` order) that hold images."""
    root = Path(generated_dir)
    found = {}
    for name in OUTPUTS:
        d = root / name
        if d.is_dir() and any(p.suffix.lower() in IMAGE_SUFFIXES for p in d.iterdir()):
            found[name] = d
    return found


def evaluate_outputs(real_dir: str | os.PathLike, generated_dir: str | os.PathLike,
                     testset: str | os.PathLike | Sequence[TestImage] | None = None, cfg: EvalConfig | None = None,
                     *, outputs: Sequence[str] | None = None, **extractors) -> dict[str, Any]:
    """Score each sampler output under ``generated_dir`` as its own row (paper §5 protocol).

    ``generated_dir`` is a ``humanverse sample --testset`` folder: ``stage1/`` (the stage-1 RGB, the
    Table-1 row) and ``refined/`` (the refined image, set beside Table 7); ``outputs`` picks among
    them (default: every one present). A plain folder of images is one row of unstated output.
    The real images' features, the test set and its captions' text features are computed once for
    all rows. Returns the first row's report
    with ``rows`` holding every row's report."""
    cfg = cfg or EvalConfig()
    found = output_folders(generated_dir)
    if outputs:
        bad = [o for o in outputs if o not in OUTPUTS]
        if bad:
            raise ValueError(f"outputs {bad} are not sampler outputs; choose from {', '.join(OUTPUTS)}.")
        missing = [o for o in outputs if o not in found]
        if missing:
            raise ValueError(f"the generated folder {str(generated_dir)!r} has no {'/, '.join(missing)}/ folder of "
                             f"images (humanverse sample --testset writes stage1/ and, when refining, refined/).")
        found = {o: found[o] for o in outputs}
    if not found:  # a plain folder; named after a sampler output (GEN/stage1 given directly), it is that output
        name = Path(generated_dir).name
        return evaluate(real_dir, generated_dir, testset, cfg, output=name if name in OUTPUTS else None, **extractors)
    shared: dict = {}
    rows = [evaluate(real_dir, d, testset, cfg, output=name, shared=shared, **extractors) for name, d in found.items()]
    return {**rows[0], "rows": rows, "generated_dir": str(generated_dir)}


def _cell(v: float | None, digits: int = 2) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def format_table(report: dict[str, Any]) -> str:
    """A Markdown table in the layout of the paper's Table 1: per scored output, the paper's row
    (Table 1 for the stage-1 RGB, Table 7 for the refined image) and ours beneath it."""
    rows = report.get("rows") or [report]
    head = "| Method | " + " | ".join(f"{h} {d}" for _, h, d in TABLE_COLUMNS) + " |"
    sep = "|---|" + "---:|" * len(TABLE_COLUMNS)
    lines = [head, sep]
    for r in rows:
        paper = r["paper_reference"]
        lines.append(f"| {paper['method']} | " + " | ".join(_cell(paper.get(k)) for k, _, _ in TABLE_COLUMNS) + " |")
        ours_name = f"this run: {r.get('output_description', 'generated images')}" + (
            " (tiny models)" if report.get("tiny") else "")
        lines.append(f"| {ours_name} | " + " | ".join(_cell(r["metrics"].get(k)) for k, _, _ in TABLE_COLUMNS) + " |")
    c = report["counts"]
    lines.append("")
    lines.append(f"Images at {report['config']['resolution']}² (resize + centre crop); pose AP/AR in %, COCO OKS "
                 f"with 133 COCO-WholeBody keypoints; '–' = not computed or not reported.")
    for r in rows:
        rc = r["counts"]
        ex = "; ".join(f"{k}: {v}" for k, v in r["extractors"].items() if v)
        lines.append(f"- **{r.get('output_description', 'generated images')}**: {rc['generated']} images in "
                     f"{r['generated_dir']} vs {rc['real']} real. Extractors: {ex}.")
    if c.get("missing"):
        lines.append(f"{c['missing']} test ids had no generated image and were skipped.")
    if report.get("tiny"):
        lines.append("**Tiny random stand-in models were used: these numbers are meaningless "
                     "(a smoke test of the pipeline, not a result).**")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- CLI


def write_report(report: dict[str, Any], out: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``out`` (JSON) and the Markdown table beside it (``<out stem>.md``), atomically."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    md = out.with_suffix(".md")
    for path, text in ((out, json.dumps(report, indent=2) + "\n"), (md, format_table(report))):
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    return out, md
