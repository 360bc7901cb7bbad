"""The training reader over a HumanVerse dataset: rows -> (image, depth, normal, pose, caption) examples.

HyperHuman §3.2 trains the Latent Structural Diffusion Model on aligned RGB, depth and surface
normal images of one scene, conditioned on the caption and on the whole-body skeleton image
(VAE-encoded, concatenated to every branch's noisy latent); §4 trains at 512² on HumanVerse. This
module turns committed HumanVerse rows (docs/format.md) into those training examples, with the same
random resize-crop-flip applied to every modality, and the SDXL micro-conditioning (Podell et al.
2023, "SDXL", §2.2: original size and crop top-left) that the LSDM embeds.

Per example (:func:`make_example`), ``R`` = ``cfg.resolution``::

    stored image (H, W)  ──resize shorter side to R (bicubic, antialiased)──▶ (rh, rw)
    depth/normal maps (map_h, map_w) ──resize straight to (rh, rw) (bilinear)──▶ (rh, rw)
    crop one R×R window (random or centre; the same for every modality)
    flip horizontally with probability flip_prob: image, depth, normal mirrored; the normal's x
      component negated; keypoints mirrored AND left/right swapped (flip_keypoints)
    skeleton rendered from all persons' keypoints after the same resize + crop (+ flip)

Outputs are float32 tensors in [-1, 1]: ``image`` (3,R,R); ``depth`` (3,R,R), min-max normalised
over the crop and repeated to 3 channels since the paper feeds depth through the RGB VAE;
``normal`` (3,R,R), the unit normal components (x, y, z) = stored RGB / 127.5 − 1, renormalised
after the resize; ``pose`` (3,R,R), the skeleton image / 127.5 − 1 (black = −1). Plus ``caption``,
``original_size`` (h, w) of the stored image, ``crop_top_left`` (top, left) in the resized (and,
when flipped, mirrored) image, ``added_cond`` = float (orig_h, orig_w, crop_top, crop_left) in
SDXL's order, ``flipped`` and ``id``.

Choices, and why:

* **Maps are resized once**, from their stored size straight to the resized image size: maps cover
  the same field of view as the image, so this equals "resize to the image size, then resize
  again", with one interpolation fewer.
* **Depth normalisation is per crop**: the stored 16-bit PNG is already min-max normalised over
  the whole image; after cropping, it is re-stretched to [-1, 1] over the crop (the image the
  model sees), so every training depth spans the range the model will generate. A constant crop
  gives zeros. ``depth_min``/``depth_max`` drop out (an affine map with positive scale).
* **Randomness is per sample and keyed by the row** (``seed``, ``epoch``, ``source_shard``,
  ``source_index``), not by a running generator nor by (rank, position): a sample's crop and flip
  do not depend on which rank reads it, on the world size, on skipped batches, or on whether the
  single-process reader or Ray Data produced it. That is what makes step-exact resume and the
  two readers' equality hold even with random crops.
* **Selection** (``where``) is DuckDB SQL evaluated on the cheap columns of one file at a time
  (one Ray block at a time in the Ray path), never touching image or map bytes; rows without
  depth or normal are always excluded (found from Parquet null counts, reading the map column only
  for row groups that have nulls). Hence ``where`` must be a row-wise predicate: subqueries and
  window functions are rejected, since per file they would mean something else.
  ``clip_embedding`` (float16, which DuckDB cannot scan from Arrow) is not available to it.
* **Sharding** is by file (rank r reads files r::world_size of the epoch's shuffled file list), so
  a rank never opens another rank's files. With fewer files than ranks, every rank reads every
  file and keeps every world_size-th selected row (row-level striding). File-level shards can
  hold different row counts: :func:`batches_per_rank` says how many batches each rank gets, so a
  DDP trainer can cap every rank at the minimum (``max_batches``).
* **JPEG draft decoding**: when the stored JPEG is at least twice the target size, libjpeg
  decodes it at 1/2, 1/4 or 1/8 scale (never below the resized size) before the bicubic resize.
* Resizes use torch's antialiased uint8 kernels (they match PIL's within 2/255 and run ~5x faster
  than PIL's bicubic here); all arithmetic is float32.
* **Compact until the batch**: an example travels as uint8 image/normal/pose and a 1-channel
  float depth (~3.3 MB at 512² instead of 12 MB); the float conversion, the normal's
  renormalisation and x negation, and the depth's 3-channel copy run once per batch
  (:func:`_collate_compact`), element-wise, so a sample's tensors do not depend on its batch.
* Throughput: decoding the depth and normal PNGs is the largest share of an example's time, then
  resize + crop, the skeleton and the JPEG (``bench/train_loader.py``; numbers in BENCHMARKS.md).
  glibc returning freed multi-MB blocks to the OS adds page faults per example unless
  ``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` are raised in the loader's environment.

The readers give identical per-sample tensors for the same config and epoch:

* :func:`iter_examples` (one process, no Ray: tests, small runs; the trainer's ``reader: local``),
  step-exact resume by skipping row positions without decoding them;
* :func:`iter_ray_examples` (the trainer's ``reader: ray``): one Ray Data pipeline per rank over
  that rank's files, decoding in Ray tasks. Its batches equal :func:`iter_examples`' batch for
  batch (same rows, order and shuffle buffer), and a resume decodes none of the skipped rows
  (:func:`_rank_plan`). Measured here (``bench/train_loader.py``) it costs more
  CPU per sample than the local reader but takes most of it out of the training process;
* :func:`ray_dataset`: the whole selection as one ``ray.data.Dataset`` (e.g. for Ray Train's
  ``datasets=`` and ``get_dataset_shard("train").iter_torch_batches(**ray_iter_kwargs(...))``).
  Same per-sample tensors, but ``streaming_split`` shares blocks out dynamically, so which rank
  sees which rows is not reproducible: the trainer does not use it.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import logging
import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F
from PIL import Image

import humanverse
from humanverse.codecs import decode_keypoints
from humanverse.errors import first_line
from humanverse.schema import data_schema
from humanverse.skeleton import POSE_STYLES, flip_keypoints, render_pose
from humanverse.sql import where_expression

log = logging.getLogger(__name__)

__all__ = [
    "TrainDataConfig",
    "READ_COLUMNS",
    "DEPTH_COLUMNS",
    "ROW_COLUMNS",
    "batches_per_rank",
    "check_where",
    "collate",
    "collate_ray_batch",
    "iter_examples",
    "iter_ray_examples",
    "iter_rows",
    "epoch_file_order",
    "make_example",
    "plan_crop",
    "ray_dataset",
    "ray_iter_kwargs",
    "ray_rank_dataset",
    "row_columns",
    "rows_per_rank",
    "sample_rng",
    "select_rows",
    "selected_counts",
    "selected_keys",
]

#: Columns that carry pixels; never read to evaluate ``where``.
HEAVY_COLUMNS = ("image", "depth", "depth_omnidata", "normal")
#: Columns the readers load: every ``data/`` column but ``clip_embedding`` (float16; see above).
READ_COLUMNS: tuple[str, ...] = tuple(f.name for f in data_schema())
#: Columns that ``where`` can use.
CHEAP_COLUMNS: tuple[str, ...] = tuple(c for c in READ_COLUMNS if c not in HEAVY_COLUMNS)
#: Columns :func:`make_example` reads from a row.
ROW_COLUMNS: tuple[str, ...] = ("id", "source_shard", "source_index", "image", "width", "height", "caption",
                                "persons", "map_width", "map_height", "depth", "normal")
#: The depth map each ``TrainDataConfig.depth`` choice reads (format v2 stores both, App. A.1).
DEPTH_COLUMNS: dict[str, str] = {"midas": "depth", "omnidata": "depth_omnidata"}


def row_columns(cfg: "TrainDataConfig") -> tuple[str, ...]:
    """:data:`ROW_COLUMNS` with the depth column ``cfg.depth`` picks."""
    return tuple(cfg.depth_column if c == "depth" else c for c in ROW_COLUMNS)
#: Rows per Arrow record batch when streaming a file.
_READ_BATCH_ROWS = 64
# Stream tags so that the file order, the shuffle buffer and per-sample draws never share a stream.
_TAG_FILES, _TAG_BUFFER, _TAG_SAMPLE, _TAG_RAY_SHUFFLE = 0x46494C45, 0x42554646, 0x53414D50, 0x52415953


# ---------------------------------------------------------------------------------------------
# Config


@dataclass(frozen=True)
class TrainDataConfig:
    """How HumanVerse rows become training examples (HyperHuman §3.2, §4; SDXL micro-conditioning).

    Attributes:
        resolution: side of the square training crop, pixels (512 for stage 1; a multiple of 8,
            the VAE's downsampling factor).
        where: a SQL predicate on table ``hv`` (DuckDB), e.g. ``"num_persons = 1 AND aesthetic >= 5"``;
            None keeps every row. Rows without depth or normal are always excluded.
        crop: ``"random"`` (training) or ``"center"`` (evaluation, latent caches).
        flip_prob: probability of a horizontal flip (keypoints swap left/right, normal x negated).
        skeleton_threshold: keypoints scoring below this are not drawn.
        depth: which depth map stage 1 trains on: ``"midas"`` (column ``depth``, MiDaS DPT-Hybrid,
            the paper's) or ``"omnidata"`` (column ``depth_omnidata``, format v2); recorded with
            the run. Rows without the chosen map are excluded.
        pose_style: how the pose map is drawn (:data:`humanverse.skeleton.POSE_STYLES`): ``"humansd"``
            (the paper's, App. A.13: HumanSD's 17-joint body skeleton) or ``"wholebody"`` (OpenPose
            body, feet, hands and face). Sampling refuses a run trained with the other style.
        shuffle_buffer: rows held by the shuffle buffer (0 or 1: no shuffling within files).
        seed: seeds the file order, the shuffle buffer and every per-sample draw.
        reader: who decodes the rows: ``"local"`` (:func:`iter_examples`, in the training process)
            or ``"ray"`` (:func:`iter_ray_examples`, a Ray Data pipeline per training worker whose
            tasks decode in parallel with the training step). Both give bit-identical batches, so a
            run may resume with the other reader.
        ray_num_cpus: CPUs each Ray decode task asks for (``reader: ray``). Fractional by default:
            tasks asking for whole CPUs can starve next to Ray Train workers on small machines.
        ray_concurrency: most Ray decode tasks in flight per training worker (``reader: ray``);
            None lets Ray Data scale to the free CPUs.
    """

    resolution: int = 512
    where: str | None = None
    crop: Literal["random", "center"] = "random"
    flip_prob: float = 0.5
    skeleton_threshold: float = 0.3
    pose_style: Literal["humansd", "wholebody"] = "humansd"
    depth: Literal["midas", "omnidata"] = "midas"
    shuffle_buffer: int = 256
    seed: int = 0
    reader: Literal["local", "ray"] = "local"
    ray_num_cpus: float = 0.25
    ray_concurrency: int | None = None

    @property
    def depth_column(self) -> str:
        return DEPTH_COLUMNS[self.depth]

    def __post_init__(self) -> None:
        if isinstance(self.resolution, bool) or not isinstance(self.resolution, int) \
                or self.resolution <= 0 or self.resolution % 8:
            raise ValueError(f"resolution must be a positive multiple of 8 (the VAE downsamples by 8), "
                             f"got {self.resolution!r}.")
        if self.crop not in ("random", "center"):
            raise ValueError(f"crop must be 'random' or 'center', got {self.crop!r}.")
        if isinstance(self.flip_prob, bool) or not isinstance(self.flip_prob, (int, float)) \
                or not 0.0 <= self.flip_prob <= 1.0:
            raise ValueError(f"flip_prob must be a probability in [0, 1], got {self.flip_prob!r}.")
        if isinstance(self.skeleton_threshold, bool) or not isinstance(self.skeleton_threshold, (int, float)) \
                or not math.isfinite(self.skeleton_threshold):
            raise ValueError(f"skeleton_threshold must be a finite number, got {self.skeleton_threshold!r}.")
        if self.depth not in DEPTH_COLUMNS:
            raise ValueError(f"depth must be 'midas' (column depth) or 'omnidata' (column depth_omnidata), "
                             f"got {self.depth!r}.")
        if self.pose_style not in POSE_STYLES:
            raise ValueError(f"pose_style must be one of {', '.join(POSE_STYLES)}, got {self.pose_style!r}.")
        if isinstance(self.shuffle_buffer, bool) or not isinstance(self.shuffle_buffer, int) or self.shuffle_buffer < 0:
            raise ValueError(f"shuffle_buffer must be a non-negative integer, got {self.shuffle_buffer!r}.")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}.")
        if self.reader not in ("local", "ray"):
            raise ValueError(f"reader must be 'local' (decode in the training process) or 'ray' (a Ray Data "
                             f"pipeline per training worker), got {self.reader!r}.")
        if isinstance(self.ray_num_cpus, bool) or not isinstance(self.ray_num_cpus, (int, float)) \
                or not math.isfinite(self.ray_num_cpus) or self.ray_num_cpus <= 0:
            raise ValueError(f"ray_num_cpus must be a positive number of CPUs per Ray decode task (fractional, "
                             f"e.g. 0.25, on small machines), got {self.ray_num_cpus!r}.")
        if self.ray_concurrency is not None and (isinstance(self.ray_concurrency, bool)
                                                 or not isinstance(self.ray_concurrency, int)
                                                 or self.ray_concurrency < 1):
            raise ValueError(f"ray_concurrency must be a positive integer or None, got {self.ray_concurrency!r}.")
        if self.where is not None:
            object.__setattr__(self, "where", check_where(self.where))


def check_where(where: str) -> str:
    """``where`` as one row-wise condition on ``hv`` (:func:`humanverse.sql.where_expression`: one
    parsed expression, no subquery or window), checked against the columns; returns the parsed
    expression's text, the form every query embeds. A ``ValueError`` of one sentence otherwise."""
    import duckdb

    expr = where_expression(where, "where")
    con = duckdb.connect()
    try:
        con.register("hv", _cheap_schema().empty_table())
        con.execute(f"SELECT count(*) FROM hv WHERE ({expr})").fetchall()
    except duckdb.Error as e:
        first = first_line(e)
        raise ValueError(f"where {where!r} is not a valid SQL predicate on table hv: {first}") from None
    finally:
        con.close()
    return expr


def _cheap_schema() -> pa.Schema:
    s = data_schema()
    return pa.schema([s.field(c) for c in CHEAP_COLUMNS])


# ---------------------------------------------------------------------------------------------
# Selection


def _where_mask(table: pa.Table, where: str | None) -> np.ndarray:
    """Boolean mask (n,) of rows of ``table`` (cheap columns) satisfying ``where``."""
    n = table.num_rows
    if where is None or n == 0:
        return np.ones(n, bool)
    import duckdb

    cols = [c for c in CHEAP_COLUMNS if c in table.column_names]
    t = table.select(cols).append_column("__hv_row", pa.array(np.arange(n, dtype=np.int64)))
    con = duckdb.connect()
    try:
        con.register("hv", t)
        rows = con.execute(f"SELECT __hv_row FROM hv WHERE ({where})").fetchnumpy()["__hv_row"]
    finally:
        con.close()
    mask = np.zeros(n, bool)
    mask[np.asarray(rows, dtype=np.int64)] = True
    return mask


def _valid_mask(pf: pq.ParquetFile, column: str) -> np.ndarray:
    """Non-null mask of ``column`` over the whole file, from row-group null counts where they
    prove there are no nulls; only row groups holding nulls are read."""
    md = pf.metadata
    idx = pf.schema_arrow.get_field_index(column)
    if idx < 0:
        return np.zeros(md.num_rows, bool)
    leaf = [i for i in range(md.num_columns) if md.row_group(0).column(i).path_in_schema == column] \
        if md.num_row_groups else []
    parts = []
    for g in range(md.num_row_groups):
        rg = md.row_group(g)
        stats = rg.column(leaf[0]).statistics if leaf else None
        if stats is not None and stats.has_null_count and stats.null_count == 0:
            parts.append(np.ones(rg.num_rows, bool))
        else:
            col = pf.read_row_group(g, columns=[column]).column(0)
            parts.append(pc.is_valid(col).to_numpy(zero_copy_only=False))
    return np.concatenate(parts) if parts else np.zeros(0, bool)


def _file_selection(fs, path: str, where: str | None, depth_column: str = "depth") -> np.ndarray:
    """Row positions (sorted int64) of the selected rows of one data file (with the chosen depth map)."""
    with fs.open_input_file(path) as f:
        pf = pq.ParquetFile(f)
        mask = _valid_mask(pf, depth_column) & _valid_mask(pf, "normal")
        if where is not None and mask.any():
            cheap = pf.read(columns=list(CHEAP_COLUMNS))
            mask &= _where_mask(cheap, where)
    return np.flatnonzero(mask).astype(np.int64)


def select_rows(ds: "humanverse.dataset.HumanVerseDataset", cfg: TrainDataConfig,
                files: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Evaluate the selection on the cheap columns of the committed files.

    Returns ``{file: sorted row positions}`` for every committed data file (or ``files``); images
    and maps are not read. Scales to large datasets one file at a time; see the module docstring.
    """
    files = ds.files("data") if files is None else list(files)
    return {f: _file_selection(ds.root.fs, f, cfg.where, cfg.depth_column) for f in files}


def selected_keys(ds: "humanverse.dataset.HumanVerseDataset", cfg: TrainDataConfig) -> set[tuple[str, int]]:
    """The ``(source_shard, source_index)`` keys of the selected rows (small datasets, tests)."""
    keys: set[tuple[str, int]] = set()
    for f, rows in select_rows(ds, cfg).items():
        t = pq.read_table(f, columns=["source_shard", "source_index"], filesystem=ds.root.fs).take(rows)
        keys.update(zip(t.column(0).to_pylist(), t.column(1).to_pylist()))
    return keys


# ---------------------------------------------------------------------------------------------
# One example


def _key64(source_shard: str, source_index: int) -> int:
    h = hashlib.blake2b(f"{source_shard}\x00{int(source_index)}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little")


def sample_rng(seed: int, epoch: int, source_shard: str, source_index: int) -> np.random.Generator:
    """The per-sample generator: keyed by (seed, epoch, row), never by position or rank."""
    return np.random.default_rng([int(seed), int(epoch), _TAG_SAMPLE, _key64(source_shard, source_index)])


def plan_crop(width: int, height: int, resolution: int, crop: str, flip_prob: float,
              rng: np.random.Generator) -> tuple[int, int, int, int, bool]:
    """Resize-crop-flip geometry: returns (resized_w, resized_h, top, left, flipped).

    Three uniform draws per sample, always in the same order (top, left, flip), whatever the policy.
    """
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}.")
    r = resolution
    s = r / min(width, height)
    rw, rh = max(r, round(width * s)), max(r, round(height * s))
    u = rng.random(3)
    if crop == "random":
        top, left = int(u[0] * (rh - r + 1)), int(u[1] * (rw - r + 1))
    else:
        top, left = (rh - r) // 2, (rw - r) // 2
    return rw, rh, min(top, rh - r), min(left, rw - r), bool(u[2] < flip_prob)


def _rgb_u8(im: Image.Image) -> torch.Tensor:
    """A PIL image as an (h, w, 3) uint8 tensor with one copy (``np.asarray`` of the image bytes,
    read-only: nothing writes into it, every later step makes new tensors)."""
    if im.mode != "RGB":
        im = im.convert("RGB")
    a = np.asarray(im)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "The given NumPy array is not writable"
        return torch.from_numpy(a)


def _resize_u8(img: torch.Tensor, size_hw: tuple[int, int], mode: str) -> torch.Tensor:
    """(h, w, c) uint8 -> (c, H, W) uint8, antialiased (torch's channels-last uint8 kernels)."""
    t = img.permute(2, 0, 1)  # (c, h, w), channels-last strides
    if tuple(t.shape[1:]) == tuple(size_hw):
        return t
    return F.interpolate(t[None], size=size_hw, mode=mode, antialias=True)[0]


@dataclass
class _Decoded:
    """A row decoded, resized and cropped, before its flip (:func:`_finish` applies one)."""

    image: torch.Tensor  # (3, R, R) uint8
    depth: torch.Tensor  # (1, R, R) float32 in [-1, 1]
    normal: torch.Tensor  # (3, R, R) uint8 stored RGB, resized (float + renormalised at collate)
    keypoints: np.ndarray | None  # (P, 133, 3) in crop pixels, unflipped
    size: tuple[int, int]  # stored (h, w)
    resized_width: int
    top: int
    left: int
    flip: bool  # the sample's own draw
    caption: str
    id: str | None


def _decode_row(row: dict, cfg: TrainDataConfig, rng: np.random.Generator) -> _Decoded:
    """Decode, resize and crop one row."""
    r = cfg.resolution
    # image: header -> geometry -> (JPEG draft) decode -> (3, R, R) uint8
    with Image.open(io.BytesIO(row["image"])) as im:
        width, height = im.size  # the stored size: the frame of keypoints and crop coordinates
        rw, rh, top, left, flip = plan_crop(width, height, r, cfg.crop, cfg.flip_prob, rng)
        if im.format == "JPEG":
            im.draft("RGB", (rw, rh))  # DCT-domain 1/2, 1/4, 1/8 while still >= (rw, rh)
        arr = _rgb_u8(im)  # (h', w', 3) uint8
    image = _resize_u8(arr, (rh, rw), "bicubic")[:, top:top + r, left:left + r]

    # depth: 16-bit PNG -> (1, R, R) float32 in [-1, 1], min-max over the crop
    with Image.open(io.BytesIO(row[cfg.depth_column])) as dm:
        q = np.asarray(dm)
    if q.ndim != 2:
        raise ValueError(f"row {row.get('id')!r}: depth PNG must be single-channel, got shape {q.shape}.")
    d = torch.from_numpy(q.astype(np.float32))[None, None]  # (1, 1, mh, mw)
    if tuple(d.shape[2:]) != (rh, rw):
        d = F.interpolate(d, size=(rh, rw), mode="bilinear", antialias=True, align_corners=False)
    d = d[0, :, top:top + r, left:left + r]  # (1, R, R)
    lo, hi = d.amin(), d.amax()
    depth = (d - lo).mul_(2.0 / float(hi - lo)).sub_(1.0) if float(hi - lo) > 0 else torch.zeros_like(d)

    # normal: 8-bit RGB PNG -> (3, R, R) uint8, resized + cropped (float and unit length later)
    with Image.open(io.BytesIO(row["normal"])) as nm:
        nrgb = _rgb_u8(nm)
    normal = _resize_u8(nrgb, (rh, rw), "bilinear")[:, top:top + r, left:left + r]

    # keypoints through the same resize + crop
    kps = [decode_keypoints(p["keypoints"]) for p in (row.get("persons") or []) if p.get("keypoints") is not None]
    kp = None
    if kps:
        kp = np.stack(kps)  # (P, 133, 3) stored-image pixels
        kp[..., 0] = kp[..., 0] * (rw / width) - left
        kp[..., 1] = kp[..., 1] * (rh / height) - top
    caption = row.get("caption")
    return _Decoded(image, depth, normal, kp, (int(height), int(width)), rw, int(top), int(left), flip,
                    caption if caption is not None else "", row.get("id"))


def _finish(dec: _Decoded, cfg: TrainDataConfig, flip: bool) -> dict[str, Any]:
    """Apply (or not) the horizontal flip and draw the skeleton: the compact example."""
    r = cfg.resolution
    image, depth, normal, kp = dec.image, dec.depth, dec.normal, dec.keypoints
    if flip:
        image, depth, normal = image.flip(-1), depth.flip(-1), normal.flip(-1)  # x negated at collate
        if kp is not None:
            kp = flip_keypoints(kp, r)  # x -> R - x, left <-> right
    if kp is not None:
        pose = _rgb_u8(render_pose(kp, r, r, cfg.skeleton_threshold, cfg.pose_style))
        pose = pose.permute(2, 0, 1).contiguous()  # (3, R, R) uint8
    else:
        pose = torch.zeros(3, r, r, dtype=torch.uint8)
    crop_left = dec.resized_width - r - dec.left if flip else dec.left
    return {
        "image": image.contiguous(), "depth": depth.contiguous(), "normal": normal.contiguous(), "pose": pose,
        "caption": dec.caption, "original_size": dec.size, "crop_top_left": (dec.top, int(crop_left)),
        "flipped": bool(flip), "id": dec.id,
    }


def _example_arrays(row: dict, cfg: TrainDataConfig, rng: np.random.Generator) -> dict[str, Any]:
    """The example in compact form (uint8 image/normal/pose, float32 1-channel depth); every
    reader turns it into floats with the same batch conversions (:func:`_collate_compact`)."""
    dec = _decode_row(row, cfg, rng)
    return _finish(dec, cfg, dec.flip)


def _u8_to_float(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.float32).div_(127.5).sub_(1.0)


def _normals(u8: torch.Tensor, flipped: torch.Tensor) -> torch.Tensor:
    """(B, 3, R, R) stored normal RGB (resized, mirrored when flipped) -> unit vectors n = rgb /
    127.5 - 1, renormalised (bilinear resizing shortens them), x negated for flipped samples."""
    n = _u8_to_float(u8)
    norm = (n[:, 0] * n[:, 0] + n[:, 1] * n[:, 1] + n[:, 2] * n[:, 2]).sqrt_().clamp_(min=1e-6)  # (B, R, R)
    n.div_(norm[:, None])
    sign = 1.0 - 2.0 * flipped.to(torch.float32)  # -1 for mirrored samples: x points the other way
    n[:, 0].mul_(sign[:, None, None])
    return n


def make_example(row: dict, cfg: TrainDataConfig, rng: np.random.Generator) -> dict[str, Any]:
    """One training example from one HumanVerse row (see the module docstring for the geometry).

    ``row`` needs :data:`ROW_COLUMNS`; ``rng`` supplies the crop and flip (use :func:`sample_rng`
    for the readers' reproducible draws). Returns float32 tensors in [-1, 1] ``image``, ``depth``,
    ``normal``, ``pose`` (each (3, R, R)), ``added_cond`` (4,) = (orig_h, orig_w, crop_top,
    crop_left), and ``caption``, ``original_size``, ``crop_top_left``, ``flipped``, ``id``.
    """
    batch = _collate_examples_compact([_example_arrays(row, cfg, rng)])
    ex = {k: v[0] for k, v in batch.items()}
    ex["original_size"] = tuple(ex["original_size"].tolist())
    ex["crop_top_left"] = tuple(ex["crop_top_left"].tolist())
    ex["flipped"] = bool(ex["flipped"])
    return ex


def collate(examples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack examples: tensors (B, ...), ``caption``/``id`` lists, sizes as int64 (B, 2)."""
    if not examples:
        raise ValueError("collate needs at least one example.")
    return {
        "image": torch.stack([e["image"] for e in examples]),  # (B, 3, R, R)
        "depth": torch.stack([e["depth"] for e in examples]),  # (B, 3, R, R)
        "normal": torch.stack([e["normal"] for e in examples]),  # (B, 3, R, R)
        "pose": torch.stack([e["pose"] for e in examples]),  # (B, 3, R, R)
        "added_cond": torch.stack([e["added_cond"] for e in examples]),  # (B, 4)
        "original_size": torch.tensor([e["original_size"] for e in examples], dtype=torch.int64),  # (B, 2)
        "crop_top_left": torch.tensor([e["crop_top_left"] for e in examples], dtype=torch.int64),  # (B, 2)
        "flipped": torch.tensor([bool(e["flipped"]) for e in examples]),  # (B,)
        "caption": [e["caption"] for e in examples],
        "id": [e["id"] for e in examples],
    }


# ---------------------------------------------------------------------------------------------
# The single-process reader


def epoch_file_order(files: Sequence[str], seed: int, epoch: int) -> list[str]:
    """The epoch's file order: the sorted committed files, permuted by (seed, epoch)."""
    files = sorted(files)
    perm = np.random.default_rng([int(seed), int(epoch), _TAG_FILES]).permutation(len(files))
    return [files[i] for i in perm]


def _rank_files(files: list[str], rank: int, world_size: int) -> tuple[list[str], bool]:
    """(files this rank reads, whether rows are strided instead)."""
    if len(files) >= world_size:
        return files[rank::world_size], False
    return files, True


def _check_rank(rank: int, world_size: int) -> None:
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive integer, got {world_size!r}.")
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(f"rank must be an integer in [0, {world_size}), got {rank!r}.")


def _iter_file_rows(fs, path: str, selection: np.ndarray, columns: Sequence[str]) -> Iterator[dict]:
    """Selected rows of one file as dicts, streamed in record batches (file order).

    Fixed-size lists of numbers (e.g. cached latents) come as 1-D numpy copies (a view would pin
    its whole record batch in the shuffle buffer); everything else as Python values."""
    if selection.size == 0:
        return
    with fs.open_input_file(path) as f:
        pf = pq.ParquetFile(f)
        start = 0
        for batch in pf.iter_batches(batch_size=_READ_BATCH_ROWS, columns=list(columns)):
            n = batch.num_rows
            lo, hi = np.searchsorted(selection, [start, start + n])
            if hi > lo:
                t = batch.take(pa.array(selection[lo:hi] - start))
                cols: dict[str, Any] = {}
                for name, col in zip(t.schema.names, t.columns):
                    typ = col.type
                    if pa.types.is_fixed_size_list(typ) and (pa.types.is_floating(typ.value_type)
                                                             or pa.types.is_integer(typ.value_type)):
                        flat = col.flatten().to_numpy(zero_copy_only=False)
                        cols[name] = flat.reshape(len(col), typ.list_size)
                    else:
                        cols[name] = col.to_pylist()
                for i in range(t.num_rows):
                    yield {k: (v[i].copy() if isinstance(v, np.ndarray) else v[i]) for k, v in cols.items()}
            start += n


def _shuffle_buffer(rows: Iterable[Any], size: int, rng: np.random.Generator) -> Iterator[Any]:
    """A seeded shuffle buffer: once full, each arriving row evicts a uniformly chosen one."""
    if size <= 1:
        yield from rows
        return
    buf: list[Any] = []
    for row in rows:
        if len(buf) < size:
            buf.append(row)
            continue
        j = int(rng.integers(size))
        out, buf[j] = buf[j], row
        yield out
    for j in rng.permutation(len(buf)):
        yield buf[j]


def _rank_stream(fs, files: Sequence[str], select: Callable[[str], np.ndarray], columns: Sequence[str], *,
                 seed: int, epoch: int, rank: int, world_size: int, shuffle_buffer: int) -> Iterator[dict]:
    """This rank's rows in the epoch's order (file order, sharding, shuffle buffer); no decoding.

    ``select(file)`` gives the sorted row positions to read from a file."""
    ordered = epoch_file_order(files, seed, epoch)
    mine, strided = _rank_files(ordered, rank, world_size)
    if strided:
        log.info("%d files for %d ranks: every rank reads every file and keeps every %d-th row",
                 len(ordered), world_size, world_size)

    def rows() -> Iterator[dict]:
        i = 0
        for f in mine:
            for row in _iter_file_rows(fs, f, select(f), columns):
                if not strided or i % world_size == rank:
                    yield row
                i += 1

    return _shuffle_buffer(rows(), shuffle_buffer, _buffer_rng(seed, epoch, rank, world_size))


def _buffer_rng(seed: int, epoch: int, rank: int, world_size: int) -> np.random.Generator:
    """The shuffle buffer's generator: one per (seed, epoch, rank, world size), in both readers."""
    return np.random.default_rng([int(seed), int(epoch), _TAG_BUFFER, int(rank), int(world_size)])


def iter_rows(root, cfg: TrainDataConfig, *, epoch: int, rank: int = 0, world_size: int = 1,
              columns: Sequence[str] | None = None) -> Iterator[dict]:
    """This rank's selected raw rows, in exactly the order :func:`iter_examples` decodes them."""
    _check_rank(rank, world_size)
    ds = humanverse.open(root)
    return _rank_stream(ds.root.fs, ds.files("data"),
                        lambda f: _file_selection(ds.root.fs, f, cfg.where, cfg.depth_column),
                        columns or row_columns(cfg), seed=cfg.seed, epoch=epoch, rank=rank, world_size=world_size,
                        shuffle_buffer=cfg.shuffle_buffer)


def batches_per_rank(root, cfg: TrainDataConfig, *, epoch: int, world_size: int, batch_size: int,
                     drop_last: bool = True, counts: dict[str, int] | None = None) -> list[int]:
    """How many batches each rank's :func:`iter_examples` (or :func:`iter_ray_examples`) yields in
    ``epoch`` (files move between ranks from epoch to epoch, so ask per epoch). A DDP loop passes
    ``max_batches=min(...)`` so that every rank takes the same number of steps. ``counts``
    (:func:`selected_counts`, which does not depend on the epoch) saves re-reading the selection."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    return [(n // batch_size if drop_last else -(-n // batch_size))
            for n in rows_per_rank(root, cfg, epoch=epoch, world_size=world_size, counts=counts)]


def selected_counts(root, cfg: TrainDataConfig) -> dict[str, int]:
    """``{committed data file: selected rows}`` (reads cheap columns only; the same every epoch)."""
    return {f: len(v) for f, v in select_rows(humanverse.open(root), cfg).items()}


def rows_per_rank(root, cfg: TrainDataConfig, *, epoch: int, world_size: int,
                  counts: dict[str, int] | None = None) -> list[int]:
    """Selected rows each rank reads in ``epoch`` (reads cheap columns only, unless ``counts``
    from :func:`selected_counts` is given)."""
    _check_rank(0, world_size)
    sel = selected_counts(root, cfg) if counts is None else counts
    return split_counts(sel, seed=cfg.seed, epoch=epoch, world_size=world_size)


def split_counts(counts: dict[str, int], *, seed: int, epoch: int, world_size: int) -> list[int]:
    """Rows each rank gets in ``epoch`` from ``{file: selected rows}``, sharded as
    :func:`_rank_stream` shards them (files in the epoch's order dealt round-robin; rows strided
    when there are fewer files than ranks)."""
    ordered = epoch_file_order(list(counts), seed, epoch)
    if len(ordered) < world_size:
        n = sum(counts.values())
        return [n // world_size + (r < n % world_size) for r in range(world_size)]
    return [sum(counts[f] for f in ordered[r::world_size]) for r in range(world_size)]


def iter_examples(root, cfg: TrainDataConfig, *, epoch: int, batch_size: int, rank: int = 0,
                  world_size: int = 1, skip_batches: int = 0, max_batches: int | None = None,
                  drop_last: bool = True) -> Iterator[dict[str, Any]]:
    """Collated training batches for one rank and one epoch, without Ray.

    Order: committed files permuted by (seed, epoch); rank r reads files r::world_size (row
    striding when there are fewer files than ranks); rows pass a shuffle buffer seeded by
    (seed, epoch, rank); each row's crop/flip come from :func:`sample_rng`. ``skip_batches`` drops
    the first batches of that stream without decoding them (step-exact resume: the rest is
    bit-identical to an unskipped run); ``max_batches`` caps the batches yielded (counted from the
    start of the epoch, skipped ones included), e.g. at ``min(batches_per_rank(...))`` for DDP.
    """
    _check_rank(rank, world_size)
    _check_batching(batch_size, skip_batches, max_batches, epoch)
    stream = iter_rows(root, cfg, epoch=epoch, rank=rank, world_size=world_size)

    def make(row: dict) -> dict[str, Any]:  # compact; converted to float once per batch
        return _example_arrays(row, cfg, sample_rng(cfg.seed, epoch, row["source_shard"], row["source_index"]))

    yield from _batches(stream, make, _collate_examples_compact, batch_size=batch_size, skip_batches=skip_batches,
                        max_batches=max_batches, drop_last=drop_last)


def _check_batching(batch_size: int, skip_batches: int, max_batches: int | None, epoch: int) -> None:
    for name, v, lo in (("batch_size", batch_size, 1), ("skip_batches", skip_batches, 0), ("epoch", epoch, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {v!r}.")
    if max_batches is not None and (isinstance(max_batches, bool) or not isinstance(max_batches, int)
                                    or max_batches < 0):
        raise ValueError(f"max_batches must be a non-negative integer or None, got {max_batches!r}.")


def _batches(stream: Iterable[dict], make: Callable[[dict], Any], collate_fn: Callable[[list], Any], *,
             batch_size: int, skip_batches: int, max_batches: int | None, drop_last: bool) -> Iterator[Any]:
    """Group a row stream into batches; the first ``skip_batches`` are counted, never made."""
    b = 0
    pending: list[Any] = []
    for row in stream:
        if max_batches is not None and b >= max_batches:
            return
        pending.append(None if b < skip_batches else make(row))
        if len(pending) == batch_size:
            if b >= skip_batches:
                yield collate_fn(pending)
            pending = []
            b += 1
    if pending and not drop_last and b >= skip_batches and (max_batches is None or b < max_batches):
        yield collate_fn(pending)


# ---------------------------------------------------------------------------------------------
# The Ray Data reader


def _ray_examples(batch: pa.Table, cfg: TrainDataConfig, epoch: int) -> dict[str, np.ndarray]:
    """Ray ``map_batches`` function: select rows of a block, decode them (compact dtypes)."""
    mask = _where_mask(batch, cfg.where)
    mask &= pc.is_valid(batch.column(cfg.depth_column)).to_numpy(zero_copy_only=False)
    mask &= pc.is_valid(batch.column("normal")).to_numpy(zero_copy_only=False)
    rows = batch.filter(pa.array(mask)).select(list(row_columns(cfg))).to_pylist()
    exs = [_example_arrays(row, cfg, sample_rng(cfg.seed, epoch, row["source_shard"], row["source_index"]))
           for row in rows]
    return _stack_compact(exs, cfg.resolution)


def _stack_compact(exs: Sequence[dict[str, Any]], r: int) -> dict[str, np.ndarray]:
    """Compact examples -> one Ray block's numpy columns (what :func:`collate_ray_batch` reads)."""
    if not exs:
        return {"image": np.zeros((0, 3, r, r), np.uint8), "depth": np.zeros((0, 1, r, r), np.float32),
                "normal": np.zeros((0, 3, r, r), np.uint8), "pose": np.zeros((0, 3, r, r), np.uint8),
                "original_size": np.zeros((0, 2), np.int64), "crop_top_left": np.zeros((0, 2), np.int64),
                "flipped": np.zeros(0, bool), "caption": np.array([], dtype=object),
                "id": np.array([], dtype=object)}
    return {
        "image": np.stack([e["image"].numpy() for e in exs]),  # (B, 3, R, R) uint8
        "depth": np.stack([e["depth"].numpy() for e in exs]),  # (B, 1, R, R) float32
        "normal": np.stack([e["normal"].numpy() for e in exs]),  # (B, 3, R, R) uint8
        "pose": np.stack([e["pose"].numpy() for e in exs]),  # (B, 3, R, R) uint8
        "original_size": np.array([e["original_size"] for e in exs], np.int64),  # (B, 2)
        "crop_top_left": np.array([e["crop_top_left"] for e in exs], np.int64),  # (B, 2)
        "flipped": np.array([e["flipped"] for e in exs], bool),
        "caption": np.array([e["caption"] for e in exs], dtype=object),
        "id": np.array([e["id"] for e in exs], dtype=object),
    }


def _collate_compact(batch: dict[str, Any]) -> dict[str, Any]:
    """Compact batch columns (torch: uint8 image/pose, 1-channel depth; int64 sizes) -> the float
    batch. Element-wise the same conversions as :func:`make_example`, so per-sample tensors are
    bit-identical whichever reader produced them."""
    size, crop = batch["original_size"], batch["crop_top_left"]
    depth = batch["depth"]  # (B, 1, R, R)
    return {
        "image": _u8_to_float(batch["image"]),  # (B, 3, R, R)
        "depth": depth.expand(-1, 3, -1, -1).contiguous(),  # (B, 3, R, R)
        "normal": _normals(batch["normal"], batch["flipped"]),  # (B, 3, R, R) x, y, z
        "pose": _u8_to_float(batch["pose"]),  # (B, 3, R, R)
        "added_cond": torch.cat([size, crop], dim=1).to(torch.float32),  # (B, 4)
        "original_size": size,  # (B, 2)
        "crop_top_left": crop,  # (B, 2)
        "flipped": batch["flipped"],  # (B,)
        "caption": [str(c) for c in batch["caption"]],
        "id": [str(i) for i in batch["id"]],
    }


def _collate_examples_compact(examples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return _collate_compact({
        "image": torch.stack([e["image"] for e in examples]),
        "depth": torch.stack([e["depth"] for e in examples]),
        "normal": torch.stack([e["normal"] for e in examples]),
        "pose": torch.stack([e["pose"] for e in examples]),
        "original_size": torch.tensor([e["original_size"] for e in examples], dtype=torch.int64),
        "crop_top_left": torch.tensor([e["crop_top_left"] for e in examples], dtype=torch.int64),
        "flipped": torch.tensor([bool(e["flipped"]) for e in examples]),
        "caption": [e["caption"] for e in examples], "id": [e["id"] for e in examples],
    })


def collate_ray_batch(batch: dict[str, np.ndarray]) -> dict[str, Any]:
    """``collate_fn`` for ``iter_torch_batches``: the Ray blocks' compact columns -> the same
    batch dict (same float conversions) as :func:`collate`."""
    return _collate_compact({
        "image": torch.from_numpy(np.ascontiguousarray(batch["image"])),
        "depth": torch.from_numpy(np.ascontiguousarray(batch["depth"])),
        "normal": torch.from_numpy(np.ascontiguousarray(batch["normal"])),
        "pose": torch.from_numpy(np.ascontiguousarray(batch["pose"])),
        "original_size": torch.from_numpy(np.asarray(batch["original_size"], np.int64)),
        "crop_top_left": torch.from_numpy(np.asarray(batch["crop_top_left"], np.int64)),
        "flipped": torch.from_numpy(np.asarray(batch["flipped"], bool)),
        "caption": list(batch["caption"]), "id": list(batch["id"]),
    })


def ray_dataset(root, cfg: TrainDataConfig, *, epoch: int = 0, batch_size: int = 8, num_cpus: float = 1.0,
                concurrency: int | None = None, read_num_cpus: float | None = None):
    """A ``ray.data.Dataset`` of decoded examples over the committed data files.

    ``read_parquet`` over :meth:`HumanVerseDataset.files` in the epoch's file order ->
    ``map_batches`` (tasks of ``num_cpus`` CPUs) that evaluates ``where`` per block and decodes
    with the same per-sample draws as :func:`iter_examples`. Blocks hold compact columns (uint8
    image/normal/pose, 1-channel float depth: ~3.3 MB per 512² example); iterate with
    ``iter_torch_batches(**ray_iter_kwargs(cfg, epoch=..., batch_size=...))`` to get the same
    float batches as :func:`collate`. Sets ``DataContext.execution_options.preserve_order`` (on the
    current context, which the dataset captures) so that every run streams the same order.

    The epoch fixes the file order and the augmentation draws, so build one dataset per epoch
    (or chain epochs with ``Dataset.union``); Ray Data has no mid-epoch resume: skip
    ``step_in_epoch`` batches (they are still read and decoded).
    """
    import ray.data

    ds = humanverse.open(root)
    files = epoch_file_order(ds.files("data"), cfg.seed, epoch)
    if not files:
        raise ValueError(f"{ds.root.path} has no committed data files to train on.")
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    read_kw = {} if read_num_cpus is None else {"num_cpus": read_num_cpus}
    rd = ray.data.read_parquet(files, filesystem=ds.root.fs, columns=list(READ_COLUMNS), shuffle=None, **read_kw)
    return rd.map_batches(_ray_examples, fn_kwargs={"cfg": cfg, "epoch": int(epoch)}, batch_format="pyarrow",
                          batch_size=batch_size, num_cpus=num_cpus, concurrency=concurrency)


def ray_iter_kwargs(cfg: TrainDataConfig, *, epoch: int, batch_size: int, drop_last: bool = True) -> dict[str, Any]:
    """Keyword arguments for ``iter_torch_batches`` on a :func:`ray_dataset` (or its shard): the
    collate function and a local shuffle buffer seeded by (seed, epoch), which is reproducible with
    ``preserve_order``. The local buffer holds decoded compact examples (~3.3 MB
    each at 512²): a smaller ``cfg.shuffle_buffer`` may suit Ray workers."""
    seed = int(np.random.default_rng([cfg.seed, int(epoch), _TAG_RAY_SHUFFLE]).integers(2**31))
    kw: dict[str, Any] = {"batch_size": batch_size, "collate_fn": collate_ray_batch, "drop_last": drop_last}
    if cfg.shuffle_buffer > 1:
        kw.update(local_shuffle_buffer_size=cfg.shuffle_buffer, local_shuffle_seed=seed)
    return kw


# ---------------------------------------------------------------------------------------------
# The per-rank Ray Data reader (the trainer's ``reader: ray``)


@dataclass(frozen=True)
class _RankPlan:
    """What one rank's Ray pipeline decodes in one epoch, given the resume point.

    ``items``: one work item per file to open, in the rank's stream order: ``path``, ``rows`` (the
    row positions to decode, int64 bytes, when ``given``) and ``given`` (False: the task evaluates
    the selection itself). ``template[s]`` for the first ``len(template)`` rows of the rank's
    stream (before the shuffle buffer): True when Ray decodes row ``s``, False when that row was
    consumed before the resume point (the consumer feeds the buffer a placeholder). Every row past
    the template is decoded.
    """

    items: list[dict[str, Any]]
    template: np.ndarray  # (m,) bool
    strided: bool


def _rank_plan(fs, files: Sequence[str], cfg: TrainDataConfig, *, epoch: int, rank: int, world_size: int,
               skip_rows: int) -> _RankPlan:
    """Plan one rank's epoch: the same files, rows and order as :func:`iter_rows`, minus the rows
    that the first ``skip_rows`` outputs of the shuffle buffer took.

    Which stream rows those are follows from the buffer's seeded draws alone (replayed here over
    row numbers), so a resume decodes none of them (the local reader reads them without decoding)
    and does not open files wholly consumed. The selection is evaluated here only for the files the resume
    point reaches (and for every file when rows are strided, i.e. fewer files than ranks).
    """
    ordered = epoch_file_order(files, cfg.seed, epoch)
    mine, strided = _rank_files(ordered, rank, world_size)
    size = cfg.shuffle_buffer
    # The buffer emits its t-th row when stream row size + t arrives (size > 1), or as row t.
    horizon = 0 if not skip_rows else skip_rows + (size if size > 1 else 0)
    planned: list[tuple[str, np.ndarray]] = []
    seen = g = 0  # rows of this rank's stream; selected rows of all files read (striding)
    for f in mine:
        if not strided and seen >= horizon:
            break
        pos = _file_selection(fs, f, cfg.where, cfg.depth_column)
        if strided:
            keep = (g + np.arange(len(pos))) % world_size == rank
            g += len(pos)
            pos = pos[keep]
        planned.append((f, pos))
        seen += len(pos)
    consumed = np.zeros(seen, bool)
    if skip_rows:
        rng = _buffer_rng(cfg.seed, epoch, rank, world_size)
        for s in itertools.islice(_shuffle_buffer(iter(range(seen)), size, rng), skip_rows):
            consumed[s] = True
    items: list[dict[str, Any]] = []
    s0 = 0
    for f, pos in planned:
        need = ~consumed[s0:s0 + len(pos)]
        s0 += len(pos)
        if need.any():
            items.append({"path": f, "rows": pos[need].astype(np.int64).tobytes(), "given": True})
    items.extend({"path": f, "rows": b"", "given": False} for f in mine[len(planned):])
    return _RankPlan(items, ~consumed, strided)


def _ray_decode_files(items: dict[str, np.ndarray], fs, cfg: TrainDataConfig, epoch: int,
                      chunk: int) -> Iterator[dict[str, np.ndarray]]:
    """Ray ``map_batches`` generator: decode each item's rows in file order (the same per-sample
    draws as :func:`iter_examples`), ``chunk`` compact examples per yielded batch."""
    for path, rows, given in zip(items["path"], items["rows"], items["given"]):
        path = str(path)
        sel = np.frombuffer(rows, np.int64) if given else _file_selection(fs, path, cfg.where, cfg.depth_column)
        exs: list[dict[str, Any]] = []
        for row in _iter_file_rows(fs, path, sel, row_columns(cfg)):
            exs.append(_example_arrays(row, cfg, sample_rng(cfg.seed, epoch, row["source_shard"], row["source_index"])))
            if len(exs) == chunk:
                yield _stack_compact(exs, cfg.resolution)
                exs = []
        if exs:
            yield _stack_compact(exs, cfg.resolution)


def _block_examples(block: dict[str, np.ndarray]) -> Iterator[dict[str, Any]]:
    """A decoded Ray block -> compact examples as :func:`_finish` makes them. Arrays are copied:
    a view would pin the whole block while one of its rows waits in the shuffle buffer."""
    for j in range(len(block["id"])):
        yield {"image": torch.from_numpy(block["image"][j].copy()),  # (3, R, R) uint8
               "depth": torch.from_numpy(block["depth"][j].copy()),  # (1, R, R) float32
               "normal": torch.from_numpy(block["normal"][j].copy()),  # (3, R, R) uint8
               "pose": torch.from_numpy(block["pose"][j].copy()),  # (3, R, R) uint8
               "original_size": tuple(int(v) for v in block["original_size"][j]),
               "crop_top_left": tuple(int(v) for v in block["crop_top_left"][j]),
               "flipped": bool(block["flipped"][j]), "caption": str(block["caption"][j]), "id": str(block["id"][j])}


def ray_rank_dataset(root, cfg: TrainDataConfig, *, epoch: int, rank: int = 0, world_size: int = 1,
                     skip_rows: int = 0, num_cpus: float | None = None, concurrency: int | None = None,
                     chunk: int = 8):
    """One rank's Ray Data pipeline for one epoch: ``(dataset or None, plan)``.

    ``from_items`` (one item per file of this rank, in the epoch's file order) -> ``map_batches``
    tasks that read the selected rows of their file and decode them, ``chunk`` examples per
    output batch: ``num_cpus`` CPUs each (default ``cfg.ray_num_cpus``), at most ``concurrency``
    at a time, placed by Ray Data's default strategy (so CPU-only nodes may decode for GPU
    workers, shipping ~3.3 MB per 512² example). ``preserve_order`` is set on the dataset's own
    ``DataContext`` (the current one is left alone), so the stream is this rank's rows before the
    shuffle buffer in :func:`iter_rows` order, minus the rows a resume skips (see
    :func:`_rank_plan`). The dataset is None when there is nothing to decode.
    """
    _check_rank(rank, world_size)
    ds = humanverse.open(root)
    plan = _rank_plan(ds.root.fs, ds.files("data"), cfg, epoch=epoch, rank=rank, world_size=world_size,
                      skip_rows=skip_rows)
    if plan.strided:
        log.info("%d files for %d ranks: every rank reads every file and keeps every %d-th row",
                 len(ds.files("data")), world_size, world_size)
    if not plan.items:
        return None, plan
    import ray.data

    num_cpus = cfg.ray_num_cpus if num_cpus is None else num_cpus
    concurrency = cfg.ray_concurrency if concurrency is None else concurrency
    rds = ray.data.from_items(plan.items, override_num_blocks=len(plan.items)).map_batches(
        _ray_decode_files, fn_kwargs={"fs": ds.root.fs, "cfg": cfg, "epoch": int(epoch), "chunk": int(chunk)},
        batch_size=1, batch_format="numpy", num_cpus=num_cpus, concurrency=concurrency)
    rds.context.execution_options.preserve_order = True  # this dataset's own context (its executor's)
    return rds, plan


def iter_ray_examples(root, cfg: TrainDataConfig, *, epoch: int, batch_size: int, rank: int = 0,
                      world_size: int = 1, skip_batches: int = 0, max_batches: int | None = None,
                      drop_last: bool = True, prefetch_batches: int = 2) -> Iterator[dict[str, Any]]:
    """Collated training batches for one rank and one epoch, decoded by a Ray Data pipeline built
    on this rank (:func:`ray_rank_dataset`): bit-identical to :func:`iter_examples` with the same
    arguments, so the readers are interchangeable, even across a resume.

    Each Ray Train worker builds its own pipeline over its own files (file-level sharding, as in
    :func:`iter_examples`), instead of Ray Train's ``datasets=`` + ``get_dataset_shard``: the
    latter's ``streaming_split`` hands blocks to whichever worker asks first, so a worker's share
    differs from run to run and no position can be saved that a resume would honour. Here a
    worker's share and order depend only on (seed, epoch, rank, world size).

    Ray streams this rank's rows decoded, in stream order; the seeded shuffle buffer runs here, on
    decoded compact examples (~3.3 MB each at 512²; the local reader buffers encoded rows), with
    the local reader's generator. Ray's own ``local_shuffle_buffer_size`` is not used: its order
    depends on block boundaries and Ray's batcher, so it could neither match the local reader
    nor tell which rows the first ``skip_batches`` batches hold. Knowing that, a resume
    (``skip_batches``) does not decode the skipped rows; ``max_batches`` as in
    :func:`iter_examples`. Ray errors surface as Ray's exceptions (wrapping the original).
    """
    _check_rank(rank, world_size)
    _check_batching(batch_size, skip_batches, max_batches, epoch)
    if max_batches is not None and skip_batches >= max_batches:
        return
    rds, plan = ray_rank_dataset(root, cfg, epoch=epoch, rank=rank, world_size=world_size,
                                 skip_rows=skip_batches * batch_size, chunk=batch_size)
    batches = iter(()) if rds is None else iter(rds.iter_batches(batch_size=None, batch_format="numpy",
                                                                 prefetch_batches=prefetch_batches))

    def stream() -> Iterator[dict[str, Any] | None]:
        decoded = (ex for block in batches for ex in _block_examples(block))
        for s, need in enumerate(plan.template):
            if not need:
                yield None  # consumed before the resume point: never decoded
                continue
            ex = next(decoded, None)
            if ex is None:
                raise RuntimeError(f"the Ray pipeline of rank {rank} ended at stream row {s} of "
                                   f"{len(plan.template)} planned; the dataset changed while reading?")
            yield ex
        yield from decoded

    shuffled = _shuffle_buffer(stream(), cfg.shuffle_buffer, _buffer_rng(cfg.seed, epoch, rank, world_size))
    try:
        yield from _batches(shuffled, _made, _collate_examples_compact, batch_size=batch_size,
                            skip_batches=skip_batches, max_batches=max_batches, drop_last=drop_last)
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()  # stops the streaming executor when the epoch is cut short (max_batches)


def _made(ex: dict[str, Any] | None) -> dict[str, Any]:
    if ex is None:  # a placeholder reached a batch the resume did not skip: a planning bug
        raise RuntimeError("a row skipped by the resume plan reached a batch that is not skipped.")
    return ex
