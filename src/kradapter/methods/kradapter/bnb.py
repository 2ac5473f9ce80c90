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

from .quantized import QuantizedLinear

# --- bitsandbytes' AVX512-BF16 CPU layout ---------------------------------------------------------------------------
# On a CPU with AVX512-BF16, bnb.nn.Linear4bit repacks its weight in place at the first inference forward (eval mode,
# input without grad): the 4-bit codes of W (N x K) are regrouped for its kernel and the per-block scales become a
# bfloat16 (K / blocksize) x N matrix, un-nested (quant_state.packing_format_for_cpu = True). bitsandbytes'
# dequantize_4bit and its autograd backward read only the standard layout, and its own inverse mis-orders the scales
# of un-nested states, so kradapter reads the packed layout itself (below) and, before a training forward, stores the
# weight back in the standard layout with the same codes and scales (lossless: the scales are already bfloat16).
_PACK_BLOCK_N = 32  # rows of W per packed tile (bitsandbytes' block_n)


def is_cpu_packed(weight) -> bool:
    """Whether a bitsandbytes 4-bit weight is in the layout bitsandbytes repacks to for AVX512-BF16 CPU inference.

    Args:
        weight: A ``bnb.nn.Params4bit`` (anything else is not packed).
    """
    return bool(getattr(getattr(weight, "quant_state", None), "packing_format_for_cpu", False))


def _packed_codes(packed: torch.Tensor, n: int, k: int) -> torch.Tensor:
    """The (n x k) 4-bit code indices of a CPU-packed weight. Rows come in tiles of 32; for each tile and column
    pair, 64 entries ordered (row in tile, column of the pair) fill 32 bytes: entry j in the low nibble of byte j,
    entry j + 32 in its high nibble."""
    flat = packed.reshape(-1, 32)
    entries = torch.cat([flat & 0xF, flat >> 4], dim=1)  # (tiles * k/2, 64), entry index = row_in_tile * 2 + c
    entries = entries.reshape(n // _PACK_BLOCK_N, k // 2, _PACK_BLOCK_N, 2)  # (tile, column pair, row, c)
    return entries.transpose(1, 2).reshape(n, k)


def dequantize_cpu_packed(weight) -> torch.Tensor:
    """The (N x K) weight a CPU-packed bnb 4-bit parameter holds, exactly as its kernel reads it, in the dtype it
    was quantized from."""
    state = weight.quant_state
    n, k = state.shape
    codes = _packed_codes(weight.data.view(torch.uint8), n, k).long()
    values = state.code.to(torch.float32)[codes].reshape(n, k // state.blocksize, state.blocksize)
    scales = state.absmax.to(torch.float32).T.reshape(n, k // state.blocksize, 1)  # stored (K / blocksize) x N
    dtype = getattr(state, "original_dtype", torch.float32)
    return (values * scales).reshape(n, k).to(dtype)


def restore_standard_layout_(base: Any) -> None:
    """Store a CPU-packed Linear4bit weight back in bitsandbytes' standard layout, in place (same codes, same
    bfloat16-valued scales kept un-nested, so nothing is rounded again); its training backward needs that layout."""
    import bitsandbytes.functional as bnb_functional

    weight = base.weight
    state = weight.quant_state
    data, new_state = bnb_functional.quantize_4bit(
        dequantize_cpu_packed(weight),
        blocksize=state.blocksize,
        quant_type=state.quant_type,
        compress_statistics=False,
        quant_storage=getattr(weight, "quant_storage", torch.uint8),
    )
    weight.data, weight.quant_state = data, new_state
    if getattr(base, "quant_state", None) is not None:
        base.quant_state = new_state


def _standard_layout_for_backward(base: nn.Module, args: tuple) -> None:
    # bitsandbytes packs only for inference (eval, input without grad) and its packed forward has no backward: anything
    # that may backpropagate through the layer needs the standard layout, which bitsandbytes then keeps (it packs
    # again at the next inference forward).
    x = args[0] if args else None
    if (base.training or getattr(x, "requires_grad", False)) and is_cpu_packed(base.weight):
        restore_standard_layout_(base)


def packable(module: nn.Module) -> bool:
    """Whether bitsandbytes' repack can handle this layer: whole tiles of 32 rows and whole blocks per row. It crashes
    otherwise ("shape '[32, 0]' is invalid ..." for in_features < blocksize), e.g. on tiny test models."""
    state = getattr(module.weight, "quant_state", None)
    if state is None:
        return True
    n, k = state.shape
    return n % _PACK_BLOCK_N == 0 and k % state.blocksize == 0


def watch_cpu_layout(module: Any) -> None:
    """Make a bnb Linear4bit switch back to the standard layout before any forward that may backpropagate (once),
    and keep bitsandbytes from repacking a layer its repack would crash on."""
    if not packable(module):
        module.support_avx512bf16_for_cpu = False  # bitsandbytes' own switch for the repack (Linear4bit.__init__)
    if not getattr(module, "_kradapter_watches_layout", False):
        module.register_forward_pre_hook(_standard_layout_for_backward)
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
        if self.get_base_layer().state.has_fp16_weights:
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
