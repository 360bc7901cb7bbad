"""What a long command shows while it runs: one progress display, and quiet output unless ``--verbose``.

:class:`Progress` is the one progress display of ``build``, ``latents``, ``train``, ``sample`` and
``eval``, driven from the driver process: done of a known total, named counts (accepted,
rejected...), rate and ETA. On a terminal it is one line redrawn in place (tqdm, which every command
that runs models has); otherwise (a log file, ``ray job logs``, CI) it is a log line at most every
``interval`` seconds, and always one final line.

Quiet by default (:func:`set_verbose`): the noise of the libraries under the commands is filtered
out of what the user sees, never out of Ray's own log files:

* Ray's start-up lines (token authentication, "Started a local Ray instance"), its INFO records,
  Ray Data's "progress bars disabled" line and memory issue-detector blocks (:class:`NoiseFilter`,
  :func:`quiet_ray`);
* the lines Ray copies from worker processes to the driver: model-loading progress bars, INFO and
  DEBUG log lines, per-step ``Reporting training result`` records, the raylet's worker-start-up
  warnings and the Train placement-group cleaner's traceback (:func:`keep_worker_line`);
* Ray Data's concurrency ``UserWarning`` s;
* the per-model loading bars of transformers and diffusers in this process.

``--verbose`` brings all of it back, and Ray Data's own progress bars with it.

Nothing here imports torch, Ray or tqdm at module level; :func:`quiet_ray` is called once Ray is
imported, and tqdm is imported only to draw on a terminal.
"""

from __future__ import annotations

import logging
import math
import os
import re
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterable
from typing import TextIO

log = logging.getLogger("humanverse")

_state = {"verbose": os.environ.get("HUMANVERSE_VERBOSE", "") not in ("", "0")}


def set_verbose(on: bool) -> None:
    """Show (True) or filter (False, the default) the libraries' noise; also sets ``HUMANVERSE_VERBOSE``
    so processes started from this one (a local Ray cluster's workers) agree."""
    _state["verbose"] = bool(on)
    os.environ["HUMANVERSE_VERBOSE"] = "1" if on else "0"
    if not on:
        quiet_python()


def verbose() -> bool:
    """Whether ``--verbose`` was given (or ``HUMANVERSE_VERBOSE=1`` is set)."""
    return _state["verbose"]


# -- the progress display -------------------------------------------------------------------------

#: The terminal line is redrawn at most this often (the final state is always drawn).
TTY_REDRAW_SECONDS = 0.2


