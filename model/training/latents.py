"""The VAE-latent cache (``humanverse latents ROOT OUT``): encode once, train many times.

HyperHuman §3.2 passes four images per sample through the same VAE (RGB, depth, surface normal and
the skeleton image); at 512² the VAE encoder costs more than the UNet forward, so
stage-1 training can read cached latents instead of pixels (§4 trains on HumanVerse at 512²).

What is cached, per selected row (the selection is :class:`model.training.data.TrainDataConfig`'s ``where``
plus "has depth and normal"): the example of :func:`model.training.data.make_example` with a CENTRE crop
(a cache fixes the crop, so random crops are not an option) and, with ``flips``, also its
horizontal mirror (image, depth, normal mirrored, normal x negated, skeleton redrawn from
left/right-swapped keypoints), each with its SDXL micro-conditioning (Podell et al. 2023, §2.2:
original size and crop top-left). For each of ``image``, ``depth``, ``normal``, ``pose`` the VAE
posterior's MEAN and STD (``latent_dist.mean``, ``latent_dist.std``) are stored UNSCALED: the
trainer multiplies by ``vae.config.scaling_factor`` (recorded in the manifest, ``vae``) and
normalises depth/normal latents to the RGB statistics (§3.2), so changing either needs no
re-encode. :func:`iter_latent_batches` draws ``mean + std * eps`` with a seeded ``eps`` (or
returns the mean), which is what ``latent_dist.sample()`` would have given at training time.

Storage: each latent is a Parquet ``binary`` value holding the C-order (C, h, w) tensor as
little-endian float16 bytes (shape and dtype in the manifest and the schema metadata). Binary
rather than ``fixed_size_list<float16>``: Parquet stores float16 as 2-byte FIXED_LEN_BYTE_ARRAY
values, which pyarrow decodes value by value (and dictionary-encodes, since float16 has few
distinct values), an order of magnitude slower to read for the same size; a binary value is one
memcpy and ``np.frombuffer`` away from a tensor.
float16 halves the bytes (8 latents × 4×64×64 × 2 B = 256 KiB per entry at 512², ~235 KiB
after zstd) at a relative rounding error ≤ 2^-11, far below the posterior noise the trainer adds
anyway; float16 spans the VAE's range (|mean| stays ≪ 65504; std ≥ e^-15 by the VAE's
log-variance clamp, a float16 subnormal at worst).

Layout under OUT (any pyarrow/fsspec filesystem)::

    latents.json               the manifest; written last: a cache is complete iff it exists
    data/lat-<chunk>-<part>.parquet
    _progress/build.json       what this cache is (config + VAE), written when a build starts
    _progress/<chunk>.json     one record per finished chunk of source files: the commit point
    _staging/<chunk>/          files being written (never read)

The unit of work and of resume is a chunk of source data files. A chunk's files are written to
staging, moved into ``data/``, then its record is written; on start, files in ``data/`` that no
record lists (a killed build) and staging are deleted, so a re-run redoes only unfinished chunks.
A re-run after the dataset gained files encodes only the new ones; records of source files the
dataset lost are dropped with their outputs. Committed data files are immutable, so the set of
committed files identifies the rows. Do not train from a cache while it is being updated: the old
manifest stays in place until the update ends, but dropped chunks' files go at its start.

When a cache goes stale (:func:`check_cache` raises :class:`StaleCacheError`, one sentence): a
different ``resolution``, ``crop`` policy, ``flips``, ``where`` or ``skeleton_threshold``, a
different VAE (zoo name, or id@revision / local path when ``models`` is given), or a dataset that
gained or lost committed data files since the cache was built. Rebuild (or update) it with
:func:`build_latent_cache`; a build into an OUT that holds a cache of a different config refuses
unless ``overwrite=True``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import posixpath
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch

import humanverse
from humanverse import fs as hfs
from model.training import data as D

log = logging.getLogger(__name__)

__all__ = [
    "CACHE_FORMAT",
    "CACHE_VERSION",
    "MODALITIES",
    "EncoderResources",
    "LatentCacheConfig",
    "LatentCacheReport",
    "StaleCacheError",
    "VaeEncoder",
    "build_latent_cache",
    "cache_schema",
    "check_cache",
    "iter_latent_batches",
    "load_vae",
    "read_cache_manifest",
]

CACHE_FORMAT = "humanverse-latents"
CACHE_VERSION = 1
MANIFEST = "latents.json"
PROGRESS_DIR = "_progress"
STAGING_DIR = "_staging"
BUILD_RECORD = "build.json"
MODALITIES = ("image", "depth", "normal", "pose")
LATENT_DTYPE = "<f2"  # little-endian float16
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_TAG_FLIP, _TAG_EPS = 0x464C4950, 0x45505331
#: Columns every cache row carries besides the latents.
META_COLUMNS = ("id", "source_shard", "source_index", "flipped", "caption", "original_size", "crop_top_left",
                "resolution", "vae")


class StaleCacheError(ValueError):
    """A latent cache does not match the config, the VAE or the dataset it is used with."""


# ---------------------------------------------------------------------------------------------
# Config


@dataclass(frozen=True)
class LatentCacheConfig:
    """What a latent cache holds (all but ``batch_size``, ``dtype`` and ``files_per_chunk`` are
    recorded in the manifest and checked by :func:`check_cache`).

    Attributes:
        resolution: crop side in pixels (latents are resolution / 8).
        crop: ``"center"``: a cache fixes the crop, so only the centre crop is offered.
        flips: also cache each example's horizontal mirror (for flip augmentation at training).
        vae: zoo entry whose VAE encodes: a VAE (``"sd-vae-ft-mse"``, the paper's) or a pipeline
            with a ``vae/`` subfolder (``"sd2-base"``).
        batch_size: images per VAE encode call (rows per Ray batch, too).
        dtype: VAE compute dtype (``"float32"``, ``"float16"``, ``"bfloat16"``); storage is float16.
        where: SQL row predicate on ``hv`` selecting the rows to cache (as in TrainDataConfig).
        skeleton_threshold: keypoints scoring below this are not drawn.
        pose_style: how the pose map is drawn (``"humansd"``, the paper's, or ``"wholebody"``); recorded,
            and training refuses a cache drawn in another style than its config's.
        depth: which depth map is encoded (``"midas"``: column ``depth``; ``"omnidata"``: column
            ``depth_omnidata``); recorded and checked like ``pose_style``.
        files_per_chunk: source data files per unit of work and resume.
    """

    resolution: int = 512
    crop: Literal["center"] = "center"
    flips: bool = True
    vae: str = "sd-vae-ft-mse"
    batch_size: int = 8
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    where: str | None = None
    skeleton_threshold: float = 0.3
    pose_style: str = "humansd"
    depth: str = "midas"
    files_per_chunk: int = 32

    def __post_init__(self) -> None:
        from humanverse.zoo import ZOO

        if self.crop != "center":
            raise ValueError(f"crop must be 'center' (a latent cache fixes the crop), got {self.crop!r}.")
        if not isinstance(self.flips, bool):
            raise ValueError(f"flips must be True or False, got {self.flips!r}.")
        entry = ZOO.get(self.vae) if isinstance(self.vae, str) else None
        if entry is None or not (entry.model_class == "diffusers.AutoencoderKL"
                                 or entry.model_class.endswith("DiffusionPipeline")):
            vaes = sorted(n for n, e in ZOO.items() if e.model_class == "diffusers.AutoencoderKL"
                          or e.model_class.endswith("DiffusionPipeline"))
            raise ValueError(f"vae must name a zoo VAE or diffusion pipeline ({', '.join(vaes)}), got {self.vae!r}.")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size!r}.")
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}.")
        if isinstance(self.files_per_chunk, bool) or not isinstance(self.files_per_chunk, int) \
                or self.files_per_chunk < 1:
            raise ValueError(f"files_per_chunk must be a positive integer, got {self.files_per_chunk!r}.")
        # validates resolution, where and skeleton_threshold; keeps ``where`` in its parsed form
        object.__setattr__(self, "where", self.data_config().where)

    def data_config(self) -> D.TrainDataConfig:
        """The reader config that produces exactly the cached (unflipped) examples."""
        return D.TrainDataConfig(resolution=self.resolution, where=self.where, crop="center", flip_prob=0.0,
                                 skeleton_threshold=self.skeleton_threshold, pose_style=self.pose_style, depth=self.depth,
                                 shuffle_buffer=0, seed=0)

    def content(self) -> dict[str, Any]:
        """The fields that define what the cache holds."""
        return {"resolution": self.resolution, "crop": self.crop, "flips": self.flips, "vae": self.vae,
                "where": self.where, "skeleton_threshold": float(self.skeleton_threshold),
                "pose_style": self.pose_style, "depth": self.depth}


@dataclass(frozen=True)
class EncoderResources:
    """Ray resources of a cache build (no effect on its content).

    Attributes:
        encoders: VAE actors; None: one per GPU in the cluster, else 1.
        num_gpus: GPUs per VAE actor; None: 1 when the cluster has GPUs, else 0.
        num_cpus: CPUs per VAE actor (fractional: whole CPUs can starve the reader on small machines; docs/architecture.md).
        prepare_num_cpus: CPUs per decode task (decode, crop, skeleton).
        read_num_cpus: CPUs per Parquet read task (None: Ray's default).
    """

    encoders: int | None = None
    num_gpus: float | None = None
    num_cpus: float = 0.5
    prepare_num_cpus: float = 0.5
    read_num_cpus: float | None = None


@dataclass(frozen=True)
class LatentCacheReport:
    out: str
    rows: int  # cache entries (source rows x 2 with flips)
    files: int
    chunks_done: int  # encoded by this run
    chunks_kept: int  # already done before this run
    seconds: float


# ---------------------------------------------------------------------------------------------
# The VAE


def _vae_location(name: str, models: str) -> tuple[Any, str | None]:
    """(resolved model, subfolder): pipelines keep their VAE in ``vae/``."""
    from pathlib import Path

    from humanverse.zoo import resolve

    r = resolve(name, models)
    if r.kind == "hub":
        return r, ("vae" if r.entry.model_class.endswith("Pipeline") else None)
    p = Path(r.path)
    return r, ("vae" if (p / "vae").is_dir() and not (p / "config.json").is_file() else None)


def vae_identity(name: str, models: str) -> dict[str, Any]:
    """Name, tag (id@revision, ``tiny:<name>`` or local path) and subfolder, without loading."""
    r, sub = _vae_location(name, models)
    return {"name": name, "tag": r.tag, "subfolder": sub}


def load_vae(name: str, models: str = "paper", *, dtype: torch.dtype = torch.float32,
             device: str | torch.device = "cpu"):
    """Load the ``AutoencoderKL`` of zoo entry ``name`` (a VAE folder, or a pipeline's ``vae/``).

    Returns ``(vae, info)``; ``info`` = name, tag, subfolder, scaling_factor, shift_factor and
    latent_channels, as recorded in the cache manifest."""
    from diffusers import AutoencoderKL

    r, sub = _vae_location(name, models)
    kw: dict[str, Any] = dict(r.pretrained_kwargs())
    if sub:
        kw["subfolder"] = sub
    vae = AutoencoderKL.from_pretrained(r.path, torch_dtype=dtype, use_safetensors=True, **kw)
    vae.to(device).eval().requires_grad_(False)
    c = vae.config
    info = {"name": name, "tag": r.tag, "subfolder": sub, "scaling_factor": float(c.scaling_factor),
            "shift_factor": None if getattr(c, "shift_factor", None) is None else float(c.shift_factor),
            "latent_channels": int(c.latent_channels)}
    return vae, info


def cache_schema(latent_shape: Sequence[int]) -> pa.Schema:
    """Arrow schema of cache files for latents of shape (C, h, w)."""
    fields = [
        pa.field("id", pa.string()), pa.field("source_shard", pa.string(), nullable=False),
        pa.field("source_index", pa.int64(), nullable=False), pa.field("flipped", pa.bool_(), nullable=False),
        pa.field("caption", pa.string()),
        pa.field("original_size", pa.list_(pa.int32(), 2), nullable=False),  # stored image (h, w)
        pa.field("crop_top_left", pa.list_(pa.int32(), 2), nullable=False),  # (top, left), resized image
        pa.field("resolution", pa.int32(), nullable=False), pa.field("vae", pa.string(), nullable=False),
    ]
    for m in MODALITIES:
        fields += [pa.field(f"{m}_mean", pa.binary(), nullable=False),  # (C, h, w) <f2 bytes
                   pa.field(f"{m}_std", pa.binary(), nullable=False)]
    return pa.schema(fields, metadata={b"latent_shape": json.dumps(list(latent_shape)).encode(),
                                       b"latent_dtype": LATENT_DTYPE.encode(),
                                       b"format": f"{CACHE_FORMAT}/{CACHE_VERSION}".encode()})


def _model_inputs(batch: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Compact example columns -> the float tensors make_example returns, (N, 3, R, R) each."""
    ex = D.collate_ray_batch({k: batch[k] for k in ("image", "depth", "normal", "pose", "original_size",
                                                     "crop_top_left", "flipped", "caption", "id")})
    return {m: ex[m] for m in MODALITIES}


class VaeEncoder:
    """Encodes prepared examples into cache rows: a Ray ``map_batches`` class (weights load once
    per actor, in ``__init__`` on the worker) and the plain loop's encoder.

    ``__call__`` takes a batch of compact examples (numpy columns, as :func:`_prepare_rows` makes
    them) and returns a :func:`cache_schema` table."""

    def __init__(self, vae: str, models: str, *, resolution: int, dtype: str = "float32", batch_size: int = 8,
                 device: str | None = None):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.dtype = _DTYPES[dtype]
        self.batch_size = batch_size
        self.resolution = resolution
        self.vae, self.info = load_vae(vae, models, dtype=self.dtype, device=self.device)
        f = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.latent_shape = (self.info["latent_channels"], resolution // f, resolution // f)
        self.schema = cache_schema(self.latent_shape)

    @torch.inference_mode()
    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, 3, R, R) in [-1, 1] -> posterior (mean, std), each (N, C, R/8, R/8) float32."""
        means, stds = [], []
        for i in range(0, x.shape[0], self.batch_size):
            dist = self.vae.encode(x[i:i + self.batch_size].to(self.device, self.dtype)).latent_dist
            means.append(dist.mean.float().cpu())
            stds.append(dist.std.float().cpu())
        return torch.cat(means), torch.cat(stds)

    def __call__(self, batch: dict[str, Any]) -> pa.Table:
        n = len(batch["id"])
        if n == 0:
            return self.schema.empty_table()
        inputs = _model_inputs(batch)
        mean, std = self.encode(torch.cat([inputs[m] for m in MODALITIES]))  # (4N, C, h, w)
        cols: dict[str, pa.Array] = {
            "id": pa.array([str(i) for i in batch["id"]], pa.string()),
            "source_shard": pa.array([str(s) for s in batch["source_shard"]], pa.string()),
            "source_index": pa.array(np.asarray(batch["source_index"], np.int64)),
            "flipped": pa.array(np.asarray(batch["flipped"], bool)),
            "caption": pa.array([str(c) for c in batch["caption"]], pa.string()),
            "original_size": _fsl(np.asarray(batch["original_size"], np.int32), 2),
            "crop_top_left": _fsl(np.asarray(batch["crop_top_left"], np.int32), 2),
            "resolution": pa.array(np.full(n, self.resolution, np.int32)),
            "vae": pa.array([self.info["tag"]] * n, pa.string()),
        }
        for k, m in enumerate(MODALITIES):
            cols[f"{m}_mean"] = _tensor_bytes(mean[k * n:(k + 1) * n].numpy())
            cols[f"{m}_std"] = _tensor_bytes(std[k * n:(k + 1) * n].numpy())
        return pa.table(cols, schema=self.schema)


def _tensor_bytes(a: np.ndarray) -> pa.BinaryArray:
    """(N, ...) float -> N binary values of little-endian float16 bytes (no Python loop)."""
    flat = np.ascontiguousarray(a.astype(LATENT_DTYPE)).reshape(a.shape[0], -1)
    step = flat.shape[1] * flat.itemsize
    offsets = np.arange(0, (a.shape[0] + 1) * step, step, dtype=np.int32)
    return pa.BinaryArray.from_buffers(pa.binary(), a.shape[0], [None, pa.py_buffer(offsets), pa.py_buffer(flat)])


def _fsl(a: np.ndarray, size: int) -> pa.FixedSizeListArray:
    return pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(a).reshape(-1)), size)


# ---------------------------------------------------------------------------------------------
# Preparing examples (CPU)


def _prepare_rows(rows: Sequence[dict], cfg: LatentCacheConfig, dcfg: D.TrainDataConfig) -> dict[str, np.ndarray]:
    """Decode rows into the compact examples to encode: the centre crop, then its mirror.
    ``dcfg``: ``cfg.data_config()``, built once by the caller (building one checks the filter)."""
    r = cfg.resolution
    exs, shards, indices = [], [], []
    for row in rows:
        dec = D._decode_row(row, dcfg, np.random.default_rng(0))  # centre crop: no draw is used
        for flip in ((False, True) if cfg.flips else (False,)):
            exs.append(D._finish(dec, dcfg, flip))
            shards.append(row["source_shard"])
            indices.append(row["source_index"])
    if not exs:
        return {"image": np.zeros((0, 3, r, r), np.uint8), "depth": np.zeros((0, 1, r, r), np.float32),
                "normal": np.zeros((0, 3, r, r), np.uint8), "pose": np.zeros((0, 3, r, r), np.uint8),
                "original_size": np.zeros((0, 2), np.int64), "crop_top_left": np.zeros((0, 2), np.int64),
                "flipped": np.zeros(0, bool), "caption": np.array([], object), "id": np.array([], object),
                "source_shard": np.array([], object), "source_index": np.zeros(0, np.int64)}
    return {
        "image": np.stack([e["image"].numpy() for e in exs]),  # (N, 3, R, R) uint8
        "depth": np.stack([e["depth"].numpy() for e in exs]),  # (N, 1, R, R) float32
        "normal": np.stack([e["normal"].numpy() for e in exs]),  # (N, 3, R, R) uint8
        "pose": np.stack([e["pose"].numpy() for e in exs]),  # (N, 3, R, R) uint8
        "original_size": np.array([e["original_size"] for e in exs], np.int64),
        "crop_top_left": np.array([e["crop_top_left"] for e in exs], np.int64),
        "flipped": np.array([e["flipped"] for e in exs], bool),
        "caption": np.array([e["caption"] for e in exs], object),
        "id": np.array([e["id"] for e in exs], object),
        "source_shard": np.array(shards, object),
        "source_index": np.array(indices, np.int64),
    }


def _prepare_block(batch: pa.Table, cfg: LatentCacheConfig, data_cfg: D.TrainDataConfig) -> dict[str, np.ndarray]:
    """Ray ``map_batches`` function: select the block's rows, then :func:`_prepare_rows`
    (``data_cfg``: ``cfg.data_config()``, built once on the driver)."""
    mask = D._where_mask(batch, cfg.where)
    mask &= pc.is_valid(batch.column(data_cfg.depth_column)).to_numpy(zero_copy_only=False)
    mask &= pc.is_valid(batch.column("normal")).to_numpy(zero_copy_only=False)
    rows = batch.filter(pa.array(mask)).select(list(D.row_columns(data_cfg))).to_pylist()
    return _prepare_rows(rows, cfg, data_cfg)


# ---------------------------------------------------------------------------------------------
# The output folder: records, staging, manifest


def _json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, indent=1, sort_keys=True).encode()


def _read_json(root: hfs.Root, path: str) -> Any | None:
    if not hfs.exists(root, path):
        return None
    return json.loads(hfs.read_bytes(root, path))


def _write_json(root: hfs.Root, path: str, obj: Any) -> None:
    hfs.write_bytes_atomic(root, path, _json_bytes(obj), tmp_suffix=uuid.uuid4().hex[:8])


def _table_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", row_group_size=256)
    return sink.getvalue().to_pybytes()


def _rel(ds_root: hfs.Root, path: str) -> str:
    return posixpath.relpath(path, ds_root.path)


def _files_digest(rel_files: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(sorted(rel_files)).encode()).hexdigest()


def _chunk_id(rel_files: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(sorted(rel_files)).encode()).hexdigest()[:16]


def _records(out: hfs.Root) -> dict[str, dict]:
    recs = {}
    for e in hfs.list_dir(out, out.join(PROGRESS_DIR)):
        if e.type == pafs.FileType.File and e.base_name.endswith(".json") and e.base_name != BUILD_RECORD:
            recs[e.base_name[:-5]] = json.loads(hfs.read_bytes(out, e.path))
    return recs


def _differences(cached: dict, wanted: dict) -> list[str]:
    return [f"{k} {cached.get(k)!r} (cache) vs {wanted[k]!r} (config)" for k in wanted if cached.get(k) != wanted[k]]


def _wipe(out: hfs.Root) -> None:
    for d in ("data", PROGRESS_DIR, STAGING_DIR):
        if hfs.exists(out, out.join(d)):
            out.fs.delete_dir(out.join(d))
    if hfs.exists(out, out.join(MANIFEST)):
        out.fs.delete_file(out.join(MANIFEST))


def _open_out(out: hfs.Root, build: dict, overwrite: bool) -> tuple[dict[str, dict], dict | None]:
    """Check OUT's identity, clean what a killed build left; returns the finished chunk records and
    the finished cache's manifest when one of this config is there (None otherwise)."""
    for d in (out.path, out.join("data"), out.join(PROGRESS_DIR), out.join(STAGING_DIR)):
        out.fs.create_dir(d, recursive=True)
    manifest = None
    for name in (MANIFEST, posixpath.join(PROGRESS_DIR, BUILD_RECORD)):
        prev = _read_json(out, out.join(name))
        if prev is None:
            continue
        if name == MANIFEST:
            manifest = prev
        diffs = _differences(prev.get("config", {}), build["config"])
        if prev.get("vae", {}).get("tag") != build["vae"]["tag"]:
            diffs.append(f"vae tag {prev.get('vae', {}).get('tag')!r} (cache) vs {build['vae']['tag']!r}")
        if diffs:
            if not overwrite:
                raise StaleCacheError(f"{out.path} holds a latent cache of another config ({'; '.join(diffs)}); "
                                      f"choose another OUT or pass overwrite=True to replace it.")
            log.warning("replacing the latent cache in %s (%s)", out.path, "; ".join(diffs))
            manifest = None
            _wipe(out)
            for d in (out.join("data"), out.join(PROGRESS_DIR), out.join(STAGING_DIR)):
                out.fs.create_dir(d, recursive=True)
            break
    _write_json(out, out.join(PROGRESS_DIR, BUILD_RECORD), build)
    records = _records(out)
    listed = {posixpath.basename(f["file"]) for r in records.values() for f in r["files"]}
    for e in hfs.list_dir(out, out.join("data")):
        if e.base_name not in listed:  # written by a build killed before its record
            out.fs.delete_file(e.path)
    for e in hfs.list_dir(out, out.join(STAGING_DIR)):
        out.fs.delete_dir(e.path) if e.type == pafs.FileType.Directory else out.fs.delete_file(e.path)
    return records, manifest


def _commit_chunk(out: hfs.Root, chunk: str, source_files: list[str], staged: list[tuple[str, int]]) -> dict:
    """Move a chunk's staged files into ``data/`` and write its record (the commit point)."""
    files = []
    for i, (path, rows) in enumerate(sorted(staged)):
        rel = f"data/lat-{chunk}-{i:05d}.parquet"
        out.fs.move(path, out.join(rel))
        files.append({"file": rel, "rows": rows})
    rec = {"chunk": chunk, "source_files": sorted(source_files), "files": files,
           "rows": sum(f["rows"] for f in files), "created": time.time()}
    _write_json(out, out.join(PROGRESS_DIR, f"{chunk}.json"), rec)
    staging = out.join(STAGING_DIR, chunk)
    if hfs.exists(out, staging):
        out.fs.delete_dir(staging)
    return rec


def read_cache_manifest(out) -> dict:
    """The manifest of a complete cache (``latents.json``); raises StaleCacheError otherwise."""
    root = hfs.resolve_root(out)
    m = _read_json(root, root.join(MANIFEST))
    if m is None:
        what = "an unfinished latent cache build" if hfs.exists(root, root.join(PROGRESS_DIR, BUILD_RECORD)) \
            else "no latent cache"
        raise StaleCacheError(f"{root.path} holds {what} (no {MANIFEST}); run build_latent_cache "
                              f"(humanverse latents ROOT OUT) to finish it.")
    if m.get("format") != CACHE_FORMAT or m.get("version") != CACHE_VERSION:
        raise StaleCacheError(f"{root.path}/{MANIFEST} is format {m.get('format')!r} v{m.get('version')!r}, "
                              f"expected {CACHE_FORMAT!r} v{CACHE_VERSION}; rebuild the cache.")
    return m


def check_cache(out, root, cfg: LatentCacheConfig, models: str | None = None) -> dict:
    """Raise :class:`StaleCacheError` (one sentence) unless the cache in ``out`` was built with
    ``cfg`` (and, when ``models`` is given, the same VAE id@revision) from the dataset's current
    committed files. Returns the manifest."""
    m = read_cache_manifest(out)
    # caches from before pose styles and depth choices drew whole-body maps and encoded MiDaS depth
    built = {"pose_style": "wholebody", "depth": "midas", **m["config"]}
    diffs = _differences(built, cfg.content())
    if models is not None:
        tag = vae_identity(cfg.vae, models)["tag"]
        if m["vae"]["tag"] != tag:
            diffs.append(f"vae tag {m['vae']['tag']!r} (cache) vs {tag!r}")
    if diffs:
        raise StaleCacheError(f"latent cache {hfs.resolve_root(out).path} was built with another config "
                              f"({'; '.join(diffs)}); rebuild it with build_latent_cache.")
    ds = humanverse.open(root)
    now = [_rel(ds.root, f) for f in ds.files("data")]
    if _files_digest(now) != m["source"]["files_sha256"]:
        o = hfs.resolve_root(out)
        recs = _records(o)
        cached = {f for c in m["chunks"] for f in recs.get(c, {}).get("source_files", [])}
        gained, lost = len(set(now) - cached), len(cached - set(now))
        raise StaleCacheError(f"latent cache {o.path} is stale: the dataset {ds.root.path} gained {gained} and "
                              f"lost {lost} data files since it was built; re-run build_latent_cache to update it.")
    return m


# ---------------------------------------------------------------------------------------------
# Building


def _encode_chunk_local(ds: "humanverse.dataset.HumanVerseDataset", files: list[str], cfg: LatentCacheConfig,
                        encoder: VaeEncoder, out: hfs.Root, chunk: str) -> list[tuple[str, int]]:
    """The plain loop: one staged output file per source file."""
    staged = []
    out.fs.create_dir(out.join(STAGING_DIR, chunk), recursive=True)
    rows_per_call = max(1, cfg.batch_size // (2 if cfg.flips else 1))
    data_cfg = cfg.data_config()
    for k, f in enumerate(files):
        sel = D._file_selection(ds.root.fs, f, cfg.where, data_cfg.depth_column)
        tables, pending = [], []
        for row in D._iter_file_rows(ds.root.fs, f, sel, D.row_columns(data_cfg)):
            pending.append(row)
            if len(pending) == rows_per_call:
                tables.append(encoder(_prepare_rows(pending, cfg, data_cfg)))
                pending = []
        if pending:
            tables.append(encoder(_prepare_rows(pending, cfg, data_cfg)))
        if tables:
            t = pa.concat_tables(tables)
            path = out.join(STAGING_DIR, chunk, f"part-{k:05d}.parquet")
            hfs.write_bytes_atomic(out, path, _table_bytes(t), tmp_suffix=uuid.uuid4().hex[:8])
            staged.append((path, t.num_rows))
    return staged


def _make_staging_sink(out_uri: str, staging: str):
    """A Ray Datasink writing one Parquet file per write task into ``staging`` (deterministic
    names, temp + rename: a retried task overwrites its own file)."""
    from ray.data import Datasink
    from ray.data.block import BlockAccessor

    class StagingSink(Datasink):
        def __init__(self):
            self.written: list[tuple[str, int]] = []

        def write(self, blocks, ctx) -> list[tuple[str, int]]:
            tables = [BlockAccessor.for_block(b).to_arrow() for b in blocks]
            tables = [t for t in tables if t.num_rows]
            if not tables:
                return []
            t = pa.concat_tables(tables)
            root = hfs.resolve_root(out_uri)
            path = posixpath.join(staging, f"part-{ctx.task_idx:05d}.parquet")
            hfs.write_bytes_atomic(root, path, _table_bytes(t), tmp_suffix=uuid.uuid4().hex[:8])
            return [(path, t.num_rows)]

        def on_write_complete(self, write_result) -> None:
            for r in write_result.write_returns:
                self.written.extend(tuple(x) for x in r)

    return StagingSink()


def _encode_chunk_ray(ds, files: list[str], cfg: LatentCacheConfig, models: str, out: hfs.Root, chunk: str,
                      res: EncoderResources, address: str | None = None) -> list[tuple[str, int]]:
    import ray
    import ray.data

    from humanverse.progress import init_ray

    init_ray(address)  # only now: a run with nothing to encode never starts Ray
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True
    gpus = ray.cluster_resources().get("GPU", 0)
    num_gpus = res.num_gpus if res.num_gpus is not None else (1.0 if gpus else 0.0)
    encoders = res.encoders if res.encoders is not None else max(1, int(gpus // max(num_gpus, 1e-9)) if num_gpus else 1)
    staging = out.join(STAGING_DIR, chunk)
    out.fs.create_dir(staging, recursive=True)
    read_kw = {} if res.read_num_cpus is None else {"num_cpus": res.read_num_cpus}
    rd = ray.data.read_parquet(files, filesystem=ds.root.fs, columns=list(D.READ_COLUMNS), shuffle=None, **read_kw)
    rows_per_call = max(1, cfg.batch_size // (2 if cfg.flips else 1))
    rd = rd.map_batches(_prepare_block, fn_kwargs={"cfg": cfg, "data_cfg": cfg.data_config()}, batch_format="pyarrow",
                        batch_size=rows_per_call, num_cpus=res.prepare_num_cpus)
    rd = rd.map_batches(VaeEncoder, fn_constructor_kwargs={"vae": cfg.vae, "models": models,
                                                           "resolution": cfg.resolution, "dtype": cfg.dtype,
                                                           "batch_size": cfg.batch_size},
                        batch_format="numpy", batch_size=cfg.batch_size,
                        compute=ray.data.ActorPoolStrategy(size=encoders), num_cpus=res.num_cpus, num_gpus=num_gpus)
    sink = _make_staging_sink(out.uri, staging)
    rd.write_datasink(sink)
    return sink.written


def build_latent_cache(root, out, cfg: LatentCacheConfig = LatentCacheConfig(), models: str = "paper", *,
                       use_ray: bool = True, resources: EncoderResources = EncoderResources(),
                       overwrite: bool = False, address: str | None = None) -> LatentCacheReport:
    """Encode every selected row of dataset ``root`` into the latent cache ``out`` (see the module
    docstring for what is stored and how resume works).

    ``use_ray``: a Ray Data job per chunk (``read_parquet`` -> decode tasks ->
    ``map_batches(VaeEncoder, compute=ActorPoolStrategy(...), num_gpus=...)`` -> staged Parquet);
    Ray is connected (``address``, else RAY_ADDRESS, else a local cluster) unless the caller did, and
    only when there is a chunk to encode. Without: a plain loop in this process (tests, small
    datasets). Both write the same rows.
    """
    t0 = time.perf_counter()
    ds = humanverse.open(root)
    o = hfs.resolve_root(out)
    ident = vae_identity(cfg.vae, models)
    build = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "config": cfg.content(), "vae": ident}
    records, finished = _open_out(o, build, overwrite)
    files = sorted(ds.files("data"))
    rel = {f: _rel(ds.root, f) for f in files}
    present = set(rel.values())
    for chunk, rec in list(records.items()):  # drop chunks whose source files are gone
        if not set(rec["source_files"]) <= present:
            log.info("dropping cached chunk %s: the dataset lost some of its source files", chunk)
            for f in rec["files"]:
                if hfs.exists(o, o.join(f["file"])):
                    o.fs.delete_file(o.join(f["file"]))
            o.fs.delete_file(o.join(PROGRESS_DIR, f"{chunk}.json"))
            del records[chunk]
    covered = {f for rec in records.values() for f in rec["source_files"]}
    todo = [f for f in files if rel[f] not in covered]
    chunks = [todo[i:i + cfg.files_per_chunk] for i in range(0, len(todo), cfg.files_per_chunk)]
    log.info("latent cache %s: %d source files, %d already cached, %d chunk(s) to encode",
             o.path, len(files), len(files) - len(todo), len(chunks))
    kept = len(records)
    encoder = None
    info = None
    from humanverse.progress import Progress

    show = Progress("latents", total=len(todo), unit="files", counts=("rows",), logger=log) if chunks else None
    for k, chunk_files in enumerate(chunks):
        chunk = _chunk_id([rel[f] for f in chunk_files])
        tc = time.perf_counter()
        if use_ray:
            staged = _encode_chunk_ray(ds, chunk_files, cfg, models, o, chunk, resources, address)
        else:
            if encoder is None:
                encoder = VaeEncoder(cfg.vae, models, resolution=cfg.resolution, dtype=cfg.dtype,
                                     batch_size=cfg.batch_size)
            staged = _encode_chunk_local(ds, chunk_files, cfg, encoder, o, chunk)
        rec = _commit_chunk(o, chunk, [rel[f] for f in chunk_files], staged)
        records[chunk] = rec
        show.update(advance=len(chunk_files), rows=show.counts["rows"] + rec["rows"])
        log.debug("chunk %d/%d (%s): %d files -> %d cache rows in %.1f s", k + 1, len(chunks), chunk,
                  len(chunk_files), rec["rows"], time.perf_counter() - tc)
    if show is not None:
        show.close()
    if encoder is not None:
        info = encoder.info
        latent_shape = list(encoder.latent_shape)
    else:  # nothing encoded: the finished cache's VAE facts when it is this cache (a fast no-op rerun)...
        prev = finished or {}
        if prev.get("config") == cfg.content() and prev.get("vae", {}).get("tag") == ident["tag"] \
                and prev.get("latent_shape"):
            info, latent_shape = prev["vae"], prev["latent_shape"]
        else:  # ...else the VAE's config only (no weights)
            info, latent_shape = _vae_config_info(cfg, models)
    out_files = sorted((f for r in records.values() for f in r["files"]), key=lambda f: f["file"])
    manifest = {
        "format": CACHE_FORMAT, "version": CACHE_VERSION, "complete": True, "config": cfg.content(),
        "vae": info, "latent_shape": latent_shape, "storage_dtype": "float16", "storage_layout": "binary <f2 C-order",
        "scaled": False,
        "source": {"uri": ds.root.uri, "num_files": len(files), "files_sha256": _files_digest(list(rel.values()))},
        "chunks": sorted(records), "files": out_files, "rows": sum(f["rows"] for f in out_files),
        "created": time.time(),
    }
    _write_json(o, o.join(MANIFEST), manifest)
    report = LatentCacheReport(out=o.path, rows=manifest["rows"], files=len(out_files), chunks_done=len(chunks),
                               chunks_kept=kept, seconds=time.perf_counter() - t0)
    log.info("latent cache %s: %d rows in %d files (%d chunk(s) encoded, %d kept) in %.1f s", o.path,
             report.rows, report.files, report.chunks_done, report.chunks_kept, report.seconds)
    return report


def _vae_config_info(cfg: LatentCacheConfig, models: str) -> tuple[dict, list[int]]:
    from diffusers import AutoencoderKL

    r, sub = _vae_location(cfg.vae, models)
    kw: dict[str, Any] = dict(r.pretrained_kwargs())
    if sub:
        kw["subfolder"] = sub
    c = AutoencoderKL.load_config(r.path, **kw)
    f = 2 ** (len(c["block_out_channels"]) - 1)
    info = {"name": cfg.vae, "tag": r.tag, "subfolder": sub, "scaling_factor": float(c.get("scaling_factor", 0.18215)),
            "shift_factor": None if c.get("shift_factor") is None else float(c["shift_factor"]),
            "latent_channels": int(c["latent_channels"])}
    return info, [info["latent_channels"], cfg.resolution // f, cfg.resolution // f]


# ---------------------------------------------------------------------------------------------
# Reading


def _flip_wanted(seed: int, epoch: int, shard: str, index: int, flip_prob: float) -> bool:
    key = D._key64(shard, index)
    return bool(np.random.default_rng([int(seed), int(epoch), _TAG_FLIP, key]).random() < flip_prob)


def _collate_latents(items: list[dict]) -> dict[str, Any]:
    out: dict[str, Any] = {m: torch.stack([it[m] for it in items]) for m in MODALITIES}  # (B, C, h, w)
    size = torch.from_numpy(np.array([it["original_size"] for it in items], np.int64))  # (B, 2)
    crop = torch.from_numpy(np.array([it["crop_top_left"] for it in items], np.int64))  # (B, 2)
    out.update(added_cond=torch.cat([size, crop], 1).to(torch.float32), original_size=size, crop_top_left=crop,
               flipped=torch.from_numpy(np.array([bool(it["flipped"]) for it in items], bool)),
               caption=[it["caption"] for it in items], id=[it["id"] for it in items])
    return out


def cache_counts(out) -> dict[str, int]:
    """``{cache file: source rows}``: every source row is read once per epoch (plain or flipped)."""
    m = read_cache_manifest(out)
    o = hfs.resolve_root(out)
    counts = {}
    for f in m["files"]:
        path = o.join(f["file"])
        flipped = pq.read_table(path, columns=["flipped"], filesystem=o.fs).column(0).to_numpy(zero_copy_only=False)
        counts[path] = int((~flipped.astype(bool)).sum())
    return counts


def iter_latent_batches(out, *, batch_size: int, epoch: int = 0, rank: int = 0, world_size: int = 1,
                        skip_batches: int = 0, max_batches: int | None = None, drop_last: bool = True,
                        seed: int = 0, shuffle_buffer: int = 256, flip_prob: float = 0.5,
                        sample: bool = True) -> Iterator[dict[str, Any]]:
    """Training batches from a latent cache, ordered like :func:`model.training.data.iter_examples`.

    Each source row appears once per epoch: its flipped entry with probability ``flip_prob``
    (drawn per (seed, epoch, row); needs a cache built with ``flips``), else the plain one.
    Latents are UNSCALED (multiply by ``read_cache_manifest(out)["vae"]["scaling_factor"]``):
    ``mean + std * eps`` with ``eps`` seeded per (seed, epoch, row) when ``sample``, else the mean.
    Yields ``image``, ``depth``, ``normal``, ``pose`` (B, C, h, w) float32, ``added_cond`` (B, 4)
    = (orig_h, orig_w, crop_top, crop_left), ``original_size``, ``crop_top_left`` (B, 2),
    ``flipped`` (B,), ``caption`` and ``id`` lists. ``skip_batches``/``max_batches``/rank
    sharding behave as in :func:`model.training.data.iter_examples`.
    """
    D._check_rank(rank, world_size)
    D._check_batching(batch_size, skip_batches, max_batches, epoch)
    if isinstance(flip_prob, bool) or not isinstance(flip_prob, (int, float)) or not 0 <= flip_prob <= 1:
        raise ValueError(f"flip_prob must be a probability in [0, 1], got {flip_prob!r}.")
    m = read_cache_manifest(out)
    o = hfs.resolve_root(out)
    if flip_prob > 0 and not m["config"]["flips"]:
        raise ValueError(f"flip_prob={flip_prob} needs a cache built with flips=True, and {o.path} has no flipped "
                         f"entries; rebuild it with flips or pass flip_prob=0.")
    shape = tuple(m["latent_shape"])
    files = [o.join(f["file"]) for f in m["files"]]

    def select(path: str) -> np.ndarray:
        t = pq.read_table(path, columns=["source_shard", "source_index", "flipped"], filesystem=o.fs)
        shards, idx = t.column(0).to_pylist(), t.column(1).to_pylist()
        flipped = t.column(2).to_numpy(zero_copy_only=False)
        want = np.array([_flip_wanted(seed, epoch, s, i, flip_prob) for s, i in zip(shards, idx)], bool)
        return np.flatnonzero(flipped == want).astype(np.int64)

    columns = [c for c in META_COLUMNS if c not in ("resolution", "vae")] + \
        [f"{mod}_{s}" for mod in MODALITIES for s in ("mean", "std")]
    stream = D._rank_stream(o.fs, files, select, columns, seed=seed, epoch=epoch, rank=rank,
                            world_size=world_size, shuffle_buffer=shuffle_buffer)

    def make(row: dict) -> dict[str, Any]:
        item: dict[str, Any] = {k: row[k] for k in ("original_size", "crop_top_left", "flipped", "caption", "id")}
        item["caption"] = item["caption"] or ""
        eps = None
        if sample:
            key = D._key64(row["source_shard"], row["source_index"])
            eps = np.random.default_rng([int(seed), int(epoch), _TAG_EPS, key]).standard_normal(
                (len(MODALITIES), int(np.prod(shape))), dtype=np.float32)
        for k, mod in enumerate(MODALITIES):
            z = np.frombuffer(row[f"{mod}_mean"], LATENT_DTYPE).astype(np.float32)
            if eps is not None:
                z += np.frombuffer(row[f"{mod}_std"], LATENT_DTYPE).astype(np.float32) * eps[k]
            item[mod] = torch.from_numpy(z.reshape(shape))  # (C, h, w)
        return item

    yield from D._batches(stream, make, _collate_latents, batch_size=batch_size, skip_batches=skip_batches,
                          max_batches=max_batches, drop_last=drop_last)
