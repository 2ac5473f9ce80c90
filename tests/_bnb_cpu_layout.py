"""bitsandbytes' two CPU layouts for 4-bit weights, either one on any CPU.

On a CPU with AVX512-BF16, bnb.nn.Linear4bit repacks its weight at the first inference forward and runs a kernel that
reads the packed layout; elsewhere it keeps the standard layout. ``force_cpu_layout`` makes bitsandbytes take the
layout asked for whatever this CPU has: it sets the CPU check Linear4bit reads when it is built
(``bitsandbytes.nn.modules.has_avx512bf16``), and where the CPU lacks AVX512-BF16 (so the native packed kernel cannot
run) it puts a stand-in for that kernel in place, built from bitsandbytes' own pieces. On an AVX512-BF16 CPU the real
kernel runs. Used by tests/test_quantized.py (through monkeypatch) and by the scripts torchrun launches.
"""

from __future__ import annotations

import copy

import torch


def packed_weight_reference(data, state):
    """The weight a CPU-packed 4-bit parameter holds, from bitsandbytes' own pieces: its inverse for the codes (its
    scales it mis-orders when un-nested, so they are read from the packed state), then dequantize_4bit."""
    import bitsandbytes as bnb

    codes_state = copy.copy(state)
    codes_state.original_nested = False
    codes, _ = bnb.functional._convert_weight_packed_for_cpu_inverse(data.clone(), codes_state)
    standard = bnb.functional.QuantState(
        absmax=state.absmax.float().T.reshape(-1),
        shape=state.shape,
        code=state.code,
        blocksize=state.blocksize,
        quant_type=state.quant_type,
        dtype=torch.float32,
    )
    return bnb.functional.dequantize_4bit(codes, standard)


def fake_avx512bf16_gemv_4bit(original):
    """bitsandbytes' gemv_4bit as on an AVX512-BF16 CPU: reads the CPU-packed layout, computes in bfloat16. Built
    from bitsandbytes' own pieces (its inverse for the codes, dequantize_4bit), independent of kradapter's reader."""

    def gemv_4bit(A, B, out=None, transposed_A=False, transposed_B=False, state=None):
        if not getattr(state, "packing_format_for_cpu", False):
            return original(A, B, out=out, transposed_A=transposed_A, transposed_B=transposed_B, state=state)
        W = packed_weight_reference(B, state)
        return (A.to(torch.bfloat16) @ W.to(torch.bfloat16).T).to(A.dtype)

    return gemv_4bit


def native_avx512bf16() -> bool:
    """Whether this CPU has AVX512-BF16, as bitsandbytes' native library reports it."""
    import bitsandbytes as bnb

    return bool(bnb.functional.has_avx512bf16())


def force_cpu_layout(packed: bool, setattr=setattr) -> None:
    """From now on, 4-bit layers built on CPU repack for AVX512-BF16 at their first inference forward (`packed`) or
    never do, whatever this CPU has. `setattr`: monkeypatch.setattr in a test, so that it is undone."""
    import bitsandbytes as bnb

    setattr(bnb.nn.modules, "has_avx512bf16", lambda: packed)
    if packed and not native_avx512bf16():
        setattr(bnb.functional, "gemv_4bit", fake_avx512bf16_gemv_4bit(bnb.functional.gemv_4bit))
