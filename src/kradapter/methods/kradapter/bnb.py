"""KRAdapter layers for bitsandbytes' Linear4bit (QLoRA-style NF4/FP4) and Linear8bitLt (LLM.int8()) bases.

Both reuse QuantizedLinear; what differs per format is when the weight cannot be dequantized and what restoring
the original quantized weight takes. bitsandbytes is never imported here: a bnb layer exists only if it already was.
"""

from __future__ import annotations

import sys
from typing import Optional

from torch import nn

from .quantized import QuantizedLinear


class Linear4bit(QuantizedLinear):
    """KRAdapter on bnb.nn.Linear4bit (QLoRA's NF4 or FP4: 16 levels per block of 64 weights)."""

    def backend_dequantize_blocker(self) -> Optional[str]:
        """Why bitsandbytes cannot dequantize this 4-bit weight correctly (repacked for AVX512-BF16 inference), or None.

        Returns:
            The reason, or None when dequantizing is safe.
        """
        state = getattr(self.get_base_layer().weight, "quant_state", None)
        # On AVX512-BF16 CPUs bitsandbytes repacks the weight in place at the first inference forward (absmax rounded
        # to bfloat16); its dequantize_4bit does not read that layout, so dequantizing would return garbage.
        if getattr(state, "packing_format_for_cpu", False):
            return (
                "bitsandbytes repacked this 4-bit weight for AVX512-BF16 CPU inference, a layout it cannot "
                "dequantize; merge before running inference in eval mode, or reload the model"
            )
        return None


class Linear8bitLt(QuantizedLinear):
    """KRAdapter on bnb.nn.Linear8bitLt (LLM.int8(): row-wise absmax int8 weights)."""

    def backend_dequantize_blocker(self) -> Optional[str]:
        """Why this 8-bit layer cannot be requantized (it keeps float16 training weights), or None.

        Returns:
            The reason, or None when dequantizing is safe.
        """
        if self.get_base_layer().state.has_fp16_weights:
            return "its 8-bit layer keeps float16 training weights (has_fp16_weights=True), which PEFT cannot requantize"
        return None

    def snapshot_base(self):
        # The int8 matrix and its row scales move between the parameter and the layer's state at the first forward.
        """The weight and the int8 matrix and row scales in the layer's state, which move at the first forward.

        Returns:
            What ``restore_base`` needs.
        """
        state = self.get_base_layer().state
        return super().snapshot_base(), state.CB, state.SCB

    def restore_base(self, snapshot) -> None:
        """Put back the weight and the layer state's int8 matrix and row scales.

        Args:
            snapshot: What ``snapshot_base`` returned.
        """
        weight_snapshot, cb, scb = snapshot
        super().restore_base(weight_snapshot)
        state = self.get_base_layer().state
        state.CB, state.SCB = cb, scb


def layer_class_for(base: nn.Module) -> Optional[type[QuantizedLinear]]:
    """The KRAdapter class for a bitsandbytes layer, or None for anything else."""
    bnb = sys.modules.get("bitsandbytes")
    if bnb is None:
        return None
    if isinstance(base, bnb.nn.Linear4bit):
        return Linear4bit
    if isinstance(base, bnb.nn.Linear8bitLt):
        return Linear8bitLt
    return None
