"""`kradapter spectrum`: Khatri-Rao vs Kronecker products at equal parameter count (appendix B, Figure 4) and the
rank of U ⊙ V against n (Theorem 3.1).

Both products come from kradapter.ops (the functions the adapters use). Khatri-Rao factors have KRAdapter's shapes
for the matrix (k1 = floor(sqrt(m)), k2 = ceil(m / k1), n = the smaller side); the Kronecker factors A (a1 x a2) and
B (d_out/a1 x d_in/a2) are, among the splits whose product can be full rank (min(a1, a2) * min(b1, b2) >= the
smaller side), the one with the smallest count >= KRAdapter's -- the budget matcher's rule. (A study of the
product, not a method: it has no spec; the divisor walk is the budget searches' bounded one.) (PEFT LoKr's own
factorization gives the same split at 768x1024, 1024x1024 and 4096x4096, but at 1024x4096 only a 32 x 1 B,
whose product has rank <= 32: a rank cap, not the spectral shape this study is about.) All factors are
kaiming-uniform (nn.init.kaiming_uniform_,
a = sqrt(5), nn.Linear's default); effective rank does not depend on the scale.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from ..ops import khatri_rao, kradapter_delta, kradapter_shapes, kronecker
from ..specs.search import divisors
from ..spectral import effective_rank
from .metrics import spectrum
from .targets import name_seed

PAPER_SHAPES = ((768, 1024), (1024, 1024), (1024, 4096), (4096, 4096))


def kronecker_shapes(d_out: int, d_in: int, params: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """Kronecker factor shapes for (d_out, d_in) at >= `params` parameters (see the module docstring)."""
    full = min(d_out, d_in)
    best = None
    for a1 in divisors(d_out):
        for a2 in divisors(d_in):
            b1, b2 = d_out // a1, d_in // a2
            if min(a1, a2) * min(b1, b2) < full:
                continue
            count = a1 * a2 + b1 * b2
            key = (count < params, abs(count - params), abs(a1 - a2))  # reach the budget, then closest, balanced
            if best is None or key < best[0]:
                best = (key, (a1, a2), (b1, b2))
    return best[1], best[2]


def _kaiming(shape: tuple[int, int], g: torch.Generator) -> torch.Tensor:
    t = torch.empty(shape)
    nn.init.kaiming_uniform_(t, a=math.sqrt(5), generator=g)
    return t


def compare_shape(d_out: int, d_in: int, seed: int) -> dict:
    """Spectra and effective ranks of the two products at (d_out, d_in)."""
    g = torch.Generator().manual_seed(name_seed(seed, f"spectrum:{d_out}x{d_in}"))
    u_shape, v_shape = kradapter_shapes(d_out, d_in)
    kr = kradapter_delta(_kaiming(u_shape, g), _kaiming(v_shape, g), d_out, d_in)
    kr_params = u_shape[0] * u_shape[1] + v_shape[0] * v_shape[1]
    a_shape, b_shape = kronecker_shapes(d_out, d_in, kr_params)
    kn = kronecker(_kaiming(a_shape, g), _kaiming(b_shape, g))
    out = {"shape": [d_out, d_in]}
    for key, m, params, factors in (
        ("khatri_rao", kr, kr_params, [u_shape, v_shape]),
        ("kronecker", kn, a_shape[0] * a_shape[1] + b_shape[0] * b_shape[1], [a_shape, b_shape]),
    ):
        s = spectrum(m)
        out[key] = {
            "params": params,
            "factor_shapes": [list(f) for f in factors],
            "effective_rank": effective_rank(s, is_spectrum=True),
            "spectrum": s.tolist(),
        }
    out["effective_rank_ratio"] = out["khatri_rao"]["effective_rank"] / out["kronecker"]["effective_rank"]
    return out


def theorem_ranks(k: int, ns: list[int], seed: int) -> list[dict]:
    """rank(U ⊙ V) for U, V ~ N(0, 1) of shape (k, n), against LoRA's rank(U^T V) = min(k, n)."""
    g = torch.Generator().manual_seed(name_seed(seed, f"theorem:{k}"))
    points = []
    for n in ns:
        u, v = torch.randn(k, n, generator=g, dtype=torch.float64), torch.randn(k, n, generator=g, dtype=torch.float64)
        points.append(
            {
                "n": n,
                "rank_khatri_rao": int(torch.linalg.matrix_rank(khatri_rao(u, v))),
                "rank_lora": int(torch.linalg.matrix_rank(u.T @ v)),
                "bound": min(n, k * k),
            }
        )
    return points


def default_ns(k: int, count: int = 12) -> list[int]:
    """`count` values of n spread over k <= n <= k^2, plus two past k^2 where the rank must stop at k^2."""
    ns = sorted({round(k + (k * k - k) * i / (count - 1)) for i in range(count)})
    return ns + [k * k + k, k * k + 4 * k]


def check_spectrum_memory(shapes, k: int) -> None:
    """Refuse, before any allocation, a shape or k whose products cannot fit in memory: the largest shape's two
    float32 products and their SVD copy, and Theorem 3.1's float64 Khatri-Rao product of k^2 x (k^2 + 4k)."""
    from .._resources import FLOAT32, FLOAT64, check_memory

    if shapes:
        d_out, d_in = max(shapes, key=lambda s: s[0] * s[1])
        check_memory(f"--shapes {d_out}x{d_in}", 3 * FLOAT32 * d_out * d_in)
    check_memory(f"--k {k}", 2 * FLOAT64 * k * k * (k * k + 4 * k))


def run_spectrum(
    shapes, k: int, ns: list[int] | None, seed: int, progress: Callable[[str], None] | None = None
) -> dict:
    step = progress or (lambda label: None)
    for shape in shapes:
        if len(shape) != 2 or any(isinstance(x, bool) or not isinstance(x, int) or x < 1 for x in shape):
            raise ValueError(f"each shape must be two positive integers, got {shape!r}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    check_spectrum_memory(shapes, k)
    ns = default_ns(k) if ns is None else list(ns)
    if not ns or any(n < 1 for n in ns):
        raise ValueError(f"n values must be positive integers, got {ns}")
    rows = []
    for d_out, d_in in shapes:
        step(f"{d_out}x{d_in}")
        rows.append(compare_shape(d_out, d_in, seed))
    step(f"theorem k={k}")
    return {
        "study": "Khatri-Rao vs Kronecker at equal parameter count (KRAdapter paper, app. B, Thm 3.1)",
        "seed": seed,
        "init": "kaiming_uniform_(a=sqrt(5))",
        "shapes": rows,
        "theorem": {"k": k, "distribution": "standard normal", "points": theorem_ranks(k, ns, seed)},
    }
