"""``humanverse train stage1|stage2``: one trainer for both stages (Ray Train).

Stage 1 trains the Latent Structural Diffusion Model (§3.2), stage 2 the Structure-Guided Refiner
(§3.3); what differs lives in :mod:`model.training.tasks`. A loop you can read top to bottom (nanoGPT
style): build the frozen parts and the trainable model, restore the newest complete checkpoint
when ``--resume``, then per step: gather ``grad_accum`` micro-batches, compute the objective,
backward, clip, AdamW step, EMA update; log, checkpoint (atomic, rotated), and every
``validate_every`` steps the validation loss on a fixed batch (``val/*``) and validation grids;
scalars and grids go to the ``report_to`` reporters (:mod:`model.training.report`).

Step-exact resume: the data stream is deterministic in (seed, epoch) and its position (epoch,
batches consumed in the epoch) is saved with the checkpoint; every random draw of a step
(timesteps, noise, condition dropout) comes from a generator seeded by (seed, step, micro-batch,
rank). Killing a run at step k and resuming reproduces the uninterrupted run's losses.

On Ray Train (``TorchTrainer``, DDP) each worker runs :func:`train_loop` on its own share of the
data; ``scaling.use_ray: false`` runs the same loop in this process (tests, debugging).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import torch

from humanverse.config import to_dict
from model.training.checkpoints import EMA, latest_checkpoint, save_checkpoint, usable_checkpoint
from model.training.data import TrainDataConfig
from model.training.stage1 import LSDMLayout, Stage1LossConfig
from model.training.stage2 import Stage2LossConfig

log = logging.getLogger("model.training.loop")


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 1e-5  # paper: AdamW, lr 1e-5, weight decay 0.01
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    grad_clip: float = 1.0
    warmup_steps: int = 0

    def __post_init__(self):
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"optim.lr must be a positive number, got {self.lr}.")
        if self.weight_decay < 0 or self.grad_clip <= 0 or self.warmup_steps < 0:
            raise ValueError("optim.weight_decay and optim.warmup_steps must be >= 0 and optim.grad_clip > 0.")


@dataclass(frozen=True)
class ScalingConfig:
    use_ray: bool = True
    num_workers: int = 1
    use_gpu: bool = False
    cpus_per_worker: float = 0.5  # fractional: whole CPUs hang Ray on 2-core machines (docs/architecture.md)


@dataclass(frozen=True)
class TrainerConfig:
    """What both stages' trainers share (the loop, optimiser, checkpoints, logging, Ray Train)."""

    optim: OptimConfig = OptimConfig()
    scaling: ScalingConfig = ScalingConfig()
    batch_size: int = 4  # per worker and micro-batch
    grad_accum: int = 1
    max_steps: int = 1000
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    gradient_checkpointing: bool = False
    ema_decay: float | None = 0.9999
    ema_warmup: bool = True  # decay min(ema_decay, (1+k)/(10+k)) at update k+1 (diffusers' EMAModel; docs/protocol.md)
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    log_every: int = 10
    validate_every: int = 500
    validation_prompts: tuple[str, ...] = ("a person standing in a park", "two people talking on a street")
    #: rows of the validation batch (the loss logged as val/*, and the poses of the grids): a SQL
    #: predicate on the dataset, e.g. "substr(id, 1, 1) = '0'" with data.where "substr(id, 1, 1) <> '0'"
    #: for a held-out split; None: the first rows of the training selection (centre crops, no flips)
    validation_where: str | None = None
    #: where scalars and validation grids go: tensorboard, wandb, mlflow (model.training.report); () for none
    report_to: tuple[str, ...] = ("tensorboard",)
    sample_steps: int = 50  # paper: DDIM 50 steps, CFG 7.5
    guidance_scale: float = 7.5
    seed: int = 0

    def __post_init__(self):
        for name in ("batch_size", "grad_accum", "max_steps", "checkpoint_every", "log_every", "validate_every",
                     "keep_checkpoints", "sample_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1) or null, got {self.ema_decay}.")
        if not self.validation_prompts:
            raise ValueError("validation_prompts must hold at least one prompt.")
        from model.training.report import REPORTERS

        bad = [r for r in self.report_to if r not in REPORTERS or r == "none"]
        if bad:
            raise ValueError(f"report_to: {bad} are not reporters; use a list of tensorboard, wandb, mlflow "
                             "(or [] for none).")


