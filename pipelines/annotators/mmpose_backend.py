"""MMPose 1.x top-down whole-body pose: the paper's route (HyperHuman §4 ran ViTPose-H through MMPose).

An optional backend of :mod:`pipelines.stages.pose` (``pose.backend: mmpose``), not installed by
default. Every workaround the MMPose stack needs on this project's pins lives in this module.

Install into the environment that runs the builder (no compiler work except xtcocotools' Cython;
``make mmpose`` runs the same pins into ``.mmpose/lib``, outside the project's venv)::

    pip install --no-deps mmengine==0.10.7 mmcv-lite==2.1.0 mmpose==1.3.2 mmdet==3.3.0 \
        mmpretrain==1.2.0 json_tricks munkres addict yapf terminaltables shapely pycocotools \
        einops "setuptools<81" model-index ordered-set markdown
    pip install cython                     # build-time only
    pip install --no-deps --no-build-isolation --no-binary xtcocotools xtcocotools

Why each piece:

* ``mmcv-lite`` instead of ``mmcv``: the full mmcv compiles its CUDA/C++ ops from source for torch
  2.14 (~41 min on 2 cores). Top-down heatmap inference needs none of them, so a placeholder
  ``mmcv._ext`` module is installed whose ops raise ``NotImplementedError`` if ever called (its
  spec has no loader, so mmengine still sees "mmcv-full not available").
* ``mmdet`` and ``mmpretrain`` must be importable: MMPose registers modules from both, and
  ViTPose's backbone is ``mmpretrain.VisionTransformer``. mmpretrain's multimodal models (BLIP,
  ...) break under transformers 5, so its ``WITH_MULTIMODAL`` switch is forced off before it loads.
* ``xtcocotools`` is built from source against the installed numpy (its wheels are numpy-1 ABI);
  ``--no-build-isolation`` makes pip use the environment's numpy and Cython.
* ``setuptools<81`` at run time: mmengine imports ``pkg_resources``, removed in setuptools 81.
* ``--no-deps``: mmpose's requirements pull ``chumpy`` (does not build) and an opencv that would
  replace ``opencv-python-headless``; none of them is needed for inference.

Behaviour worth knowing:

* ``init_model`` takes the dataset metadata (keypoint names, flip pairs) from the checkpoint, else
  from the config's *train* dataset entry (``train_dataloader.dataset``), else COCO-17. A
  whole-body config must name ``CocoWholeBodyDataset`` there; if the model predicts 133 heatmaps
  but the metadata is not COCO-WholeBody, the COCO-WholeBody metadata is set (logged), since the
  flip pairs of flip testing come from it.
* Checkpoints load with ``weights_only=True`` (numpy scalars and dtypes in their ``meta`` are read
  as data, other pickled objects as inert stand-ins), and every weight of the model must be in
  them: mmengine's own loader only logs missing keys. The original ViTPose repository's files
  (MMPose 0.x layout, ``backbone.blocks.*``) are refused with the way to convert them.
* ``inference_topdown`` wants a BGR array (its data preprocessor converts to RGB), boxes xyxy in
  its pixel-index convention (a pixel's centre at ``i``); :meth:`MMPoseBackend.predict` takes RGB and
  our convention (centre at ``i + 0.5``) and converts both ways.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import logging
import os
import sys
import types

import numpy as np

log = logging.getLogger(__name__)

NUM_KEYPOINTS = 133
INSTALL_HINT = (
    "pose.backend 'mmpose' needs the optional MMPose stack (mmengine 0.10.7, mmcv-lite 2.1.0, mmpose 1.3.2, "
    "mmdet 3.3.0, mmpretrain 1.2.0, xtcocotools); install it as the docstring of "
    "pipelines/annotators/mmpose_backend.py shows."
)


def mmpose_available() -> bool:
    """Whether the MMPose stack is installed (without importing it)."""
    return all(importlib.util.find_spec(m) is not None for m in ("mmpose", "mmcv", "mmengine", "mmpretrain", "mmdet"))


class _MissingOps(types.ModuleType):
    """Stands in for mmcv-lite's absent compiled ``mmcv._ext``: any op raises when called."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)

        def op(*args, **kwargs):
            raise NotImplementedError(f"mmcv op {name!r} needs the compiled mmcv; mmcv-lite is installed.")

        return op


