"""The whole HyperHuman generator (paper §3, Fig. 2) and ``humanverse sample``.

Stage 1, the Latent Structural Diffusion Model (§3.2), denoises RGB, depth and surface-normal
latents jointly from text + pose at 512² (DDIM 50 steps, trailing spacing, CFG 7.5, as in §5).
Its depth and normal are upsampled to the refiner size; stage 2, the Structure-Guided Refiner
(§3.3, SDXL + the structure ControlNet), renders the final image from the text, the pose skeleton
and the predicted depth and normal.

Pose input (``--pose POSE.json``), coordinates in pixels of a ``width`` x ``height`` frame::

    {"width": 512, "height": 512,
     "persons": [{"keypoints": [[x, y, score], ... 133 entries in COCO-WholeBody order]}]}

``keypoints`` may also be a flat list of 399 numbers (x0, y0, s0, x1, ...); a bare list of
persons is accepted with width = height = 512. Keypoints with score < ``skeleton_threshold``
(default 0.3) are not drawn. The frame is fitted into the square generation canvas, centred,
aspect kept. ``--pose-from ROOT[#ID]`` takes the persons (and, without ``--prompt``, the caption)
of a HumanVerse row (the first one without ``#ID``). A wrong number of values, a non-finite value,
or a pose with no keypoint above the threshold is refused with one sentence.

Batched: :class:`HyperHumanPipeline` takes lists of prompts and poses; ``humanverse sample
--testset FILE.jsonl`` generates, for every row of an evaluation test set (the format
:mod:`model.evaluation.evaluate` reads), the stage-1 RGB as ``OUT/stage1/<id>.png`` (what the
paper's Table 1 scores) and the refined image as ``OUT/refined/<id>.png``; ``humanverse eval
--generated OUT`` scores each as its own row.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from humanverse.schema import NUM_KEYPOINTS

log = logging.getLogger("model.sampling.hyperhuman")

TINY_BANNER = ("TINY RANDOM MODELS - every image here comes from tiny randomly-initialised models run offline: "
               "the pictures are meaningless, only the mechanics are real.")


@dataclass(frozen=True)
class SampleConfig:
    """Generation settings (defaults: the paper's §5 evaluation settings)."""

    stage1_resolution: int = 512
    stage1_steps: int = 50
    stage1_guidance: float = 7.5
    stage1_guidance_rescale: float = 0.7  # Lin et al. 2024 (zero terminal SNR); 0 turns it off
    stage2_resolution: int = 1024
    stage2_steps: int = 50
    stage2_guidance: float = 7.5
    conditioning_scale: float = 1.0
    skeleton_threshold: float = 0.3
    pose_style: str = "humansd"  # the pose map drawing the models were trained on (checked)
    negative_prompt: str = ""
    seed: int = 0
    batch_size: int = 4
    refine: bool = True

    def __post_init__(self):
        for k in ("stage1_resolution", "stage2_resolution"):
            v = getattr(self, k)
            if not isinstance(v, int) or v <= 0 or v % 8:
                raise ValueError(f"{k} must be a positive multiple of 8, got {v!r}.")
        for k in ("stage1_steps", "stage2_steps", "batch_size"):
            if not isinstance(getattr(self, k), int) or getattr(self, k) < 1:
                raise ValueError(f"{k} must be a positive integer, got {getattr(self, k)!r}.")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}.")
        from humanverse.skeleton import POSE_STYLES

        if self.pose_style not in POSE_STYLES:
            raise ValueError(f"pose_style must be one of {', '.join(POSE_STYLES)}, got {self.pose_style!r}.")
        if not 0.0 <= self.stage1_guidance_rescale <= 1.0:
            raise ValueError(f"stage1_guidance_rescale must be in [0, 1], got {self.stage1_guidance_rescale}.")


# -- pose input ----------------------------------------------------------------------------------