@dataclass(frozen=True)
class Stage1TrainConfig(TrainerConfig):
    """Stage 1 (LSDM, §3.2): SD-2-base at 512², condition dropout 15 %."""

    stage: ClassVar[str] = "stage1"
    data: TrainDataConfig = TrainDataConfig()
    loss: Stage1LossConfig = Stage1LossConfig()
    lsdm: LSDMLayout = LSDMLayout()  # Table-2 ablation knobs (model.training.stage1.LSDMLayout)
    latent_stats_samples: int = 64


@dataclass(frozen=True)
class Stage2TrainConfig(TrainerConfig):
    """Stage 2 (Structure-Guided Refiner, §3.3): SDXL-base at 1024², robust conditioning 0.5."""

    stage: ClassVar[str] = "stage2"
    data: TrainDataConfig = TrainDataConfig(resolution=1024)
    loss: Stage2LossConfig = Stage2LossConfig()
    conditions: tuple[str, ...] = ("pose", "depth", "normal")
    embedder_widths: tuple[int, ...] = (16, 32, 96, 256)  # paper §3.3

    def __post_init__(self):
        super().__post_init__()
        from model.models.refiner import CONDITIONS

        if not self.conditions or any(c not in CONDITIONS for c in self.conditions):
            raise ValueError(f"conditions must be a non-empty subset of {list(CONDITIONS)}, got {list(self.conditions)}.")
        if len(self.embedder_widths) < 3 or any(w < 1 for w in self.embedder_widths):
            raise ValueError(f"embedder_widths needs at least 3 positive widths (one per stride-2 conv), "
                             f"got {list(self.embedder_widths)}.")


CONFIGS: dict[str, type[TrainerConfig]] = {"stage1": Stage1TrainConfig, "stage2": Stage2TrainConfig}


def _seed_for(*parts: int) -> int:
    h = 1469598103934665603
    for p in parts:
        h = ((h ^ (p & 0xFFFFFFFFFFFFFFFF)) * 1099511628211) & 0xFFFFFFFFFFFFFFFF
    return h & 0x7FFFFFFFFFFFFFFF


def _autocast(cfg: TrainerConfig, device: torch.device):
    mp = cfg.mixed_precision
    if mp == "auto":
        mp = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "no"
    if mp == "no":
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=torch.bfloat16 if mp == "bf16" else torch.float16)


class DataStream:
    """Training batches with a position (``epoch``, ``step_in_epoch``: batches consumed in the epoch).

    Sources: the latent cache (:func:`model.training.latents.iter_latent_batches`) when ``latents`` is
    given, else raw rows decoded by ``reader``: ``"local"`` (:func:`model.training.data.iter_examples`, in
    this process) or ``"ray"`` (:func:`model.training.data.iter_ray_examples`: a Ray Data pipeline that
    this worker builds over its own files each epoch; its tasks decode while the step runs).
    Both readers yield bit-identical batches, so a run may even resume with the other one.

    Why a pipeline per worker and not Ray Train's ``datasets=`` + ``get_dataset_shard``: that
    ``streaming_split`` is disjoint but hands blocks to whichever worker asks first, so a worker's
    share changes from run to run and a saved position could not be honoured. Here a worker's
    share and order depend only on (seed, epoch, rank, world size), and resuming at
    ``step_in_epoch`` skips exactly the batches the interrupted run consumed (without decoding
    them; the Ray reader does not even read them, see :func:`model.training.data._rank_plan`).

    With ``world > 1`` every rank's epoch (raw rows or the latent cache) is cut at the fewest batches any rank has that
    epoch (:func:`model.training.data.batches_per_rank`; file shards differ in size), so all ranks cross
    epoch boundaries at the same step and rank 0's saved position is every rank's position; the
    cut rows are different ones each epoch, since files move between ranks. The selection is
    counted once per stream for that (cheap columns only).
    """

    def __init__(self, data_root: str, latents: str | None, cfg: TrainerConfig, rank: int, world: int,
                 epoch: int = 0, step_in_epoch: int = 0, reader: Literal["local", "ray"] = "local"):
        if reader not in ("local", "ray"):
            raise ValueError(f"reader must be 'local' or 'ray', got {reader!r}.")
        self.data_root, self.latents, self.cfg, self.rank, self.world = data_root, latents, cfg, rank, world
        self.reader = reader
        self.epoch, self.step_in_epoch = epoch, step_in_epoch
        self._counts: dict[str, int] | None = None  # selected rows per file, for the per-epoch cut
        self._it = self._open(skip=step_in_epoch)

    def _max_batches(self) -> int | None:
        if self.world == 1:
            return None
        from model.training.data import selected_counts, split_counts

        if self._counts is None:
            if self.latents:
                from model.training.latents import cache_counts

                self._counts = cache_counts(self.latents)
            else:
                self._counts = selected_counts(self.data_root, self.cfg.data)
        rows = split_counts(self._counts, seed=self.cfg.data.seed, epoch=self.epoch, world_size=self.world)
        return min(rows) // self.cfg.batch_size

    def _open(self, skip: int):
        if self.latents:
            from model.training.latents import iter_latent_batches

            batches = iter_latent_batches(self.latents, batch_size=self.cfg.batch_size, seed=self.cfg.data.seed,
                                          epoch=self.epoch, rank=self.rank, world_size=self.world,
                                          skip_batches=skip, flip_prob=self.cfg.data.flip_prob,
                                          shuffle_buffer=self.cfg.data.shuffle_buffer,
                                          max_batches=self._max_batches())
            return ({**b, "latent_cache": True} for b in batches)
        from model.training.data import iter_examples, iter_ray_examples

        read = iter_ray_examples if self.reader == "ray" else iter_examples
        return iter(read(self.data_root, self.cfg.data, epoch=self.epoch, rank=self.rank, world_size=self.world,
                         skip_batches=skip, max_batches=self._max_batches(), batch_size=self.cfg.batch_size))

    def next(self) -> dict:
        for _ in range(2):
            try:
                batch = next(self._it)
                self.step_in_epoch += 1
                return batch
            except StopIteration:
                self.epoch, self.step_in_epoch = self.epoch + 1, 0
                self._it = self._open(skip=0)
        raise ValueError("the training data selection yields no batch (empty selection or batch_size too large).")


