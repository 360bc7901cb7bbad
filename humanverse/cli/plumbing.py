"""What every ``humanverse`` command shares: logging set-up, ``--set KEY=VALUE`` parsing, the common
options, and the one mapping from the project's errors to one sentence and exit code 2.

Nothing here imports torch, Ray or the ``pipelines``/``model`` packages: building the parser tree
stays cheap, and each command imports what it needs only when it runs.
"""

from __future__ import annotations

import argparse
import errno
import logging
from collections.abc import Callable, Iterable

log = logging.getLogger("humanverse")

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def configure_logging(level: str, verbose: bool = False) -> None:
    """One handler on the root logger (kept where one exists), timestamps to the second, ``level``;
    the libraries' noise filtered unless ``verbose`` (:mod:`humanverse.progress`), which a command
    run inside another (``demo`` runs ``sample``) keeps."""
    from humanverse import progress

    logging.basicConfig(format=LOG_FORMAT, datefmt="%H:%M:%S")
    logging.getLogger().setLevel(level)
    progress.set_verbose(verbose or progress.verbose())


def add_log_level(p: argparse.ArgumentParser, default: str | None = "INFO") -> None:
    """``--log-level`` and ``--verbose``: on the top-level parser and on every command, so they work
    on either side of the command name (a command's copy leaves the value alone unless given)."""
    p.add_argument("--log-level", choices=LOG_LEVELS, type=str.upper,
                   default=default if default is not None else argparse.SUPPRESS,
                   help="logging level (default: INFO)")
    p.add_argument("--verbose", action="store_true", default=False if default is not None else argparse.SUPPRESS,
                   help="also show what the libraries print (Ray's start-up and worker lines, Ray Data's progress "
                        "bars, model-loading bars, per-step train reports); default: filtered")


def add_subcommand(sub, name: str, help: str) -> argparse.ArgumentParser:
    """A sub-command's parser (``zoo list``, ``testset coco``...), which takes ``--log-level`` too."""
    p = sub.add_parser(name, help=help)
    add_log_level(p, default=None)
    return p


def add_root(p: argparse.ArgumentParser) -> None:
    """The dataset root, and ``--skip-missing`` (read what remains when committed files are lost)."""
    p.add_argument("root", help="dataset root (local path or URL)")
    p.add_argument("--skip-missing", action="store_true",
                   help="read what remains when files the commit log lists are missing (default: refuse)")


def open_dataset(args: argparse.Namespace):
    """``humanverse.open`` of ``args.root`` honouring ``--skip-missing``."""
    import humanverse

    return humanverse.open(args.root, missing="skip" if args.skip_missing else "raise")


def add_models(p: argparse.ArgumentParser, what: str = "pretrained models") -> None:
    p.add_argument("--models", default="paper",
                   help=f"{what}: tiny | paper | DIR (one sub-folder per zoo entry; see `humanverse zoo list`)")


def add_address(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local cluster)")


def add_set(p: argparse.ArgumentParser, example: str) -> None:
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override one config value (a YAML value; dotted keys for nested sections), e.g. {example}")


def parse_sets(items: Iterable[str]) -> dict:
    """``["a.b=1", "c=x"]`` -> ``{"a.b": 1, "c": "x"}``, each value read as YAML."""
    import yaml

    out = {}
    for kv in items:
        key, sep, value = kv.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--set expects KEY=VALUE, got {kv!r}.")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ValueError(f"--set {key}: {value!r} is not a YAML value ({e.problem}).") from None
    return out


def given(args: argparse.Namespace, names: Iterable[str]) -> dict:
    """The options among ``names`` the user gave (``None`` = not given: the config's default applies)."""
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


#: OS errors a user fixes (space, permissions, a read-only disk, a file where a folder belongs)
_USER_OS_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR, errno.EISDIR}


def user_error(e: BaseException) -> BaseException | None:
    """The error a user can fix behind ``e``, or None (a bug).

    That is a ``ValueError`` (which ``ConfigError`` and ``DatasetError`` are), a ``FileNotFoundError``,
    a ``ModuleNotFoundError`` naming a missing extra, or an ``OSError`` of :data:`_USER_OS_ERRORS`,
    found in ``e`` itself or in what it wraps: Ray re-raises a task's or an actor's exception as a
    ``RayTaskError`` whose ``cause`` is the original, and Ray Train as a ``WorkerGroupError`` whose
    ``worker_failures`` hold each worker's.
    """
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        inner = getattr(e, "cause", None)
        failures = getattr(e, "worker_failures", None)
        if inner is None and isinstance(failures, dict) and failures:
            inner = failures[min(failures)]
        if isinstance(inner, BaseException):  # a Ray wrapper: its text holds remote tracebacks
            e = inner
            continue
        if isinstance(e, (ValueError, FileNotFoundError, ModuleNotFoundError)):
            return e
        if isinstance(e, OSError) and e.errno in _USER_OS_ERRORS:
            return e
        e = e.__cause__
    return None


def one_sentence(e: BaseException) -> str:
    """``e``'s message on one line (an ``OSError`` with its path)."""
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror}: {e.filename}" if e.filename else e.strerror
    from humanverse.errors import first_line

    return first_line(e)


def run_command(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run one command. An error the user can fix (:func:`user_error`: a bad input, config or
    dataset, a missing file or extra, no space or no permission, also when raised inside a Ray task
    or a Ray Train worker) is logged as one sentence and gives exit code 2; the traceback is logged
    at DEBUG. Anything else is a bug and propagates."""
    try:
        return func(args)
    except Exception as e:  # noqa: BLE001 - sorted below: user errors are one sentence, bugs propagate
        found = user_error(e)
        if found is None:
            raise
        log.debug("details", exc_info=True)
        log.error("%s", one_sentence(found))
        return 2
