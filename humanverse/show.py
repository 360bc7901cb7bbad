"""Look at a HumanVerse dataset: an HTML gallery or a PNG contact sheet of annotated samples.

>>> ds = humanverse.open("out/demo/dataset")
>>> render_gallery(ds, "out/demo/gallery.html", where="num_persons = 1 AND aesthetic >= 5")
>>> render_gallery(ds, "out/demo/gallery.png", banner="tiny random models: annotations are meaningless")

Each sample shows the image with its person boxes (detector score in a label) and whole-body
skeletons (:func:`humanverse.skeleton.render_skeleton`, keypoints scoring below the threshold
hidden) overlaid, the depth map through a colour map, the normal map as stored (its PNG is the
(n + 1) / 2 visualisation) and one line of facts. Maps a skipped stage left null show a grey
"not computed" tile. Images are thumbnailed (JPEG draft decoding, so a huge image never decodes
at full size) before anything is drawn, and geometry is scaled to the thumbnail.

Rows are chosen by SQL on the ``hv`` view in two steps: first the keys (``ORDER BY source_shard,
source_index LIMIT n``, light columns only), then the heavy columns of just those rows.
"""

from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from humanverse.codecs import decode_depth
from humanverse.errors import first_line
from humanverse.schema import NUM_KEYPOINTS
from humanverse.skeleton import SkeletonStyle, render_skeleton
from humanverse.sql import where_expression

log = logging.getLogger(__name__)

#: Output extensions :func:`render_gallery` accepts.
GALLERY_EXTENSIONS = (".html", ".png")

#: Columns the gallery reads for the selected rows (never the whole table).
_ROW_COLUMNS = ("id", "source_shard", "source_index", "image", "width", "height", "orig_width",
                "orig_height", "caption", "caption_source", "aesthetic", "persons", "num_persons",
                "person_area", "outpaint", "depth", "depth_min", "depth_max", "normal")

#: Box colours, one per person (cycled).
_BOX_COLORS = [(0, 255, 0), (255, 64, 255), (0, 200, 255), (255, 200, 0), (255, 80, 80), (160, 160, 255)]


@dataclass(frozen=True)
class GalleryStyle:
    """How the gallery looks. Sizes are pixels of the output."""

    thumb_size: int = 256  # max side of every tile
    keypoint_threshold: float = 0.3  # keypoints scoring below are hidden
    png_max_samples: int = 8  # a PNG contact sheet shows at most this many rows
    png_rejects_lines: int = 8  # reject reasons listed under a PNG contact sheet
    jpeg_quality: int = 85  # HTML thumbnails
    depth_colormap: str = "magma"  # any matplotlib colour map name
    font_size: int = 13
    skeleton: SkeletonStyle = field(default_factory=lambda: SkeletonStyle(
        limb_half_width=2.0, joint_radius=2.5, hand_line_width=1.0, hand_joint_radius=1.0,
        face_radius=0.8))

    def __post_init__(self) -> None:
        if self.thumb_size < 32:
            raise ValueError(f"thumb_size must be at least 32 pixels, got {self.thumb_size!r}.")
        if not 0.0 <= self.keypoint_threshold <= 1.0:
            raise ValueError(f"keypoint_threshold must lie in [0, 1], got {self.keypoint_threshold!r}.")
        if self.png_max_samples < 1:
            raise ValueError(f"png_max_samples must be at least 1, got {self.png_max_samples!r}.")


@dataclass
class SampleView:
    """One rendered sample: three equally sized tiles and its text lines."""

    id: str
    image: Image.Image  # thumbnail with boxes and skeletons drawn on
    depth: Image.Image
    normal: Image.Image
    lines: list[str]


@dataclass
class _Selection:
    root: str
    where: str | None
    accepted: int
    rejected: int
    matched: int
    rows: list[dict]
    rejects: list[dict]
    reject_reasons: list[tuple[str, str, int]]  # (stage, reason, count), most frequent first


