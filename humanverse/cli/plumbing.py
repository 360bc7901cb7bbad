"""What every ``humanverse`` command shares: logging set-up, ``--set KEY=VALUE`` parsing, the common
options, and the one mapping from the project's errors to one sentence and exit code 2.

Nothing here imports torch, Ray or the ``pipelines``/``model`` packages: building the parser tree
stays cheap, and each command imports what it needs only when it runs.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Iterable

log = logging.getLogger("humanverse")

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def configure_logging(level: str) -> None:
    """One handler on the root logger (kept where one exists), timestamps to the second, ``level``."""
    logging.basicConfig(format=LOG_FORMAT, datefmt="%H:%M:%S")
    logging.getLogger().setLevel(level)


def add_log_level(p: argparse.ArgumentParser, default: str | None = "INFO") -> None:
    """``--log-level``: on the top-level parser (default INFO) and on every command, so it works on
    either side of the command name (a command's copy leaves the value alone unless given)."""
    p.add_argument("--log-level", choices=LOG_LEVELS, type=str.upper,
                   default=default if default is not None else argparse.SUPPRESS,
                   help="logging level (default: INFO)")


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


def run_command(func: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run one command. A bad input, config or file (``ValueError``, which ``ConfigError`` is, or
    ``FileNotFoundError``) or a missing optional extra (``ModuleNotFoundError`` naming it) is logged
    as one sentence and gives exit code 2; the traceback is logged at DEBUG. Anything else is a bug
    and propagates."""
    try:
        return func(args)
    except (ValueError, FileNotFoundError, ModuleNotFoundError) as e:
        log.debug("details", exc_info=True)
        log.error("%s", e)
        return 2
