"""Exact weighted combinations of KRAdapter adapters (``add_weighted_adapter``).

Delta W = alpha (U ⊙ V)[:m] is bilinear in (U, V): row i*k2 + j is alpha U[i] * V[j]. A weighted sum
sum_t w_t alpha_t (U_t ⊙ V_t) has, in every column c, the k1 x k2 matrix sum_t w_t alpha_t u_tc v_tc^T, of rank up
to the number of adapters, while one Khatri-Rao product has rank 1 there. So the sum is a Khatri-Rao product of the
same k1, k2 only in special cases; with any k1 >= 2 the rows split into >= 2 blocks and the same rank-1 constraint
holds, so only k1 = 1 (k2 = m) holds every matrix. Exact here:

- ``"linear"``: adapters with equal k1 / k2 that share V (or share U), as when several adapters are trained from one
  init with V (or U) frozen. Then sum_t w_t alpha_t (U_t ⊙ V) = alpha_0 (U' ⊙ V) with
  U' = sum_t (w_t alpha_t / alpha_0) U_t; the new adapter has the first adapter's k1, k2, alpha and size.
- ``"dense"``: any adapters on the same targets. k1 = 1 makes U ⊙ V = diag(U[0]) scaling the rows of V (k2 = m), so
  U = ones and V = the summed update in the Khatri-Rao layout hold any matrix; the new adapter (k1 = 1, alpha = 1)
  stores the summed update in full, m x n per layer (as large as the weight it adapts).

Anything else (PEFT's "svd", "cat", ...) would be approximate or not a KRAdapter, and is refused.
"""

from __future__ import annotations

import torch

from .._weighted import Combination, LayerPlan, shared, weighted_sum


def combine_linear(layer, adapters: list[str], weights: list[float]) -> LayerPlan:
    U = [layer.kradapter_U[a] for a in adapters]
    V = [layer.kradapter_V[a] for a in adapters]
    if len({(layer.k1[a], layer.k2[a]) for a in adapters}) != 1:
        raise ValueError(f"k1/k2 differ ({[(layer.k1[a], layer.k2[a]) for a in adapters]}); 'dense' is exact for them")
    alpha0 = layer.alpha[adapters[0]]
    if alpha0 == 0:
        raise ValueError(f"the first adapter '{adapters[0]}' has alpha 0; put an adapter with alpha != 0 first")
    coefficients = [w * layer.alpha[a] / alpha0 for a, w in zip(adapters, weights)]
    if shared(V):
        return LayerPlan({"kradapter_U": weighted_sum(U, coefficients), "kradapter_V": V[0].detach().clone()})
    if shared(U):
        return LayerPlan({"kradapter_U": U[0].detach().clone(), "kradapter_V": weighted_sum(V, coefficients)})
    raise ValueError(
        "the adapters share neither V nor U, so the weighted sum of their Khatri-Rao products is not one Khatri-Rao "
        "product of the same size; combination_type='dense' stores it exactly (k1 = 1, full-size)"
    )


def combine_dense(layer, adapters: list[str], weights: list[float]) -> LayerPlan:
    deltas = [layer.delta_matrix(a) for a in adapters]  # alpha included
    total = weighted_sum([d.float() if d.dtype in (torch.float16, torch.bfloat16) else d for d in deltas], weights)
    kr = total if layer.d_out >= layer.d_in else total.T  # the Khatri-Rao layout: m x n
    dtype = layer.kradapter_U[adapters[0]].dtype
    return LayerPlan(
        {"kradapter_U": torch.ones(1, kr.shape[1], dtype=dtype, device=kr.device), "kradapter_V": kr.to(dtype)}
    )


COMBINATIONS: dict[str, Combination] = {
    "linear": (combine_linear, {}),
    "dense": (combine_dense, {"k1": 1, "k1_pattern": {}, "alpha": 1.0, "alpha_pattern": {}}),
}