# ---------------------------------------------------------------------------------------------
# tiles


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow built without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def load_thumbnail(data: bytes, max_side: int) -> Image.Image:
    """Decode image bytes to an RGB image no larger than ``max_side`` on either side.

    JPEGs are decoded at a reduced scale (PIL draft mode), so memory stays bounded whatever the
    stored size.
    """
    with Image.open(io.BytesIO(data)) as img:
        img.draft("RGB", (max_side, max_side))
        rgb = img.convert("RGB")
    rgb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    return rgb


def message_tile(size: tuple[int, int], text: str, font_size: int = 13) -> Image.Image:
    """A grey tile with centred text (used for maps a skipped stage left null)."""
    tile = Image.new("RGB", size, (128, 128, 128))
    draw = ImageDraw.Draw(tile)
    font = _font(font_size)
    lines = text.split("\n")
    heights = [draw.textbbox((0, 0), ln, font=font)[3] for ln in lines]
    y = (size[1] - sum(heights) - 4 * (len(lines) - 1)) / 2
    for ln, h in zip(lines, heights):
        w = draw.textlength(ln, font=font)
        draw.text(((size[0] - w) / 2, y), ln, fill=(235, 235, 235), font=font)
        y += h + 4
    return tile


def _person_keypoints(persons: list[dict], sx: float, sy: float) -> np.ndarray:
    kps = [p["keypoints"] for p in persons if p.get("keypoints") is not None]
    if not kps:
        return np.zeros((0, NUM_KEYPOINTS, 3), np.float32)
    kp = np.asarray(kps, np.float32).reshape(-1, NUM_KEYPOINTS, 3).copy()
    kp[..., 0] *= sx
    kp[..., 1] *= sy
    return kp


def overlay_annotations(image: Image.Image, persons: list[dict], scale: tuple[float, float] = (1.0, 1.0),
                        *, threshold: float = 0.3, skeleton: SkeletonStyle = GalleryStyle().skeleton,
                        font_size: int = 12) -> Image.Image:
    """A copy of ``image`` with whole-body skeletons and person boxes drawn on.

    ``persons`` are rows of the ``persons`` column (stored-image pixels); ``scale`` = (sx, sy) maps
    stored pixels to ``image`` pixels. The skeleton is rendered on black and pasted wherever it is
    non-black; keypoints with score < ``threshold`` are hidden. The stored image is the original
    frame (the outpainting canvas is not stored), so the outpaint record is shown as text only.
    """
    sx, sy = scale
    out = image.convert("RGB")  # always a copy
    kp = _person_keypoints(persons, sx, sy)
    if len(kp):
        skel = render_skeleton(kp, out.width, out.height, threshold=threshold, style=skeleton)
        mask = Image.fromarray(((np.asarray(skel).max(axis=2) > 0) * 255).astype(np.uint8), "L")
        out.paste(skel, (0, 0), mask)
    draw = ImageDraw.Draw(out)
    font = _font(font_size)
    for i, p in enumerate(persons):
        color = _BOX_COLORS[i % len(_BOX_COLORS)]
        bx0, by0, bx1, by1 = (float(v) for v in p["bbox"])
        box = [bx0 * sx, by0 * sy, max(bx0 * sx, bx1 * sx - 1), max(by0 * sy, by1 * sy - 1)]
        draw.rectangle(box, outline=color, width=2)
        label = f"{p['score']:.2f}"
        tb = draw.textbbox((0, 0), label, font=font)
        lw, lh = tb[2] - tb[0] + 4, tb[3] - tb[1] + 4
        lx = min(max(box[0], 0), max(out.width - lw, 0))
        ly = box[1] - lh if box[1] - lh >= 0 else box[1]
        draw.rectangle([lx, ly, lx + lw, ly + lh], fill=color)
        draw.text((lx + 2 - tb[0], ly + 2 - tb[1]), label, fill=(0, 0, 0), font=font)
    return out


def _depth_lut(name: str) -> np.ndarray:
    from matplotlib import colormaps

    try:
        cmap = colormaps[name]
    except KeyError:
        raise ValueError(f"depth_colormap {name!r} is not a matplotlib colour map; try 'magma' or 'turbo'.") from None
    return (cmap(np.linspace(0.0, 1.0, 256))[:, :3] * 255).round().astype(np.uint8)


