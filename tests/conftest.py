"""Tests marked `gpu` (registered in pyproject.toml) need CUDA: skipped, with the reason, where it is absent.

One OpenMP thread for the whole suite, set before torch is imported: tests/test_faults.py forks children after
earlier tests ran torch, and a multi-thread OpenMP pool does not survive fork (the child hangs in its first
parallel op, seen in .ci/run on 2026-12-01). The children torchrun starts inherit it. Set OMP_NUM_THREADS yourself
to override.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU: torch.cuda.is_available() is False")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
