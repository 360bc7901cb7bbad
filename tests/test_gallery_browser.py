"""The gallery of ``humanverse show`` in a real browser: headless Chromium (Debian's ``chromium``
package) opens ``gallery.html``, and it renders, every image loads and the console stays empty.

A check script is put at the top of a copy of the page: it records script errors, failed resource
loads and ``console.error`` calls, and once the page has loaded it writes what it found (images,
broken images, errors, page size) into the DOM, which ``--dump-dom`` returns. Chromium's own log
(``--enable-logging=stderr``) lists every console message besides.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

import humanverse
from humanverse.schema import REJECT_SCHEMA
from humanverse.testing.synthetic import synthetic_table

pytestmark = pytest.mark.slow

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser")

CHECK = """<script>
window.__hv = {errors: []};
addEventListener("error", e => __hv.errors.push(e.message ? "script: " + e.message
    : "resource: " + ((e.target && (e.target.src || e.target.href)) || "?").slice(-80)), true);
const __hvErr = console.error;
console.error = (...a) => { __hv.errors.push("console.error: " + a.join(" ")); __hvErr.apply(console, a); };
addEventListener("load", () => {
  const imgs = [...document.images];
  const r = {images: imgs.length, errors: __hv.errors, title: document.title,
             broken: imgs.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src.slice(-60)),
             text: document.body.innerText.length, width: document.documentElement.scrollWidth,
             height: document.documentElement.scrollHeight};
  const pre = document.createElement("pre");
  pre.id = "hv-check";
  pre.textContent = JSON.stringify(r);
  document.body.appendChild(pre);
});
</script>"""


def open_in_chromium(page: Path, tmp: Path) -> tuple[dict, list[str]]:
    """Load ``page`` (a copy with :data:`CHECK` at its top) in headless Chromium: the check's result
    and the console messages Chromium logged."""
    html = page.read_text()
    checked = tmp / f"checked-{page.name}"
    checked.write_text(re.sub(r"(<head[^>]*>)", lambda m: m.group(1) + CHECK, html, count=1)
                       if "<head" in html else CHECK + html)
    out = subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
                          "--v=0", f"--user-data-dir={tmp / 'profile'}", "--virtual-time-budget=5000",
                          "--window-size=1280,1024", "--dump-dom", checked.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    m = re.search(r'<pre id="hv-check">(.*?)</pre>', out.stdout, flags=re.DOTALL)
    assert m, "the check script did not run (the page did not finish loading)"
    result = json.loads(m.group(1).replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">")
                        .replace("&amp;", "&"))
    console = [ln for ln in out.stderr.splitlines() if ":CONSOLE" in ln]
    return result, console


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser") / "ds"
    sink = humanverse.ShardSink.open(root, manifest={"banner": "tiny random models: meaningless"})
    sink.write(synthetic_table(6, shard="s0", seed=1), "data", "s0")
    rejects = [{"id": f"{i:064x}", "source_url": None, "source_key": f"k{i}", "source_shard": "s0",
                "source_index": 6 + i,
                "orig_width": 120, "orig_height": 90, "stage": "detect", "reason": "no_person", "detail": "none found"}
               for i in range(2)]
    sink.write(pa.Table.from_pylist(rejects, schema=REJECT_SCHEMA), "rejects", "s0")
    sink.close()
    return root


@pytest.mark.skipif(BROWSER is None, reason="Chromium is not installed (Debian: apt-get install chromium)")
def test_gallery_renders_in_chromium(dataset, tmp_path):
    out = tmp_path / "gallery.html"
    proc = subprocess.run([sys.executable, "-m", "humanverse.cli", "show", str(dataset), "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result, console = open_in_chromium(out, tmp_path)
    assert console == [], console
    assert result["errors"] == [] and result["broken"] == [], result
    # six rows x (image, depth, normal) at least, all decoded by the browser
    assert result["images"] >= 18, result
    assert result["text"] > 100 and result["width"] > 0 and result["height"] > 300, result


@pytest.mark.skipif(BROWSER is None, reason="Chromium is not installed (Debian: apt-get install chromium)")
def test_the_check_catches_a_broken_page(tmp_path):
    """The check itself: a missing image, a script error and a console error are all reported."""
    page = tmp_path / "bad.html"
    page.write_text('<html><head><title>t</title></head><body><img src="missing.png"><p>text</p>'
                    '<script>console.error("boom"); undefinedFunction();</script></body></html>')
    result, console = open_in_chromium(page, tmp_path)
    assert len(result["broken"]) == 1 and any("missing.png" in e for e in result["errors"])
    assert any("boom" in e for e in result["errors"]) and any("undefinedFunction" in e for e in result["errors"])
    assert any("boom" in ln for ln in console)
