"""Specs of the comparators PEFT ships: LoRA, DoRA, RandLoRA and KronA (PEFT's LoKr with full Kronecker factors).
Counts follow PEFT's own shape logic (its LoKr ``factorization``, RandLoRA's basis count); tests check them on real
layers."""

from __future__ import annotations

import math
from collections import Counter
from functools import lru_cache

from .base import MethodSpec, OutOfReach, as_matrix, positive_int
from .search import ceil_div_starts, divisors, runs, smallest_affine


class LoRASpec(MethodSpec):
    name = "lora"
    summary = "PEFT LoRA: (lora_alpha / r) B A, r (d_out + d_in) parameters"
    default_lr = 3e-3  # kradapter/learning_rates.py
    hparams = {"r": 8}
    knob = "r"
    flattened = True  # LoRA's conv factors are in*k and out wide, as the flattened matrix, when groups == 1
    multihead_attention = True

    def count(self, d_out, d_in, r=8):
        return positive_int(r, "r") * (d_out + d_in)

    def search(self, shapes: Counter, budget: int, fixed: dict) -> tuple[dict, int]:
        # total(r) = r sum (d_out + d_in) + extra: closed form
        slope = sum(c * (o + i) for (o, i), c in shapes.items())
        best, largest = smallest_affine([(1, max(max(s) for s in shapes), slope, self._extra(shapes))], budget)
        if best is None:
            raise OutOfReach(largest, fixed)
        return {**fixed, "r": best[0]}, best[1]

    def _extra(self, shapes: Counter) -> int:
        return 0

    def config_class(self):
        from peft import LoraConfig

        return LoraConfig

    def config(self, targets, hparams, conv1d):
        from peft import LoraConfig

        hparams = {"fan_in_fan_out": bool(conv1d), **hparams}
        return LoraConfig(target_modules=list(targets), use_dora=self.name == "dora", **hparams)

    def matches_config(self, config) -> bool:
        return super().matches_config(config) and bool(config.use_dora) == (self.name == "dora")

    def unit_scale(self, config):
        return {"lora_alpha": config.r, "use_rslora": False}


class DoRASpec(LoRASpec):
    name = "dora"
    summary = "PEFT DoRA: LoRA's direction with a learned magnitude per output, r (d_out + d_in) + d_out parameters"
    default_lr = 1e-3  # no grid run: a guess (kradapter/learning_rates.py)
    multihead_attention = False

    def count(self, d_out, d_in, r=8):  # LoRA plus DoRA's magnitude vector, one entry per output feature
        return positive_int(r, "r") * (d_out + d_in) + d_out

    def _extra(self, shapes: Counter) -> int:
        return sum(c * o for (o, _), c in shapes.items())

    def delta(self, layer, adapter):
        # DoRA's update depends on W0 (magnitude times the normalised direction of W0 + B A): PEFT's own merged
        # weight minus W0, its weight norm detached as in its forward
        base = layer.get_base_layer().weight
        return as_matrix(layer, layer.lora_variant[adapter].merge_safe(layer, adapter, base) - base)