@dataclass
class PoseInput:
    """Whole-body poses (P, 133, 3) in pixels of a ``width`` x ``height`` frame."""

    keypoints: np.ndarray
    width: int
    height: int
    source: str = ""

    def fitted(self, size: int) -> np.ndarray:
        """Keypoints mapped into a ``size`` x ``size`` canvas (fit, centred, aspect kept)."""
        s = size / max(self.width, self.height)
        kp = self.keypoints.copy()
        kp[..., 0] = kp[..., 0] * s + (size - self.width * s) / 2
        kp[..., 1] = kp[..., 1] * s + (size - self.height * s) / 2
        return kp


def check_pose(keypoints, width: int, height: int, threshold: float = 0.3, source: str = "pose") -> PoseInput:
    """Validate and normalise a pose; raise one clear ``ValueError`` for a bad one."""
    try:
        w, h = int(width), int(height)
    except (TypeError, ValueError):
        raise ValueError(f"{source}: width and height must be integers, got {width!r} x {height!r}.") from None
    if w <= 0 or h <= 0:
        raise ValueError(f"{source}: width and height must be positive, got {w} x {h}.")
    persons = keypoints if isinstance(keypoints, (list, tuple)) else [keypoints]
    if isinstance(keypoints, np.ndarray):
        persons = list(keypoints.reshape(-1, NUM_KEYPOINTS * 3)) if keypoints.size % (NUM_KEYPOINTS * 3) == 0 \
            else [keypoints]
    if len(persons) == 0:
        raise ValueError(f"{source}: the pose has no person; give at least one with 133 keypoints.")
    out = []
    for i, p in enumerate(persons):
        try:
            a = np.asarray(p, dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"{source}: person {i}'s keypoints are not a list of numbers.") from None
        if a.size != NUM_KEYPOINTS * 3:
            raise ValueError(f"{source}: person {i} has {a.size} values; expected 133 keypoints x (x, y, score) "
                             f"= 399 (COCO-WholeBody order).")
        a = a.reshape(NUM_KEYPOINTS, 3)
        if not np.isfinite(a).all():
            raise ValueError(f"{source}: person {i} has a non-finite (NaN or infinite) keypoint value.")
        out.append(a)
    kp = np.stack(out).astype(np.float32)
    if not (kp[..., 2] >= threshold).any() or not np.abs(kp[..., :2]).any():
        raise ValueError(f"{source}: the pose is empty (all zero, or no keypoint scores >= {threshold}); "
                         f"nothing would be drawn.")
    return PoseInput(kp, w, h, source)


