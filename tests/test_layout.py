"""The house's import contract (docs/architecture.md) and the front door's promises.

* ``humanverse`` is the base: outside its ``cli`` sub-package it imports neither ``pipelines`` nor
  ``model``; ``humanverse.cli`` reaches them only inside functions, per command.
* ``pipelines`` (the builder) and ``model`` (the trainer) never import each other: the dataset is
  the only thing between them.
* Nobody imports a private module (``package._name``).
* ``humanverse <command> --help`` imports neither torch nor Ray, exits 0 and says ``usage: humanverse``.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("humanverse", "pipelines", "model")


def _imports(path: Path) -> list[tuple[str, bool, int]]:
    """(imported module, at module level?, line) for every import in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    out: list[tuple[str, bool, int]] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = top and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                out.extend((a.name, top, child.lineno) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                out.append((child.module, top, child.lineno))
                out.extend((f"{child.module}.{a.name}", top, child.lineno) for a in child.names)
            visit(child, inner)

    visit(tree, True)
    return out


def _modules(package: str) -> list[Path]:
    return sorted(p for p in (ROOT / package).rglob("*.py") if "sample_images" not in p.parts)


def _violations() -> list[str]:
    bad = []
    for package in PACKAGES:
        for path in _modules(package):
            rel = path.relative_to(ROOT).as_posix()
            in_cli = rel.startswith("humanverse/cli/")
            for name, top, line in _imports(path):
                root = name.split(".")[0]
                where = f"{rel}:{line} imports {name}"
                if any(part.startswith("_") and not part.startswith("__") for part in name.split(".")[1:]) \
                        and root in PACKAGES:
                    bad.append(f"{where}: a private module or name")
                if package == "humanverse" and root in ("pipelines", "model"):
                    if not in_cli:
                        bad.append(f"{where}: the base imports a package built on it")
                    elif top:
                        bad.append(f"{where}: the CLI reaches it at import time (import it inside the command)")
                if package == "pipelines" and root == "model" or package == "model" and root == "pipelines":
                    bad.append(f"{where}: the builder and the trainer never import each other")
    return bad


def test_import_arrows_run_one_way():
    assert _violations() == []


def test_the_contract_check_sees_a_wrong_arrow(tmp_path, monkeypatch):
    """The checker itself: an upward import planted in a copy of the base is reported."""
    import shutil

    shutil.copytree(ROOT / "humanverse", tmp_path / "humanverse")
    for package in ("pipelines", "model"):
        (tmp_path / package).mkdir()
    (tmp_path / "humanverse" / "oops.py").write_text("from pipelines.build import build\n")
    (tmp_path / "model" / "x.py").write_text("def f():\n    import pipelines.readers\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    found = _violations()
    assert any("humanverse/oops.py:1" in v for v in found) and any("model/x.py:2" in v for v in found)


def _commands() -> list[list[str]]:
    from humanverse.cli import COMMANDS

    out = [[c.NAME] for c in COMMANDS]
    out += [["zoo", "list"], ["zoo", "make-tiny"], ["testset", "rows"], ["testset", "coco"]]
    return out


def test_every_help_says_usage_humanverse_and_loads_no_heavy_library():
    """One process runs every command's --help, then reports which heavy modules got imported."""
    code = (
        "import sys, io, contextlib\n"
        "from humanverse.cli import main\n"
        f"cmds = {_commands()!r}\n"
        "for cmd in [[]] + cmds:\n"
        "    buf = io.StringIO()\n"
        "    with contextlib.redirect_stdout(buf):\n"
        "        try:\n"
        "            main(cmd + ['--help'])\n"
        "        except SystemExit as e:\n"
        "            assert e.code == 0, (cmd, e.code)\n"
        "    first = buf.getvalue().splitlines()[0]\n"
        "    want = ' '.join(['usage: humanverse'] + cmd)\n"
        "    assert first.startswith(want), (cmd, first)\n"
        "heavy = [m for m in ('torch', 'ray', 'transformers', 'diffusers', 'pipelines', 'model') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "HEAVY []" in out.stdout


@pytest.mark.parametrize("argv", [["--version"], ["query", "--help"]])
def test_console_entry_runs(argv):
    out = subprocess.run([sys.executable, "-m", "humanverse.cli", *argv], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and out.stdout.startswith(("humanverse ", "usage: humanverse query"))


def test_log_level_on_either_side_of_the_command():
    from humanverse.cli import build_parser

    p = build_parser()
    assert p.parse_args(["--log-level", "debug", "stats", "r"]).log_level == "DEBUG"
    assert p.parse_args(["stats", "r", "--log-level", "warning"]).log_level == "WARNING"
    assert p.parse_args(["stats", "r"]).log_level == "INFO"
    assert p.parse_args(["testset", "rows", "r", "o", "--log-level", "error"]).log_level == "ERROR"
