"""Interleaved wall-clock timing: every round runs each candidate once, in a rotated order, so slow spells of a
shared machine hit all candidates alike; medians of the rounds are compared as ratios."""

from __future__ import annotations

import gc
import statistics
import time
from typing import Callable, Optional


def interleaved_times(
    candidates: dict[str, Callable[[], object]],
    repeats: int,
    warmup: int = 1,
    on_round: Optional[Callable[[], None]] = None,
) -> dict[str, list[float]]:
    """Seconds per call of each candidate, `repeats` samples each."""
    for _ in range(warmup):
        for fn in candidates.values():
            fn()
    names = list(candidates)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        shift = r % len(names)
        gc.collect()
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            candidates[name]()
            samples[name].append(time.perf_counter() - start)
        if on_round is not None:
            on_round()
    return samples


def summarize(samples: list[float]) -> dict:
    return {"median_s": statistics.median(samples), "min_s": min(samples), "samples_s": samples}