#: seeds the validation loss's noise, timesteps and dropout draws (the same at every validation)
VAL_SEED = 0x5641_4C


def write_progress(run_dir: Path, step: int, total: int, loss: float) -> None:
    """``RUN/progress.json`` (step, total, loss; atomic): how rank 0 of a Ray Train run tells the
    driver where it is (:func:`read_progress`)."""
    tmp = run_dir / ".progress.json.tmp"
    tmp.write_text(json.dumps({"step": step, "total": total, "loss": loss}))
    os.replace(tmp, run_dir / "progress.json")


def read_progress(run_dir: Path) -> dict | None:
    """What :func:`write_progress` wrote, as :class:`humanverse.progress.Progress` updates (None before)."""
    try:
        d = json.loads((Path(run_dir) / "progress.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return {"done": int(d["step"]), "loss": float(d["loss"])}


def train_loop(cfg: TrainerConfig, data_root: str, run: str, models: str, latents: str | None = None,
               resume: bool = False, rank: int = 0, world: int = 1, report=None) -> dict:
    """One worker's training loop for either stage. Returns the final metrics and the history
    (rank 0 writes checkpoints, TensorBoard and validation grids)."""
    from model.training.tasks import task_for, validation_batch

    run_dir = Path(run)
    device = torch.device("cuda", torch.cuda.current_device()) if (cfg.scaling.use_gpu and torch.cuda.is_available()) \
        else torch.device("cpu")
    torch.manual_seed(cfg.seed)
    task = task_for(cfg)(cfg, models, data_root, device)
    ck = usable_checkpoint(run_dir) if resume else None
    if ck is not None:
        state = json.loads((ck / "trainer_state.json").read_text())
        if state.get("stage", task.name) != task.name:
            raise ValueError(f"{run_dir} holds a {state['stage']} run; resume it with `train {state['stage']}`.")
        log.info("resuming from %s (step %d)", ck, state["step"])
    else:
        if resume:
            log.info("--resume: no complete, readable checkpoint in %s, starting from scratch", run_dir / "checkpoints")
        state = {"step": 0, "epoch": 0, "step_in_epoch": 0}

    def stats_batches():  # centre crops, no flips: the latent statistics of stage 1
        stream = DataStream(data_root, None, dataclasses.replace(cfg, data=dataclasses.replace(
            cfg.data, crop="center", flip_prob=0.0)), rank=0, world=1)
        return (stream.next() for _ in range(10 ** 9))

    net = task.setup(ck, stats_batches)
    if cfg.gradient_checkpointing:
        net.enable_gradient_checkpointing()
    net.to(device).train()
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.optim.lr, betas=cfg.optim.betas, eps=cfg.optim.eps,
                            weight_decay=cfg.optim.weight_decay)
    ema = EMA(params, cfg.ema_decay, warmup=cfg.ema_warmup) if cfg.ema_decay else None
    if ck is not None:
        opt.load_state_dict(torch.load(ck / "optimizer.pt", map_location=device, weights_only=True))
        if ema is not None:
            from safetensors.torch import load_file

            ema.load_state_dict(load_file(ck / "ema.safetensors"))
    model = net
    if world > 1:
        from ray.train.torch import prepare_model

        model = prepare_model(net, parallel_strategy="ddp", move_to_device=False)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / cfg.optim.warmup_steps) if cfg.optim.warmup_steps else 1.0,
        last_epoch=state["step"] - 1 if state["step"] else -1)
    stream = DataStream(data_root, latents, cfg, rank, world, state["epoch"], state["step_in_epoch"],
                        reader=cfg.data.reader)
    reporters = None
    if rank == 0:
        from model.training.report import Reporters

        run_dir.mkdir(parents=True, exist_ok=True)
        config = {"stage": task.name, **to_dict(cfg)}
        (run_dir / "config.json").write_text(json.dumps(config, indent=2))
        log.info("%s: config in %s; reporting to %s", task.name, run_dir / "config.json",
                 ", ".join(cfg.report_to) or "the run folder only")
        task.run_files(run_dir)
        reporters = Reporters(cfg.report_to, run_dir, config, f"{task.name}-{run_dir.name}")

    def write_checkpoint(step: int) -> None:
        def write(d: Path) -> None:
            from safetensors.torch import save_file

            task.save(d)
            torch.save(opt.state_dict(), d / "optimizer.pt")
            if ema is not None:
                save_file(ema.state_dict(), d / "ema.safetensors")
            (d / "trainer_state.json").write_text(json.dumps(
                {"stage": task.name, "step": step, "epoch": stream.epoch, "step_in_epoch": stream.step_in_epoch,
                 "world_size": world}))
        save_checkpoint(run_dir, step, write, keep=cfg.keep_checkpoints)

    val_batch: dict | None = None

    def validation_rows() -> dict:
        """The fixed validation batch: the ``validation_where`` rows (else the selection's first), centre crops."""
        nonlocal val_batch
        if val_batch is None:
            val_cfg = cfg if cfg.validation_where is None else dataclasses.replace(
                cfg, data=dataclasses.replace(cfg.data, where=cfg.validation_where))
            val_batch = validation_batch(data_root, val_cfg, max(cfg.batch_size, len(cfg.validation_prompts)))
        return val_batch

    def validation_loss(step: int) -> dict[str, float]:
        """The objective on the fixed validation batch with fixed noise, timesteps and dropout draws
        (the training weights, no gradient): comparable from one validation to the next."""
        net.eval()
        try:
            with torch.no_grad(), _autocast(cfg, device):
                gen = torch.Generator().manual_seed(_seed_for(cfg.seed, VAL_SEED))
                losses = task.loss(net, validation_rows(), gen)
        finally:
            net.train()
        out = {k: float(v) for k, v in losses.items() if k in task.scalars and not k.endswith("_dropped")}
        reporters.scalars({f"val/{k}": v for k, v in out.items()}, step)
        log.info("%s step %d validation loss %.4f", task.name, step, out["loss"])
        return out

    def validate(step: int) -> None:
        """Sample with the EMA weights (then restore the training weights)."""
        batch = validation_rows()
        backup = [p.detach().clone() for p in params] if ema is not None else None
        if ema is not None:
            ema.copy_to(params)
        net.eval()
        try:
            path = run_dir / "samples" / f"step-{step:08d}.png"
            tiny = "TINY RANDOM MODELS (meaningless) " if models.strip().startswith("tiny") else ""
            grid = task.validate(batch, path, f"{tiny}{task.name} step {step}" + (" (EMA)" if ema else ""))
            reporters.image("validation", grid, step, caption=" | ".join(cfg.validation_prompts))
            log.info("validation samples: %s", path)
        finally:
            if backup is not None:
                with torch.no_grad():
                    for p, b in zip(params, backup):
                        p.copy_(b)
            net.train()

    history: list[dict] = []
    # the progress display: drawn here when this process is the driver; under Ray Train rank 0
    # writes it to RUN/progress.json and the driver draws it (run_training)
    show = None
    if rank == 0 and report is None:
        from humanverse.progress import Progress

        show = Progress(f"train {task.name}", total=cfg.max_steps, unit="steps", initial=state["step"],
                        counts=("loss",), logger=log)
    t_last, samples, t_progress = time.perf_counter(), 0, 0.0
    metrics: dict = {}
    for step in range(state["step"], cfg.max_steps):
        opt.zero_grad(set_to_none=True)
        acc: dict[str, float] = {}
        for micro in range(cfg.grad_accum):
            batch = stream.next()
            gen = torch.Generator().manual_seed(_seed_for(cfg.seed, step, micro, rank))
            with _autocast(cfg, device):
                losses = task.loss(model, batch, gen)
            loss = losses["loss"] / cfg.grad_accum
            if not torch.isfinite(loss):
                parts = ", ".join(f"{k} {v.item():.4g}" for k, v in losses.items() if k != "loss")
                raise FloatingPointError(
                    f"non-finite loss {loss.item()} at step {step} ({parts}); lower optim.lr or check the data, "
                    f"then resume from the last checkpoint.")
            loss.backward()
            for k, v in losses.items():
                acc[k] = acc.get(k, 0.0) + float(v.detach()) / cfg.grad_accum
            samples += batch["image"].shape[0] if "image" in batch else len(batch["caption"])
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
        opt.step()
        sched.step()
        if ema is not None:
            ema.update(params)
        done = step + 1
        metrics = {**acc, "step": done, "lr": sched.get_last_lr()[0], "grad_norm": float(grad_norm)}
        history.append(metrics)
        if show is not None:
            show.update(done=done, loss=float(metrics["loss"]))
        elif rank == 0 and (time.perf_counter() - t_progress >= 1.0 or done == cfg.max_steps):
            t_progress = time.perf_counter()
            write_progress(run_dir, done, cfg.max_steps, float(metrics["loss"]))
        if rank == 0 and (done % cfg.log_every == 0 or done == cfg.max_steps):
            now = time.perf_counter()
            metrics["samples_per_s"] = samples * world / max(now - t_last, 1e-9)
            t_last, samples = now, 0
            reporters.scalars({f"train/{k}": metrics[k] for k in task.scalars + ("lr", "grad_norm", "samples_per_s")},
                              done)
            log.info("%s step %d %s lr %.2e", task.name, done, task.describe(metrics), metrics["lr"])
        if report is not None:
            report(metrics)
        if rank == 0 and (done % cfg.checkpoint_every == 0 or done == cfg.max_steps):
            write_checkpoint(done)
        if rank == 0 and (done % cfg.validate_every == 0 or done == cfg.max_steps):
            metrics.update({f"val_{k}": v for k, v in validation_loss(done).items()})
            validate(done)
    if show is not None:
        show.close()
    if reporters is not None:
        reporters.close()
        with (run_dir / "history.jsonl").open("a") as f:
            f.write("".join(json.dumps(h) + "\n" for h in history))
    return {"final": metrics, "history": history}


