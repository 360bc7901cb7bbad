"""Where a training run reports its scalars and validation grids: ``--report-to tensorboard | wandb |
mlflow | none`` (several, comma-separated).

* ``tensorboard`` (the default): event files in ``RUN/tensorboard`` (tensorboardX writes them; the
  ``tensorboard`` viewer is in the ``trainer`` extra: ``tensorboard --logdir RUN/tensorboard``);
* ``wandb``: a Weights & Biases run named after the run folder, its files in ``RUN/wandb``; honours
  ``WANDB_MODE`` (``offline`` works without an account or a network) and ``WANDB_PROJECT``
  (default ``humanverse``); a resumed run continues the same W&B run;
* ``mlflow``: an MLflow run in ``MLFLOW_TRACKING_URI`` (default: ``RUN/mlruns``), the config as an
  artifact;
* ``none``: nothing beyond the run folder's own files (``history.jsonl``, ``samples/``).

wandb and mlflow are optional packages: a missing one is refused before training starts, with the
command that installs it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

log = logging.getLogger("model.training.loop")

REPORTERS = ("tensorboard", "wandb", "mlflow", "none")
#: the package each reporter imports
PACKAGES = {"tensorboard": "tensorboardX", "wandb": "wandb", "mlflow": "mlflow"}


def parse_report_to(value: str | Iterable[str]) -> tuple[str, ...]:
    """``"tensorboard,wandb"`` (or a sequence) -> the reporters, checked: known names, ``none`` alone,
    and each one's package installed (a ``ModuleNotFoundError`` naming the ``pip install`` otherwise)."""
    names = [n.strip().lower() for n in (value.split(",") if isinstance(value, str) else value) if n.strip()]
    unknown = [n for n in names if n not in REPORTERS]
    if unknown or not names:
        raise ValueError(f"report_to: {unknown or names} is not a list of {' | '.join(REPORTERS)}.")
    if "none" in names:
        if len(names) > 1:
            raise ValueError(f"report_to: 'none' cannot be combined with {[n for n in names if n != 'none']}.")
        return ()
    for n in names:
        if importlib.util.find_spec(PACKAGES[n]) is None:
            raise ModuleNotFoundError(f"--report-to {n} needs the {PACKAGES[n]} package, which is not installed: "
                                      f"pip install {PACKAGES[n]}.")
    return tuple(dict.fromkeys(names))


class Reporters:
    """The run's reporters (rank 0 only): scalars by tag and images, at a step."""

    def __init__(self, names: Iterable[str], run_dir: Path, config: Mapping, title: str):
        self.names = tuple(names)
        self._tb = self._wandb = self._mlflow = None
        run_dir = Path(run_dir)
        if "tensorboard" in self.names:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(run_dir / "tensorboard"))
        if "wandb" in self.names:
            import wandb

            (run_dir / "wandb").mkdir(parents=True, exist_ok=True)
            # one W&B run per run folder, continued on --resume
            rid = hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:16]
            self._wandb = wandb.init(project=os.environ.get("WANDB_PROJECT", "humanverse"), name=title, id=rid,
                                     resume="allow", dir=str(run_dir), config=dict(config), reinit=True)
        if "mlflow" in self.names:
            import mlflow

            if not os.environ.get("MLFLOW_TRACKING_URI"):
                mlflow.set_tracking_uri((run_dir / "mlruns").resolve().as_uri())
            mlflow.set_experiment(os.environ.get("MLFLOW_EXPERIMENT_NAME", "humanverse"))
            self._mlflow = mlflow.start_run(run_name=title)
            mlflow.log_dict(dict(config), "config.json")

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        """``{"train/loss": 0.1, "val/loss": 0.2, ...}`` at ``step``."""
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log(dict(values), step=step)
        if self._mlflow is not None:
            import mlflow

            mlflow.log_metrics({k.replace("/", "_"): float(v) for k, v in values.items()}, step=step)

    def image(self, tag: str, image, step: int, caption: str = "") -> None:
        """A PIL image (a validation grid) at ``step``."""
        import numpy as np

        if self._tb is not None:
            self._tb.add_image(tag, np.asarray(image.convert("RGB")), step, dataformats="HWC")
        if self._wandb is not None:
            import wandb

            self._wandb.log({tag: wandb.Image(image, caption=caption)}, step=step)
        if self._mlflow is not None:
            import mlflow

            mlflow.log_image(image, f"{tag}/step-{step:08d}.png")

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
        if self._mlflow is not None:
            import mlflow

            mlflow.end_run()


__all__ = ["PACKAGES", "REPORTERS", "Reporters", "parse_report_to"]
