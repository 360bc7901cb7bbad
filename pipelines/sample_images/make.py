"""Regenerate the demo's input images (committed next to this file): synthetic, licence-clean.

36 drawn "mannequin" scenes (1-3 figures, several sizes) in two sub-folders with alt-text sidecars,
plus a few inputs that must end as rejects or be normalised: a corrupt file, a truncated JPEG, a
too-small image, a CMYK JPEG, an EXIF-rotated JPEG and a palette PNG with transparency.

    python pipelines/sample_images/make.py
"""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from humanverse.testing.synthetic import make_sample

HERE = Path(__file__).parent
SIZES = [(256, 320), (320, 256), (288, 384), (384, 288)]


def _jpeg(img: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85, **kw)
    return buf.getvalue()


def main() -> None:
    for i in range(36):
        sub = HERE / ("people-a" if i % 2 == 0 else "people-b")
        sub.mkdir(exist_ok=True)
        w, h = SIZES[i % len(SIZES)]
        s = make_sample(w, h, num_persons=1 + i % 3, seed=1000 + i)
        (sub / f"scene-{i:03d}.jpg").write_bytes(_jpeg(s.image))
        (sub / f"scene-{i:03d}.txt").write_text(f"synthetic scene {i} with {1 + i % 3} figure(s)\n")
    odd = HERE / "odd"
    odd.mkdir(exist_ok=True)
    base = make_sample(256, 320, num_persons=1, seed=7).image
    (odd / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    (odd / "truncated.jpg").write_bytes(_jpeg(base)[:1500])
    (odd / "too-small.jpg").write_bytes(_jpeg(base.resize((120, 150))))
    (odd / "cmyk.jpg").write_bytes(_jpeg(base.convert("CMYK")))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: viewers rotate it 90 degrees clockwise
    (odd / "exif-rotated.jpg").write_bytes(_jpeg(base.transpose(Image.Transpose.ROTATE_90), exif=exif))
    pal = base.convert("RGBA").quantize(64)
    pal.info["transparency"] = 0
    pal.save(odd / "palette.png")


if __name__ == "__main__":
    main()
