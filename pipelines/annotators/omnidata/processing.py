"""Omnidata pre- and post-processing: images in, one dense map per image out, at its own size.

Deviation from the upstream demo, deliberate: :class:`OmnidataProcessor` resizes the *whole* image
(no centre crop) so that the dense map covers every pixel; the demo's resize + ``CenterCrop(384)``
is available with ``center_crop=True``.

Normal frame. The network outputs RGB in [0, 1], ``n = 2x - 1``, in the frame its training data
uses: +X right, +Y down, +Z *away from* the viewer (a floor is (0, -1, 0), a camera-facing surface
(0, 0, -1) in the repository's demo outputs and ground truth). HumanVerse stores normals with +Z
*towards* the viewer (docs/format.md), so :meth:`OmnidataProcessor.postprocess` negates z
(:data:`NETWORK_TO_STORED_FRAME`); a camera-facing surface comes out (0, 0, 1), the value also
used for vanishing vectors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from pipelines.annotators.omnidata.model import TASK_CHANNELS, OmnidataDPT, Task

__all__ = ["NETWORK_TO_STORED_FRAME", "ImageInput", "OmnidataProcessor", "predict_maps"]

#: Per-axis signs taking a normal from Omnidata's output frame (+Z away from the viewer) to the
#: stored one (+Z towards the viewer): z is negated, x and y are kept.
NETWORK_TO_STORED_FRAME = torch.tensor([1.0, 1.0, -1.0])


ImageInput = Image.Image | np.ndarray


@dataclass
class OmnidataProcessor:
    """Omnidata input/output transforms (the upstream ``demo.py``), adapted to full-image dense maps.

    Input: RGB, bilinear resize, ``ToTensor`` to [0, 1]; depth additionally ``Normalize(0.5, 0.5)``
    to [-1, 1], normals stay in [0, 1].

    Working size (our deviation from the demo): the demo resizes the shorter side to 384 and centre
    crops 384x384, so its map misses the image's sides. HumanVerse needs a map for every pixel, so by
    default the *whole* image is resized, keeping its aspect ratio, so that the shorter side is about
    ``size`` and both sides are multiples of ``ensure_multiple_of`` (32 by default: the upstream
    graph's requirement, so the computation is exactly upstream's; 16 also works with our model).
    ``center_crop=True`` restores the demo's transform.

    Output (:meth:`postprocess`): clamped to [0, 1] as in the demo, resized back bilinearly to each
    image's exact (H, W).

    * depth: (H, W) float32 relative depth, larger = farther (the v2 demo displays ``1 - out``; the
      scale and shift are unknown, and the direction is second-hand, see ``docs/models.md``).
    * normal: (H, W, 3) float32 unit vectors n = 2x - 1, renormalised, in the camera frame
      +X right, +Y down, +Z toward the viewer (the maintainer's words in omnidata issue #13; the
      handedness is debated there, so check with a test image before relying on the signs).
      Degenerate pixels (|2x - 1| ~ 0) become (0, 0, 1), facing the camera.
    """

    task: Task = "normal"
    size: int = 384
    ensure_multiple_of: int = 32
    center_crop: bool = False

    def __post_init__(self) -> None:
        if self.task not in TASK_CHANNELS:
            raise ValueError(f"OmnidataProcessor.task is {self.task!r}; expected 'depth' or 'normal'.")
        if self.ensure_multiple_of <= 0 or self.ensure_multiple_of % 16:
            raise ValueError(
                f"OmnidataProcessor.ensure_multiple_of is {self.ensure_multiple_of}; expected a "
                "positive multiple of 16 (the model's patch size)."
            )
        if self.size < self.ensure_multiple_of:
            raise ValueError(
                f"OmnidataProcessor.size is {self.size}; expected at least ensure_multiple_of="
                f"{self.ensure_multiple_of}."
            )
        if self.center_crop and self.size % self.ensure_multiple_of:
            raise ValueError(
                f"OmnidataProcessor.size={self.size} must be a multiple of {self.ensure_multiple_of} "
                "when center_crop=True."
            )

    def working_size(self, height: int, width: int) -> tuple[int, int]:
        """(height, width) the model sees for an image of this size (aspect kept, rounded)."""
        if self.center_crop:
            return self.size, self.size
        multiple = self.ensure_multiple_of
        scale = self.size / min(height, width)

        def rounded(side: int) -> int:
            return max(multiple, int(round(side * scale / multiple)) * multiple)

        return rounded(height), rounded(width)

    def _as_rgb_images(self, images: Sequence[ImageInput] | np.ndarray) -> list[Image.Image]:
        if isinstance(images, np.ndarray):
            if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
                raise ValueError(
                    f"An image batch array must be uint8 with shape (batch, height, width, 3), got "
                    f"{images.dtype} {images.shape}."
                )
            images = list(images)
        result = []
        for image in images:
            if isinstance(image, Image.Image):
                result.append(image.convert("RGB"))
            elif isinstance(image, np.ndarray):
                if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
                    raise ValueError(
                        f"Expected a uint8 (H, W, 3) image array, got {image.dtype} {image.shape}."
                    )
                result.append(Image.fromarray(image))
            else:
                raise ValueError(f"Expected a PIL image or a uint8 (H, W, 3) array, got {type(image).__name__}.")
        return result

    def _resize(self, image: Image.Image) -> Image.Image:
        width, height = image.size
        if not self.center_crop:
            out_h, out_w = self.working_size(height, width)
            return image.resize((out_w, out_h), Image.Resampling.BILINEAR)
        # demo: torchvision Resize(size) (shorter side -> size, longer side truncated), CenterCrop(size)
        if width <= height:
            new_w, new_h = self.size, int(self.size * height / width)
        else:
            new_w, new_h = int(self.size * width / height), self.size
        image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
        top = int(round((new_h - self.size) / 2.0))
        left = int(round((new_w - self.size) / 2.0))
        return image.crop((left, top, left + self.size, top + self.size))

    def preprocess(self, images: Sequence[ImageInput] | np.ndarray) -> torch.Tensor:
        """Images -> ``pixel_values`` (B, 3, h, w) float32; all images must share one working size."""
        rgb = self._as_rgb_images(images)
        if not rgb:
            raise ValueError("preprocess() got no images.")
        sizes = {self.working_size(image.height, image.width) for image in rgb}
        if len(sizes) > 1:
            raise ValueError(
                f"The images resolve to different working sizes {sorted(sizes)}; preprocess one size "
                "per call (predict_maps groups images by working size)."
            )
        arrays = [np.asarray(self._resize(image), dtype=np.float32) / 255.0 for image in rgb]
        pixel_values = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
        if self.task == "depth":
            pixel_values = (pixel_values - 0.5) / 0.5  # [-1, 1]
        return pixel_values

    def postprocess(self, output: torch.Tensor, sizes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
        """Model output -> one float32 map per image at its original (H, W)."""
        expected_ndim = 3 if self.task == "depth" else 4
        if output.ndim != expected_ndim or (self.task == "normal" and output.shape[1] != 3):
            raise ValueError(
                f"Omnidata {self.task} output must be "
                f"{'(B, H, W)' if self.task == 'depth' else '(B, 3, H, W)'}, got {tuple(output.shape)}."
            )
        if len(sizes) != output.shape[0]:
            raise ValueError(f"postprocess() got {len(sizes)} sizes for a batch of {output.shape[0]}.")
        maps = []
        for prediction, (height, width) in zip(output.detach().float().cpu(), sizes, strict=True):
            x = prediction.clamp(0.0, 1.0)
            x = x.unsqueeze(0) if self.task == "normal" else x[None, None]  # (1, C, h, w)
            x = F.interpolate(x, size=(int(height), int(width)), mode="bilinear", align_corners=False)[0]
            if self.task == "depth":
                maps.append(x[0].numpy().astype(np.float32))
                continue
            normal = 2.0 * x - 1.0  # (3, H, W) in Omnidata's frame: +X right, +Y down, +Z away
            normal = normal * NETWORK_TO_STORED_FRAME.view(3, 1, 1)  # -> +Z towards the viewer
            length = normal.norm(dim=0, keepdim=True)
            degenerate = length < 1e-6
            normal = normal / length.clamp_min(1e-6)
            facing = torch.tensor([0.0, 0.0, 1.0]).view(3, 1, 1).expand_as(normal)
            normal = torch.where(degenerate, facing, normal)
            maps.append(normal.permute(1, 2, 0).numpy().astype(np.float32))
        return maps


@torch.inference_mode()
def predict_maps(
    model: OmnidataDPT,
    images: Sequence[ImageInput],
    processor: OmnidataProcessor | None = None,
    batch_size: int = 8,
) -> list[np.ndarray]:
    """Run the model on images of any sizes; returns one map per image, in order, at its own size.

    Images are grouped by working size so each forward pass is one tensor batch.
    """
    processor = processor or OmnidataProcessor(task=model.config.task)
    if processor.task != model.config.task:
        raise ValueError(f"Processor task {processor.task!r} differs from model task {model.config.task!r}.")
    rgb = processor._as_rgb_images(images)
    parameter = next(model.parameters())
    groups: dict[tuple[int, int], list[int]] = {}
    for index, image in enumerate(rgb):
        groups.setdefault(processor.working_size(image.height, image.width), []).append(index)
    results: list[np.ndarray | None] = [None] * len(rgb)
    for indices in groups.values():
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            pixel_values = processor.preprocess([rgb[i] for i in chunk])
            output = model(pixel_values.to(device=parameter.device, dtype=parameter.dtype))
            maps = processor.postprocess(output, [(rgb[i].height, rgb[i].width) for i in chunk])
            for i, prediction in zip(chunk, maps, strict=True):
                results[i] = prediction
    return results  # type: ignore[return-value]
