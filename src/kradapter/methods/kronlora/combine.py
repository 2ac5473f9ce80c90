"""Exact weighted combinations of Kron-LoRA adapters (``add_weighted_adapter``).

Delta W = s A ⊗ (B1 B2), s = alpha / r. A sum of Kronecker products is one Kronecker product of the same factor
shapes only in special cases (in general its Kronecker rank is the number of terms). Exact here:

- ``"linear"``: adapters that share B1 and B2: sum_t w_t s_t A_t ⊗ B = s_0 A' ⊗ B with A' = sum_t (w_t s_t / s_0) A_t
  (same shapes, r and alpha as the first adapter).
- ``"cat"``: adapters that share A: A ⊗ (sum_t w_t s_t B1_t B2_t) = A ⊗ ([w_1 s_1 B1_1, ...] [B2_1; ...]), the ranks
  concatenated (r = sum of the ranks, which must stay <= the smaller side of B; alpha = r, so s = 1).
- ``"dense"``: any adapters on the same targets: A = [[1]] (kron_shape 1) and B1 B2 = the summed update, with
  B1 = Delta, B2 = I (or B1 = I, B2 = Delta when d_out < d_in), r = min(d_out, d_in): exact, full-size.

Anything else is approximate and refused.
"""

from __future__ import annotations

import torch

from .._weighted import Combination, LayerPlan, shared, weighted_sum


def _scales(layer, adapters: list[str], weights: list[float]) -> list[float]:
    return [w * layer.alpha[a] / layer.r[a] for a, w in zip(adapters, weights)]


def combine_linear(layer, adapters: list[str], weights: list[float]) -> LayerPlan:
    A, B1, B2 = ([getattr(layer, n)[a] for a in adapters] for n in layer.adapter_layer_names)
    if not (shared(B1) and shared(B2)):
        raise ValueError("the adapters do not share B1 and B2; 'cat' is exact for adapters sharing A, 'dense' always")
    s0 = layer.alpha[adapters[0]] / layer.r[adapters[0]]
    if s0 == 0:
        raise ValueError(f"the first adapter '{adapters[0]}' has alpha 0; put an adapter with alpha != 0 first")
    coefficients = [c / s0 for c in _scales(layer, adapters, weights)]
    return LayerPlan(
        {
            "kronlora_A": weighted_sum(A, coefficients),
            "kronlora_B1": B1[0].detach().clone(),
            "kronlora_B2": B2[0].detach().clone(),
        }
    )


def combine_cat(layer, adapters: list[str], weights: list[float]) -> LayerPlan:
    A, B1, B2 = ([getattr(layer, n)[a] for a in adapters] for n in layer.adapter_layer_names)
    if not shared(A):
        raise ValueError(
            "the adapters do not share A; 'linear' is exact for adapters sharing B1 and B2, 'dense' always"
        )
    r = sum(b.shape[1] for b in B1)
    limit = min(B1[0].shape[0], B2[0].shape[1])
    if r > limit:
        raise ValueError(f"the concatenated rank {r} exceeds {limit}, the smaller side of B; use 'dense'")
    scales = _scales(layer, adapters, weights)
    b1 = torch.cat([(s * b.detach().double()).to(b.dtype) for s, b in zip(scales, B1)], dim=1)
    return LayerPlan(
        {
            "kronlora_A": A[0].detach().clone(),
            "kronlora_B1": b1,
            "kronlora_B2": torch.cat([b.detach() for b in B2], dim=0),
        },
        {"rank_pattern": r, "alpha_pattern": float(r)},
    )


def combine_dense(layer, adapters: list[str], weights: list[float]) -> LayerPlan:
    total = weighted_sum([layer.delta_matrix(a) for a in adapters], weights)
    r = min(layer.d_out, layer.d_in)
    eye = torch.eye(r, dtype=total.dtype, device=total.device)
    b1, b2 = (total, eye) if layer.d_in <= layer.d_out else (eye, total)
    return LayerPlan(
        {"kronlora_A": torch.ones(1, 1, dtype=total.dtype, device=total.device), "kronlora_B1": b1, "kronlora_B2": b2},
        {"rank_pattern": r, "alpha_pattern": float(r)},
    )


COMBINATIONS: dict[str, Combination] = {
    "linear": (combine_linear, {}),
    "cat": (combine_cat, {}),
    "dense": (combine_dense, {"kron_shape": 1}),
}
