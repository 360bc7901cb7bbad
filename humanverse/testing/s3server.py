"""A local S3 API server for tests and benchmarks: moto's standalone server on 127.0.0.1, started as
a subprocess of this Python (the moto installed beside it, not whichever ``moto_server`` is on PATH)
and stopped by PID. Nothing is sent anywhere else.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path


def moto_available() -> bool:
    """Whether ``moto[server]`` (the test extra) is installed."""
    try:
        import moto.server  # noqa: F401
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def moto_server(log_path: Path | None = None) -> Iterator[str]:
    """Run a fresh moto S3 server on a free loopback port; yields its ``host:port``.

    Test credentials are set in the environment meanwhile (Ray workers and subprocesses inherit
    them) and restored after."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    log = open(log_path, "wb") if log_path else subprocess.DEVNULL  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=log,
                            stderr=subprocess.STDOUT)
    endpoint = f"127.0.0.1:{port}"
    try:
        deadline = time.time() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://{endpoint}/", timeout=1)
                break
            except OSError:
                if time.time() > deadline or proc.poll() is not None:
                    raise RuntimeError("the moto S3 server did not start") from None
                time.sleep(0.2)
        yield endpoint
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        if log_path:
            log.close()
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def s3_filesystem(endpoint: str):
    """A pyarrow S3 filesystem on the server at ``endpoint`` (buckets are created on demand)."""
    import pyarrow.fs as pafs

    return pafs.S3FileSystem(endpoint_override=endpoint, scheme="http", region="us-east-1",
                             allow_bucket_creation=True)


def s3_uri(endpoint: str, bucket: str, path: str) -> str:
    """The dataset URI of ``bucket/path`` on the server at ``endpoint``."""
    return f"s3://{bucket}/{path}?endpoint_override={endpoint}&scheme=http&region=us-east-1"


__all__ = ["moto_available", "moto_server", "s3_filesystem", "s3_uri"]