# -- Ray Train ------------------------------------------------------------------------------------


def _ray_worker(config: dict) -> None:
    import ray.train

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()

    def report(metrics: dict) -> None:
        ray.train.report({k: v for k, v in metrics.items() if isinstance(v, (int, float))})

    train_loop(config["cfg"], config["data_root"], config["run"], config["models"], config["latents"],
               config["resume"], rank, world, report=report)


def check_latent_cache(latents: str, data_root: str, cfg: TrainerConfig, models: str) -> None:
    """Refuse (one sentence) a cache built at another resolution, row selection or VAE, or from a
    dataset that has changed since (see :mod:`model.training.latents` for when a cache goes stale)."""
    import dataclasses as dc

    from model.training.latents import LatentCacheConfig, check_cache, read_cache_manifest

    built = read_cache_manifest(latents)["config"]
    known = {f.name for f in dc.fields(LatentCacheConfig)}
    want = LatentCacheConfig(**{**{k: v for k, v in built.items() if k in known},
                                "resolution": cfg.data.resolution, "where": cfg.data.where,
                                "pose_style": cfg.data.pose_style, "depth": cfg.data.depth})
    check_cache(latents, data_root, want, models=models)


def _init_ray(cfg: TrainerConfig, address: str | None) -> None:
    """Attach to ``address`` (or ``RAY_ADDRESS``), or start a local Ray with every core of this
    machine as a logical CPU, at least 2 and enough for the train workers (fractional CPUs)."""
    from humanverse.progress import init_ray

    init_ray(address, num_cpus=max(2, os.cpu_count() or 1,
                                   math.ceil(cfg.scaling.num_workers * cfg.scaling.cpus_per_worker) + 1))