def depth_tile(png: bytes, size: tuple[int, int], lut: np.ndarray) -> Image.Image:
    """The stored depth PNG, normalised to [0, 1], through a colour map LUT and resized to ``size``."""
    d = decode_depth(png, 0.0, 1.0)  # (H, W) normalised; larger = nearer (relative inverse depth)
    idx = np.clip(np.rint(d * 255.0), 0, 255).astype(np.uint8)
    return Image.fromarray(lut[idx], "RGB").resize(size, Image.Resampling.BILINEAR)


def normal_tile(png: bytes, size: tuple[int, int]) -> Image.Image:
    """The stored normal PNG (already the (n + 1) / 2 visualisation) resized to ``size``."""
    with Image.open(io.BytesIO(png)) as img:
        return img.convert("RGB").resize(size, Image.Resampling.BILINEAR)


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def sample_lines(row: dict) -> list[str]:
    """The text under a sample: id, size, persons, aesthetic; caption; outpaint record if applied."""
    lines = [
        f"{row['id'][:12]}  {row['source_shard']}#{row['source_index']}  "
        f"{row['width']}x{row['height']} (orig {row['orig_width']}x{row['orig_height']})  "
        f"persons {row['num_persons']}  aesthetic {_fmt(row['aesthetic'], '.2f')}  "
        f"area {_fmt(row['person_area'], '.2f')}",
        f"caption ({row.get('caption_source') or 'none'}): {row['caption'] or '-'}",
    ]
    op = row.get("outpaint")
    if op and op["applied"]:
        lines.append(f"outpaint: canvas {op['canvas_width']}x{op['canvas_height']}, "
                     f"original at ({op['offset_x']}, {op['offset_y']})")
    return lines


def render_sample(row: dict, style: GalleryStyle = GalleryStyle(), lut: np.ndarray | None = None) -> SampleView:
    """Render one ``hv`` row (a dict with :data:`_ROW_COLUMNS`) to its three tiles and text."""
    lut = _depth_lut(style.depth_colormap) if lut is None else lut
    t = style.thumb_size
    try:
        thumb = load_thumbnail(row["image"], t)
    except Exception as e:  # noqa: BLE001 - one bad row must not stop a gallery
        log.warning("row %s: image does not decode (%s); showing a grey tile", row["id"][:12], e)
        thumb = None
    if thumb is None:
        w, h = row["width"], row["height"]
        k = t / max(w, h)
        size = (max(1, round(w * k)), max(1, round(h * k)))
        image = message_tile(size, "image\nundecodable", style.font_size)
    else:
        size = thumb.size
        sx, sy = size[0] / row["width"], size[1] / row["height"]
        image = overlay_annotations(thumb, row["persons"] or [], (sx, sy), threshold=style.keypoint_threshold,
                                    skeleton=style.skeleton,
                                    font_size=max(9, style.font_size - 2))
    tiles = {}
    for name, make in (("depth", lambda: depth_tile(row["depth"], size, lut)),
                       ("normal", lambda: normal_tile(row["normal"], size))):
        if row.get(name) is None:
            tiles[name] = message_tile(size, f"{name}\nnot computed", style.font_size)
            continue
        try:
            tiles[name] = make()
        except Exception as e:  # noqa: BLE001
            log.warning("row %s: %s map does not decode (%s)", row["id"][:12], name, e)
            tiles[name] = message_tile(size, f"{name}\nundecodable", style.font_size)
    return SampleView(row["id"], image, tiles["depth"], tiles["normal"], sample_lines(row))


# ---------------------------------------------------------------------------------------------
# selection


