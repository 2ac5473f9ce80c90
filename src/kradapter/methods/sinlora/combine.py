"""Exact weighted combinations of SinLoRA adapters (``add_weighted_adapter``).

Delta W = (lora_alpha / r) sin(freq B A) / scale. The sine is not linear, so a weighted sum of adapters with
different A, B (or freq) is not sin of any rank-r product: no SinLoRA adapter holds it exactly, and such sums are
refused. Exact here:

- ``"linear"``: adapters that share A, B and freq (e.g. one adapter rescaled, or copies): the sum is the same sine
  times sum_t w_t lora_alpha_t / (r scale_t), kept by setting the new adapter's lora_alpha per module.
"""

from __future__ import annotations

from .._weighted import Combination, LayerPlan, shared


def combine_linear(layer, adapters: list[str], weights: list[float]) -> LayerPlan:
    A = [layer.sinlora_A[a] for a in adapters]
    B = [layer.sinlora_B[a] for a in adapters]
    if not (shared(A) and shared(B)) or len({layer.freq[a] for a in adapters}) != 1:
        raise ValueError(
            "the adapters do not share A, B and freq; SinLoRA's sin(freq B A) is not linear in its weights, so their "
            "weighted sum is not a SinLoRA adapter"
        )
    scale0 = layer.scale[adapters[0]]
    lora_alpha = scale0 * sum(w * layer.lora_alpha[a] / layer.scale[a] for a, w in zip(adapters, weights))
    return LayerPlan(
        {"sinlora_A": A[0].detach().clone(), "sinlora_B": B[0].detach().clone()}, {"alpha_pattern": lora_alpha}
    )


COMBINATIONS: dict[str, Combination] = {"linear": (combine_linear, {})}
