"""KRAdapter layers for bitsandbytes' Linear4bit (QLoRA-style NF4/FP4) and Linear8bitLt (LLM.int8()) bases.

Both reuse QuantizedLinear; what differs per format is when the weight cannot be dequantized, what restoring the
original quantized weight takes, and (4-bit) the CPU layout bitsandbytes repacks to on AVX512-BF16 machines.
bitsandbytes is imported only when a bnb layer exists, i.e. when it already was.
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from torch import nn

from ..._compat import (
    bnb_4bit_repacked_for_cpu,
    bnb_cpu_repack_fits,
    bnb_dequantize_cpu_packed,
    bnb_disable_cpu_repack,
    bnb_int8_state,
    bnb_store_4bit_standard_,
)
from .quantized import QuantizedLinear

# --- bitsandbytes' AVX512-BF16 CPU layout ---------------------------------------------------------------------------
# On a CPU with AVX512-BF16, bnb.nn.Linear4bit repacks its weight in place at the first inference forward (eval mode,
# input without grad) into a layout only its inference kernel reads (described, and read, in _compat). Before a
# training forward kradapter stores the weight back in the standard layout with the same codes and scales (lossless:
# the scales are already bfloat16); bitsandbytes packs it again at the next inference forward.


def is_cpu_packed(weight) -> bool:
    """Whether a bitsandbytes 4-bit weight is in the layout bitsandbytes repacks to for AVX512-BF16 CPU inference.

    Args:
        weight: A ``bnb.nn.Params4bit`` (anything else is not packed).
    """
    return bnb_4bit_repacked_for_cpu(weight)


def dequantize_cpu_packed(weight) -> torch.Tensor:
    """The (N x K) weight a CPU-packed bnb 4-bit parameter holds, exactly as its kernel reads it, in the dtype it
    was quantized from."""
    return bnb_dequantize_cpu_packed(weight)


def restore_standard_layout_(base: Any) -> None:
    """Store a CPU-packed Linear4bit weight back in bitsandbytes' standard layout, in place (same codes, same
    bfloat16-valued scales kept un-nested, so nothing is rounded again); its training backward needs that layout."""
    bnb_store_4bit_standard_(base, dequantize_cpu_packed(base.weight))


def _standard_layout_for_backward(base: nn.Module, args: tuple) -> None:
    # bitsandbytes packs only for inference (eval, input without grad) and its packed forward has no backward: anything
    # that may backpropagate through the layer needs the standard layout, which bitsandbytes then keeps (it packs
    # again at the next inference forward).
    x = args[0] if args else None
    if (base.training or getattr(x, "requires_grad", False)) and is_cpu_packed(base.weight):
        restore_standard_layout_(base)


def _standard_layout_for_saving(module: nn.Module, prefix: str, keep_vars: bool) -> None:
    # bitsandbytes' _save_to_state_dict unpacks a CPU-packed weight itself, in place, and its inverse mis-orders the
    # scales of un-nested states (what restore_standard_layout_ stores, so every layer trained here and repacked at
    # the next inference forward): saving would corrupt the base weights. Unpack them exactly first.
    if is_cpu_packed(module.weight):
        restore_standard_layout_(module)


def packable(module: nn.Module) -> bool:
    """Whether bitsandbytes' repack can handle this layer: whole tiles of 32 rows and whole blocks per row. It crashes
    otherwise ("shape '[32, 0]' is invalid ..." for in_features < blocksize), e.g. on tiny test models."""
    return bnb_cpu_repack_fits(module.weight)


def watch_cpu_layout(module: Any) -> None:
    """Make a bnb Linear4bit switch back to the standard layout before any forward that may backpropagate and before
    its state is saved (hooks, added once), and keep bitsandbytes from repacking a layer its repack would crash on."""
    if not packable(module):
        bnb_disable_cpu_repack(module)
    if not getattr(module, "_kradapter_watches_layout", False):
        module.register_forward_pre_hook(_standard_layout_for_backward)
        module.register_state_dict_pre_hook(_standard_layout_for_saving)
        module._kradapter_watches_layout = True


def watch_cpu_layouts(model: nn.Module) -> None:
    """watch_cpu_layout on every bnb Linear4bit of `model`, adapted or not: a frozen 4-bit layer between adapters
    must pass gradients back too."""
    bnb = sys.modules.get("bitsandbytes")
    if bnb is not None:
        for module in model.modules():
            if isinstance(module, bnb.nn.Linear4bit):
                watch_cpu_layout(module)


class Linear4bit(QuantizedLinear):
    """KRAdapter on bnb.nn.Linear4bit (QLoRA's NF4 or FP4: 16 levels per block of 64 weights), in either of
    bitsandbytes' CPU layouts (see above)."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, quantization_backend, **kwargs) -> None:
        super().__init__(base_layer, adapter_name, quantization_backend, **kwargs)
        watch_cpu_layout(self.get_base_layer())

    def get_base_weight(self) -> torch.Tensor:
        """The base layer's dequantized weight, read exactly from either 4-bit layout (standard or CPU-packed)."""
        weight = self.get_base_layer().weight
        if self.quantization_backend is not None and is_cpu_packed(weight):
            return dequantize_cpu_packed(weight)
        return super().get_base_weight()


class Linear8bitLt(QuantizedLinear):
    """KRAdapter on bnb.nn.Linear8bitLt (LLM.int8(): row-wise absmax int8 weights)."""

    def backend_dequantize_blocker(self) -> str | None:
        """Why this 8-bit layer cannot be requantized (it keeps float16 training weights), or None.

        Returns:
            The reason, or None when dequantizing is safe.
        """
        if bnb_int8_state(self.get_base_layer()).has_fp16_weights:
            return (
                "its 8-bit layer keeps float16 training weights (has_fp16_weights=True), which PEFT cannot requantize"
            )
        return None

    def snapshot_base(self):
        # The int8 matrix and its row scales move between the parameter and the layer's state at the first forward.
        """The weight and the int8 matrix and row scales in the layer's state, which move at the first forward.

        Returns:
            What ``restore_base`` needs.
        """
        state = bnb_int8_state(self.get_base_layer())
        return super().snapshot_base(), state.CB, state.SCB

    def restore_base(self, snapshot) -> None:
        """Put back the weight and the layer state's int8 matrix and row scales.

        Args:
            snapshot: What ``snapshot_base`` returned.
        """
        weight_snapshot, cb, scb = snapshot
        super().restore_base(weight_snapshot)
        state = bnb_int8_state(self.get_base_layer())
        state.CB, state.SCB = cb, scb


def layer_class_for(base: nn.Module) -> type[QuantizedLinear] | None:
    """The KRAdapter class for a bitsandbytes layer, or None for anything else."""
    bnb = sys.modules.get("bitsandbytes")
    if bnb is None:
        return None
    if isinstance(base, bnb.nn.Linear4bit):
        return Linear4bit
    if isinstance(base, bnb.nn.Linear8bitLt):
        return Linear8bitLt
    return None