def _sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _select(ds, where: str | None, limit: int, rejects_limit: int) -> _Selection:
    import duckdb

    cond = f"({where_expression(where, '--where')})" if where and where.strip() else "TRUE"
    con = ds.connect()
    try:
        try:
            matched = int(con.sql(f"SELECT count(*) FROM hv WHERE {cond}").fetchall()[0][0])
            keys = con.sql(f"SELECT source_shard, source_index FROM hv WHERE {cond} "
                               f"ORDER BY source_shard, source_index LIMIT {int(limit)}").fetchall()
        except duckdb.Error as e:
            first = first_line(e)
            raise ValueError(f"where clause {where!r} is not valid SQL on the hv view: {first}") from None
        rows: list[dict] = []
        if keys:
            by_shard: dict[str, list[int]] = {}
            for s, i in keys:
                by_shard.setdefault(s, []).append(int(i))
            pred = " OR ".join(f"(source_shard = {_sql_str(s)} AND source_index IN ({', '.join(map(str, ix))}))"
                               for s, ix in by_shard.items())
            got = con.sql(f"SELECT {', '.join(_ROW_COLUMNS)} FROM hv WHERE {pred}").to_arrow_table().to_pylist()
            first_by_key: dict[tuple[str, int], dict] = {}
            for r in got:
                first_by_key.setdefault((r["source_shard"], r["source_index"]), r)
            rows = [first_by_key[k] for k in keys if k in first_by_key]
        accepted = int(con.sql("SELECT count(*) FROM hv").fetchall()[0][0])
        rejected = int(con.sql("SELECT count(*) FROM rejects").fetchall()[0][0])
        rejects = con.sql(
            "SELECT id, source_shard, source_index, stage, reason, detail FROM rejects "
            f"ORDER BY source_shard, source_index LIMIT {int(rejects_limit)}").to_arrow_table().to_pylist()
        reasons = [(s, r, int(n)) for s, r, n in con.sql(
            "SELECT stage, reason, count(*) AS n FROM rejects GROUP BY ALL ORDER BY n DESC, stage, reason"
        ).fetchall()]
    finally:
        con.close()
    root = getattr(ds.root, "path", str(ds.root))
    return _Selection(os.fspath(root), where, accepted, rejected, matched, rows, rejects, reasons)