def format_duration(seconds: float) -> str:
    """``75`` -> ``"1:15"``, ``3725`` -> ``"1:02:05"`` (``"?"`` when unknown)."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = round(seconds)
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _count(name: str, value) -> str:
    """A count as ``"21 accepted"``; a measurement as ``"loss 0.1234"``."""
    if isinstance(value, float):
        return f"{name} {value:.4g}"
    return f"{value} {name}"


def _rate(n: float, seconds: float, unit: str) -> str:
    if seconds <= 0 or n <= 0:
        return f"- {unit}/s"
    r = n / seconds
    if r >= 1 or r == 0:
        return f"{r:.3g} {unit}/s"
    return f"{1 / r:.3g} s/{unit.rstrip('s') or unit}"


class Progress:
    """Done of ``total`` (None: unknown), named counts, rate and ETA, for one phase of a command.

    >>> with Progress("build", total=42, unit="rows", counts=("accepted", "rejected")) as p:
    ...     p.update(done=21, accepted=10, rejected=11)

    ``update`` may be called from one other thread (a poller) while the main thread works; ``close``
    draws the last state and logs one final line (``what: done/total unit in T (rate), counts``).
    ``mode``: ``"tty"`` (one line redrawn in place), ``"log"`` (a line at most every ``interval``
    seconds) or ``None``: ``"tty"`` when ``stream`` is a terminal, else ``"log"``.
    """

    def __init__(self, what: str, total: int | None, unit: str = "rows", *, counts: Iterable[str] = (),
                 initial: int = 0, interval: float = 10.0, stream: TextIO | None = None, mode: str | None = None,
                 logger: logging.Logger | None = None, clock: Callable[[], float] = time.monotonic):
        self.what, self.total, self.unit = what, total, unit
        self.counts = {name: 0 for name in counts}
        self.initial = self.done = initial
        self.interval = interval
        self.stream = stream if stream is not None else sys.stderr
        isatty = getattr(self.stream, "isatty", None)
        self.mode = mode or ("tty" if isatty is not None and isatty() else "log")
        if self.mode not in ("tty", "log"):
            raise ValueError(f"progress mode must be 'tty' or 'log', got {self.mode!r}.")
        self.log = logger or log
        self.clock = clock
        self.t0 = clock()
        self._last_log = self.t0
        self._last_draw = -math.inf
        self._lock = threading.Lock()
        self._closed = False
        self._bar = None
        self._redirect = None
        if self.mode == "tty":
            self._open_bar()

    # -- state

    @property
    def elapsed(self) -> float:
        return self.clock() - self.t0

    def eta(self) -> float | None:
        """Seconds left at the rate so far (None while unknown)."""
        made = self.done - self.initial
        if self.total is None or made <= 0:
            return None
        return max(self.total - self.done, 0) * self.elapsed / made

    def line(self, final: bool = False) -> str:
        """The state as one line of text."""
        of = f"/{self.total}" if self.total is not None else ""
        pct = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        parts = [f"{self.what}: {self.done}{of} {self.unit}{pct}", self._state()]
        if final:
            parts.append(f"in {format_duration(self.elapsed)}")
        else:
            parts.append(f"elapsed {format_duration(self.elapsed)}, ETA {format_duration(self.eta())}")
        return ", ".join(parts)

    def update(self, done: int | None = None, advance: int = 0, **counts: float) -> None:
        """Set ``done`` (absolute) or add ``advance``; set the named counts (absolute; an int shows as
        ``"21 accepted"``, a float as ``"loss 0.1234"``)."""
        with self._lock:
            if self._closed:
                return
            new = (self.done if done is None else done) + advance
            if self.total is not None:
                new = min(new, self.total)
            self.done = max(new, self.done) if done is None else new
            for k, v in counts.items():
                self.counts[k] = v
            if self.mode == "tty":
                if self.clock() - self._last_draw >= TTY_REDRAW_SECONDS:  # a fast loop must not pay a redraw per step
                    self._draw()
            elif self.clock() - self._last_log >= self.interval and (self.total is None or self.done < self.total):
                self._last_log = self.clock()
                self.log.info("%s", self.line())

    def close(self) -> str:
        """Draw the final state and log the final line (returned)."""
        with self._lock:
            if self._closed:
                return self.line(final=True)
            self._closed = True
            text = self.line(final=True)
            if self._bar is not None:
                self._draw()
                self._bar.close()
                self._bar = None
            if self._redirect is not None:
                self._redirect.__exit__(None, None, None)
                self._redirect = None
        self.log.info("%s", text)
        return text

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- the terminal line

    def _open_bar(self) -> None:
        try:
            from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm
        except ImportError:  # the core alone (no models extra): a plain line redrawn with \r
            return
        try:  # a terminal that reports no size (a fresh pseudo-terminal) gets 120 x 20, else tqdm draws nothing
            size = os.get_terminal_size(self.stream.fileno())
        except (AttributeError, OSError, ValueError):
            size = os.terminal_size((0, 0))
        # STATE: the counts and the rate, filled in at each draw (the rate as in the log lines)
        self._format = ("{desc}: {n_fmt}/{total_fmt} {unit} {percentage:3.0f}%|{bar:20}| STATE, "
                        "elapsed {elapsed}, ETA {remaining}" if self.total else
                        "{desc}: {n_fmt} {unit} STATE, elapsed {elapsed}")
        self._bar = tqdm(total=self.total, initial=self.initial, desc=self.what, unit=self.unit,
                         file=self.stream, dynamic_ncols=size.columns > 0, ncols=None if size.columns > 0 else 120,
                         nrows=None if size.lines > 0 else 20, leave=True, mininterval=0.2,
                         bar_format=self._format.replace("STATE", self._state()))
        # log records go above the line instead of through it (tqdm's handler, filtered like the one it replaces)
        self._redirect = logging_redirect_tqdm()
        self._redirect.__enter__()
        if not verbose():
            _add_filter(logging.getLogger().handlers)

    def _state(self) -> str:
        return ", ".join([*(_count(k, v) for k, v in self.counts.items()),
                          _rate(self.done - self.initial, self.elapsed, self.unit)])

    def _draw(self) -> None:
        self._last_draw = self.clock()
        if self._bar is not None:
            self._bar.n = self.done
            self._bar.bar_format = self._format.replace("STATE", self._state().replace("{", "{{").replace("}", "}}"))
            self._bar.refresh()
        else:
            self.stream.write("\r" + self.line())
            self.stream.flush()


class Poller:
    """While a block runs: calls ``read()`` every ``every`` seconds on a thread and hands what it
    returns (``{"done": n, **counts}``, or None for nothing new) to ``progress``; reads once more
    and closes ``progress`` at the end. A failing read is logged at DEBUG and never stops the work.

    How the driver shows the progress of work done elsewhere (Ray tasks, Train workers)."""

    def __init__(self, progress: Progress, read: Callable[[], dict | None], every: float = 0.5):
        self.progress, self.read, self.every = progress, read, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="humanverse-progress", daemon=True)

    def _once(self) -> None:
        try:
            state = self.read()
        except Exception:  # noqa: BLE001 - the display must never stop the work
            log.debug("progress read failed", exc_info=True)
            return
        if state:
            self.progress.update(**state)

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self._once()

    def __enter__(self) -> Poller:
        self._thread.start()
        return self

    def __exit__(self, exc_type, *exc) -> None:
        self._stop.set()
        self._thread.join()
        if exc_type is None:
            self._once()
        self.progress.close()


# -- quiet output ---------------------------------------------------------------------------------

#: messages of warnings and log records that are noise to a user (matched with ``re.search``)
NOISE = tuple(re.compile(p) for p in (
    r"Token authentication is (enabled|disabled) for this Ray cluster",
    r"Started a local Ray instance",
    r"Progress bars disabled\. To enable",
    r"uses .* of memory per\s+worker",  # Ray Data's high-memory issue detector
    r"Found \d+ issues?\. To disable issue detection",
    r"The maximum number of concurrent tasks for",
    r"PYTHON worker processes have been started on node",
    r"Reporting training result \d+",
    r"has constructor arguments in the object store and max_restarts",  # Ray's core worker, once per actor
    r"Setting up process group for: ",  # each Ray Train worker
))

#: worker lines that are progress bars (tqdm / transformers' "Loading weights") or blank
_BAR = re.compile(r"\d+%\|.*\||\d+(\.\d+)?(it|s)/(s|it)\]|^\s*(\x1b\[[0-9;]*[A-Za-z])*\s*$")
#: worker lines that are INFO/DEBUG log records (our format, Ray's and the logging default)
_LOW_LEVEL = re.compile(r"^(\[?[\d:\-., T]+\]?\s+)?(INFO|DEBUG)\b|^(INFO|DEBUG):")
#: actors whose output is noise (Ray Train's clean-up actor prints a traceback when another Ray
#: instance shares the host)
_NOISY_ACTORS = ("PlacementGroupCleaner",)
#: actors whose plain lines are bookkeeping (Ray Train's controller: resources requested, worker
#: group started): only their lines that look like a warning or an error are shown
_TERSE_ACTORS = ("TrainController",)
_SEVERE = re.compile(r"WARN|ERROR|Error|Exception|Traceback|[Ff]ail")


class NoiseFilter(logging.Filter):
    """Drops Ray's INFO/DEBUG records and the :data:`NOISE` messages while not :func:`verbose`."""

    def filter(self, record: logging.LogRecord) -> bool:
        if verbose():
            return True
        if record.name.startswith("ray") and record.levelno < logging.WARNING:
            return False
        try:
            msg = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is not ours to judge
            return True
        return not any(p.search(msg) for p in NOISE)