def _resume_step(run: Path, max_steps: int) -> int:
    """The step ``--resume`` continues from: the newest complete checkpoint's (its trainer state
    only; when that step is ``max_steps`` or more, the checkpoint is verified as the worker would),
    else 0."""
    ck = latest_checkpoint(run)
    if ck is None:
        return 0
    try:
        step = int(json.loads((ck / "trainer_state.json").read_text())["step"])
    except (OSError, ValueError, KeyError):
        step = 0
    if step >= max_steps:  # nothing to train, unless it is damaged: the one resume would really use
        ck = usable_checkpoint(run)
        step = int(json.loads((ck / "trainer_state.json").read_text())["step"]) if ck is not None else 0
    return step


def run_training(cfg: TrainerConfig, data_root: str, run: str, models: str, latents: str | None = None,
                 resume: bool = False, address: str | None = None) -> dict | None:
    """Train either stage (the config's type says which): in this process, or on Ray Train. The
    reporters' packages are checked first (before Ray starts or a model loads)."""
    import humanverse
    from model.training.report import parse_report_to

    parse_report_to(cfg.report_to or ("none",))
    stage = cfg.stage
    if latents and stage == "stage2":
        raise ValueError("--latents is a stage-1 (SD-2 VAE) cache; stage 2 encodes with the SDXL VAE on the fly.")
    humanverse.open(data_root)  # a missing or unreadable dataset is one sentence, before Ray or a model
    start = _resume_step(Path(run), cfg.max_steps) if resume else 0
    if start >= cfg.max_steps:
        log.info("%s is at step %d of max_steps %d: nothing to train (raise --max-steps to go on)", run, start,
                 cfg.max_steps)
        return {"step": start, "trained": 0}
    if latents:
        check_latent_cache(latents, data_root, cfg, models)
    if not cfg.scaling.use_ray:
        if cfg.data.reader == "ray" and not latents:  # one trainer process, Ray Data decoding beside it
            _init_ray(cfg, address)
        return train_loop(cfg, data_root, run, models, latents, resume)
    from ray.train import RunConfig, ScalingConfig as RayScaling
    from ray.train.torch import TorchTrainer

    _init_ray(cfg, address)
    trainer = TorchTrainer(
        _ray_worker,
        train_loop_config={"cfg": cfg, "data_root": str(Path(data_root).resolve()), "run": str(Path(run).resolve()),
                           "models": models, "latents": latents, "resume": resume},
        scaling_config=RayScaling(num_workers=cfg.scaling.num_workers, use_gpu=cfg.scaling.use_gpu,
                                  resources_per_worker={"CPU": cfg.scaling.cpus_per_worker,
                                                        **({"GPU": 1} if cfg.scaling.use_gpu else {})}),
        run_config=RunConfig(name=f"{stage}-{Path(run).name}", storage_path=str(Path(run).resolve() / "ray")),
    )
    from humanverse.progress import Poller, Progress

    (Path(run) / "progress.json").unlink(missing_ok=True)
    show = Progress(f"train {stage}", total=cfg.max_steps, unit="steps", initial=start, counts=("loss",), logger=log)
    with Poller(show, lambda: read_progress(Path(run)), every=1.0):
        result = trainer.fit()
    if result.error:
        raise result.error
    ck = latest_checkpoint(Path(run))
    final = json.loads((ck / "trainer_state.json").read_text()) if ck else {}
    return {**(result.metrics or {}), **final}


# -- command line ---------------------------------------------------------------------------------


def load_train_config(path: str | None, overrides: dict | None = None, stage: str = "stage1") -> TrainerConfig:
    """The ``stage`` config from a YAML file (its ``stage1:``/``stage2:`` section in a combined preset)."""
    from humanverse.config import load_yaml

    return load_yaml(CONFIGS[stage], path, overrides, section=stage)