# ---------------------------------------------------------------------------------------------
# HTML

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:16px;background:#fafafa;color:#222}
h1{font-size:20px;margin:0 0 6px 0} h2{font-size:17px;margin:22px 0 8px 0}
.meta{color:#444;font-size:13px;margin:2px 0}
.banner{background:#fff3a3;border:2px solid #e0b000;color:#4a3b00;padding:10px 14px;margin:10px 0;
 font-weight:600;font-size:15px;border-radius:4px}
.grid{display:flex;flex-wrap:wrap;gap:12px}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:8px;max-width:820px}
.tiles{display:flex;gap:6px;align-items:flex-start}
figure{margin:0;text-align:center} figcaption{font-size:11px;color:#666}
.line{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px;margin-top:4px;word-break:break-word}
table.rejects{border-collapse:collapse;font-size:12px}
table.rejects th,table.rejects td{border:1px solid #ddd;padding:3px 6px;text-align:left}
table.rejects td.mono{font-family:ui-monospace,Menlo,Consolas,monospace}
"""


def _data_uri(img: Image.Image, quality: int) -> str:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _html(sel: _Selection, views: list[SampleView], banner: str | None, style: GalleryStyle) -> str:
    e = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>HumanVerse gallery: {e(sel.root)}</title><style>{_CSS}</style></head><body>",
             f"<h1>HumanVerse gallery: {e(sel.root)}</h1>"]
    if banner:
        parts.append(f'<div class="banner">{e(banner)}</div>')
    parts.append(f'<p class="meta">{sel.accepted} accepted, {sel.rejected} rejected rows; '
                 f'{sel.matched} match {("<code>" + e(sel.where) + "</code>") if sel.where else "(no filter)"}; '
                 f"showing {len(views)} ordered by source_shard, source_index.</p>")
    parts.append(f'<p class="meta">Generated {_dt.datetime.now().isoformat(timespec="seconds")}. '
                 f"Boxes carry the detector score; keypoints scoring below {style.keypoint_threshold} "
                 f"are hidden; depth via the {e(style.depth_colormap)} colour map (bright = near).</p>")
    parts.append('<div class="grid">')
    q = style.jpeg_quality
    for v in views:
        parts.append(f'<div class="card" data-id="{e(v.id)}"><div class="tiles">')
        for img, cap in ((v.image, "image · boxes · skeleton"), (v.depth, "depth"), (v.normal, "normal")):
            parts.append(f'<figure><img src="{_data_uri(img, q)}" width="{img.width}" height="{img.height}" '
                         f'alt="{cap}"><figcaption>{cap}</figcaption></figure>')
        parts.append("</div>")
        parts += [f'<div class="line">{e(line)}</div>' for line in v.lines]
        parts.append("</div>")
    parts.append("</div>")
    if not views:
        parts.append('<p class="meta">No rows to show.</p>')

    parts.append(f"<h2>Rejects ({sel.rejected} total, showing {len(sel.rejects)})</h2>")
    if sel.reject_reasons:
        parts.append('<p class="meta">By reason: ' + ", ".join(
            f"{e(r)} ({e(s)}) {n}" for s, r, n in sel.reject_reasons) + "</p>")
    if sel.rejects:
        parts.append('<table class="rejects"><thead><tr><th>id</th><th>source_shard</th><th>source_index</th>'
                     "<th>stage</th><th>reason</th><th>detail</th></tr></thead><tbody>")
        for r in sel.rejects:
            parts.append(f'<tr class="reject"><td class="mono">{e(r["id"][:12])}</td><td>{e(r["source_shard"])}</td>'
                         f'<td>{r["source_index"]}</td><td>{e(r["stage"])}</td><td>{e(r["reason"])}</td>'
                         f'<td>{e(r["detail"] or "")}</td></tr>')
        parts.append("</tbody></table>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------------------------------------
# PNG contact sheet


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: float) -> list[str]:
    """Greedy word wrap to ``width`` pixels; words longer than a line are split."""
    lines: list[str] = []
    cur = ""
    for word in text.split(" "):
        cand = f"{cur} {word}" if cur else word
        if draw.textlength(cand, font=font) <= width:
            cur = cand
            continue
        if cur:
            lines.append(cur)
        while draw.textlength(word, font=font) > width and len(word) > 1:
            k = len(word)
            while k > 1 and draw.textlength(word[:k], font=font) > width:
                k -= 1
            lines.append(word[:k])
            word = word[k:]
        cur = word
    lines.append(cur)
    return lines


def _contact_sheet(sel: _Selection, views: list[SampleView], banner: str | None, style: GalleryStyle) -> Image.Image:
    t = style.thumb_size
    pad = 10
    font = _font(style.font_size)
    bold = _font(style.font_size + 3)
    line_h = style.font_size + 5
    width = 3 * t + 4 * pad
    scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    text_w = width - 2 * pad

    header: list[tuple[str, Any, tuple[int, int, int]]] = [
        (f"HumanVerse gallery: {sel.root}", bold, (0, 0, 0))]
    for ln in _wrap(scratch, f"{sel.accepted} accepted, {sel.rejected} rejected; {sel.matched} match "
                    f"{sel.where or '(no filter)'}; showing {len(views)}", font, text_w):
        header.append((ln, font, (60, 60, 60)))
    banner_lines = _wrap(scratch, banner, bold, text_w - 16) if banner else []
    blocks = []
    for v in views:
        wrapped = [w for ln in v.lines for w in _wrap(scratch, ln, font, text_w)]
        blocks.append((v, wrapped, max(v.image.height, v.depth.height, v.normal.height)))
    footer = [f"Rejects: {sel.rejected} total"]
    for s, r, n in sel.reject_reasons[:style.png_rejects_lines]:
        footer.append(f"  {r} ({s}): {n}")
    if len(sel.reject_reasons) > style.png_rejects_lines:
        footer.append(f"  ... and {len(sel.reject_reasons) - style.png_rejects_lines} more reasons")

    height = pad + (line_h + 4) + (len(header) - 1) * line_h + pad
    if banner_lines:
        height += len(banner_lines) * (line_h + 3) + 16 + pad
    height += line_h  # column titles
    for _, wrapped, th in blocks:
        height += th + 4 + len(wrapped) * line_h + pad + 2
    if not views:
        height += line_h + pad
    height += pad + len(footer) * line_h + pad

    sheet = Image.new("RGB", (width, height), (250, 250, 250))
    draw = ImageDraw.Draw(sheet)
    y = pad
    for i, (ln, f, color) in enumerate(header):
        draw.text((pad, y), ln, fill=color, font=f)
        y += line_h + (4 if i == 0 else 0)
    y += pad
    if banner_lines:
        bh = len(banner_lines) * (line_h + 3) + 16
        draw.rectangle([pad, y, width - pad, y + bh], fill=(255, 243, 163), outline=(224, 176, 0), width=2)
        yy = y + 8
        for ln in banner_lines:
            draw.text((pad + 8, yy), ln, fill=(74, 59, 0), font=bold)
            yy += line_h + 3
        y += bh + pad
    for c, title in enumerate(("image + boxes + skeleton", "depth", "normal")):
        tw = draw.textlength(title, font=font)
        draw.text((pad + c * (t + pad) + (t - tw) / 2, y), title, fill=(90, 90, 90), font=font)
    y += line_h
    for v, wrapped, th in blocks:
        for c, tile in enumerate((v.image, v.depth, v.normal)):
            x = pad + c * (t + pad) + (t - tile.width) // 2
            sheet.paste(tile, (x, y))
        y += th + 4
        for ln in wrapped:
            draw.text((pad, y), ln, fill=(20, 20, 20), font=font)
            y += line_h
        y += pad
        draw.line([(pad, y - pad // 2), (width - pad, y - pad // 2)], fill=(210, 210, 210))
        y += 2
    if not views:
        draw.text((pad, y), "No rows to show.", fill=(90, 90, 90), font=font)
        y += line_h + pad
    y += pad
    for i, ln in enumerate(footer):
        draw.text((pad, y), ln, fill=(0, 0, 0) if i == 0 else (60, 60, 60), font=font)
        y += line_h
    return sheet


# ---------------------------------------------------------------------------------------------
# entry point


def render_gallery(ds, out: "str | os.PathLike[str]", where: str | None = None, limit: int = 24,
                   rejects_limit: int = 50, banner: str | None = None,
                   style: GalleryStyle = GalleryStyle()) -> Path:
    """Render samples of ``ds`` (a :class:`humanverse.dataset.HumanVerseDataset`) to ``out``.

    ``out`` ending in ``.html``: one self-contained page (thumbnails embedded as base64 JPEG),
    a header with the dataset path, counts and ``banner`` (a yellow box), one card per row, then
    a table of up to ``rejects_limit`` rejects. ``.png``: a contact sheet of at most
    ``style.png_max_samples`` rows (image + skeleton | depth | normal, a text line under each)
    with a reject summary at the bottom. ``where`` is a SQL condition on the ``hv`` view; rows
    are taken ``ORDER BY source_shard, source_index LIMIT limit``. Returns the written path.
    """
    out = Path(out)
    ext = out.suffix.lower()
    if ext not in GALLERY_EXTENSIONS:
        raise ValueError(f"gallery output {str(out)!r} must end in one of {', '.join(GALLERY_EXTENSIONS)}.")
    if not isinstance(limit, int) or limit < 0:
        raise ValueError(f"limit must be a non-negative integer, got {limit!r}.")
    if not isinstance(rejects_limit, int) or rejects_limit < 0:
        raise ValueError(f"rejects_limit must be a non-negative integer, got {rejects_limit!r}.")
    lut = _depth_lut(style.depth_colormap)
    n = limit if ext == ".html" else min(limit, style.png_max_samples)
    sel = _select(ds, where, n, rejects_limit)
    views = [render_sample(r, style, lut) for r in sel.rows]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        if ext == ".html":
            tmp.write_text(_html(sel, views, banner, style), encoding="utf-8")
        else:
            _contact_sheet(sel, views, banner, style).save(tmp, format="PNG", optimize=False)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    log.info("wrote gallery %s: %d of %d matching rows, %d rejects listed", out, len(views), sel.matched,
             len(sel.rejects))
    return out
