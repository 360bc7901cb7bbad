"""``humanverse download URLS OUT``: download URL lists (LAION/COYO metadata) with img2dataset into
webdataset or Parquet shards the builder reads (the ``download`` extra)."""

from __future__ import annotations

import argparse
import json
import sys

from humanverse.cli.plumbing import given

NAME = "download"
HELP = "download URL lists with img2dataset (the 'download' extra)"

#: option -> ``pipelines.download.DownloadConfig`` field; an option left out keeps the config's default
FIELDS = {"output_format": "output_format", "resize_mode": "resize_mode", "image_size": "image_size",
          "min_image_size": "min_image_size", "max_aspect_ratio": "max_aspect_ratio",
          "processes": "processes_count", "threads": "thread_count", "url_col": "url_col",
          "caption_col": "caption_col", "input_format": "input_format",
          "samples_per_shard": "number_sample_per_shard", "timeout": "timeout", "retries": "retries"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("urls", metavar="URLS", help="URL list: .txt (one URL per line), .csv, .tsv, .json, .jsonl, "
                   ".parquet (LAION/COYO metadata), or a folder of them")
    p.add_argument("out", metavar="OUT", help="output folder (local path or URL); a re-run resumes it")
    p.add_argument("--output-format", help="webdataset (default) or parquet")
    p.add_argument("--resize-mode", help="'no' (default) keeps the original bytes; keep_ratio_largest shrinks the "
                   "longest side to --image-size")
    p.add_argument("--image-size", type=int)
    p.add_argument("--min-image-size", type=int)
    p.add_argument("--max-aspect-ratio", type=float)
    p.add_argument("--processes", type=int, help="download processes")
    p.add_argument("--threads", type=int, help="download threads per process")
    p.add_argument("--url-col", help="URL column (LAION: URL)")
    p.add_argument("--caption-col", help="alt-text column (LAION: TEXT)")
    p.add_argument("--no-caption", action="store_true", help="the URL list has no alt-text column")
    p.add_argument("--input-format", help="txt, csv, tsv, json, jsonl or parquet, optionally .gz "
                   "(default: from the suffix)")
    p.add_argument("--samples-per-shard", type=int)
    p.add_argument("--timeout", type=int, help="seconds per request")
    p.add_argument("--retries", type=int)


def run(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from pipelines.download import DownloadConfig, download

    fields = {FIELDS[k]: v for k, v in given(args, FIELDS).items()}
    if args.no_caption:
        fields["caption_col"] = None
    summary = download(args.urls, args.out, DownloadConfig(**fields))
    sys.stdout.write(json.dumps(asdict(summary), indent=2) + "\n")  # the result, for scripts; progress is logged
    return 0