def load_pose_json(path: str | Path, threshold: float = 0.3) -> PoseInput:
    """Read a pose file (format in the module docstring)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"pose file {path} does not exist.") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"pose file {path} is not valid JSON ({e.msg} at line {e.lineno}).") from None
    if isinstance(data, list):
        data = {"persons": data}
    if not isinstance(data, dict) or "persons" not in data:
        raise ValueError(f"pose file {path} must be an object with 'width', 'height' and 'persons'.")
    persons = [p["keypoints"] if isinstance(p, dict) and "keypoints" in p else p for p in data["persons"]]
    return check_pose(persons, data.get("width", 512), data.get("height", 512), threshold, source=str(path))


def pose_from_row(spec: str, threshold: float = 0.3) -> tuple[PoseInput, str]:
    """``ROOT[#ID]`` -> (the row's poses in its stored-image frame, its caption). ``ID`` may be any
    unique prefix of the row's id (the gallery shows the first 12 characters)."""
    import re

    import humanverse

    root, _, rid = spec.partition("#")
    rid = rid.strip().lower()
    if rid and not re.fullmatch(r"[0-9a-f]{4,64}", rid):
        raise ValueError(f"{rid!r} is not a row id: give the hex id of a row, or a prefix of at least 4 of its "
                         "characters (as the gallery shows).")
    ds = humanverse.open(root)
    sql = "SELECT id, width, height, caption, persons FROM hv"
    sql += f" WHERE starts_with(id, '{rid}') ORDER BY id" if rid else " WHERE num_persons > 0 ORDER BY id"
    rows = ds.query(sql + " LIMIT 2").to_pylist()
    if not rows:
        raise ValueError(f"{root} has no row {'with id ' + rid if rid else 'with a person'} to take a pose from.")
    if rid and len(rows) > 1:
        raise ValueError(f"the id prefix {rid!r} matches several rows of {root} (e.g. {rows[0]['id']} and "
                         f"{rows[1]['id']}); give more characters.")
    r = rows[0]
    kps = [p["keypoints"] for p in (r["persons"] or []) if p.get("keypoints") is not None]
    return check_pose(kps, r["width"], r["height"], threshold, source=f"{root}#{r['id']}"), r["caption"] or ""


# -- loading -------------------------------------------------------------------------------------


def _checkpoint_dir(path: str | Path, weights: str) -> Path:
    """A run folder (its newest complete checkpoint whose files all read), a checkpoint folder, or
    the weights folder itself."""
    from model.training.checkpoints import usable_checkpoint

    p = Path(path)
    if not p.is_dir():
        raise ValueError(f"{p} is not a directory (expected a training run, a checkpoint or a {weights}/ folder).")
    if (p / weights).is_dir():
        return p
    if (p / "checkpoints").is_dir():
        ck = usable_checkpoint(p)
        if ck is None:
            raise ValueError(f"the run {p} has no complete, readable checkpoint yet.")
        return ck
    if (p / "config.json").is_file():
        return p  # the weights folder itself
    raise ValueError(f"{p} holds neither a run, a checkpoint nor {weights}/ weights.")


def _load_trained(cls, path: str | Path, weights: str, use_ema: bool):
    """(model, checkpoint folder, which weights: "EMA after N updates" or "raw (...)")."""
    d = _checkpoint_dir(path, weights)
    wdir = d / weights if (d / weights).is_dir() else d
    model = cls.from_pretrained(wdir)
    ema = d / "ema.safetensors"
    if use_ema and ema.is_file():
        from safetensors.torch import load_file

        from model.training.checkpoints import EMA

        params = [p for p in model.parameters() if p.requires_grad]
        e = EMA(params, 0.5)
        e.load_state_dict(load_file(ema))
        e.copy_to(params)
        used = f"EMA after {e.updates} updates" if e.updates < 10 ** 9 else "EMA"
    else:
        used = "raw (no EMA in the checkpoint)" if use_ema else "raw (EMA not asked for)"
    log.info("sampling %s with its %s weights from %s", weights, used, d)
    return model, d, used


def read_conditioning(d: Path) -> dict | None:
    """The conditioning record a training run wrote beside its checkpoint (or in the run folder);
    None for weights from elsewhere."""
    from model.training.tasks import CONDITIONING_FILE

    for folder in (d, d.parent.parent, d.parent):  # checkpoint, its run (RUN/checkpoints/step-N), weights' parent
        f = folder / CONDITIONING_FILE
        if f.is_file():
            return json.loads(f.read_text())
    return None


def check_conditioning(records: dict[str, dict | None], cfg: "SampleConfig") -> None:
    """Refuse (one sentence) to sample with a pose-map style other than the one a stage trained on."""
    for stage, rec in records.items():
        if rec is None:
            continue
        trained = rec.get("pose_style", "wholebody")  # runs from before pose styles drew whole-body maps
        if trained != cfg.pose_style:
            raise ValueError(f"the {stage} weights were trained on {trained!r} pose maps but sampling would draw "
                             f"{cfg.pose_style!r}; pass --set pose_style={trained} (or retrain).")


@dataclass
class HyperHumanResult:
    prompt: str
    seed: int
    pose: Image.Image
    stage1_rgb: Image.Image
    depth: Image.Image
    normal: Image.Image
    final: Image.Image | None
    timings: dict = field(default_factory=dict)


def _render_poses(poses: list[PoseInput], size: int, threshold: float, style: str = "humansd"
                  ) -> tuple[list[Image.Image], torch.Tensor]:
    """Pose maps at ``size``² in ``style`` and the (B, 3, size, size) tensor in [−1, 1] the models take."""
    from humanverse.skeleton import render_pose

    ims = [render_pose(p.fitted(size), size, size, threshold, style) for p in poses]
    t = torch.stack([torch.from_numpy(np.array(im)).permute(2, 0, 1) for im in ims]).float() / 127.5 - 1
    return ims, t


class HyperHumanPipeline:
    """Text + pose -> (stage-1 RGB, depth, normal) -> refined image; batched."""

    def __init__(self, stage1, frozen1, stats, refiner=None, frozen2=None, *, device=None, tiny: bool = False,
                 sources: dict | None = None):
        self.lsdm, self.frozen1, self.stats = stage1, frozen1, stats
        self.refiner, self.frozen2 = refiner, frozen2
        self.device = torch.device(device or "cpu")
        self.tiny = tiny
        self.sources = sources or {}
        self.conditioning: dict[str, dict | None] = {}  # stage -> its training run's conditioning record

    @classmethod
    def from_pretrained(cls, models: str = "paper", *, stage1: str | None = None, stage2: str | None = None,
                        refine: bool = True, device: str | None = None, use_ema: bool = True) -> "HyperHumanPipeline":
        """Frozen parts from the zoo spec ``models`` (tiny | paper | DIR); trained weights from
        ``stage1`` / ``stage2`` (a run, a checkpoint or a weights folder). Without ``stage1`` the
        zoo's ``lsdm`` entry is used (with ``--models tiny``: the tiny LSDM); without ``stage2``
        the refiner starts fresh from SDXL, i.e. SDXL with zero structure guidance (a warning)."""
        from model.models.lsdm import LatentStructuralUNet, make_tiny_lsdm
        from model.models.sd2 import LatentStats, load_frozen_parts
        from humanverse.zoo import resolve

        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        sources = {"models": models}
        conditioning: dict[str, dict | None] = {}
        frozen1 = load_frozen_parts(models, dev)
        if stage1:
            lsdm, d, sources["stage1_weights"] = _load_trained(LatentStructuralUNet, stage1, "lsdm", use_ema)
            stats_file = d / "latent_stats.json"
            sources["stage1"] = str(d)
            conditioning["stage1"] = read_conditioning(d)
        else:
            r = resolve("lsdm", models, builders={"lsdm": make_tiny_lsdm})
            lsdm, stats_file = LatentStructuralUNet.from_pretrained(r.path), Path(r.path) / "latent_stats.json"
            sources["stage1"] = r.path
        if stats_file.is_file():
            stats = LatentStats.from_json(stats_file.read_text())
        else:
            log.warning("no latent_stats.json beside the stage-1 weights: depth/normal latents are left unnormalised")
            stats = LatentStats({m: [0.0] * 4 for m in ("rgb", "depth", "normal")},
                                {m: [1.0] * 4 for m in ("rgb", "depth", "normal")})
        lsdm.to(dev).eval()
        refiner = frozen2 = None
        if refine:
            from model.models.refiner import StructureGuidedControlNet
            from model.models.sdxl import load_sdxl_parts

            frozen2 = load_sdxl_parts(models, dev)
            if stage2:
                refiner, d, sources["stage2_weights"] = _load_trained(StructureGuidedControlNet, stage2, "refiner",
                                                                      use_ema)
                sources["stage2"] = str(d)
                conditioning["stage2"] = read_conditioning(d)
            else:
                log.warning("no --stage2 weights: the refiner starts fresh from SDXL, i.e. plain SDXL without "
                            "structure guidance")
                refiner = StructureGuidedControlNet.from_unet(frozen2.unet, vae_scale_factor=frozen2.vae_scale_factor)
                sources["stage2"] = "fresh (untrained)"
            refiner.to(dev).eval()
        tiny = models == "tiny" or models.startswith("tiny:")
        pipe = cls(lsdm, frozen1, stats, refiner, frozen2, device=dev, tiny=tiny, sources=sources)
        pipe.conditioning = conditioning
        return pipe

    @torch.no_grad()
    def __call__(self, prompts: list[str], poses: list[PoseInput], cfg: SampleConfig = SampleConfig()) -> list[HyperHumanResult]:
        from humanverse.progress import Progress
        from model.models.refiner import structure_inputs
        from model.sampling.stage1 import Stage1Sampler
        from model.sampling.refiner import RefinerSampler, upsample_maps

        if len(prompts) != len(poses):
            raise ValueError(f"got {len(prompts)} prompts for {len(poses)} poses; give one prompt per pose.")
        if cfg.refine and self.refiner is None:
            raise ValueError("this pipeline was loaded without the refiner (refine=False); set cfg.refine=False.")
        check_conditioning({k: v for k, v in self.conditioning.items() if cfg.refine or k == "stage1"}, cfg)
        r1, r2 = cfg.stage1_resolution, cfg.stage2_resolution
        amp = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda")
        results: list[HyperHumanResult] = []
        s1 = Stage1Sampler(self.lsdm, self.frozen1, self.stats)
        starts = range(0, len(prompts), cfg.batch_size)
        show = Progress("sample", total=len(prompts), unit="images", logger=log)
        for start in starts:
            ps, pz = prompts[start:start + cfg.batch_size], poses[start:start + cfg.batch_size]
            seed = cfg.seed + start
            renders, pose_t = _render_poses(pz, r1, cfg.skeleton_threshold, cfg.pose_style)
            added = torch.tensor([[r1, r1, 0, 0]] * len(ps), dtype=torch.float32)
            t0 = time.perf_counter()
            with amp:
                out1 = s1(list(ps), pose_t, steps=cfg.stage1_steps, guidance_scale=cfg.stage1_guidance,
                          guidance_rescale=cfg.stage1_guidance_rescale, seed=seed, added_cond=added)
            t1 = time.perf_counter()
            finals: list[Image.Image | None] = [None] * len(ps)
            if cfg.refine:
                _, pose2_t = _render_poses(pz, r2, cfg.skeleton_threshold, cfg.pose_style)
                depth, normal = upsample_maps(out1.depth_maps, out1.normal_maps, (r2, r2))
                cond = structure_inputs(pose2_t, depth, normal, self.refiner.conditions)
                with amp:
                    out2 = RefinerSampler(self.refiner, self.frozen2)(
                        list(ps), cond, steps=cfg.stage2_steps, guidance_scale=cfg.stage2_guidance, seed=seed,
                        conditioning_scale=cfg.conditioning_scale, negative_prompt=cfg.negative_prompt)
                finals = out2.images
            t2 = time.perf_counter()
            n = len(ps)
            for i in range(n):
                results.append(HyperHumanResult(
                    prompt=ps[i], seed=seed, pose=renders[i], stage1_rgb=out1.rgb[i], depth=out1.depth[i],
                    normal=out1.normal[i], final=finals[i],
                    timings={"stage1_s_per_image": (t1 - t0) / n, "stage2_s_per_image": (t2 - t1) / n}))
            show.update(advance=n)
        show.close()
        return results


# -- outputs -------------------------------------------------------------------------------------


def side_by_side(res: HyperHumanResult, banner: str | None = None) -> Image.Image:
    """pose | stage-1 RGB | depth | normal | final, labelled, at the final image's height."""
    tiles = [("pose", res.pose), ("stage 1 RGB", res.stage1_rgb), ("stage 1 depth", res.depth),
             ("stage 1 normal", res.normal)] + ([("final (stage 2)", res.final)] if res.final is not None else [])
    h = min(max((res.final or res.stage1_rgb).size[1], 256), 512)  # tiny models' 64 px tiles are enlarged
    head = 20 + (16 if banner else 0)
    sheet = Image.new("RGB", (h * len(tiles), h + head + 18), (255, 255, 255))
    d = ImageDraw.Draw(sheet)
    if banner:
        d.text((4, 3), banner[:180], fill=(200, 0, 0))
    d.text((4, head - 16), f"prompt: {res.prompt[:120]}  |  seed {res.seed}", fill=(0, 0, 0))
    for j, (label, im) in enumerate(tiles):
        sheet.paste(im.convert("RGB").resize((h, h)), (j * h, head))
        d.text((j * h + 4, head + h + 3), label, fill=(0, 0, 0))
    return sheet


def save_result(res: HyperHumanResult, out: Path, settings: dict, banner: str | None = None) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = {"pose": out / "pose.png", "stage1_rgb": out / "stage1_rgb.png", "depth": out / "depth.png",
             "normal": out / "normal.png"}
    res.pose.save(paths["pose"])
    res.stage1_rgb.save(paths["stage1_rgb"])
    res.depth.save(paths["depth"])
    res.normal.save(paths["normal"])
    if res.final is not None:
        paths["final"] = out / "final.png"
        res.final.save(paths["final"])
    paths["sheet"] = out / "sheet.png"
    side_by_side(res, banner).save(paths["sheet"])
    paths["settings"] = out / "settings.json"
    paths["settings"].write_text(json.dumps({**settings, "prompt": res.prompt, "seed": res.seed,
                                             "timings": res.timings, "files": {k: v.name for k, v in paths.items()}},
                                            indent=2))
    return paths


# -- command line ---------------------------------------------------------------------------------


def run_sample(cfg: SampleConfig, out: str | Path, *, models: str = "paper", prompt: str | None = None,
               pose_file: str | None = None, pose_from: str | None = None, testset: str | None = None,
               limit: int | None = None, stage1: str | None = None, stage2: str | None = None,
               device: str | None = None) -> None:
    """``humanverse sample``: one sample from a pose file (``pose_file``) or a dataset row (``pose_from``,
    ``ROOT[#ID]``) into ``out``, or one image per row of an evaluation test set (``testset``) as
    ``out/<id>.png`` plus a sheet per row in ``out/sheets/``."""
    if sum(x is not None for x in (pose_file, pose_from, testset)) != 1:
        raise ValueError("give exactly one of a pose file, a dataset row or a test set.")
    out = Path(out)
    jobs: list[tuple[str, str, PoseInput]] = []  # (name, prompt, pose)
    if testset:
        from model.evaluation.evaluate import load_testset  # the one reader of the test-set contract

        rows = load_testset(testset)[: limit or None]
        jobs = [(r.id, prompt or r.caption,
                 check_pose([q.keypoints for q in r.persons], r.width, r.height, cfg.skeleton_threshold,
                            source=f"{testset} id {r.id}")) for r in rows]
    else:
        if pose_file:
            pose, caption = load_pose_json(pose_file, cfg.skeleton_threshold), ""
        else:
            pose, caption = pose_from_row(pose_from, cfg.skeleton_threshold)
        prompt = prompt if prompt is not None else caption
        if not prompt:
            raise ValueError("no prompt: give --prompt TEXT (the row has no caption).")
        jobs = [("sample", prompt, pose)]
    pipe = HyperHumanPipeline.from_pretrained(models, stage1=stage1, stage2=stage2,
                                              refine=cfg.refine, device=device)
    banner = TINY_BANNER if pipe.tiny else None
    settings = {"config": asdict(cfg), "sources": pipe.sources, "tiny_models": pipe.tiny}
    t0 = time.perf_counter()
    results = pipe([j[1] for j in jobs], [j[2] for j in jobs], cfg)
    if testset:
        # the stage-1 RGB (what the paper's Table 1 scores) and the refined image, kept apart
        folders = {"stage1": out / "stage1"} | ({"refined": out / "refined"} if cfg.refine else {})
        for d in (*folders.values(), out / "sheets"):
            d.mkdir(parents=True, exist_ok=True)
        for (name, _, _), res in zip(jobs, results):
            res.stage1_rgb.save(folders["stage1"] / f"{name}.png")
            if res.final is not None:
                res.final.save(folders["refined"] / f"{name}.png")
            side_by_side(res, banner).save(out / "sheets" / f"{name}.png")
        (out / "settings.json").write_text(json.dumps({
            **settings, "testset": str(testset), "count": len(jobs), "seconds": time.perf_counter() - t0,
            "outputs": {k: f"{v.name}/: " + ("the stage-1 RGB (paper Table 1 scores this)" if k == "stage1"
                                            else "the refined image (stage 2)") for k, v in folders.items()}},
            indent=2))
        log.info("wrote %d test images to %s (%s; score them with `humanverse eval --generated %s`)", len(jobs), out,
                 " and ".join(f"{k}/" for k in folders), out)
    else:
        paths = save_result(results[0], out, {**settings, "pose": results and jobs[0][2].source}, banner)
        sys.stdout.write("\n".join([f"{k:11s} {v}" for k, v in paths.items()]
                                   + ([banner] if banner else [])) + "\n")
