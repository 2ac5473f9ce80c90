"""tests/_bounds.py against real arithmetic: each bound holds for the computation it describes, and the
bfloat16 / int8 bounds are not float32 ones (a reduced-precision result breaks the float32 bound)."""

import pytest
import torch

import _bounds as bounds

K = 256  # the reduction length


def operands(seed=0, rows=16, cols=32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(rows, K, generator=g), torch.randn(cols, K, generator=g)


def test_unit_roundoff_and_gamma_follow_their_definitions():
    assert bounds.unit_roundoff(torch.float32) == 2.0**-24 and bounds.unit_roundoff(torch.bfloat16) == 2.0**-8
    assert bounds.gamma(K) == pytest.approx(K * 2.0**-24 / (1 - K * 2.0**-24), rel=1e-12)
    with pytest.raises(ValueError, match="no error bound"):
        bounds.gamma(256, torch.bfloat16)  # n u = 1
    assert bounds.compose([0.1, 0.1]) == pytest.approx(0.21)
    with pytest.raises(ValueError, match="first-order"):
        bounds.compose([0.3, 0.3])


def test_a_bfloat16_matmul_stays_within_its_bound_and_breaks_the_float32_one():
    x, w = operands()
    exact = x.double() @ w.double().T
    mag = bounds.operand_magnitude(x, w)
    # torch's CPU bfloat16 matmul: both operands and the output rounded to bfloat16, float32 accumulation.
    bf16_err = ((x.bfloat16() @ w.bfloat16().T).double() - exact).abs().max().item()
    fp32_err = ((x @ w.T).double() - exact).abs().max().item()
    u = bounds.unit_roundoff(torch.bfloat16)
    assert bf16_err <= ((1 + u) ** 3 - 1 + bounds.gamma(K)) * mag
    assert fp32_err <= bounds.gamma(K) * mag
    assert bf16_err > bounds.gamma(K) * mag and bf16_err > 100 * fp32_err  # a float32 bound would be wrong here


def test_bnb_4bit_bounds_hold_for_both_cpu_paths_and_the_paths_differ(monkeypatch):
    bnb = pytest.importorskip("bitsandbytes")
    from _bnb_cpu_layout import force_cpu_layout, packed_weight_reference

    x, w = operands(1, cols=64)
    outs = {}
    for packed in (False, True):
        force_cpu_layout(packed, monkeypatch.setattr)  # read when the layer is built
        layer = bnb.nn.Linear4bit(K, 64, bias=False, compute_dtype=torch.float32, quant_type="nf4")
        layer.weight = bnb.nn.Params4bit(w.clone(), requires_grad=False, quant_type="nf4")
        layer = layer.to("cpu")  # quantizes (NF4, double quantization: as transformers' QLoRA config)
        with torch.no_grad():
            y = layer.eval()(x)
        state = layer.weight.quant_state
        assert getattr(state, "packing_format_for_cpu", False) == packed
        deq = (
            packed_weight_reference(layer.weight.data, state)
            if packed
            else bnb.functional.dequantize_4bit(layer.weight.data, state)
        )
        want = x.double() @ deq.double().T
        outs[packed] = ((y.double() - want).abs().max().item(), bounds.operand_magnitude(x, deq))
    (err32, mag32), (err16, mag16) = outs[False], outs[True]
    assert err32 <= bounds.bnb_4bit_cpu_float32(K) * mag32
    assert err16 <= bounds.bnb_4bit_cpu(K) * mag16
    assert err16 > bounds.bnb_4bit_cpu_float32(K) * mag16  # the packed path is bfloat16: its own bound is needed


def test_bnb_8bit_bound_holds_relative_to_the_row_absmax():
    bnb = pytest.importorskip("bitsandbytes")
    x, w = operands(2)
    x[0, 3] = 9.0  # an outlier column above LLM.int8()'s threshold: kept out of the int8 part
    layer = bnb.nn.Linear8bitLt(K, w.shape[0], bias=False, has_fp16_weights=False, threshold=6.0)
    layer.weight = bnb.nn.Int8Params(w.clone(), requires_grad=False, has_fp16_weights=False)
    layer = layer.to("cpu")  # quantizes row-wise to int8
    with torch.no_grad():
        y = layer.eval()(x)
    scb = layer.state.SCB if layer.state.SCB is not None else layer.weight.SCB
    deq = bnb.functional.int8_vectorwise_dequant(layer.weight.data, scb).double()
    err = (y.double() - x.double() @ deq.T).abs().max().item()
    assert err <= bounds.bnb_8bit_cpu(K) * bounds.rowmax_magnitude(x, deq)
    assert err > bounds.bnb_4bit_cpu_float32(K) * bounds.operand_magnitude(x, deq)  # int8 steps, not float32
