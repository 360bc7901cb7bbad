"""Outpainting (HyperHuman §4): extend truncated images with SD-2 inpainting so the pose, depth and
normal models see whole bodies; their labels are later kept only inside the original frame.

Per alive row the canvas is planned by :func:`pipelines.geometry.plan_canvas` from the person
boxes (policy ``always`` = the paper, ``truncated`` = only images where a box touches or nears a
border, ``never``). When it applies, the stored image is placed unscaled in the canvas at the
offset, the padding is initialised by edge replication, and ``stabilityai/stable-diffusion-2-
inpainting`` (``StableDiffusionInpaintPipeline``; Rombach et al. 2022, SD-2 inpainting: a 9-channel
UNet over ``cat(noisy latents, mask, masked-image latents)``) repaints the padding:

* **working size**: the canvas is resized so its longer side is ``working_size`` (512 = SD-2
  inpainting's training resolution; both sides multiples of 8 for the VAE), diffused there, and
  the result resized back to canvas pixels (bicubic);
* **mask**: white (255) = repaint = the padding, black = keep = the original (diffusers'
  convention). The kept rectangle is shrunk inwards to the 8-pixel latent grid at
  working size, so no latent cell that straddles the border is "kept" (a kept cell would carry the
  masked image's grey fill into the padding and show as a seam);
* **the original pixels are pasted back exactly** in the frame after decoding (the VAE drifts
  them), so the canvas crop ``[oy:oy+h, ox:ox+w]`` equals the decoded stored image bit for bit;
* **noise** comes from a CPU ``torch.Generator`` seeded with ``sha256(seed, row id)``: a row's
  canvas does not depend on its batch, worker or device type (diffusers draws each batch
  element's latents from its own generator);
* **encoding**: the canvas is stored as PNG (zlib level 1) in the internal ``canvas`` column.
  Lossless keeps the original region identical to the stored image for pose/depth/normal (a JPEG
  would re-compress it a second generation); level 1 is the fastest zlib level, small beside the
  diffusion, and the column is dropped at write, so its extra bytes only cost in-flight memory.

Rows keep ``outpaint = canvas.record()`` (``applied`` false and the identity when not outpainted;
then ``canvas`` stays null). The model tag is recorded (``models["outpaint"]``) on rows that were
outpainted.

``pad_fraction`` (0.25 per padded side, as a fraction of that side's length) is our choice; the
paper does not give one. A quarter of the height below a box cut at the thigh restores roughly
knees to feet for a person filling the frame, while keeping the invented area (which grows with
the square of the padding under ``always``: 2.25x the pixels at 0.25) and the loss of working
resolution for the original (it spans 2/3 of the working canvas under ``always``) moderate.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image

from humanverse.config import check
from pipelines import rows as R
from pipelines.geometry import Canvas, plan_canvas
from pipelines.stages.base import ModelStage
from pipelines.stages.loading import Device, Dtype

log = logging.getLogger(__name__)

#: PNG zlib level of the stored canvas (see the module docstring).
CANVAS_PNG_LEVEL = 1
#: The VAE's downsampling factor: working sizes and the kept rectangle align to it.
LATENT_GRID = 8


@dataclass(frozen=True)
class OutpaintConfig:
    #: ``always`` (the paper: every image), ``truncated`` (only images with a box touching or near
    #: a border, padded on those sides), ``never``
    policy: Literal["always", "truncated", "never"] = "truncated"
    #: padding per padded side as a fraction of that side's length (rounded up to 8 px)
    pad_fraction: float = 0.25
    #: a box within this fraction of a side's length from it counts as touching that side
    border_margin: float = 0.02
    #: longer side of the canvas during diffusion (multiple of 8; SD-2 inpainting's native 512)
    working_size: int = 512
    steps: int = 25
    guidance_scale: float = 7.5
    #: prompt = the row's alt text (else the empty prompt)
    prompt_from_alt_text: bool = True
    negative_prompt: str = ""
    #: per-row noise seed = sha256(seed, row id): reproducible per row
    seed: int = 0
    #: cap on the canvas' longer side (padding is reduced to fit); None = no cap
    max_canvas_side: int | None = None
    #: rows (of one working shape) per pipeline call
    batch_size: int = 8
    #: model spec overriding ``--models`` for this stage (zoo entry ``sd2-inpainting``)
    model: str | None = None
    device: Device = "auto"
    dtype: Dtype = "auto"

    def __post_init__(self):
        check(self.policy in ("always", "truncated", "never"),
              f"outpaint.policy must be 'always', 'truncated' or 'never', got {self.policy!r}.")
        check(0.0 < self.pad_fraction <= 2.0, f"outpaint.pad_fraction must be in (0, 2], got {self.pad_fraction}.")
        check(0.0 <= self.border_margin < 0.5,
              f"outpaint.border_margin must be in [0, 0.5), got {self.border_margin}.")
        check(self.working_size >= 64 and self.working_size % LATENT_GRID == 0,
              f"outpaint.working_size must be a multiple of 8 and >= 64, got {self.working_size}.")
        check(self.steps >= 1, f"outpaint.steps must be >= 1, got {self.steps}.")
        check(math.isfinite(self.guidance_scale) and self.guidance_scale >= 0,
              f"outpaint.guidance_scale must be a finite number >= 0, got {self.guidance_scale}.")
        check(self.max_canvas_side is None or self.max_canvas_side >= 64,
              f"outpaint.max_canvas_side must be >= 64 or null, got {self.max_canvas_side}.")
        check(self.batch_size >= 1, f"outpaint.batch_size must be >= 1, got {self.batch_size}.")


def row_seed(seed: int, row_id: str | None) -> int:
    """The noise seed of one row: the first 63 bits of sha256(``seed``:``row_id``)."""
    digest = hashlib.sha256(f"{seed}:{row_id or ''}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


def working_shape(canvas_width: int, canvas_height: int, working_size: int) -> tuple[int, int]:
    """(width, height) for diffusion: longer side = ``working_size``, both multiples of 8 (>= 8)."""
    s = working_size / max(canvas_width, canvas_height)

    def r8(v: float) -> int:
        return max(LATENT_GRID, int(round(v * s / LATENT_GRID)) * LATENT_GRID)

    return r8(canvas_width), r8(canvas_height)


@dataclass(frozen=True)
class OutpaintInputs:
    """What goes into the inpainting pipeline for one row.

    ``canvas_image``: the canvas at canvas size (original at the offset, padding edge-replicated);
    ``image``/``mask``: the same at working size; the mask is mode ``L``, 255 = repaint (padding),
    0 = keep (the original, shrunk to the latent grid).
    """

    canvas_image: Image.Image
    image: Image.Image
    mask: Image.Image

    @property
    def working_size(self) -> tuple[int, int]:
        return self.image.size


def outpaint_inputs(stored: Image.Image, canvas: Canvas, working_size: int) -> OutpaintInputs:
    """Build the canvas image and the working-size image and mask for ``stored`` in ``canvas``."""
    if stored.size != (canvas.width, canvas.height):
        raise ValueError(f"the stored image is {stored.size[0]}x{stored.size[1]} but the canvas was planned for "
                         f"{canvas.width}x{canvas.height}.")
    a = np.asarray(stored.convert("RGB"))
    ox, oy = canvas.offset_x, canvas.offset_y
    pads = ((oy, canvas.canvas_height - canvas.height - oy), (ox, canvas.canvas_width - canvas.width - ox), (0, 0))
    canvas_image = Image.fromarray(np.pad(a, pads, mode="edge"))
    ww, wh = working_shape(canvas.canvas_width, canvas.canvas_height, working_size)
    image = canvas_image.resize((ww, wh), Image.BICUBIC)
    # the original frame at working size, shrunk inwards to the latent grid
    sx, sy = ww / canvas.canvas_width, wh / canvas.canvas_height
    g = LATENT_GRID
    kx0, ky0 = math.ceil(ox * sx / g) * g, math.ceil(oy * sy / g) * g
    kx1 = math.floor(min((ox + canvas.width) * sx, ww) / g) * g
    ky1 = math.floor(min((oy + canvas.height) * sy, wh) / g) * g
    mask = np.full((wh, ww), 255, np.uint8)
    if kx1 > kx0 and ky1 > ky0:
        mask[ky0:ky1, kx0:kx1] = 0
    return OutpaintInputs(canvas_image, image, Image.fromarray(mask, mode="L"))


def compose_canvas(generated: Image.Image, stored: Image.Image, canvas: Canvas) -> Image.Image:
    """Resize the generated working image to canvas size and paste the original pixels back exactly."""
    out = np.array(generated.convert("RGB").resize((canvas.canvas_width, canvas.canvas_height), Image.BICUBIC))
    ox, oy = canvas.offset_x, canvas.offset_y
    out[oy:oy + canvas.height, ox:ox + canvas.width] = np.asarray(stored.convert("RGB"))
    return Image.fromarray(out)


def encode_canvas(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=CANVAS_PNG_LEVEL)
    return buf.getvalue()


def _decode(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as img:
        return img.convert("RGB")


class Outpainter(ModelStage):
    """Fills ``outpaint`` (and ``canvas`` where the policy applies) for every alive row."""

    name = "outpaint"

    def __init__(self, config: OutpaintConfig, models: str = "paper", clip_dim: int | None = None):
        super().__init__(clip_dim)
        self.config = config
        self.pipe = None
        self.tag = None
        if config.policy == "never":
            log.info("outpaint: policy 'never', no model loaded")
            return
        import torch
        from diffusers import StableDiffusionInpaintPipeline

        from pipelines.stages.loading import load_pretrained

        self.pipe, _, self.tag, self.device, self.dtype = load_pretrained(
            "sd2-inpainting", config, models, StableDiffusionInpaintPipeline, load_in_dtype=True,
            safety_checker=None, requires_safety_checker=False, use_safetensors=True)
        self.pipe.set_progress_bar_config(disable=True)
        self._torch = torch
        log.info("outpaint: policy %s, model %s on %s/%s, working size %d, %d steps", config.policy, self.tag,
                 self.device, self.dtype, config.working_size, config.steps)

    def plan(self, row: dict) -> Canvas:
        boxes = [p["bbox"] for p in (row.get("persons") or [])]
        c = self.config
        return plan_canvas(row["width"], row["height"], boxes, policy=c.policy, pad_fraction=c.pad_fraction,
                           border_margin=c.border_margin, max_canvas_side=c.max_canvas_side)

    def process(self, rows: list[dict]) -> None:
        jobs: dict[tuple[int, int], list[tuple[dict, Canvas, Image.Image, OutpaintInputs]]] = {}
        for r in rows:
            canvas = self.plan(r)
            r["outpaint"] = canvas.record()
            r["canvas"] = None
            if not canvas.applied:
                continue
            stored = _decode(r["image"])
            inputs = outpaint_inputs(stored, canvas, self.config.working_size)
            jobs.setdefault(inputs.working_size, []).append((r, canvas, stored, inputs))
        for (ww, wh), group in jobs.items():
            for i in range(0, len(group), self.config.batch_size):
                self._run(group[i:i + self.config.batch_size], ww, wh)

    def _run(self, group: list, ww: int, wh: int) -> None:
        c = self.config
        torch = self._torch
        prompts = [(r.get("alt_text") or "") if c.prompt_from_alt_text else "" for r, *_ in group]
        # CPU generators: the same noise for a row on any device (diffusers moves it to the device)
        generators = [torch.Generator("cpu").manual_seed(row_seed(c.seed, r["id"])) for r, *_ in group]
        with torch.inference_mode():
            out = self.pipe(
                prompt=prompts,
                image=[inp.image for *_, inp in group],
                mask_image=[inp.mask for *_, inp in group],
                height=wh,
                width=ww,
                strength=1.0,
                num_inference_steps=c.steps,
                guidance_scale=c.guidance_scale,
                negative_prompt=[c.negative_prompt] * len(group),
                generator=generators,
                output_type="np",
            ).images  # (B, wh, ww, 3) float in [0, 1]
        for (r, canvas, stored, _), img in zip(group, out):
            gen = Image.fromarray(np.clip(np.rint(np.asarray(img, np.float32) * 255.0), 0, 255).astype(np.uint8))
            r["canvas"] = encode_canvas(compose_canvas(gen, stored, canvas))
            R.add_model(r, self.name, self.tag)


__all__ = ["OutpaintConfig", "OutpaintInputs", "Outpainter", "compose_canvas", "encode_canvas", "outpaint_inputs",
           "row_seed", "working_shape"]