class RandLoRASpec(MethodSpec):
    name = "randlora"
    summary = "PEFT RandLoRA: frozen random bases, ceil(n / r) (r + n) trainable parameters"
    default_lr = 3e-4  # kradapter/learning_rates.py
    hparams = {"r": 32}
    knob = "r"

    def count(self, d_out, d_in, r=32):  # lambda (r x bases) and gamma (bases x n); the random bases are frozen
        r = positive_int(r, "r")
        n = min(d_out, d_in)
        return math.ceil(n / r) * (r + n)

    def search(self, shapes: Counter, budget: int, fixed: dict) -> tuple[dict, int]:
        # total(r) = sum q (r + n), q = ceil(n / r): affine in r wherever every q is constant
        r_max = max(min(s) for s in shapes)
        ns = Counter()
        for s, c in shapes.items():
            ns[min(s)] += c
        pieces = []
        for lo, hi in runs({k for n in ns for k in ceil_div_starts(n, r_max)}, r_max):
            qs = [(-(-n // lo), n, c) for n, c in ns.items()]
            pieces.append((lo, hi, sum(c * q for q, _, c in qs), sum(c * q * n for q, n, c in qs)))
        best, largest = smallest_affine(pieces, budget)
        if best is None:
            raise OutOfReach(largest, fixed)
        return {**fixed, "r": best[0]}, best[1]

    def config_class(self):
        from peft import RandLoraConfig

        return RandLoraConfig

    def config(self, targets, hparams, conv1d):
        from peft import RandLoraConfig

        return RandLoraConfig(target_modules=list(targets), **{"fan_in_fan_out": bool(conv1d), **hparams})

    def unit_scale(self, config):
        return {"randlora_alpha": config.r}


@lru_cache(maxsize=256)
def _divisors(dim: int) -> tuple[int, ...]:
    return tuple(divisors(dim))


def lokr_factorization(dim: int, factor: int = -1) -> tuple[int, int]:
    """What PEFT's LoKr ``factorization(dim, factor)`` returns, walking the divisors of ``dim`` instead of every
    integer (PEFT's loop takes ~dim steps on a prime side; tests check the two agree).

    PEFT's rule: a factor that divides dim gives (factor, dim / factor) as is; otherwise m climbs through the
    divisors of dim, from 1, while m < dim / m and the next divisor is <= factor (any, for factor -1), and the pair
    is returned smaller side first."""
    if factor > 0 and dim % factor == 0:
        return factor, dim // factor
    if factor == -1:
        factor = dim
    m = 1
    for d in _divisors(dim)[1:]:
        if m >= dim // m or d > factor:
            break
        m = d
    n = dim // m
    return (m, n) if m <= n else (n, m)


def krona_factors(d_out: int, d_in: int, decompose_factor: int = -1) -> tuple[tuple[int, int], tuple[int, int]]:
    """Shapes (w1, w2) PEFT's LoKr builds for a Linear: w1 (out_l x in_m) ⊗ w2 (out_k x in_n)."""
    out_l, out_k = lokr_factorization(d_out, decompose_factor)
    in_m, in_n = lokr_factorization(d_in, decompose_factor)
    return (out_l, in_m), (out_k, in_n)


def krona_full_r(shapes, decompose_factor: int) -> int:
    """One LoKr r for every layer, large enough that w2 stays a full matrix on each (KronA: no low-rank factors)."""
    return max(max(w1 + w2) for w1, w2 in (krona_factors(o, i, decompose_factor) for o, i in shapes))


class KronASpec(MethodSpec):
    name = "krona"
    summary = "PEFT LoKr as KronA: both Kronecker factors full matrices"
    hparams = {"decompose_factor": -1, "r": None, "decompose_both": False}  # r None: both factors full
    knob = "decompose_factor"
    conv1d = False
    config_only = ("decompose_both",)  # matched as LoKr's default (False) even when the config sets it

    def count(self, d_out, d_in, decompose_factor=-1, r=None, decompose_both=False):
        (w1_out, w1_in), (w2_out, w2_in) = krona_factors(d_out, d_in, decompose_factor)
        if r is None:  # large enough that LoKr keeps both factors as full matrices
            r = max(w1_out, w1_in, w2_out, w2_in)
        r = positive_int(r, "r")
        # LoKr's own rule: a factor is stored full unless r < half its larger side (w1 only when decompose_both)
        w1_full = not (decompose_both and r < max(w1_out, w1_in) / 2)
        w2_full = not (r < max(w2_out, w2_in) / 2)
        w1 = w1_out * w1_in if w1_full else r * (w1_out + w1_in)
        w2 = w2_out * w2_in if w2_full else r * (w2_out + w2_in)
        return w1 + w2

    def sized(self, shapes, fixed):
        fixed = dict(fixed)
        if fixed.get("r") is None:
            fixed["r"] = krona_full_r(shapes, fixed["decompose_factor"])
        return fixed

    def search(self, shapes: Counter, budget: int, fixed: dict) -> tuple[dict, int]:
        # LoKr's factorization of a side changes only at its divisors: trying -1, every divisor d of a side and
        # d + 1 (the first factor past it) meets every distinct layout, each at the smallest factor giving it.
        f_max = max(max(s) for s in shapes)
        sides = {d for s in shapes for d in s}
        special = {d for side in sides for d in divisors(side)}
        factors = [-1, *sorted(f for f in special | {d + 1 for d in special} if 1 <= f <= f_max)]
        best, largest = None, 0
        for f in factors:
            h = {**fixed, "decompose_factor": f, "r": fixed.get("r") or krona_full_r(shapes, f)}
            try:
                total = self.total(shapes, h)
            except ValueError:
                continue
            largest = max(largest, total)
            if total >= budget and (best is None or total < best[1]):
                best = (h, total)
        if best is None:
            raise OutOfReach(largest, fixed)
        return best

    def config_class(self):
        from peft import LoKrConfig

        return LoKrConfig

    def config(self, targets, hparams, conv1d):
        from peft import LoKrConfig

        # LoKr scales by alpha / r: keep the Kronecker product unscaled
        hparams = {"alpha": hparams["r"], "decompose_both": False, **hparams}
        return LoKrConfig(target_modules=list(targets), **hparams)

    def unit_scale(self, config):
        return {"alpha": config.r}
