"""Which CPU cores a builder process runs on (``resources.<stage>.dedicated_cores``, Linux).

Kept free of heavy imports: :func:`worker_setup` runs in every Ray worker of a local cluster started
with dedicated cores, as the worker starts, and should cost it nothing but a few system calls.
:class:`SpawnWatcher` runs in the driver and moves each new worker as soon as it is started.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time

#: Environment variable naming the cores (comma-separated) a Ray worker process moves onto as it
#: starts: set through the runtime env of a stage whose actors have dedicated cores
#: (``pipelines.build.map_model_stage``), read by :func:`worker_setup`.
WORKER_CORES_ENV = "HUMANVERSE_WORKER_CORES"

log = logging.getLogger(__name__)


def set_process_affinity(cores) -> None:
    """Move every thread of this process onto ``cores`` (threads and processes it starts inherit it)."""
    set_pid_affinity(os.getpid(), cores)


def set_pid_affinity(pid: int, cores) -> None:
    """Move every thread of process ``pid`` onto ``cores``."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), cores)
        except (ProcessLookupError, PermissionError):  # the thread ended meanwhile
            pass


def proc_stat(pid: int | str) -> tuple[str, list[str]]:
    """(command name, the fields after it) of ``/proc/<pid>/stat``: state is ``fields[0]``, the
    parent's PID ``fields[1]``, the start time in clock ticks since boot ``fields[19]``."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    return stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()


def child_pids(name: str) -> list[int]:
    """PIDs of this process's children whose command name is ``name`` (Linux ``/proc``)."""
    me, out = os.getpid(), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            comm, fields = proc_stat(entry)
        except OSError:  # gone meanwhile
            continue
        if comm == name and int(fields[1]) == me:
            out.append(int(entry))
    return out


def process_age(pid: int) -> float:
    """Seconds since process ``pid`` started (``/proc/<pid>/stat``; clock-tick resolution, 10 ms)."""
    ticks = int(proc_stat(pid)[1][19])
    return time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")


def cores_value(cores) -> str:
    """``cores`` as :data:`WORKER_CORES_ENV` spells them."""
    return ",".join(map(str, cores))


def parse_cores(value: str) -> tuple[int, ...]:
    """The cores a :data:`WORKER_CORES_ENV` value names (:func:`cores_value` reversed)."""
    return tuple(int(c) for c in value.split(","))


#: The argument with which Ray starts a worker that has a runtime env (``ray/_private/workers/
#: setup_worker.py``): a JSON context whose ``env_vars`` that process puts in its environment before it
#: ``exec``s the worker proper, in the same process.
_RUNTIME_ENV_ARG = "--serialized-runtime-env-context"


def _named_cores(pid: int) -> tuple[int, ...] | None:
    """The cores :data:`WORKER_CORES_ENV` names for process ``pid``: in the environment it was started
    with, or in the runtime env context on its command line (a Ray worker's first phase)."""
    with open(f"/proc/{pid}/environ", "rb") as f:
        env = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
    value = env.get(WORKER_CORES_ENV.encode(), b"").decode() or None
    if value is None:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read().decode(errors="replace").split("\0")
        for i, arg in enumerate(args):
            context = (arg.split("=", 1)[1] if arg.startswith(_RUNTIME_ENV_ARG + "=")
                       else args[i + 1] if arg == _RUNTIME_ENV_ARG and i + 1 < len(args) else None)
            if context:
                try:
                    value = (json.loads(context).get("env_vars") or {}).get(WORKER_CORES_ENV) or None
                except (ValueError, AttributeError):
                    pass
    return parse_cores(value) if value else None


class SpawnWatcher:
    """Moves every process that ``parent`` (the raylet of a local cluster) starts onto the cores that
    :data:`WORKER_CORES_ENV` names for it, within ``interval`` seconds of its start.

    A Ray worker's own :func:`worker_setup` hook only runs once it has imported Ray and connected
    (2 s of CPU here, plus the runtime env's set-up process before it); until then it runs where the
    raylet runs, the shared cores, queued behind the pipeline's first tasks (3.6 s of run-queue wait
    measured for the detect actor, BENCHMARKS.md session 8). The watcher polls
    ``/proc/<parent>/task/<parent>/children`` (the raylet's main thread starts the workers; ~30 us a
    read) every ``interval`` while processes keep appearing, every ``idle_interval`` once none has
    for ``busy_for`` seconds, and looks at a new process for ``settle`` seconds until it names its
    cores (a fork shows the parent's environment until its ``exec``). It stops when ``parent`` exits.
    """

    def __init__(self, parent: int, interval: float = 0.005, idle_interval: float = 0.1, busy_for: float = 30.0,
                 settle: float = 2.0):
        self.parent, self.interval, self.idle_interval = parent, interval, idle_interval
        self.busy_for, self.settle = busy_for, settle
        self.moved: dict[int, tuple[int, ...]] = {}  # pid -> the cores it was moved onto
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"spawn-watcher-{parent}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        done: set[int] = set()  # moved, or settled without cores named
        pending: dict[int, float] = {}  # pid -> when first seen
        last_new = time.monotonic()
        children = f"/proc/{self.parent}/task/{self.parent}/children"
        while not self._stop.is_set():
            try:
                with open(children) as f:
                    pids = {int(p) for p in f.read().split()}
            except OSError:  # the parent exited: the cluster is gone
                return
            now = time.monotonic()
            for pid in pids - done:
                if pid not in pending:
                    pending[pid], last_new = now, now
                try:
                    cores = _named_cores(pid)
                    if cores:
                        set_pid_affinity(pid, cores)
                        self.moved[pid] = cores
                        if log.isEnabledFor(logging.DEBUG):
                            log.debug("process %d moved onto CPUs %s %.0f ms after it started", pid,
                                      list(cores), process_age(pid) * 1e3)
                except (OSError, ValueError):  # exited meanwhile, not ours to read, or not a core list
                    cores = ()
                if cores is not None or now - pending[pid] >= self.settle:
                    done.add(pid)
                    del pending[pid]
            done &= pids  # a PID may be reused once its process is gone
            busy = pending or now - last_new < self.busy_for
            self._stop.wait(self.interval if busy else self.idle_interval)


def worker_setup() -> None:
    """Ray ``worker_process_setup_hook`` of a local cluster started with dedicated cores: the worker
    moves onto the cores its runtime env names (``HUMANVERSE_WORKER_CORES``: the shared ones for the
    job, a stage's own for that stage's actors) before it loads its task or actor class. The
    :class:`SpawnWatcher` of the driver has usually moved it already, right after its ``exec``;
    this is the fallback for a process it missed."""
    cores = os.environ.get(WORKER_CORES_ENV)
    if cores:
        set_process_affinity(parse_cores(cores))
