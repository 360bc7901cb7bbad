"""Atomic, rotated training checkpoints with a completion marker (step-exact resume).

``RUN/checkpoints/step-00001234/`` holds whatever the task saves (safetensors weights, optimizer
state, ``trainer_state.json``) plus ``COMPLETE``. It is written as ``.tmp-step-…`` and renamed into
place only once complete, so a crash never leaves a half checkpoint that ``--resume`` could pick;
``latest_checkpoint`` takes the newest folder that has the marker. Old ones are rotated away.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

import torch

from humanverse.errors import first_line

log = logging.getLogger(__name__)

MARKER = "COMPLETE"
PREFIX = "step-"


def checkpoint_dir(run: Path, step: int) -> Path:
    return Path(run) / "checkpoints" / f"{PREFIX}{step:08d}"


def save_checkpoint(run: Path, step: int, write: Callable[[Path], None], keep: int | None = 3) -> Path:
    """Call ``write(tmp_dir)``, add the marker, fsync, rename into place, rotate. Returns the folder."""
    final = checkpoint_dir(run, step)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:6]}"
    tmp.mkdir()
    try:
        write(tmp)
        (tmp / MARKER).write_text(json.dumps({"step": step}))
        for p in tmp.rglob("*"):
            if p.is_file():
                fd = os.open(p, os.O_RDONLY)
                os.fsync(fd)
                os.close(fd)
        if final.exists():  # re-saving the same step (e.g. after a resume at that step)
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("saved checkpoint %s", final)
    if keep is not None:
        for old in list_checkpoints(run)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    for stale in final.parent.glob(".tmp-*"):  # leftovers of a crash mid-save
        shutil.rmtree(stale, ignore_errors=True)
    return final


def list_checkpoints(run: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    d = Path(run) / "checkpoints"
    if not d.is_dir():
        return []
    found = [p for p in d.iterdir() if p.name.startswith(PREFIX) and (p / MARKER).is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def latest_checkpoint(run: Path) -> Path | None:
    cks = list_checkpoints(run)
    return cks[-1] if cks else None


def checkpoint_problem(ck: Path) -> str | None:
    """Why checkpoint folder ``ck`` cannot be loaded (its first unreadable file), or None when every
    file reads: JSON parses, a safetensors file holds all the bytes its header promises, a torch
    file opens as a weights-only archive (memory-mapped, so nothing large is read)."""
    for f in sorted(p for p in Path(ck).rglob("*") if p.is_file()):
        try:
            if f.suffix == ".json":
                json.loads(f.read_text())
            elif f.suffix == ".safetensors":
                _check_safetensors(f)
            elif f.suffix in (".pt", ".pth", ".bin"):
                torch.load(f, map_location="cpu", weights_only=True, mmap=True)
        except Exception as e:  # noqa: BLE001 - any failure to read is the answer
            return f"{f.relative_to(ck)}: {type(e).__name__}: {first_line(e)}"
    return None


def _check_safetensors(path: Path) -> None:
    """The header parses and the file is as long as the tensors it lists (a truncated copy is not)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if n <= 0 or 8 + n > size:
            raise ValueError(f"header of {n} bytes in a file of {size}")
        header = json.loads(f.read(n))
    end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end != size:
        raise ValueError(f"{size} bytes, the header describes {8 + n + end}")


def usable_checkpoint(run: Path) -> Path | None:
    """The newest complete checkpoint whose files all read (:func:`checkpoint_problem`); a damaged
    newer one is skipped with a warning naming what is wrong, so a resume falls back to the
    previous checkpoint instead of failing."""
    for ck in reversed(list_checkpoints(run)):
        problem = checkpoint_problem(ck)
        if problem is None:
            return ck
        log.warning("checkpoint %s is damaged (%s); falling back to the previous one", ck, problem)
    return None


class EMA:
    """Exponential moving average of the trainable parameters (fp32 shadow copies).

    With ``warmup`` (the default) the decay of the n-th update (n = 1, 2, ...) is diffusers'
    ``EMAModel`` schedule without ``use_ema_warmup``: ``min(decay, (1 + k) / (10 + k))`` with
    k = n − 1 (so the first update copies the weights, the tenth averages with 10/19, and ``decay``
    is reached after about 1/(1 − decay) updates). A short run then samples weights it has trained,
    not the initialisation's SD-2 (ε-prediction) weights that a fixed 0.9999 keeps for ~10k steps.
    Without ``warmup`` every update uses ``decay``. The update count is saved with the shadow copies.
    """

    def __init__(self, params: list[torch.nn.Parameter], decay: float, warmup: bool = True):
        self.decay, self.warmup = decay, warmup
        self.updates = 0
        self.shadow = [p.detach().float().clone() for p in params]

    def current_decay(self) -> float:
        """The decay the next :meth:`update` applies."""
        if not self.warmup:
            return self.decay
        k = self.updates  # diffusers: step = optimization_step - 1, after its increment
        return 0.0 if k <= 0 else min(self.decay, (1 + k) / (10 + k))

    @torch.no_grad()
    def update(self, params: list[torch.nn.Parameter]) -> None:
        decay = self.current_decay()
        torch._foreach_lerp_(self.shadow, [p.detach().float() for p in params], 1.0 - decay)
        self.updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {**{f"{i}": t for i, t in enumerate(self.shadow)}, "updates": torch.tensor([self.updates])}

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        self.shadow = [sd[f"{i}"].clone() for i in range(len(self.shadow))]
        # an average saved before update counts were kept is taken as fully warmed up
        self.updates = int(sd["updates"].item()) if "updates" in sd else 10 ** 9

    @torch.no_grad()
    def copy_to(self, params: list[torch.nn.Parameter]) -> None:
        for s, p in zip(self.shadow, params):
            p.copy_(s.to(p.dtype))
