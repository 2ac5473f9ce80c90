"""Spectra of weight updates: effective rank (Roy & Vetterli 2007), nuclear and Frobenius norms."""

from __future__ import annotations

import torch


def singular_values(M: torch.Tensor) -> torch.Tensor:
    """Singular values of a matrix in float64, descending.

    Args:
        M: A 2-D tensor; higher-rank tensors (a convolution kernel) are flattened to ``out x rest``. Any device.

    Returns:
        The singular values, a 1-D float64 CPU tensor.

    Raises:
        ValueError: If ``M`` holds NaN or Inf values (a diverged update has no spectrum).
    """
    M = M.detach()
    if M.dim() > 2:
        M = M.reshape(M.shape[0], -1)
    if not bool(torch.isfinite(M).all()):
        raise ValueError(
            f"the {tuple(M.shape)} matrix holds NaN or Inf values (a diverged update?); it has no spectrum"
        )
    return torch.linalg.svdvals(M.to(device="cpu", dtype=torch.float64))


def effective_rank(M_or_s: torch.Tensor, *, is_spectrum: bool = False) -> float:
    """Effective rank (Roy & Vetterli): ``exp`` of the entropy of the sum-normalised singular values.

    Args:
        M_or_s: A matrix, or its singular values when ``is_spectrum`` is True.
        is_spectrum: Whether ``M_or_s`` already holds singular values.

    Returns:
        A value between 1 and the rank; 0.0 for the zero matrix.
    """
    s = M_or_s if is_spectrum else singular_values(M_or_s)
    s = s.to(torch.float64).clamp_min(0)
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s / total
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def spectral_summary(M: torch.Tensor) -> dict[str, float]:
    """The columns of the paper's Tables 2, 4 and 10 for one update.

    Args:
        M: The update (any device or float dtype).

    Returns:
        ``effective_rank``, ``nuclear_norm``, ``frobenius_norm`` and ``rank`` (the numerical rank at the precision
        ``M`` was computed in, as ``torch.linalg.matrix_rank`` counts it).
    """
    s = singular_values(M)
    # Numerical rank at the precision M was computed in (as torch.linalg.matrix_rank): float32 round-off in a
    # float32 low-rank product must not count as extra rank just because the SVD runs in float64.
    eps = torch.finfo(M.dtype if M.is_floating_point() else torch.float64).eps
    return {
        "effective_rank": effective_rank(s, is_spectrum=True),
        "nuclear_norm": float(s.sum()),
        "frobenius_norm": float(s.pow(2).sum().sqrt()),
        "rank": int((s > s.max() * max(M.shape) * eps).sum()) if s.numel() else 0,
    }
