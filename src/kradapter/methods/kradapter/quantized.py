"""KRAdapter on a quantized frozen base (bitsandbytes 4-bit / 8-bit, torchao, and any backend PEFT knows).

The base layer computes its own quantized output and the adapter adds alpha * Delta W x in the adapter's (full)
precision, so training and inference need nothing from the backend beyond its forward. Only merging touches the
quantized weight, through PEFT's QuantizationBackend: dequantize, add alpha * Delta W in float32, requantize.
Requantizing rounds the merged weight onto the quantization grid, so every merge measures what it lost
(``merge_error``); unmerge puts the original quantized weight back (kept aside at the first merge) instead of
subtracting through a second rounding. Backends that cannot dequantize refuse to merge rather than guess.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, cast

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from ..._compat import check_adapters_to_merge
from .layer import Linear


@dataclass(frozen=True)
class MergeError:
    """How far a requantized merge landed from the exact merged weight T = W_deq + alpha * Delta W.

    relative: ||W_merged - T|| / ||T||. of_update: ||W_merged - T|| / ||alpha * Delta W||, the share of the update
    lost to rounding (1.0 or more means the merged update is noise). max_abs: largest entry of |W_merged - T|.
    """

    max_abs: float
    relative: float
    of_update: float


def measure_merge_error(merged: torch.Tensor, exact: torch.Tensor, update: torch.Tensor) -> MergeError:
    """How far a requantized merge landed from the exact merged weight.

    Args:
        merged: The weight after requantization, dequantized.
        exact: The exact merged weight ``W_deq + alpha * Delta W``.
        update: ``alpha * Delta W``.

    Returns:
        The [`MergeError`][kradapter.methods.kradapter.quantized.MergeError].
    """
    err = merged.float() - exact.float()
    norm = torch.linalg.matrix_norm
    return MergeError(
        max_abs=err.abs().max().item(),
        relative=(norm(err) / norm(exact.float()).clamp_min(1e-30)).item(),
        of_update=(norm(err) / norm(update.float()).clamp_min(1e-30)).item(),
    )


class QuantizedLinear(Linear):
    """KRAdapter around a quantized linear layer; weights are read and written through PEFT's QuantizationBackend."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, quantization_backend, **kwargs) -> None:
        super().__init__(base_layer, adapter_name, **kwargs)
        self.quantization_backend = quantization_backend
        # Requantizing rounds away much of a typical update (benchmarks/quantized_merge.py: a median 109% of its norm
        # on 4-bit NF4, 55% on 8-bit), so a plain merge_adapter() refuses and asks for a choice between
        # kradapter.quant.merge_requantized (which sets this flag for one merge) and merge_to_full_precision.
        self.requantize_chosen = False
        self.merge_error: MergeError | None = None
        self._premerge = None  # the original quantized weight while adapters are merged

    def get_base_layer(self) -> Any:
        """The quantized base layer, typed as what it is to a type checker: a backend's own class (bitsandbytes,
        torchao, ... ship no types), whose backend attributes (``state``, ``quant_state``, ...) this layer reads."""
        return super().get_base_layer()

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        # The explicit unfused path: a quantized base computes its own output; the adapter adds its term.
        """The quantized base's own output plus the adapters' update in the adapter's precision.

        Args:
            x: The input.
            *args: Passed to the base layer.
            **kwargs: Passed to the base layer.

        Returns:
            The layer's output.
        """
        return self.adapted_forward(x, *args, **kwargs)

    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        # The packed quantized weight has no (d_out, d_in) shape to follow; the dequantized weight is d_out x d_in.
        """``alpha * Delta W`` in the base weight's layout, in the adapter's dtype.

        Args:
            adapter_name: The adapter.

        Returns:
            The update.
        """
        return self.delta_matrix(adapter_name)

    # --- merge ----------------------------------------------------------------------------------------------------
    def dequantize_blocker(self) -> str | None:
        """Why this layer's weight cannot be dequantized correctly, or None."""
        backend = self.quantization_backend
        if backend is None:  # base already replaced by a full-precision copy (merge_to_full_precision)
            return None
        if not backend.supports_merge:
            return (
                f"its {backend.backend_name or type(self.get_base_layer()).__name__} quantized base cannot be "
                "dequantized and requantized, so merging would corrupt it; keep the adapter unmerged, or load the "
                "base model in full precision and merge there"
            )
        return self.backend_dequantize_blocker()

    def backend_dequantize_blocker(self) -> str | None:
        """Backend-specific reasons the weight cannot be dequantized (overridden per backend)."""
        return None

    def merge_blocker(self) -> str | None:
        """Why merging into this layer must not proceed, or None. Checked for every layer before any is touched."""
        if self.quantization_backend is None:
            return None
        reason = self.dequantize_blocker()
        if reason is None and not self.requantize_chosen:
            reason = (
                f"merging into a {self.quantization_backend.backend_name} base requantizes the merged weight, which "
                "can round away most of the update; choose explicitly: kradapter.quant.merge_requantized(model) "
                "(in place, returns the measured merge error) or kradapter.quant.merge_to_full_precision(model) "
                "(a new full-precision model, the quantized one untouched)"
            )
        return reason

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Dequantize, add the updates in float32, requantize; records ``merge_error`` (a ``MergeError``).

        The original quantized weight is kept aside at the first merge so that unmerge restores it exactly.

        Args:
            safe_merge: Accepted for PEFT's protocol; the merged weight is always checked for NaN/Inf here, since a NaN
                written into a quantized weight cannot be subtracted out again.
            adapter_names: The adapters to merge (default: the active ones).

        Raises:
            ValueError: If the backend cannot dequantize correctly, no requantize choice was made, or the merged weight
                is not finite; nothing is merged then.
        """
        if self.quantization_backend is None:
            return super().merge(safe_merge=safe_merge, adapter_names=adapter_names)
        adapter_names = [n for n in check_adapters_to_merge(self, adapter_names) if self.has_adapter(n)]
        if not adapter_names:
            return
        reason = self.merge_blocker()
        if reason is not None:
            raise ValueError(f"cannot merge KRAdapter into {type(self.get_base_layer()).__name__}: {reason}")
        weight = self.get_base_weight()
        # a tensor, not sum()'s start value 0: adapter_names is not empty
        update = cast(torch.Tensor, sum(self.get_delta_weight(n).detach().float() for n in adapter_names))
        exact = weight.float() + update.to(weight.device)
        # Always checked: a NaN written into a quantized weight cannot be subtracted out again.
        if not torch.isfinite(exact).all():
            raise ValueError(f"merging adapters {adapter_names} gives NaN/Inf weights; nothing was merged")
        if not self.merged_adapters:
            self._premerge = self.snapshot_base()
        self.set_base_weight(exact.to(weight.dtype))
        self.merge_error = measure_merge_error(self.get_base_weight(), exact, update)
        self.merged_adapters.extend(adapter_names)

    def unmerge(self) -> None:
        """Put back the original quantized weight kept aside at the first merge (exact, no second rounding)."""
        if self.quantization_backend is None:
            return super().unmerge()
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.", stacklevel=2)
            return
        self.restore_base(self._premerge)
        self._premerge = None
        self.merged_adapters.clear()
        self.merge_error = None

    def snapshot_base(self):
        """What restore_base needs to put the original quantized weight back exactly."""
        weight = self.get_base_layer().weight
        # PEFT's requantizers may edit the old parameter's attributes (bnb 4-bit marks it unquantized): keep a copy.
        return weight, dict(weight.__dict__)

    def restore_base(self, snapshot) -> None:
        """Put back the weight that ``snapshot_base`` took, exactly.

        Args:
            snapshot: What ``snapshot_base`` returned.
        """
        weight, attributes = snapshot
        weight.__dict__.clear()
        weight.__dict__.update(attributes)
        self.get_base_layer().weight = weight

    # --- a full-precision copy ------------------------------------------------------------------------------------
    def dequantize_base_(self, dtype: torch.dtype | None = None) -> None:
        """Replace the quantized base with an nn.Linear holding its dequantized weight; this layer then merges and
        unloads like a plain KRAdapter Linear. Used on a deep copy by kradapter.quant.merge_to_full_precision."""
        if self.merged:
            self.unmerge()
        reason = self.dequantize_blocker()
        if reason is not None:
            raise ValueError(f"cannot dequantize {type(self.get_base_layer()).__name__}: {reason}")
        self._set_full_precision_base(dequantized_linear(self.get_base_layer(), self.get_base_weight(), dtype))
        self.quantization_backend = None

    def _set_full_precision_base(self, linear: nn.Linear) -> None:
        holder: nn.Module = self
        while isinstance(holder.base_layer, BaseTunerLayer):  # base wrapped by another tuner layer
            holder = cast(nn.Module, holder.base_layer)  # a tuner layer is an nn.Module
        holder.base_layer = linear


def dequantized_linear(quantized: nn.Module, weight: torch.Tensor, dtype: torch.dtype | None) -> nn.Linear:
    """An nn.Linear with the given (dequantized) weight and the quantized layer's bias, in ``dtype``."""
    dtype = dtype or weight.dtype
    bias = getattr(quantized, "bias", None)
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=dtype)
    with torch.no_grad():
        linear.weight.copy_(weight.to(dtype))
        if bias is not None:
            linear.bias.copy_(bias.detach().to(dtype))
    linear.requires_grad_(False)
    return linear


def is_plain_float_layer(base: nn.Module) -> bool:
    """True for a layer whose weight is an ordinary floating-point tensor (no quantization to handle)."""
    weight = getattr(base, "weight", None)
    return (
        isinstance(weight, torch.Tensor) and type(weight) in (nn.Parameter, torch.Tensor) and weight.is_floating_point()
    )