_FILTER = NoiseFilter()


def _add_filter(handlers: Iterable[logging.Handler]) -> None:
    for h in handlers:
        if _FILTER not in h.filters:
            h.addFilter(_FILTER)


def quiet_python() -> None:
    """Filter the noise of Python-level libraries: :data:`NOISE` on the root's and every ``ray*``
    logger's handlers, the concurrency ``UserWarning`` s, and the transformers / diffusers
    loading bars of this process."""
    _add_filter(logging.getLogger().handlers)
    for name, lg in list(logging.Logger.manager.loggerDict.items()):
        if name.startswith("ray") and isinstance(lg, logging.Logger):
            _add_filter(lg.handlers)
    warnings.filterwarnings("ignore", message=r"The maximum number of concurrent tasks for", category=UserWarning)
    for env in ("HF_HUB_DISABLE_PROGRESS_BARS", "DIFFUSERS_NO_PROGRESS_BAR"):
        os.environ.setdefault(env, "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    for mod in ("transformers", "diffusers"):
        m = sys.modules.get(f"{mod}.utils.logging")
        if m is not None and hasattr(m, "disable_progress_bar"):
            m.disable_progress_bar()
            m.set_verbosity_error()


def keep_worker_line(line: str, actor: str | None = None) -> bool:
    """Whether a line Ray copies from a worker to the driver is shown while not :func:`verbose`:
    warnings, errors, tracebacks and prints are; progress bars, INFO/DEBUG records and
    :data:`NOISE` are not."""
    if verbose():
        return True
    if actor and any(a in actor for a in _NOISY_ACTORS):
        return False
    if actor and any(a in actor for a in _TERSE_ACTORS) and not _SEVERE.search(line):
        return False
    if _BAR.search(line) or _LOW_LEVEL.search(line):
        return False
    return not any(p.search(line) for p in NOISE)


def _filtered(printer: Callable[..., None]) -> Callable[..., None]:
    """``printer`` of Ray's worker-line records (``{"lines": [...], "actor_name": ...}``), given only
    the lines :func:`keep_worker_line` keeps."""

    def emit(data: dict, *args, **kwargs) -> None:
        lines = [ln for ln in data.get("lines", ()) if keep_worker_line(ln, data.get("actor_name"))]
        if lines:
            printer({**data, "lines": lines}, *args, **kwargs)

    emit.humanverse_filtered = True
    return emit


def quiet_ray() -> None:
    """Quiet Ray in this (driver) process unless :func:`verbose`: call before ``ray.init`` (its
    start-up records) and again after it (the worker-line filter, Ray Data's issue detectors).
    Safe to call any number of times."""
    if verbose():
        return
    quiet_python()
    try:
        # the handler that prints the workers' lines (log_to_driver; absent before ray.init), and
        # the function the raylet's error messages are printed with
        import ray._private.worker as ray_worker
        from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

        with dispatcher._lock:
            dispatcher.handlers = [(n, h if getattr(h, "humanverse_filtered", False) else _filtered(h))
                                   for n, h in dispatcher.handlers]
        printer = ray_worker.print_to_stdstream
        if not getattr(printer, "humanverse_filtered", False):
            ray_worker.print_to_stdstream = _filtered(printer)
    except (ImportError, AttributeError):  # another Ray: its lines are shown unfiltered
        log.debug("Ray's worker-log dispatcher not found; worker lines are not filtered")
    if "ray.data" in sys.modules:
        from ray.data import DataContext

        ctx = DataContext.get_current()
        ctx.enable_progress_bars = False
        detectors = getattr(ctx, "issue_detectors_config", None)
        if detectors is not None and hasattr(detectors, "detectors"):
            detectors.detectors = []


def init_ray(address: str | None, **local) -> bool:
    """Connect this driver to Ray, quiet unless :func:`verbose`: to ``address`` (or ``RAY_ADDRESS``)
    when one is given, else to a new local cluster, ``ray.init(address="local", **local)`` without
    the dashboard. Nothing is started when Ray is already up. True when this call started a local
    cluster."""
    import ray

    quiet_ray()
    if ray.is_initialized():
        return False
    remote = bool(address or os.environ.get("RAY_ADDRESS"))
    if remote:
        ray.init(address=address, log_to_driver=True)
    else:
        ray.init(address="local", include_dashboard=False, log_to_driver=True, **local)
    quiet_ray()
    return not remote


__all__ = ["NOISE", "NoiseFilter", "Poller", "Progress", "format_duration", "init_ray", "keep_worker_line",
           "quiet_python", "quiet_ray", "set_verbose", "verbose"]
