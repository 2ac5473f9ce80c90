"""Tensor products behind the adapters. Each method's delta-weight math lives here once.

Khatri-Rao (Definition 3.1 of the KRAdapter paper): for U (a x c) and V (b x c), ``U ⊙ V`` is (a*b x c) and its
row ``i*b + j`` is ``U[i, :] * V[j, :]`` -- a column-wise Kronecker product.
"""

from __future__ import annotations

import math

import torch

BUDGET_WORDS = {"sqrt": 2, "cbrt": 3, "qdrt": 4}  # the paper's low / medium / high budgets (section 4.4)


def khatri_rao(U: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """Column-wise Kronecker product: ``(k1, n) x (k2, n) -> (k1*k2, n)``."""
    if U.dim() != 2 or V.dim() != 2 or U.shape[1] != V.shape[1]:
        raise ValueError(f"khatri_rao needs U (k1 x n) and V (k2 x n) with equal n, got {tuple(U.shape)} and {tuple(V.shape)}")
    return (U.unsqueeze(1) * V.unsqueeze(0)).reshape(U.shape[0] * V.shape[0], U.shape[1])


def kronecker(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """Kronecker product ``A ⊗ B`` of two matrices (KronA / Kron-LoRA)."""
    return torch.kron(A, B)


def integer_root(m: int, p: int) -> int:
    """Largest integer k with k**p <= m (exact, no float rounding: m=1000, p=3 gives 10)."""
    k = int(round(m ** (1.0 / p)))
    while k**p > m:
        k -= 1
    while (k + 1) ** p <= m:
        k += 1
    return k


def resolve_k(d_out: int, d_in: int, k1: int | str = "sqrt") -> tuple[int, int]:
    """(k1, k2) for a d_out x d_in update: k1 from an int or a budget word, k2 = ceil(m / k1), m = max side."""
    m = max(d_out, d_in)
    if isinstance(k1, str):
        if k1 not in BUDGET_WORDS:
            raise ValueError(f"k1={k1!r} is not a budget word; use an int or one of {sorted(BUDGET_WORDS)}")
        k1 = integer_root(m, BUDGET_WORDS[k1])
    if isinstance(k1, bool) or not isinstance(k1, int):
        raise ValueError(f"k1 must be an int or one of {sorted(BUDGET_WORDS)}, got {k1!r}")
    if not 1 <= k1 <= m:
        raise ValueError(f"k1={k1} is out of range for a {d_out} x {d_in} layer: need 1 <= k1 <= m={m}")
    return k1, math.ceil(m / k1)


def kradapter_shapes(d_out: int, d_in: int, k1: int | str = "sqrt") -> tuple[tuple[int, int], tuple[int, int]]:
    """Shapes of U and V: ``(k1, n)`` and ``(k2, n)`` with n the smaller side of the layer."""
    k1, k2 = resolve_k(d_out, d_in, k1)
    n = min(d_out, d_in)
    return (k1, n), (k2, n)


def kradapter_delta(U: torch.Tensor, V: torch.Tensor, d_out: int, d_in: int) -> torch.Tensor:
    """Delta W (d_out x d_in) = (U ⊙ V)[:m], transposed when d_out < d_in. Scaling by alpha is the caller's."""
    m = max(d_out, d_in)
    kr = khatri_rao(U, V)
    if kr.shape[0] < m or kr.shape[1] != min(d_out, d_in):
        raise ValueError(
            f"U {tuple(U.shape)} and V {tuple(V.shape)} cannot build a {d_out} x {d_in} update "
            f"(need k1*k2 >= {m} and n = {min(d_out, d_in)})"
        )
    kr = kr[:m]
    return kr if d_out >= d_in else kr.T
