"""Post-training quantization of Kron-LoRA factors: the grid, the in-place replacement, the error report."""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model

import _bounds as bounds
import kradapter  # noqa: F401
from _tiny import fresh
from kradapter import KronLoRAConfig, quantize_kronlora_
from kradapter.methods.kronlora import absmax_quantize, fake_quantize


def kron_model(seed: int = 0):
    torch.manual_seed(seed)
    return get_peft_model(
        fresh(seed), KronLoRAConfig(target_modules=["fc1", "fc2"], r=2, kron_shape=4, init_weights=False)
    )


@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("granularity", ["row", "tensor"])
def test_absmax_grid_and_error_bound(bits, granularity):
    torch.manual_seed(1)
    t = torch.randn(6, 9)
    t[2] = 0.0  # an all-zero row stays exactly zero
    q, scale = absmax_quantize(t, bits, granularity)
    qmax = 2 ** (bits - 1) - 1
    assert q.dtype == torch.int8 and int(q.abs().max()) == qmax
    assert scale.shape == ((6, 1) if granularity == "row" else (1, 1))
    back = fake_quantize(t, bits, granularity)
    assert torch.all((back - t).abs() <= scale / 2 + 1e-7)  # round to nearest: at most half a step
    assert torch.equal(back[2], torch.zeros(9))
    assert torch.allclose(back, q.float() * scale)


def test_row_scales_beat_one_tensor_scale_on_uneven_rows():
    torch.manual_seed(2)
    t = torch.randn(8, 16) * torch.logspace(-3, 0, 8).unsqueeze(1)
    row = (fake_quantize(t, 4, "row") - t).norm()
    tensor = (fake_quantize(t, 4, "tensor") - t).norm()
    assert row < tensor


def test_quantize_kronlora_replaces_factors_and_reports():
    model = kron_model()
    x = torch.randn(5, 16)
    y = model(x)
    fc1 = model.base_model.model.fc1
    expected_A = fake_quantize(fc1.kronlora_A["default"].detach(), 4)
    report = quantize_kronlora_(model, bits=4)
    assert torch.equal(fc1.kronlora_A["default"].detach(), expected_A)
    assert set(report["layers"]) == {"base_model.model.fc1", "base_model.model.fc2"}
    entry = report["layers"]["base_model.model.fc1"]["default"]
    assert set(entry) == {"A", "B1", "B2", "delta_rel_error"}
    assert 0 < report["max_delta_rel_error"] < 0.5
    # the model now computes exactly the quantized adapter: W0 x + delta(dequantized factors) x
    base = fc1.get_base_layer()
    delta = fc1.delta_matrix("default").detach()
    # two float32 evaluations of W0 x + b + Delta W x in any order (tests/_bounds.py float_linear), per element
    mag = x.abs() @ base.weight.abs().T + base.bias.abs() + x.abs() @ delta.abs().T
    assert torch.all((fc1(x) - base(x) - x @ delta.T).abs() <= bounds.float_linear(17) * mag)
    assert not torch.allclose(model(x), y)
    # quantizing again changes nothing: the values are already on the grid
    again = quantize_kronlora_(model, bits=4)
    assert again["max_delta_rel_error"] < 1e-6


def test_eight_bits_is_closer_than_four():
    err8 = quantize_kronlora_(kron_model(), bits=8)["mean_delta_rel_error"]
    err4 = quantize_kronlora_(kron_model(), bits=4)["mean_delta_rel_error"]
    assert 0 < err8 < err4


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"bits": 16}, r"bits must be an int in \[2, 8\]"),
        ({"bits": 4, "granularity": "column"}, "granularity='column'"),
        ({"bits": 4, "adapter_names": ["nope"]}, "adapter 'nope' is not on Kron-LoRA layer"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        quantize_kronlora_(kron_model(), **kwargs)


def test_refuses_merged_and_models_without_kronlora():
    model = kron_model()
    model.merge_adapter()
    with pytest.raises(ValueError, match="is merged; unmerge before quantizing"):
        quantize_kronlora_(model, bits=8)
    with pytest.raises(ValueError, match="no Kron-LoRA layers"):
        quantize_kronlora_(fresh(), bits=8)
