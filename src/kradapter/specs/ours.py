"""Specs of the methods this package defines: KRAdapter, SinLoRA, Kron-LoRA. Each one's Delta W is its layer's
``delta_matrix`` (the function its forward and merge use)."""

from __future__ import annotations

from collections import Counter

from ..ops import kronlora_shapes, resolve_k
from .base import MethodSpec, OutOfReach, positive_int
from .search import ceil_div_starts, runs, smallest_affine


class _OwnLayer(MethodSpec):
    def delta(self, layer, adapter):
        return layer.delta_matrix(adapter)


class KRAdapterSpec(_OwnLayer):
    name = "kradapter"
    summary = "Khatri-Rao adapter: alpha (U ⊙ V), n (k1 + k2) parameters (this package)"
    hparams = {"k1": "sqrt"}
    knob = "k1"
    flattened = grouped = multihead_attention = True
    default_lr = 3e-2  # at alpha 0.1; where it comes from: kradapter/learning_rates.py

    def count(self, d_out, d_in, k1="sqrt"):
        k1, k2 = resolve_k(d_out, d_in, k1)
        return min(d_out, d_in) * (k1 + k2)

    def search(self, shapes: Counter, budget: int, fixed: dict) -> tuple[dict, int]:
        own = self.total(shapes, {})
        if budget == own:  # the default budget is KRAdapter's own count: keep the budget word
            return {"k1": "sqrt"}, own
        # total(k1) = sum n (k1 + ceil(m / k1)): affine in k1 wherever every ceil(m / k1) is constant
        k_max = min(max(s) for s in shapes)
        ms = {max(s) for s in shapes}
        starts = {k for m in ms for k in ceil_div_starts(m, k_max)}
        slope = sum(c * min(s) for s, c in shapes.items())
        pieces = (
            (lo, hi, slope, sum(c * min(s) * -(-max(s) // lo) for s, c in shapes.items()))
            for lo, hi in runs(starts, k_max)
        )
        best, largest = smallest_affine(pieces, budget)
        if best is None:
            raise OutOfReach(largest, fixed)
        return {**fixed, "k1": best[0]}, best[1]

    def config_class(self):
        from ..methods.kradapter.config import KRAdapterConfig

        return KRAdapterConfig

    def unit_scale(self, config):
        return {"alpha": 1.0}


class SinLoRASpec(_OwnLayer):
    name = "sinlora"
    summary = "SinLoRA: (lora_alpha / r) sin(freq B A) / scale, r (d_out + d_in) parameters (this package)"
    hparams = {"r": 8}
    knob = "r"

    def count(self, d_out, d_in, r=8):
        return positive_int(r, "r") * (d_out + d_in)

    def config_class(self):
        from ..methods.sinlora.config import SinLoRAConfig

        return SinLoRAConfig

    def unit_scale(self, config):
        return {"lora_alpha": config.r, "scale": 1.0}


class KronLoRASpec(_OwnLayer):
    name = "kronlora"
    summary = "Kron-LoRA: A ⊗ (B1 B2), a_out a_in + r (b_out + b_in) parameters (this package)"
    hparams = {"kron_shape": 4, "r": 8}
    knob = "r"
    conv1d = True

    def count(self, d_out, d_in, kron_shape=4, r=8):
        (a_out, a_in), (b_out, r), (_, b_in) = kronlora_shapes(d_out, d_in, kron_shape, r)
        return a_out * a_in + r * (b_out + b_in)

    def search(self, shapes: Counter, budget: int, fixed: dict) -> tuple[dict, int]:
        if "kron_shape" in fixed:
            return self._search_r(shapes, budget, fixed)
        # keep the default A shape when it can reach the budget; smaller A (bigger B) only when it cannot
        for kron_shape in (self.hparams["kron_shape"], 2, 1):
            try:
                return self._search_r(shapes, budget, {**fixed, "kron_shape": kron_shape})
            except OutOfReach as err:
                last = err
        raise last

    def _search_r(self, shapes: Counter, budget: int, fixed: dict) -> tuple[dict, int]:
        # total(r) = sum a_out a_in + r sum (b_out + b_in), for r up to the smaller side of B on every layer
        try:
            geometry = [(kronlora_shapes(o, i, fixed["kron_shape"], 1), c) for (o, i), c in shapes.items()]
        except ValueError:
            raise OutOfReach(0, fixed) from None
        r_max = min(min(b_out, b_in) for ((_, (b_out, _), (_, b_in)), _) in geometry)
        a = sum(c * a_out * a_in for (((a_out, a_in), _, _), c) in geometry)
        b = sum(c * (b_out + b_in) for ((_, (b_out, _), (_, b_in)), c) in geometry)
        best, largest = smallest_affine([(1, r_max, b, a)] if r_max >= 1 else [], budget)
        if best is None:
            raise OutOfReach(largest, fixed)
        return {**fixed, "r": best[0]}, best[1]

    def config_class(self):
        from ..methods.kronlora.config import KronLoRAConfig

        return KronLoRAConfig

    def unit_scale(self, config):
        return {"alpha": config.r}
