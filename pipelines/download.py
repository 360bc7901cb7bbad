"""``humanverse download URLS OUT``: fetch a URL list into source shards with img2dataset (HyperHuman §4's
LAION/COYO web images).

The output (img2dataset's ``webdataset`` or ``parquet`` layout) is what :func:`pipelines.readers.discover_shards`
reads: every URL becomes a source row, failed downloads included (with ``source_error``), so the
build's reject funnel accounts for them.

img2dataset is an optional extra (``pip install -e '.[download]'``). It runs in a child Python process
(``python -m pipelines.download --img2dataset-child``, in its own session), for four reasons: its
``spawn`` worker pool re-imports the caller's ``__main__``, which loops forever in a script without an
``if __name__ == "__main__"`` guard; it installs a SIGINT handler and prints to stdout; an error in its
driver can leave its logger and pool processes behind; and a child can be stopped as a whole (its
process group) on Ctrl-C. Its output is forwarded to this module's logger at INFO level.

Defaults keep the original bytes (``resize_mode="no"``: no decode, no re-encode, the sha256 is of the
served bytes, which the dataset's ``id`` is). In that mode img2dataset checks neither
``min_image_size`` nor ``max_aspect_ratio`` (it never decodes): the build's resolution stage does.
With ``resize_mode="keep_ratio_largest"`` images whose longest side exceeds ``image_size`` are shrunk
(never enlarged) and re-encoded as ``encode_format``, and the size filters apply.
A re-run with the same ``OUT`` resumes: finished shards (those with ``NNNNN_stats.json``) are kept.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import posixpath
import re
import signal
import subprocess
import sys
import threading
from collections import Counter, deque
from dataclasses import dataclass, field

_CHILD_FLAG = "HUMANVERSE_IMG2DATASET_CHILD"
if __name__ in ("__main__", "__mp_main__") and os.environ.get(_CHILD_FLAG) == "1":
    # img2dataset's processes (the child below and its spawned workers, which re-run this module as
    # __mp_main__). webdataset imports torch only for optional DataLoader shims and img2dataset imports
    # ray only for its ray distributor; both fall back when missing. Blocking them saves ~2-4 s and
    # hundreds of MB per process.
    for _heavy in ("torch", "ray"):
        sys.modules.setdefault(_heavy, None)  # type: ignore[assignment]

import pyarrow.csv as pacsv  # noqa: E402
import pyarrow.fs as pafs  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402

from humanverse.fs import Root, absolute, resolve_root  # noqa: E402

log = logging.getLogger(__name__)

MISSING_EXTRA = "humanverse download needs the 'download' extra: pip install -e '.[download]'"
OUTPUT_FORMATS = ("webdataset", "parquet")
RESIZE_MODES = ("no", "keep_ratio_largest")
#: URL-list formats img2dataset reads, by file suffix (longest suffixes first).
INPUT_FORMATS = ("txt.gz", "csv.gz", "tsv.gz", "json.gz", "jsonl.gz", "txt", "csv", "tsv", "json", "jsonl", "parquet")
ENCODE_FORMATS = ("jpg", "png", "webp")
HASHES = ("md5", "sha256", "sha512")
INCREMENTAL_MODES = ("incremental", "overwrite", "extend")

_STATS_RE = re.compile(r"^(\d+)_stats\.json$")
_SHARD_RE = re.compile(r"^(\d+)\.(tar|parquet)$")
_EXCEPTION_RE = re.compile(r"^[\w.]*(Error|Exception|Interrupt)\b")
#: ``python -m pipelines.download --img2dataset-child KWARGS_JSON`` runs img2dataset (see _run_img2dataset).
_CHILD_ARG = "--img2dataset-child"
#: Environment of the child: no update checks, no wandb, unbuffered output for live logs.
_CHILD_ENV = {"NO_ALBUMENTATIONS_UPDATE": "1", "WANDB_MODE": "disabled", "WANDB_SILENT": "true",
              "WANDB_DISABLED": "true", "PYTHONUNBUFFERED": "1", _CHILD_FLAG: "1"}


@dataclass
class DownloadConfig:
    """What to download and how; validated by :meth:`validate` before any work starts."""

    url_col: str = "url"
    #: The alt-text column of a csv/tsv/json/parquet URL list (None: no captions); unused for ``txt`` lists.
    caption_col: str | None = "caption"
    #: One of :data:`INPUT_FORMATS`; None: from the URL list's suffix (or the files of a URL-list folder).
    input_format: str | None = None
    output_format: str = "webdataset"
    #: ``no`` keeps the original bytes; ``keep_ratio_largest`` shrinks the longest side to ``image_size``.
    resize_mode: str = "no"
    image_size: int = 1024
    min_image_size: int = 200
    max_aspect_ratio: float = math.inf
    encode_format: str = "jpg"
    #: Download processes (each runs ``thread_count`` threads): half the cores, 1 to 4.
    processes_count: int = field(default_factory=lambda: max(1, min(4, (os.cpu_count() or 2) // 2)))
    thread_count: int = 16
    timeout: int = 10
    retries: int = 1
    number_sample_per_shard: int = 10000
    compute_hash: str | None = "sha256"
    incremental_mode: str = "incremental"
    #: Identifies the crawler in the User-Agent, so sites can opt out; img2dataset also honours
    #: ``X-Robots-Tag: noai``-style headers by default.
    user_agent_token: str | None = "humanverse"

    @property
    def disable_all_reencoding(self) -> bool:
        """Keep the served bytes as they are (no decode, no re-encode) when nothing is resized."""
        return self.resize_mode == "no"

    def validate(self) -> None:
        """Raise ``ValueError`` (one sentence naming the bad value) for an invalid setting."""
        _one_of("output_format", self.output_format, OUTPUT_FORMATS)
        _one_of("resize_mode", self.resize_mode, RESIZE_MODES)
        _one_of("encode_format", self.encode_format, ENCODE_FORMATS)
        _one_of("incremental_mode", self.incremental_mode, INCREMENTAL_MODES)
        if self.input_format is not None:
            _one_of("input_format", self.input_format, INPUT_FORMATS)
        if self.compute_hash is not None:
            _one_of("compute_hash", self.compute_hash, HASHES)
        for name in ("image_size", "processes_count", "thread_count", "timeout", "number_sample_per_shard"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}.")
        for name in ("min_image_size", "retries"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be at least 0, got {getattr(self, name)}.")
        if not self.max_aspect_ratio >= 1:
            raise ValueError(f"max_aspect_ratio must be at least 1, got {self.max_aspect_ratio}.")
        if not self.url_col:
            raise ValueError("url_col must name the URL column, got an empty string.")

    def img2dataset_kwargs(self, urls: str, out: str, input_format: str) -> dict:
        """The keyword arguments of ``img2dataset.download`` for this config."""
        return {
            "url_list": urls,
            "output_folder": out,
            "input_format": input_format,
            "url_col": self.url_col,
            "caption_col": None if input_format.startswith("txt") else self.caption_col,
            "output_format": self.output_format,
            "resize_mode": self.resize_mode,
            "image_size": self.image_size,
            "resize_only_if_bigger": True,
            "min_image_size": self.min_image_size,
            "max_aspect_ratio": self.max_aspect_ratio,
            "encode_format": self.encode_format,
            "disable_all_reencoding": self.disable_all_reencoding,
            "processes_count": self.processes_count,
            "thread_count": self.thread_count,
            "timeout": self.timeout,
            "retries": self.retries,
            "number_sample_per_shard": self.number_sample_per_shard,
            "compute_hash": self.compute_hash,
            "extract_exif": False,
            "enable_wandb": False,
            "incremental_mode": self.incremental_mode,
            "distributor": "multiprocessing",
            "user_agent_token": self.user_agent_token,
        }


@dataclass(frozen=True)
class DownloadSummary:
    """Counts over every finished shard of an output folder (from img2dataset's ``NNNNN_stats.json``)."""

    out: str
    shards: int
    count: int
    successes: int
    failed_to_download: int
    failed_to_resize: int
    #: Error message -> number of URLs (img2dataset's ``status_dict`` without ``success``).
    errors: dict[str, int] = field(default_factory=dict)
    #: Shard files without their ``_stats.json`` (cut off or failed: a re-run completes them).
    unfinished_shards: tuple[str, ...] = ()

    @property
    def failed(self) -> int:
        return self.failed_to_download + self.failed_to_resize


def download(urls: str, out: str, config: DownloadConfig | None = None) -> DownloadSummary:
    """Download the URL list ``urls`` (a file or folder, local or a URL) into ``out`` with img2dataset.

    Raises ``ModuleNotFoundError`` without the ``download`` extra, ``ValueError`` for a bad config or
    URL list, and ``RuntimeError`` when img2dataset itself fails.
    """
    config = config or DownloadConfig()
    config.validate()
    require_img2dataset()
    input_format = _check_url_list(urls, config)
    _check_out(out, config)
    if config.disable_all_reencoding and (config.min_image_size > 0 or math.isfinite(config.max_aspect_ratio)):
        log.info("keeping original bytes: img2dataset does not decode images, so min_image_size and "
                 "max_aspect_ratio are left to the build's resolution stage")
    kwargs = config.img2dataset_kwargs(absolute(urls), absolute(out), input_format)
    log.info("downloading %s into %s (%s, %d processes x %d threads)", urls, out, config.output_format,
             config.processes_count, config.thread_count)
    _run_img2dataset(kwargs)
    summary = summarize(out)
    log.info("downloaded %d of %d URLs into %d shards of %s (%d failed to download, %d failed to resize)",
             summary.successes, summary.count, summary.shards, out, summary.failed_to_download,
             summary.failed_to_resize)
    if summary.unfinished_shards:
        log.warning("%d shards of %s did not finish (%s); re-run the same command to complete them",
                    len(summary.unfinished_shards), out, ", ".join(summary.unfinished_shards[:5]))
    return summary


def require_img2dataset() -> None:
    """Raise the one clear error when the ``download`` extra is not installed."""
    try:
        found = importlib.util.find_spec("img2dataset") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise ModuleNotFoundError(MISSING_EXTRA)


def summarize(out: str) -> DownloadSummary:
    """Add up the ``NNNNN_stats.json`` files of an img2dataset output folder."""
    root = resolve_root(out)
    infos = root.fs.get_file_info(pafs.FileSelector(root.path, allow_not_found=True))
    names = sorted(posixpath.basename(i.path) for i in infos if i.type == pafs.FileType.File)
    totals: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    done = set()
    for name in names:
        m = _STATS_RE.match(name)
        if not m:
            continue
        done.add(m.group(1))
        with root.fs.open_input_stream(root.join(name)) as f:
            stats = json.loads(f.read())
        for k in ("count", "successes", "failed_to_download", "failed_to_resize"):
            totals[k] += int(stats.get(k, 0))
        errors.update({k: int(v) for k, v in (stats.get("status_dict") or {}).items() if k != "success"})
    unfinished = tuple(n for n in names if (m := _SHARD_RE.match(n)) and m.group(1) not in done)
    return DownloadSummary(out=out, shards=len(done), count=totals["count"], successes=totals["successes"],
                           failed_to_download=totals["failed_to_download"],
                           failed_to_resize=totals["failed_to_resize"], errors=dict(errors),
                           unfinished_shards=unfinished)


# -- the URL list ---------------------------------------------------------------------------------


def detect_input_format(urls: str) -> str:
    """The img2dataset input format of a URL-list file (by suffix) or folder (by the suffix its files share)."""
    root = resolve_root(urls)
    info = root.fs.get_file_info(root.path)
    if info.type == pafs.FileType.NotFound:
        raise ValueError(f"URL list {urls} does not exist.")
    if info.type == pafs.FileType.File:
        fmt = _format_of(root.path)
        if fmt is None:
            raise ValueError(f"cannot tell the format of the URL list {urls} from its suffix; "
                             f"name it *.{{{','.join(INPUT_FORMATS)}}} or pass --input-format.")
        return fmt
    found = {_format_of(i.path) for i in root.fs.get_file_info(pafs.FileSelector(root.path))
             if i.type == pafs.FileType.File and not posixpath.basename(i.path).startswith((".", "_"))}
    found.discard(None)
    if len(found) != 1:
        raise ValueError(f"the URL-list folder {urls} holds {sorted(found) or 'no'} URL-list formats, "
                         "not exactly one; pass --input-format.")
    return found.pop()


def _format_of(path: str) -> str | None:
    base = posixpath.basename(path).lower()
    return next((f for f in INPUT_FORMATS if base.endswith("." + f)), None)


def _check_url_list(urls: str, config: DownloadConfig) -> str:
    """Validate the URL list against ``config`` (columns of csv/tsv/parquet files); return its format."""
    root = resolve_root(urls)
    info = root.fs.get_file_info(root.path)
    if info.type == pafs.FileType.NotFound:
        raise ValueError(f"URL list {urls} does not exist.")
    fmt = config.input_format or detect_input_format(urls)
    if fmt.removesuffix(".gz") not in ("csv", "tsv", "jsonl", "parquet"):
        return fmt  # txt has no columns; json lists (one document) are checked by img2dataset itself
    if info.type == pafs.FileType.File:
        first = root.path
    else:
        files = sorted(i.path for i in root.fs.get_file_info(pafs.FileSelector(root.path))
                       if i.type == pafs.FileType.File and i.path.endswith("." + fmt))
        if not files:
            raise ValueError(f"the URL-list folder {urls} has no .{fmt} files.")
        first = files[0]
    columns = _columns(root, first, fmt)
    for what, col in (("URL", config.url_col), ("caption", config.caption_col)):
        if columns is not None and col is not None and col not in columns:
            flag = "--url-col" if what == "URL" else "--caption-col NAME or --no-caption"
            raise ValueError(f"the URL list {first} has no {what} column {col!r}; its columns are {columns}: "
                             f"pass {flag}.")
    return fmt


def _columns(root: Root, path: str, fmt: str) -> list[str] | None:
    """The column names of a URL-list file (None where they cannot be told cheaply)."""
    base = fmt.removesuffix(".gz")
    if base == "parquet":
        with root.fs.open_input_file(path) as f:
            return pq.ParquetFile(f).schema_arrow.names
    with root.fs.open_input_stream(path, compression="gzip" if fmt.endswith(".gz") else None) as f:
        if base in ("csv", "tsv"):
            parse = pacsv.ParseOptions(delimiter="\t" if base == "tsv" else ",")
            return pacsv.open_csv(f, parse_options=parse).schema.names
        first = f.read(1 << 20).split(b"\n", 1)[0]  # jsonl: the first record's keys
    try:
        record = json.loads(first)
    except ValueError:
        return None
    return list(record) if isinstance(record, dict) else None


def _check_out(out: str, config: DownloadConfig) -> None:
    """Refuse an output folder that img2dataset would crash on or mix formats in when resuming."""
    root = resolve_root(out)
    listing = root.fs.get_file_info(pafs.FileSelector(root.path, allow_not_found=True))
    names = [posixpath.basename(i.path) for i in listing if i.type == pafs.FileType.File]
    if config.incremental_mode == "overwrite":
        return
    foreign = [n for n in names if n.endswith(".json") and not _STATS_RE.match(n)]
    if foreign:
        raise ValueError(f"the output folder {out} holds {foreign[0]}, which img2dataset cannot resume next to "
                         "(it reads every *.json there as NNNNN_stats.json); use an empty or img2dataset output "
                         "folder.")
    tars = {n[:-4] for n in names if _SHARD_RE.match(n) and n.endswith(".tar")}
    parquets = {n[:-8] for n in names if _SHARD_RE.match(n) and n.endswith(".parquet")}
    earlier = "webdataset" if tars else "parquet" if parquets else None
    if earlier is not None and earlier != config.output_format:
        raise ValueError(f"the output folder {out} holds {earlier} shards from an earlier download, so it cannot "
                         f"resume as {config.output_format}; use --output-format {earlier} or another folder.")


# -- the child process ----------------------------------------------------------------------------


def _run_img2dataset(kwargs: dict) -> None:
    """Run ``img2dataset.download(**kwargs)`` in a child process, forwarding its output to the log."""
    # Run as a module (not ``-c``) so img2dataset's spawned workers re-import it and get the same setup.
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    pythonpath = os.pathsep.join(p for p in (package_parent, os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, **_CHILD_ENV, "PYTHONPATH": pythonpath}
    cmd = [sys.executable, "-m", "pipelines.download", _CHILD_ARG, json.dumps(kwargs)]
    tail: deque[str] = deque(maxlen=40)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
                            errors="replace", start_new_session=True)
    pump = threading.Thread(target=_pump, args=(proc, tail), daemon=True)
    pump.start()
    try:
        rc = proc.wait()
    except BaseException:  # Ctrl-C or any other interruption: stop the whole img2dataset process group
        _stop(proc)
        raise
    finally:
        pump.join(timeout=10)
    if rc != 0:
        errors = [line for line in tail if _EXCEPTION_RE.match(line)]
        last = errors[-1] if errors else " | ".join(tail)[-1000:]
        raise RuntimeError(f"img2dataset failed with exit status {rc}: {last}")


def _pump(proc: subprocess.Popen, tail: deque[str]) -> None:
    assert proc.stdout is not None
    for raw in proc.stdout:
        for line in raw.rstrip("\n").split("\r"):  # tqdm redraws with carriage returns
            line = line.strip()
            if line:
                tail.append(line)
                log.info("img2dataset: %s", line)


def _stop(proc: subprocess.Popen) -> None:
    """Terminate the child's process group (its pool workers and logger process), then kill it."""
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue





def _one_of(name: str, value: object, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{name} {value!r} is not one of {list(allowed)}.")


def _child_main(kwargs_json: str) -> None:
    """The img2dataset child process: its own ``download`` with the JSON keyword arguments."""
    import multiprocessing

    from img2dataset import download as img2dataset_download

    try:
        img2dataset_download(**json.loads(kwargs_json))
    except BaseException:
        # img2dataset's logger process only stops when its download returns: stop it (and any pool
        # worker) so this process can exit and report the error instead of waiting on them forever.
        for p in multiprocessing.active_children():
            p.terminate()
        raise


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == _CHILD_ARG:
        _child_main(sys.argv[2])
        sys.exit(0)
    sys.exit("usage: humanverse download URLS OUT [...] (this module runs img2dataset's child process only)")
