"""The dataset card: ``README.md`` at a dataset root, in Hugging Face's dataset-card format.

Its YAML front matter declares two configs, ``data`` (the default) and ``rejects``, each a glob over
the published Parquet files of that kind, and their features, with the encoded-image columns
(``image``, ``depth``, ``depth_omnidata``, ``normal``) typed as ``Image``. With it,
``datasets.load_dataset(ROOT, "data")`` returns decoded PIL images. The body describes every column (from :data:`humanverse.schema.COLUMN_DESCRIPTIONS`, the
table the Parquet field descriptions come from), the reject reasons, the keypoint parts and their
visibility threshold, and the models and inputs the manifest records.

The card depends on the manifest only (format version, ``clip_dim``, acceptance settings, models,
inputs, banner): :func:`humanverse.shards.write_manifest` writes it beside every ``humanverse.json``
(builds and refilters alike); :func:`write_card` writes it alone.
Pure pyarrow and PyYAML: no ``datasets`` import (the tests check the features against ``datasets``
itself).

The ``data_files`` globs (``data/part-*.parquet``) never match the manifest, ``_log/``,
``_staging/`` or anything that is not a published file of that kind. Like any glob they see what is
published at that moment: during a build, or after a crash until the next writer recovers, only
:func:`humanverse.open` knows exactly which files are committed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import pyarrow as pa
import yaml

from humanverse import fs as hfs
from humanverse.schema import (COLUMN_DESCRIPTIONS, FORMAT_VERSION, KEYPOINT_PARTS, REJECT_REASONS, REJECT_SCHEMA,
                               VISIBLE_SCORE, data_schema)

#: The card's file name at the dataset root (what the Hub and ``datasets`` read).
CARD = "README.md"
#: Published files of each kind: the configs' ``data_files`` (one ``train`` split each).
DATA_FILES: dict[str, str] = {"data": "data/part-*.parquet", "rejects": "rejects/part-*.parquet"}
#: Binary columns that hold one encoded image each (PNG or JPEG): typed ``Image`` in the card.
IMAGE_COLUMNS: tuple[str, ...] = ("image", "depth", "depth_omnidata", "normal")

_ARROW_TO_HF = {
    pa.bool_(): "bool", pa.int8(): "int8", pa.int16(): "int16", pa.int32(): "int32", pa.int64(): "int64",
    pa.uint8(): "uint8", pa.uint16(): "uint16", pa.uint32(): "uint32", pa.uint64(): "uint64",
    pa.float16(): "float16", pa.float32(): "float32", pa.float64(): "float64",
    pa.string(): "string", pa.large_string(): "large_string", pa.binary(): "binary",
    pa.large_binary(): "large_binary",
}


def _feature(t: pa.DataType) -> dict:
    """A ``datasets`` feature in the card's YAML form (``Features._to_yaml_list``): ``{"dtype": …}``,
    ``{"struct": [...]}`` or ``{"list": …, "length": n}`` (a list of a plain type is written inline)."""
    if pa.types.is_struct(t):
        return {"struct": [{"name": f.name, **_feature(f.type)} for f in t]}
    if pa.types.is_list(t) or pa.types.is_fixed_size_list(t):
        inner = _feature(t.value_type)
        out = {"list": inner["dtype"] if list(inner) == ["dtype"] else inner.get("struct", inner)}
        if pa.types.is_fixed_size_list(t):
            out["length"] = t.list_size
        return out
    if t not in _ARROW_TO_HF:
        raise TypeError(f"no dataset-card feature for Arrow type {t}.")
    return {"dtype": _ARROW_TO_HF[t]}


def card_features(schema: pa.Schema) -> list[dict]:
    """The card's ``features`` list for ``schema``: every column as ``datasets`` would infer it from
    the Parquet files, except :data:`IMAGE_COLUMNS`, typed ``image`` (``datasets`` casts a binary
    column to ``Image`` and decodes it to a PIL image on access)."""
    return [{"name": f.name, **({"dtype": "image"} if f.name in IMAGE_COLUMNS else _feature(f.type))}
            for f in schema]


def card_metadata(manifest: Mapping) -> dict:
    """The YAML front matter: configs (with ``data_files``) and ``dataset_info`` features."""
    schemas = {"data": data_schema(manifest.get("clip_dim")), "rejects": REJECT_SCHEMA}
    return {
        "pretty_name": "HumanVerse",
        "tags": ["human-centric", "pose-estimation", "depth-estimation", "surface-normals", "image-captioning"],
        "task_categories": ["text-to-image"],
        "configs": [
            {"config_name": kind, "data_files": [{"split": "train", "path": glob}], **({"default": True}
                                                                                       if kind == "data" else {})}
            for kind, glob in DATA_FILES.items()
        ],
        "dataset_info": [{"config_name": kind, "features": card_features(schemas[kind])} for kind in DATA_FILES],
    }


#: The config settings that decide which rows are accepted, as the card lists them:
#: (section, key, what an accepted row satisfied).
_FILTERS = (
    ("resolution", "min_side", "shorter side of the original at least {} px"),
    ("detect", "score_threshold", "persons are detections scoring at least {}"),
    ("person_filter", "min_persons", "at least {} person(s)"),
    ("person_filter", "max_persons", "at most {} persons"),
    ("person_filter", "min_area", "person boxes cover at least {} of the image"),
    ("aesthetic", "threshold", "aesthetic score at least {}"),
    ("outpaint", "policy", "outpainting policy {!r}"),
)


def _filters(config: Mapping) -> list[str]:
    """One Markdown bullet per acceptance setting the build ``config`` holds, for the stages it ran
    (all of them when it does not list its stages)."""
    stages = config.get("stages")
    out = []
    for section, key, text in _FILTERS:
        if isinstance(stages, list) and section not in stages:
            continue
        value = (config.get(section) or {}).get(key) if isinstance(config.get(section), Mapping) else None
        if value is not None:
            out.append(f"- {_md(text.format(value))} (`{section}.{key}`)")
    return out


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def _type_str(t: pa.DataType) -> str:
    """A short type name for people: ``float32``, ``float32[4]`` (fixed size), ``list<string>``."""
    if pa.types.is_fixed_size_list(t):
        return f"{_type_str(t.value_type)}[{t.list_size}]"
    if pa.types.is_list(t):
        return f"list<{'struct' if pa.types.is_struct(t.value_type) else _type_str(t.value_type)}>"
    if pa.types.is_struct(t):
        return "struct"
    return _ARROW_TO_HF.get(t, str(t))


def _type_name(f: pa.Field, top: bool) -> str:
    name = "image (encoded bytes)" if top and f.name in IMAGE_COLUMNS else _type_str(f.type)
    return name if f.nullable else name + ", not null"


def _column_rows(fields: list[pa.Field], prefix: str = "") -> list[str]:
    """One Markdown table row per column, nested fields after their parent."""
    rows = []
    for f in fields:
        path = prefix + f.name
        rows.append(f"| `{path}` | {_md(_type_name(f, not prefix))} | {_md(COLUMN_DESCRIPTIONS[path])} |")
        t = f.type.value_type if pa.types.is_list(f.type) else f.type
        if pa.types.is_struct(t):
            rows += _column_rows(list(t), path + ".")
    return rows


def card_text(manifest: Mapping) -> str:
    """The whole card (front matter and body) for a dataset with manifest ``manifest``."""
    meta = yaml.safe_dump(card_metadata(manifest), sort_keys=False, width=1000)
    data = data_schema(manifest.get("clip_dim"))
    parts = ", ".join(f"`{p}` ({r.start}-{r.stop - 1})" for p, r in KEYPOINT_PARTS.items())
    out = ["---", meta.rstrip("\n"), "---", "", "# HumanVerse", ""]
    if manifest.get("banner"):
        out += [f"> **{manifest['banner']}**", ""]
    out += [
        ("A human-centric image dataset in the HumanVerse format (HyperHuman, arXiv 2310.08579, §3.1): per "
        "image, the detected persons with COCO-WholeBody keypoints, a relative depth map, a surface-normal map, "
        "a caption and an aesthetic score. Every source row ends in exactly one of `data/` (accepted) or "
        "`rejects/` (with the reason). "
        f"Format version {manifest.get('format_version', FORMAT_VERSION)}; the full build config, models and "
        "source shards are in `humanverse.json`; the format is documented in the project's `docs/format.md`."),
        "",
        "## Loading",
        "",
        "```python",
        "import datasets",
        'ds = datasets.load_dataset("ROOT", "data", split="train")        # image, depth, normal: PIL images',
        'rejects = datasets.load_dataset("ROOT", "rejects", split="train")',
        'big = datasets.load_dataset("ROOT", "data", split="train", streaming=True)  # no local copy',
        "",
        "import humanverse                                                  # committed files only",
        'humanverse.open("ROOT").query("SELECT count(*) FROM hv WHERE num_persons = 1")',
        "```",
        "",
        "```sql",
        "-- DuckDB over the files (lists are 1-based): one person with both hands visible",
        "SELECT id, caption FROM 'ROOT/data/part-*.parquet'",
        "WHERE num_persons = 1 AND persons[1].left_hand_visible >= 11 AND persons[1].right_hand_visible >= 11",
        "  AND aesthetic >= 5;",
        "```",
        "",
        ("The configs read the files published in `data/` and `rejects/`. While a build is writing, or after a "
        "crash before the next build has recovered, a file there may not be committed yet: `humanverse.open` "
        "(and `humanverse query ROOT SQL`) read exactly the committed files."),
        "",
        ("Depth is 16-bit (PIL mode `I;16` or `I`): restore values with "
        "`depth_min + v / 65535 * (depth_max - depth_min)`. Normals decode as `n = rgb / 127.5 - 1`."),
        "",
        "## Keypoints",
        "",
        ("`persons[i].keypoints` holds the 133 COCO-WholeBody points flat: `keypoints[3k : 3k+3] = (x, y, score)`, "
        f"in stored-image pixels. Parts (index ranges): {parts}. A keypoint is **visible** when its score is at "
        f"least {VISIBLE_SCORE} (also recorded as `humanverse_visible_score` in every data file's schema "
        "metadata); per person and part, `<part>_visible` counts the visible points and `<part>_confidence` is "
        "the mean score. In `humanverse query`, `kp(persons[1], 'left_wrist')` returns one point as "
        "`{x, y, score}` and `kp_visible(persons[1], 'left_hand', 0.5)` counts a part's points at another "
        "threshold."),
        "",
        "## `data` columns",
        "",
        "| column | type | description |",
        "|---|---|---|",
        *_column_rows(list(data)),
        "",
        "## `rejects` columns",
        "",
        "| column | type | description |",
        "|---|---|---|",
        *_column_rows(list(REJECT_SCHEMA)),
        "",
        "Reject reasons:",
        "",
        "| reason | meaning |",
        "|---|---|",
        *(f"| `{k}` | {_md(v)} |" for k, v in REJECT_REASONS.items()),
    ]
    config = manifest.get("config") if isinstance(manifest.get("config"), Mapping) else {}
    filters = _filters(config)
    if filters:
        stages = config.get("stages")
        out += ["", "## Acceptance", "",
                ("Rows in `data` passed these settings of the build config (rows that did not are in `rejects` "
                 "with the reason):"), "", *filters]
        if isinstance(stages, list):
            out += ["", "Stages run: " + ", ".join(f"`{_md(str(x))}`" for x in stages) + "."]
    models = manifest.get("models") or {}
    if models:
        out += ["", "## Models", "", "| entry | model |", "|---|---|",
                *(f"| `{k}` | `{_md(str(v))}` |" for k, v in sorted(models.items()))]
    inputs = manifest.get("inputs") or ([manifest["input"]] if manifest.get("input") else [])
    if inputs:
        out += ["", "## Inputs", "", *(f"- `{_md(str(i))}`" for i in inputs)]
    return "\n".join(out) + "\n"


def write_card(root: str | os.PathLike[str] | hfs.Root, manifest: Mapping) -> None:
    """Write ``README.md`` at the dataset ``root`` for ``manifest`` (one whole object);
    :func:`humanverse.shards.write_manifest` calls it with every manifest it writes."""
    r = hfs.resolve_root(root)
    hfs.put_bytes(r, r.join(CARD), card_text(manifest).encode(), fsync=False)


__all__ = ["CARD", "DATA_FILES", "IMAGE_COLUMNS", "card_features", "card_metadata", "card_text", "write_card"]
