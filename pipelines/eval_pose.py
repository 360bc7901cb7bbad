"""Whole-body poses of arbitrary images with the builder's own annotators, for evaluation.

``humanverse eval`` (paper §5) scores generated images by estimating their poses exactly as the
training data were annotated: person detection (:class:`pipelines.stages.detect.PersonDetector`,
YOLOS) then whole-body pose (:class:`pipelines.stages.pose.PoseEstimator`, ViTPose, 133
keypoints), called directly on a batch outside Ray. ``model`` and ``pipelines`` never import each
other (``docs/architecture.md``), so this returns plain data (dicts) and the CLI hands it to
:mod:`model.evaluation.evaluate`.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


class BuilderPoseEstimator:
    """The builder's detection + whole-body pose stages, called directly on a batch (no Ray).

    Rows are built in the builder's in-flight layout and passed to ``PersonDetector.process`` and
    ``PoseEstimator.process`` (not ``__call__``, whose failure policy would turn an error into a
    rejected row: evaluation must fail loudly instead). Each person's score is the detection score
    times the mean of its keypoint scores above 0.2 (MMPose's top-down rescoring), which ranks the
    detections for AP.
    """

    KEYPOINT_SCORE_THRESHOLD = 0.2

    def __init__(self, models: str = "paper", device: str = "auto", score_threshold: float = 0.5,
                 max_people: int = 20):
        from pipelines import rows as R
        from pipelines.stages.detect import DetectConfig, PersonDetector
        from pipelines.stages.pose import PoseConfig, PoseEstimator

        self._rows = R
        try:
            self.detector = PersonDetector(DetectConfig(score_threshold=score_threshold, top_k=max_people,
                                                        device=device), models)
            self.pose = PoseEstimator(PoseConfig(device=device), models)
        except OSError as e:
            raise FileNotFoundError(
                f"the pose models for --models {models!r} could not be loaded ({_first_line(e)}); pass --models "
                f"DIR holding yolos-tiny/ and vitpose-wholebody/ (a converted ViTPose-H whole-body "
                f"checkpoint).") from None
        self.name = f"{self.detector.backend.tag} + {self.pose.backend.tag}"

    def __call__(self, images: Sequence[Image.Image]) -> list[list[dict]]:
        from humanverse.codecs import decode_keypoints

        R = self._rows
        rows = []
        for i, im in enumerate(images):
            buf = io.BytesIO()
            im.convert("RGB").save(buf, format="PNG", compress_level=1)
            row = R.empty_row(self.detector.schema)
            row.update(image=buf.getvalue(), width=im.width, height=im.height, models=[],
                       source_shard="eval", source_index=i)
            rows.append(row)
        self.detector.process(rows)
        self.pose.process([r for r in rows if r["persons"]])
        out = []
        for r in rows:
            if r["reject_reason"] is not None:
                raise RuntimeError(f"pose estimation failed on a generated image: {r['reject_detail']}")
            people = []
            for p in r["persons"] or []:
                if p.get("keypoints") is None:
                    continue
                kp = decode_keypoints(p["keypoints"]).astype(np.float64)  # (133, 3)
                good = kp[:, 2] > self.KEYPOINT_SCORE_THRESHOLD
                kp_score = float(kp[good, 2].mean()) if good.any() else 0.0
                people.append({"keypoints": kp, "bbox": tuple(p["bbox"]), "score": float(p["score"]) * kp_score})
            out.append(people)
        return out
