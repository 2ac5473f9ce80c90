"""Metrics of one reconstruction: the columns of the paper's Figure 1, from singular value spectra."""

from __future__ import annotations

import math

import torch

from ..spectral import effective_rank


def spectrum(m: torch.Tensor) -> torch.Tensor:
    """Singular values, descending, in float64, via the eigenvalues of the smaller Gram matrix.

    Why not svdvals: on this 2-core CPU it is 5-20x slower for 1024 x 768 and the benchmark needs ~80 spectra per
    run. Squaring costs precision only below ~1e-8 of the largest singular value, far under what the metrics
    and plots resolve (tests check it against torch.linalg.svdvals).
    """
    m = m.detach().to(dtype=torch.float64)
    gram = m.T @ m if m.shape[0] >= m.shape[1] else m @ m.T
    return torch.linalg.eigvalsh(gram).clamp_min(0).sqrt().flip(0)


def nuclear_error(s_target: torch.Tensor, s_recon: torch.Tensor) -> float:
    """Mean absolute difference of the sorted singular values (the paper's "nuclear error")."""
    return float((s_target - s_recon).abs().mean())


def summarize(target: torch.Tensor, delta: torch.Tensor, s_target: torch.Tensor) -> tuple[dict, torch.Tensor]:
    """The per-(target, method) metrics and the reconstruction's spectrum."""
    s = spectrum(delta)
    diff = target.double() - delta.double()
    frob = float(diff.norm())
    metrics = {
        "nuclear_error": nuclear_error(s_target, s),
        "frobenius_error": frob,
        "relative_frobenius_error": frob / float(target.double().norm()),
        "effective_rank": effective_rank(s, is_spectrum=True),
    }
    return metrics, s


def add_pct_of_lora(by_method: dict[str, dict]) -> None:
    """sq_nuclear_pct_of_lora = 100 * nuclear_error^2 / LoRA's nuclear_error^2, and sq_frobenius_pct_of_lora the
    same for the Frobenius error (None without a LoRA run)."""
    for key, pct_key in (("nuclear_error", "sq_nuclear_pct_of_lora"), ("frobenius_error", "sq_frobenius_pct_of_lora")):
        lora = by_method.get("lora", {}).get(key)
        for row in by_method.values():
            err = row.get(key)
            ok = lora is not None and err is not None and lora > 0 and math.isfinite(err)
            row[pct_key] = 100.0 * err**2 / lora**2 if ok else None
