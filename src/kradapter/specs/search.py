"""Bounded budget searches: each answers in time that grows with the number of distinct layer shapes and at most
with the square root of a side, never with a side itself (a 1e6 x 1e6 layer answers in well under a second).

A method's total trainable count is, over a run of knob values, an affine function ``slope * k + intercept`` with
``slope >= 0`` (LoRA's ``r (d_out + d_in)`` is one run; KRAdapter's ``n (k1 + ceil(m / k1))`` is one run per value
of ``ceil(m / k1)``). The smallest total at or above a budget is then found run by run in closed form.
"""

from __future__ import annotations

import math
from collections.abc import Iterable


def ceil_div_starts(m: int, k_max: int) -> list[int]:
    """The k in [1, k_max] at which ``ceil(m / k)`` takes a new value, ascending (about 2 sqrt(m) of them)."""
    starts, k = [], 1
    while k <= k_max:
        starts.append(k)
        q = -(-m // k)
        if q == 1:
            break
        k = (m - 1) // (q - 1) + 1  # the first k with ceil(m / k) < q
    return starts


def runs(starts: Iterable[int], k_max: int) -> list[tuple[int, int]]:
    """Consecutive [lo, hi] ranges of [1, k_max] cut at the given starts (1 is always a start)."""
    cuts = sorted({1, *(s for s in starts if 1 <= s <= k_max)})
    return [(lo, (cuts[i + 1] - 1) if i + 1 < len(cuts) else k_max) for i, lo in enumerate(cuts)]


def smallest_affine(pieces: Iterable[tuple[int, int, int, int]], budget: int) -> tuple[tuple[int, int] | None, int]:
    """``((k, total), largest)``: over pieces ``(lo, hi, slope, intercept)`` taken in ascending k, the smallest k of
    the smallest total ``slope * k + intercept >= budget`` (None when no piece reaches it), and the largest total."""
    best, largest = None, 0
    for lo, hi, slope, intercept in pieces:
        top = slope * hi + intercept
        largest = max(largest, top)
        if top < budget:
            continue
        k = lo if slope * lo + intercept >= budget else max(lo, -(-(budget - intercept) // slope))
        total = slope * k + intercept
        if best is None or total < best[1]:
            best = (k, total)
    return best, largest


def smallest_monotone(total, lo: int, hi: int, budget: int) -> tuple[tuple[int, int] | None, int]:
    """Binary search of a total that does not decrease in k on [lo, hi]: ``((k, total), largest)`` as above."""
    largest = total(hi)
    if largest < budget:
        return None, largest
    while lo < hi:
        mid = (lo + hi) // 2
        if total(mid) >= budget:
            hi = mid
        else:
            lo = mid + 1
    return (lo, total(lo)), largest


def divisors(n: int) -> list[int]:
    """Every divisor of n, ascending (sqrt(n) steps)."""
    small = [d for d in range(1, math.isqrt(n) + 1) if n % d == 0]
    return sorted({*small, *(n // d for d in small)})
