"""Which CPU cores a builder process runs on (``resources.<stage>.dedicated_cores``, Linux).

Kept free of heavy imports: :func:`worker_setup` runs in every Ray worker of a local cluster started
with dedicated cores, as the worker starts, and should cost it nothing but a few system calls.
"""

from __future__ import annotations

import os

#: Environment variable naming the cores (comma-separated) a Ray worker process moves onto as it
#: starts: set through the runtime env of a stage whose actors have dedicated cores
#: (``pipelines.build.map_model_stage``), read by :func:`worker_setup`.
WORKER_CORES_ENV = "HUMANVERSE_WORKER_CORES"


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


def child_pids(name: str) -> list[int]:
    """PIDs of this process's children whose command name is ``name`` (Linux ``/proc``)."""
    me, out = os.getpid(), []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:  # gone meanwhile
            continue
        comm, rest = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:].split()
        if comm == name and int(rest[1]) == me:
            out.append(int(entry))
    return out


def cores_value(cores) -> str:
    """``cores`` as :data:`WORKER_CORES_ENV` spells them."""
    return ",".join(map(str, cores))


def worker_setup() -> None:
    """Ray ``worker_process_setup_hook`` of a local cluster started with dedicated cores: the worker
    moves onto the cores its runtime env names (``HUMANVERSE_WORKER_CORES``: the shared ones for the
    job, a stage's own for that stage's actors) before it runs anything. The raylet runs on every
    core, so a dedicated stage's actor process starts on its idle core and its class loading and
    imports (seconds: Ray Data, torch, transformers) run there, not queued on the shared cores
    behind the pipeline's first tasks; every other worker leaves that core as it starts."""
    cores = os.environ.get(WORKER_CORES_ENV)
    if cores:
        set_process_affinity(tuple(int(c) for c in cores.split(",")))
