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

from helpers import tiny_zoo_env  # noqa: E402


@pytest.fixture(scope="session")
def tiny_zoo(tmp_path_factory):
    """The whole tiny zoo, built once per session."""
    from humanverse import zoo
    from humanverse.cli.zoo import tiny_builders

    root = tmp_path_factory.mktemp("tiny-zoo")
    zoo.make_tiny(root, builders=tiny_builders())
    with tiny_zoo_env(root):
        yield root


@pytest.fixture
def one_torch_thread():
    """Small tensors on a loaded 2-core machine: intra-op threads only contend (a tiny VAE encode
    took ~1 s with 2 threads and ~3 ms with 1)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
