"""Post-training quantization of Kron-LoRA's factors, to evaluate the adapter as it would be stored in 8 or 4 bits.

The paper (arXiv 2508.01961) reports that Kron-LoRA's small factors quantize to 8 or 4 bits with less accuracy loss
than LoRA's; the text available here (the abstract) does not give the scheme, so we use the common one: symmetric
absmax quantization to signed integers in [-(2^(bits-1) - 1), 2^(bits-1) - 1], with one scale per row (default) or
one per tensor. ``quantize_kronlora_`` replaces every factor by its dequantized value in place (so the model then
computes exactly what the quantized adapter would) and reports how far each update moved.
"""

from __future__ import annotations

import torch
from torch import nn

from .layer import KronLoRALayer

GRANULARITIES = ("row", "tensor")


def _check(bits: int, granularity: str) -> None:
    if isinstance(bits, bool) or not isinstance(bits, int) or not 2 <= bits <= 8:
        raise ValueError(f"bits must be an int in [2, 8] (the paper uses 8 and 4), got {bits!r}")
    if granularity not in GRANULARITIES:
        raise ValueError(f"granularity={granularity!r} is not one of {list(GRANULARITIES)}")


def absmax_quantize(t: torch.Tensor, bits: int, granularity: str = "row") -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric absmax quantization of a matrix to signed ``bits``-bit integers, ``t ≈ q * scale``.

    Args:
        t: The matrix to quantize.
        bits: 2 to 8.
        granularity: ``"row"`` (one scale per row) or ``"tensor"`` (one scale).

    Returns:
        ``(q, scale)``: q int8 in ``[-(2^(bits-1)-1), 2^(bits-1)-1]``, scale float32 (per row, or ``(1, 1)``).

    Raises:
        ValueError: If ``bits`` or ``granularity`` is invalid, or ``t`` is not 2-D.
    """
    _check(bits, granularity)
    if t.dim() != 2:
        raise ValueError(f"absmax_quantize expects a matrix, got shape {tuple(t.shape)}")
    qmax = 2 ** (bits - 1) - 1
    t32 = t.detach().float()
    absmax = t32.abs().amax(dim=1, keepdim=True) if granularity == "row" else t32.abs().amax().reshape(1, 1)
    scale = torch.where(absmax > 0, absmax / qmax, torch.ones_like(absmax))  # an all-zero row stays zero
    q = torch.round(t32 / scale).clamp_(-qmax, qmax).to(torch.int8)
    return q, scale


def absmax_dequantize(q: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The float values ``q * scale`` of an ``absmax_quantize`` result.

    Args:
        q: The integers.
        scale: The scales.
        dtype: The result's dtype.

    Returns:
        The dequantized matrix.
    """
    return (q.float() * scale).to(dtype)


def fake_quantize(t: torch.Tensor, bits: int, granularity: str = "row") -> torch.Tensor:
    """``t`` rounded to the quantization grid and back, in ``t``'s dtype.

    Args:
        t: The matrix.
        bits: 2 to 8.
        granularity: ``"row"`` or ``"tensor"``.

    Returns:
        The rounded matrix.

    Raises:
        ValueError: As [`absmax_quantize`][kradapter.methods.kronlora.quantize.absmax_quantize] does.
    """
    q, scale = absmax_quantize(t, bits, granularity)
    return absmax_dequantize(q, scale, t.dtype)


def _relative_error(new: torch.Tensor, old: torch.Tensor) -> float:
    ref = old.float().norm()
    diff = (new.float() - old.float()).norm()
    return float(diff / ref) if ref > 0 else float(diff)


@torch.no_grad()
def quantize_kronlora_(
    model: nn.Module, bits: int, granularity: str = "row", adapter_names: list[str] | None = None
) -> dict:
    """Replace every Kron-LoRA factor (A, B1, B2) of ``model`` by its ``bits``-bit dequantized value, in place.

    The model then computes exactly what the quantized adapter would.

    Args:
        model: A model with Kron-LoRA layers.
        bits: 2 to 8 (the paper uses 8 and 4).
        granularity: ``"row"`` or ``"tensor"``.
        adapter_names: The adapters to quantize (default: every adapter of each layer).

    Returns:
        ``{"bits", "granularity", "layers": {module: {adapter: {"delta_rel_error", "A", "B1", "B2"}}},
        "max_delta_rel_error", "mean_delta_rel_error"}``: relative Frobenius errors of each update and factor.

    Raises:
        ValueError: If ``bits`` or ``granularity`` is invalid, the model has no Kron-LoRA layer, a layer is merged
            (unmerge first: its old update is already inside the base weight), or an adapter name is missing.
    """
    _check(bits, granularity)
    layers = [(key, m) for key, m in model.named_modules() if isinstance(m, KronLoRALayer)]
    if not layers:
        raise ValueError("the model has no Kron-LoRA layers to quantize")
    for key, module in layers:
        if module.merged:
            raise ValueError(f"Kron-LoRA layer '{key}' is merged; unmerge before quantizing its factors")
    report: dict = {"bits": bits, "granularity": granularity, "layers": {}}
    errors = []
    for key, module in layers:
        names = list(module.kronlora_A.keys()) if adapter_names is None else adapter_names
        for name in names:
            if name not in module.kronlora_A:
                raise ValueError(
                    f"adapter '{name}' is not on Kron-LoRA layer '{key}'; it has {list(module.kronlora_A)}"
                )
            before = module.delta_matrix(name).detach().clone()
            entry = {}
            for attr, label in (("kronlora_A", "A"), ("kronlora_B1", "B1"), ("kronlora_B2", "B2")):
                p = getattr(module, attr)[name]
                new = fake_quantize(p.data, bits, granularity)
                entry[label] = _relative_error(new, p.data)
                p.data.copy_(new)
            entry["delta_rel_error"] = _relative_error(module.delta_matrix(name), before)
            report["layers"].setdefault(key, {})[name] = entry
            errors.append(entry["delta_rel_error"])
    report["max_delta_rel_error"] = max(errors)
    report["mean_delta_rel_error"] = sum(errors) / len(errors)
    return report
