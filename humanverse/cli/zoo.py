"""``humanverse zoo list | make-tiny DIR | convert-vitpose SRC OUT | prepare DIR``: the table of
pretrained models, their tiny stand-ins, the ViTPose whole-body conversion, and fetching every
model of the paper's configuration at its pin.

The zoo table lives in :mod:`humanverse.zoo`; the tiny builders of the classes this project defines
itself (the Omnidata DPT in ``pipelines``, the LSDM in ``model``) live beside those classes, and
:func:`tiny_builders` collects them here, the one place allowed to reach into both packages.

``zoo prepare DIR`` is the one command a cluster operator runs to fill the model volume: every
``--models paper`` entry is fetched at its pinned commit into ``DIR/<entry>/`` (hub files with
``huggingface_hub``, Omnidata's from its Zenodo record once its licence is accepted with
``--accept-omnidata-licence``), ViTPose-H's whole-body checkpoint is converted, every file is
checked (present, non-empty, SHA-256 where a digest is known) and ``DIR/manifest.json`` records
what was fetched from where. ``--dry-run`` (and an offline machine) lists every file with its pin
and fetches nothing. Then ``--models DIR`` (or ``HUMANVERSE_MODELS=DIR`` with ``--models paper``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from humanverse.cli.plumbing import add_subcommand

NAME = "zoo"
HELP = "the table of pretrained models, their tiny stand-ins, and fetching the paper's models"

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
#: Where a downloaded original that is converted (ViTPose) is kept, under DIR.
SOURCES = "_sources"
OMNIDATA_LICENCE = """\
Omnidata v2 weights (EPFL-VILAB, Zenodo record 10447888) are released under the Omnidata
non-commercial EULA (github.com/EPFL-VILAB/omnidata LICENSE): research and education use only;
clause 9 covers the pre-trained weights; they may not be redistributed (never put them in an
image or a public bucket). Read the licence before accepting it with --accept-omnidata-licence."""


def tiny_builders() -> dict[str, Callable[[Path, int], None]]:
    """Tiny builders of the zoo entries whose classes live in ``pipelines`` and ``model``."""
    from model.models.lsdm import make_tiny_lsdm
    from pipelines.annotators.omnidata import TINY_BUILDERS

    return {**TINY_BUILDERS, "lsdm": make_tiny_lsdm}


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="zoo_cmd", required=True, metavar="ZOO_COMMAND")
    add_subcommand(
        sub, "list", help="print the model table (full pins and how each was verified)"
    )
    mt = add_subcommand(
        sub,
        "make-tiny",
        help="build tiny random models of every entry into DIR (offline)",
    )
    mt.add_argument("dir")
    mt.add_argument("--only", help="comma-separated entry names")
    mt.add_argument("--seed", type=int, default=0)
    mt.add_argument(
        "--force", action="store_true", help="rebuild entries that already exist"
    )
    cv = add_subcommand(
        sub,
        "convert-vitpose",
        help="convert ViTPose++-H's whole-body checkpoint (wholebody.pth) into a "
        "VitPoseForPoseEstimation folder",
    )
    cv.add_argument(
        "src",
        help="the original .pth (tools/model_split.py's wholebody.pth, or unsplit ViTPose++-H)",
    )
    cv.add_argument(
        "out_dir", help="output folder (e.g. DIR/vitpose-wholebody for --models DIR)"
    )
    cv.add_argument(
        "--heads",
        type=int,
        default=None,
        help="attention heads, for a checkpoint narrower than ViTPose-H (default: ViTPose-H's 16)",
    )
    pr = add_subcommand(
        sub,
        "prepare",
        help="fetch every --models paper entry at its pin into DIR, convert, "
        "verify, and write DIR/manifest.json",
    )
    pr.add_argument(
        "dir",
        help="the models folder to fill (then pass --models DIR, or set HUMANVERSE_MODELS=DIR)",
    )
    pr.add_argument(
        "--dry-run",
        action="store_true",
        help="list every file with its pin; fetch nothing",
    )
    pr.add_argument(
        "--accept-omnidata-licence",
        action="store_true",
        help="accept the Omnidata non-commercial EULA (shown by the command) and fetch its weights",
    )
    pr.add_argument(
        "--only",
        help="comma-separated entry names (default: every --models paper entry)",
    )


@dataclass(frozen=True)
class Fetch:
    """One file ``zoo prepare`` fetches: from ``source`` (a hub repo or a URL) at ``revision``."""

    entry: str
    source: str
    revision: str | None
    file: str
    dest: Path
    sha256: str | None = None

    @property
    def pin(self) -> str:
        return f"{self.source}@{self.revision}" if self.revision else self.source


def plan(root: Path, names: list[str] | None = None) -> list[Fetch]:
    """Every file of every ``--models paper`` entry (or of ``names``), with its pin and place."""
    from humanverse.zoo import ZOO

    wanted = [n for n, e in ZOO.items() if e.paper] if names is None else names
    fetches = []
    for name in wanted:
        if name not in ZOO:
            raise ValueError(
                f"Unknown model {name!r}; expected one of: {', '.join(ZOO)}."
            )
        entry = ZOO[name]
        if not entry.paper:
            raise ValueError(
                f"Model {name!r} has no published weights (it is trained by this project)."
            )
        # A converted entry's original goes under _sources/; the converted folder is DIR/<entry>.
        folder = root / (f"{SOURCES}/{name}" if name == "vitpose-wholebody" else name)
        for f in entry.files:
            source = (
                entry.hub_id if entry.on_hub else f"{entry.hub_id}/files/{f}?download=1"
            )
            fetches.append(
                Fetch(name, source, entry.revision, f, folder / f, entry.sha256.get(f))
            )
    return fetches


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in (
        "1",
        "true",
        "yes",
        "on",
    )


def _download(item: Fetch) -> None:
    """Fetch one file into ``item.dest`` (kept when already there)."""
    if item.dest.is_file() and item.dest.stat().st_size > 0:
        return
    item.dest.parent.mkdir(parents=True, exist_ok=True)
    if item.source.startswith(("http://", "https://")):
        import shutil
        import urllib.request

        tmp = item.dest.with_name(item.dest.name + ".part")
        with (
            urllib.request.urlopen(item.source, timeout=60) as response,
            tmp.open("wb") as out,
        ):
            shutil.copyfileobj(response, out, length=1 << 22)
        tmp.replace(item.dest)
        return
    from huggingface_hub import hf_hub_download

    local_dir = item.dest.parents[len(Path(item.file).parts) - 1]
    hf_hub_download(item.source, item.file, revision=item.revision, local_dir=local_dir)


def _verify(item: Fetch) -> dict[str, object]:
    if not item.dest.is_file() or item.dest.stat().st_size == 0:
        raise ValueError(
            f"{item.dest} ({item.pin}) is missing or empty after the download."
        )
    digest = _sha256(item.dest)
    if item.sha256 and digest != item.sha256:
        raise ValueError(
            f"{item.dest} ({item.pin}) has SHA-256 {digest}, expected {item.sha256}: delete it and rerun."
        )
    return {
        "source": item.pin,
        "bytes": item.dest.stat().st_size,
        "sha256": digest,
        "checked": bool(item.sha256),
    }


def prepare(
    root: Path,
    *,
    names: list[str] | None,
    dry_run: bool,
    accept_omnidata: bool,
    out=None,
) -> int:
    """``zoo prepare``: see the module docstring. ``out``: where the listing goes (stdout)."""
    from humanverse.zoo import ZOO, pin_status

    out = out or sys.stdout
    fetches = plan(root, names)
    entries = list(dict.fromkeys(f.entry for f in fetches))
    omnidata = [e for e in entries if e.startswith("omnidata-")]
    out.write(f"zoo prepare {root}: {len(fetches)} files of {len(entries)} entries\n")
    for item in fetches:
        digest = f"  sha256 {item.sha256[:12]}..." if item.sha256 else ""
        out.write(
            f"  {item.entry:18s} {item.pin}  {item.file}  [{pin_status(ZOO[item.entry])}]{digest}\n"
        )
    if "vitpose-wholebody" in entries:
        out.write(
            f"  then: humanverse zoo convert-vitpose {root / SOURCES / 'vitpose-wholebody' / ZOO['vitpose-wholebody'].files[0]}"
            f" {root / 'vitpose-wholebody'}\n"
        )
    if omnidata:
        out.write("\n" + OMNIDATA_LICENCE + "\n")
    if dry_run:
        out.write("dry run: nothing fetched.\n")
        return 0
    if omnidata and not accept_omnidata:
        raise ValueError(
            "The Omnidata weights need their non-commercial licence accepted (shown above): pass "
            "--accept-omnidata-licence, or leave them out with --only."
        )
    if _offline():
        raise ValueError(
            f"HF_HUB_OFFLINE is set, so nothing was fetched: the {len(fetches)} files listed above are what "
            f"`zoo prepare` would fetch; run it where the hub and zenodo.org can be reached."
        )
    manifest: dict[str, dict] = {}
    for item in fetches:
        log.info("fetching %s %s", item.pin, item.file)
        _download(item)
        manifest.setdefault(
            item.entry,
            {
                "pin": ZOO[item.entry].pin,
                "pin_status": pin_status(ZOO[item.entry]),
                "files": {},
            },
        )["files"][item.file] = _verify(item)
    if "blip2-opt-2.7b" in entries:
        config = json.loads(
            (root / "blip2-opt-2.7b" / "config.json").read_text(encoding="utf-8")
        )
        if "image_token_index" not in config:
            raise ValueError(
                "blip2-opt-2.7b's config has no image_token_index: the pinned commit predates the "
                "<image>-token layout."
            )
    if "vitpose-wholebody" in entries:
        from pipelines.annotators.vitpose_convert import convert_vitpose

        src = root / SOURCES / "vitpose-wholebody" / ZOO["vitpose-wholebody"].files[0]
        converted = convert_vitpose(src, root / "vitpose-wholebody")
        manifest["vitpose-wholebody"]["converted"] = {
            p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)}
            for p in sorted(converted.iterdir())
            if p.is_file()
        }
    path = root / MANIFEST
    previous = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    path.write_text(
        json.dumps({**previous, **manifest}, indent=2, sort_keys=True) + "\n",
        encoding="utf-8",
    )
    out.write(
        f"prepared {len(entries)} entries in {root}; manifest {path}. Use --models {root} "
        f"(or HUMANVERSE_MODELS={root} with --models paper).\n"
    )
    return 0


def run(args: argparse.Namespace) -> int:
    from humanverse import zoo

    if args.zoo_cmd == "list":
        sys.stdout.write(zoo.format_table() + "\n")
        return 0
    if args.zoo_cmd == "convert-vitpose":
        from pipelines.annotators.vitpose_convert import convert_vitpose

        out = convert_vitpose(args.src, args.out_dir, num_attention_heads=args.heads)
        sys.stdout.write(f"converted {args.src} into {out}\n")
        return 0
    if args.zoo_cmd == "prepare":
        names = args.only.split(",") if args.only else None
        return prepare(
            Path(args.dir).expanduser().absolute(),
            names=names,
            dry_run=args.dry_run,
            accept_omnidata=args.accept_omnidata_licence,
        )
    names = args.only.split(",") if args.only else None
    built = zoo.make_tiny(
        args.dir, names, seed=args.seed, builders=tiny_builders(), force=args.force
    )
    for name, path in built.items():
        sys.stdout.write(f"{name:22s} {path}\n")
    return 0
