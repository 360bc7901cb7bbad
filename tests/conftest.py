"""Test environment: offline, deterministic, quiet."""

import os

for _k, _v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "YOLO_OFFLINE": "1",
               "NO_ALBUMENTATIONS_UPDATE": "1", "RAY_USAGE_STATS_ENABLED": "0",
               "TOKENIZERS_PARALLELISM": "false",
               # one intra-op thread per process: on 2 cores, two torch threads competing with other
               # processes made tiny models 100x slower (measured); Ray workers and subprocesses inherit it
               "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}.items():
    os.environ.setdefault(_k, _v)


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory):
    """The whole tiny zoo, built once per session; ``HUMANVERSE_TINY_ZOO`` points at it so that
    ``resolve(name, "tiny")`` (also in Ray workers started by the tests) finds it."""
    from humanverse import zoo
    from humanverse.cli.zoo import tiny_builders

    root = tmp_path_factory.mktemp("tiny-zoo")
    zoo.make_tiny(root, builders=tiny_builders())
    old = os.environ.get("HUMANVERSE_TINY_ZOO")
    os.environ["HUMANVERSE_TINY_ZOO"] = str(root)
    yield root
    if old is None:
        os.environ.pop("HUMANVERSE_TINY_ZOO", None)
    else:
        os.environ["HUMANVERSE_TINY_ZOO"] = old
