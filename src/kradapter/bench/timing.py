"""Interleaved wall-clock timing: every round runs each candidate once, in a rotated order, so slow spells of a
shared machine hit all candidates alike; medians of the rounds are compared as ratios.

CUDA runs kernels asynchronously, so on a GPU every timed span starts and ends with ``synchronize``: the clock then
covers the kernels a call launched, not just the launching."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable

import torch


def synchronize(device: str | torch.device | None = None) -> None:
    """Wait for the queued work of a CUDA ``device`` (or of every CUDA device in use when None); no-op on CPU."""
    if device is not None and torch.device(device).type != "cuda":
        return
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize(device)


def interleaved_times(
    candidates: dict[str, Callable[[], object]],
    repeats: int,
    warmup: int = 1,
    on_round: Callable[[], None] | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, list[float]]:
    """Seconds per call of each candidate, `repeats` samples each; the candidates run on `device`."""
    for _ in range(warmup):
        for fn in candidates.values():
            fn()
    names = list(candidates)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        shift = r % len(names)
        gc.collect()
        for name in names[shift:] + names[:shift]:
            synchronize(device)
            start = time.perf_counter()
            candidates[name]()
            synchronize(device)
            samples[name].append(time.perf_counter() - start)
        if on_round is not None:
            on_round()
    return samples


def summarize(samples: list[float]) -> dict:
    return {"median_s": statistics.median(samples), "min_s": min(samples), "samples_s": samples}