def _prepare_imports() -> None:
    """Apply the workarounds (idempotent) so that ``mmpose.apis`` imports."""
    missing = [m for m in ("mmpose", "mmcv", "mmengine", "mmpretrain", "mmdet") if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(f"{INSTALL_HINT} Missing: {', '.join(missing)}.")
    if importlib.util.find_spec("pkg_resources") is None:
        raise ImportError("pose.backend 'mmpose' needs pkg_resources at run time (mmengine imports it): "
                          "pip install 'setuptools<81'.")
    if "mmcv._ext" not in sys.modules and importlib.util.find_spec("mmcv._ext") is None:
        ext = _MissingOps("mmcv._ext")
        ext.__spec__ = importlib.machinery.ModuleSpec("mmcv._ext", None)  # no loader: "mmcv-full not available"
        sys.modules["mmcv._ext"] = ext
    dep = "mmpretrain.utils.dependency"
    if dep not in sys.modules and "mmpretrain" not in sys.modules:
        spec = importlib.util.find_spec("mmpretrain")
        path = os.path.join(list(spec.submodule_search_locations)[0], "utils", "dependency.py")
        dspec = importlib.util.spec_from_file_location(dep, path)
        module = importlib.util.module_from_spec(dspec)
        dspec.loader.exec_module(module)
        module.WITH_MULTIMODAL = False  # its BLIP/CLIP models do not import under transformers 5
        sys.modules[dep] = module


def _wholebody_metainfo() -> dict:
    import mmpose.datasets.datasets  # noqa: F401 - registers the datasets
    from mmpose.datasets.datasets.utils import parse_pose_metainfo
    from mmpose.registry import DATASETS

    return parse_pose_metainfo(DATASETS.get("CocoWholeBodyDataset").METAINFO)


def _load_weights(model, checkpoint: str, config_path: str) -> None:
    """Load ``checkpoint`` into ``model``, refusing one that leaves any of the model's weights unset.

    mmengine's loader (what ``init_model`` uses) only logs missing keys, so a checkpoint in another
    layout, such as the original ViTPose repository's MMPose 0.x ``backbone.blocks.*``, would run
    with a random backbone. The file is read with ``weights_only`` on (numpy metadata allowed); the
    dataset metadata it carries (``meta.dataset_meta``) replaces the config's, as ``init_model`` does.
    """
    import torch

    from pipelines.annotators.checkpoints import torch_load_weights_only

    loaded = torch_load_weights_only(checkpoint)
    state = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else None
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(f"MMPose checkpoint {checkpoint!r} holds no state dict of tensors.")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    model_keys = set(model.state_dict())
    try:
        missing, _ = model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise ValueError(f"MMPose checkpoint {checkpoint!r} does not fit config {config_path!r}: "
                         f"{str(e).splitlines()[-1].strip()}") from e
    if missing and any(k.startswith("backbone.blocks.") and k not in model_keys for k in state):
        raise ValueError(f"MMPose checkpoint {checkpoint!r} is in the original ViTPose repository's layout "
                         "(backbone.blocks.*), which MMPose 1.x models would run with random backbone weights; "
                         f"convert it with `humanverse zoo convert-vitpose {checkpoint} OUT_DIR` and use "
                         "pose.backend vitpose.")
    if missing:
        raise ValueError(f"MMPose checkpoint {checkpoint!r} does not fit config {config_path!r}: {len(missing)} of "
                         f"the model's weights are not in it (first: {', '.join(missing[:3])}).")
    meta = loaded.get("meta") if isinstance(loaded, dict) else None
    if isinstance(meta, dict) and isinstance(meta.get("dataset_meta"), dict):
        model.dataset_meta = meta["dataset_meta"]


class MMPoseBackend:
    """An MMPose top-down model predicting the 133 COCO-WholeBody keypoints.

    Args:
        config_path: an MMPose 1.x config file (e.g. a ViTPose-H whole-body config).
        checkpoint: its checkpoint (loaded with ``weights_only=True``; it must hold every weight).
        device: ``"cpu"`` or ``"cuda:0"``.
        box_padding: the ``GetBBoxCenterScale`` padding of the test pipeline (ViTPose: 1.25).
        flip_test: the model's ``test_cfg.flip_test``.
    """

    def __init__(self, config_path: str, checkpoint: str | None, device: str = "cpu", *,
                 box_padding: float = 1.25, flip_test: bool = False):
        _prepare_imports()
        from mmpose.apis import inference_topdown, init_model

        if not os.path.isfile(config_path):
            raise FileNotFoundError(f"MMPose config {config_path!r} does not exist.")
        if checkpoint is not None and not os.path.isfile(checkpoint):
            raise FileNotFoundError(f"MMPose checkpoint {checkpoint!r} does not exist.")
        options = {"model.test_cfg.flip_test": bool(flip_test), "model.backbone.init_cfg": None}
        model = init_model(config_path, None, device=device, cfg_options=options)
        if checkpoint is not None:
            _load_weights(model, checkpoint, config_path)
        out_channels = getattr(model.head, "out_channels", None)
        if out_channels != NUM_KEYPOINTS:
            raise ValueError(f"MMPose model {config_path!r} predicts {out_channels} keypoints but HumanVerse needs the "
                             f"{NUM_KEYPOINTS} COCO-WholeBody ones; use a whole-body config and checkpoint.")
        if model.dataset_meta.get("num_keypoints") != NUM_KEYPOINTS:
            log.warning("MMPose config %s names no COCO-WholeBody train dataset (metadata %s); using COCO-WholeBody's "
                        "keypoint metadata.", config_path, model.dataset_meta.get("dataset_name"))
            model.dataset_meta = _wholebody_metainfo()
        steps = [s for s in model.cfg.test_dataloader.dataset.pipeline if s.get("type") == "GetBBoxCenterScale"]
        if not steps:
            raise ValueError(f"MMPose config {config_path!r} has no GetBBoxCenterScale step in its test pipeline, "
                             "so it is not a top-down config.")
        for s in steps:
            s["padding"] = float(box_padding)
        self.model = model
        self._inference_topdown = inference_topdown

    def predict(self, image_rgb: np.ndarray, boxes_xyxy) -> np.ndarray:
        """An (H, W, 3) RGB uint8 image and (N, 4) xyxy boxes -> (N, 133, 3) (x, y, score).

        Pixel convention in and out: a pixel's centre at ``i + 0.5`` (as :mod:`pipelines.geometry`).
        """
        boxes = np.asarray(boxes_xyxy, np.float32).reshape(-1, 4)
        out = np.zeros((len(boxes), NUM_KEYPOINTS, 3), np.float32)
        if len(boxes) == 0:  # inference_topdown would treat "no boxes" as one whole-image box
            return out
        bgr = np.ascontiguousarray(np.asarray(image_rgb)[..., ::-1])
        results = self._inference_topdown(self.model, bgr, boxes - 0.5, bbox_format="xyxy")
        for i, r in enumerate(results):
            out[i, :, :2] = np.asarray(r.pred_instances.keypoints, np.float32)[0] + 0.5
            out[i, :, 2] = np.asarray(r.pred_instances.keypoint_scores, np.float32)[0]
        return out


__all__ = ["INSTALL_HINT", "MMPoseBackend", "mmpose_available"]
