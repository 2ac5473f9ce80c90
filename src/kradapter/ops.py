"""Tensor products behind the adapters. Each method's delta-weight math lives here once.

Khatri-Rao (Definition 3.1 of the KRAdapter paper): for U (a x c) and V (b x c), ``U ⊙ V`` is (a*b x c) and its
row ``i*b + j`` is ``U[i, :] * V[j, :]`` -- a column-wise Kronecker product.
"""

from __future__ import annotations

import math

import torch

BUDGET_WORDS = {"sqrt": 2, "cbrt": 3, "qdrt": 4}  # the paper's low / medium / high budgets (section 4.4)


def khatri_rao(U: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """Column-wise Kronecker product (Definition 3.1): ``(k1, n) x (k2, n) -> (k1*k2, n)``.

    Row ``i*k2 + j`` of the result is ``U[i] * V[j]``.

    Args:
        U: A ``(k1, n)`` matrix.
        V: A ``(k2, n)`` matrix with the same number of columns.

    Returns:
        The ``(k1*k2, n)`` product, in the dtype and device of the inputs (autograd flows through it).

    Raises:
        ValueError: If either input is not 2-D or their column counts differ.
    """
    if U.dim() != 2 or V.dim() != 2 or U.shape[1] != V.shape[1]:
        raise ValueError(
            f"khatri_rao needs U (k1 x n) and V (k2 x n) with equal n, got {tuple(U.shape)} and {tuple(V.shape)}"
        )
    return (U.unsqueeze(1) * V.unsqueeze(0)).reshape(U.shape[0] * V.shape[0], U.shape[1])


def kronecker(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """Kronecker product ``A ⊗ B`` of two matrices (KronA / Kron-LoRA).

    Args:
        A: An ``(a, b)`` matrix.
        B: A ``(c, d)`` matrix.

    Returns:
        The ``(a*c, b*d)`` product ``torch.kron(A, B)``.
    """
    return torch.kron(A, B)


def integer_root(m: int, p: int) -> int:
    """Largest integer k with ``k**p <= m``, exact (no float rounding: ``m=1000, p=3`` gives 10).

    Args:
        m: A non-negative integer.
        p: The root's degree (2 for a square root).

    Returns:
        ``floor(m ** (1/p))`` computed exactly.
    """
    k = int(round(m ** (1.0 / p)))
    while k**p > m:
        k -= 1
    while (k + 1) ** p <= m:
        k += 1
    return k


def resolve_k(d_out: int, d_in: int, k1: int | str = "sqrt") -> tuple[int, int]:
    """``(k1, k2)`` for a ``d_out x d_in`` update: k1 from an int or a budget word, ``k2 = ceil(m / k1)``.

    Args:
        d_out: The layer's output size.
        d_in: The layer's input size.
        k1: Rows of U: an int, or ``"sqrt"`` / ``"cbrt"`` / ``"qdrt"`` for the exact floor of ``m**(1/2)``,
            ``m**(1/3)``, ``m**(1/4)`` with ``m = max(d_out, d_in)``.

    Returns:
        ``(k1, k2)`` with ``k1 * k2 >= m``.

    Raises:
        ValueError: If ``k1`` is an unknown word, not an int, or outside ``1 <= k1 <= m``.
    """
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
    """Shapes of U and V for a ``d_out x d_in`` layer: ``(k1, n)`` and ``(k2, n)``, n the smaller side.

    Args:
        d_out: The layer's output size.
        d_in: The layer's input size.
        k1: As in [`resolve_k`][kradapter.ops.resolve_k].

    Returns:
        ``((k1, n), (k2, n))``.

    Raises:
        ValueError: As [`resolve_k`][kradapter.ops.resolve_k] does, for a bad ``k1``.
    """
    k1, k2 = resolve_k(d_out, d_in, k1)
    n = min(d_out, d_in)
    return (k1, n), (k2, n)


def kradapter_delta(U: torch.Tensor, V: torch.Tensor, d_out: int, d_in: int) -> torch.Tensor:
    """KRAdapter's update: ``Delta W = (U ⊙ V)[:m]`` (d_out x d_in), transposed when ``d_out < d_in``.

    Scaling by alpha is the caller's. Every tool that needs KRAdapter's update (the PEFT layer, the benchmark, the
    spectral report) calls this function.

    Args:
        U: The ``(k1, n)`` factor, ``n = min(d_out, d_in)``.
        V: The ``(k2, n)`` factor.
        d_out: The layer's output size.
        d_in: The layer's input size.

    Returns:
        The ``(d_out, d_in)`` update.

    Raises:
        ValueError: If ``k1 * k2 < max(d_out, d_in)`` or the factors' column count is not ``min(d_out, d_in)``
            (and as [`khatri_rao`][kradapter.ops.khatri_rao] does for malformed factors).
    """
    m = max(d_out, d_in)
    kr = khatri_rao(U, V)
    if kr.shape[0] < m or kr.shape[1] != min(d_out, d_in):
        raise ValueError(
            f"U {tuple(U.shape)} and V {tuple(V.shape)} cannot build a {d_out} x {d_in} update "
            f"(need k1*k2 >= {m} and n = {min(d_out, d_in)})"
        )
    kr = kr[:m]
    return kr if d_out >= d_in else kr.T


# --- SinLoRA (Ji et al., arXiv 2403.19243) -------------------------------------------------------------------------


def sinlora_delta(A: torch.Tensor, B: torch.Tensor, freq: float, scale: float, scaling: float = 1.0) -> torch.Tensor:
    """SinLoRA's update (d_out x d_in): ``scaling * sin(freq * B @ A) / scale``.

    The official code (samy-ji/Sine-Low-Rank, llm/peft/src/peft/tuners/sinlora.py) computes exactly
    ``sin(freq * B A) / s * (lora_alpha / r)`` with ``s = sqrt(d_in)``; callers pass those as ``scale`` and
    ``scaling``.

    Args:
        A: The ``(r, d_in)`` factor.
        B: The ``(d_out, r)`` factor.
        freq: The sine's frequency (omega).
        scale: The divisor of the sine.
        scaling: The multiplier (``lora_alpha / r``).

    Returns:
        The ``(d_out, d_in)`` update.

    Raises:
        ValueError: If A or B is not 2-D or their inner sizes differ.
    """
    if A.dim() != 2 or B.dim() != 2 or B.shape[1] != A.shape[0]:
        raise ValueError(
            f"sinlora_delta needs A (r x d_in) and B (d_out x r), got {tuple(A.shape)} and {tuple(B.shape)}"
        )
    return torch.sin(freq * (B @ A)) * (scaling / scale)


# --- Kron-LoRA (Shen, arXiv 2508.01961) ----------------------------------------------------------------------------


def largest_divisor_at_most(d: int, f: int) -> int:
    """Largest divisor of d that is ``<= f`` (1 at worst): the Kronecker factor side used for an int ``kron_shape``.

    Args:
        d: The side to divide.
        f: The upper bound.

    Returns:
        The divisor.
    """
    for a in range(min(d, f), 0, -1):
        if d % a == 0:
            return a
    return 1


def kronlora_shapes(
    d_out: int, d_in: int, kron_shape: int | tuple[int, int] | list[int] = 4, r: int = 8
) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    """Shapes of A, B1, B2 for ``Delta W = A ⊗ (B1 @ B2)`` on a d_out x d_in layer.

    ``kron_shape`` is A's shape ``(a_out, a_in)``, which must divide ``(d_out, d_in)``; an int f means, per side, the
    largest divisor of that side that is ``<= f``. Then ``B = B1 B2`` is ``(d_out/a_out) x (d_in/a_in)`` with rank
    ``r <= min`` of its sides.

    Args:
        d_out: The layer's output size.
        d_in: The layer's input size.
        kron_shape: A's shape as a pair, or an int bound on both its sides.
        r: The rank of ``B1 B2``.

    Returns:
        ``((a_out, a_in), (b_out, r), (r, b_in))``.

    Raises:
        ValueError: If ``kron_shape`` is malformed or does not divide the layer, or ``r`` is out of range.
    """
    if isinstance(kron_shape, bool):
        raise ValueError(f"kron_shape must be an int >= 1 or a pair (a_out, a_in), got {kron_shape!r}")
    if isinstance(kron_shape, int):
        if kron_shape < 1:
            raise ValueError(f"kron_shape={kron_shape} must be >= 1")
        a_out, a_in = largest_divisor_at_most(d_out, kron_shape), largest_divisor_at_most(d_in, kron_shape)
    elif (
        isinstance(kron_shape, (tuple, list))
        and len(kron_shape) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in kron_shape)
    ):
        a_out, a_in = kron_shape
        if d_out % a_out or d_in % a_in:
            raise ValueError(
                f"kron_shape={tuple(kron_shape)} does not divide the {d_out} x {d_in} layer (need d_out % a_out == 0 "
                "and d_in % a_in == 0)"
            )
    else:
        raise ValueError(f"kron_shape must be an int >= 1 or a pair (a_out, a_in) of ints >= 1, got {kron_shape!r}")
    b_out, b_in = d_out // a_out, d_in // a_in
    if not isinstance(r, bool) and isinstance(r, int) and min(b_out, b_in) < r <= min(d_out, d_in):
        # r fits the layer itself: the Kronecker factor A took the room, so kron_shape is what to change
        raise ValueError(
            f"kron_shape={kron_shape!r} is too large for r={r} on a {d_out} x {d_in} layer: A is {a_out} x {a_in}, "
            f"leaving B {b_out} x {b_in}, so r={r} is out of range (need 1 <= r <= {min(b_out, b_in)}); use a "
            f"smaller kron_shape, or r <= {min(b_out, b_in)}"
        )
    if isinstance(r, bool) or not isinstance(r, int) or not 1 <= r <= min(b_out, b_in):
        raise ValueError(
            f"r={r!r} is out of range for Kron-LoRA on a {d_out} x {d_in} layer with A {a_out} x {a_in}: "
            f"B is {b_out} x {b_in}, so need 1 <= r <= {min(b_out, b_in)}"
        )
    return (a_out, a_in), (b_out, r), (r, b_in)


def kronlora_delta(A: torch.Tensor, B1: torch.Tensor, B2: torch.Tensor, scaling: float = 1.0) -> torch.Tensor:
    """Kron-LoRA's update ``scaling * A ⊗ (B1 @ B2)``: ``(a_out*b_out) x (a_in*b_in)``.

    Args:
        A: The ``(a_out, a_in)`` Kronecker factor.
        B1: The ``(b_out, r)`` factor.
        B2: The ``(r, b_in)`` factor.
        scaling: The multiplier (``alpha / r``).

    Returns:
        The update.

    Raises:
        ValueError: If a factor is not 2-D or B1 and B2's inner sizes differ.
    """
    if A.dim() != 2 or B1.dim() != 2 or B2.dim() != 2 or B1.shape[1] != B2.shape[0]:
        raise ValueError(
            f"kronlora_delta needs A (a_out x a_in), B1 (b_out x r), B2 (r x b_in), got {tuple(A.shape)}, "
            f"{tuple(B1.shape)}, {tuple(B2.shape)}"
        )
    return kronecker(A, B1 @ B2) * scaling
