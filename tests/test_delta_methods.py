"""SinLoRA and Kron-LoRA as PEFT methods: math vs plain references, forward, merge, save/load, gradients, errors."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from peft import PeftModel, get_peft_model
from transformers.pytorch_utils import Conv1D

import _bounds as bounds
import kradapter  # noqa: F401  (registers the methods)
from _tiny import fresh
from kradapter import KronLoRAConfig, SinLoRAConfig
from kradapter.ops import kronlora_delta, sinlora_delta

CONFIGS = {
    "sinlora": lambda **kw: SinLoRAConfig(target_modules=["fc1", "fc2"], r=3, lora_alpha=6.0, freq=5.0, **kw),
    "kronlora": lambda **kw: KronLoRAConfig(target_modules=["fc1", "fc2"], r=2, kron_shape=4, alpha=4.0, **kw),
}
PREFIX = {"sinlora": "sinlora_", "kronlora": "kronlora_"}


def make(method: str, seed: int = 0, **kw):
    torch.manual_seed(seed + 100)
    return get_peft_model(fresh(seed), CONFIGS[method](**kw))


def plain_matrix(layer) -> torch.Tensor:
    """The base layer's weight as a (d_out x d_in) matrix."""
    base = layer.get_base_layer()
    return base.weight.T if isinstance(base, Conv1D) else base.weight


# --- the math, against references written out by hand ------------------------------------------------------------


def test_sinlora_delta_matches_numpy_reference():
    torch.manual_seed(0)
    A, B = torch.randn(3, 7, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)
    ref = np.sin(4.0 * (B.numpy() @ A.numpy())) / 2.5 * 0.75
    assert np.allclose(sinlora_delta(A, B, 4.0, 2.5, 0.75).numpy(), ref)


def test_kronlora_delta_matches_blockwise_reference():
    torch.manual_seed(0)
    A, B1, B2 = torch.randn(2, 3), torch.randn(4, 2), torch.randn(2, 5)
    B = B1 @ B2
    ref = torch.zeros(8, 15)
    for i in range(2):
        for j in range(3):
            ref[i * 4 : (i + 1) * 4, j * 5 : (j + 1) * 5] = A[i, j] * B
    assert torch.allclose(kronlora_delta(A, B1, B2, 0.5), 0.5 * ref)


def test_sinlora_layer_uses_official_formula_with_sqrt_din_scale():
    model = make("sinlora", init_weights=False)
    layer = model.base_model.model.fc1
    A, B = layer.sinlora_A["default"].detach(), layer.sinlora_B["default"].detach()
    expected = torch.sin(5.0 * B @ A) / math.sqrt(16) * (6.0 / 3)
    assert torch.allclose(layer.delta_matrix("default"), expected, atol=1e-6)
    assert layer.scale["default"] == pytest.approx(4.0)


def test_kronlora_layer_shapes_and_update():
    model = make("kronlora", init_weights=False)
    fc1, fc2 = model.base_model.model.fc1, model.base_model.model.fc2
    # fc1 is 24 x 16: A 4 x 4, B = B1 B2 is 6 x 4 of rank 2; fc2 is 8 x 24: A 4 x 4, B 2 x 6
    assert tuple(fc1.kronlora_A["default"].shape) == (4, 4)
    assert tuple(fc1.kronlora_B1["default"].shape) == (6, 2) and tuple(fc1.kronlora_B2["default"].shape) == (2, 4)
    assert tuple(fc2.kronlora_B1["default"].shape) == (2, 2) and tuple(fc2.kronlora_B2["default"].shape) == (2, 6)
    A, B1, B2 = (getattr(fc1, f"kronlora_{n}")["default"].detach() for n in ("A", "B1", "B2"))
    assert torch.allclose(fc1.delta_matrix("default"), torch.kron(A, B1 @ B2) * 2.0)
    # rank(A ⊗ B) = rank(A) rank(B): 4 * 2 = 8 > r
    assert torch.linalg.matrix_rank(fc1.delta_matrix("default").detach()) == 8


# --- behaviour through PEFT ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_starts_unchanged(method):
    x = torch.randn(5, 16)
    assert torch.allclose(make(method)(x), fresh()(x))


@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_forward_is_base_plus_delta_on_linear_and_conv1d(method):
    model = make(method, init_weights=False)
    for name in ("fc1", "fc2"):
        layer = getattr(model.base_model.model, name)
        base = layer.get_base_layer()
        x = torch.randn(4, layer.d_in)
        delta = layer.delta_matrix("default").detach()
        expected = x @ plain_matrix(layer).T + base.bias + x @ delta.T
        # Two float32 evaluations of W0 x + b + Delta W x in any order (tests/_bounds.py float_linear), per element
        # relative to |x| |W0|^T + |b| + |x| |Delta W|^T.
        mag = x.abs() @ plain_matrix(layer).abs().T + base.bias.abs() + x.abs() @ delta.abs().T
        tol = bounds.float_linear(layer.d_in + 1) * mag
        assert torch.all((layer(x) - expected).abs() <= tol), name
        assert torch.any((layer(x) - base(x)).abs() > 100 * tol), name  # the adapter does far more than rounding


@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_merge_unmerge_and_unload(method):
    model = make(method, init_weights=False)
    x = torch.randn(6, 16)
    before = [plain_matrix(getattr(model.base_model.model, n)).detach().clone() for n in ("fc1", "fc2")]
    y = model(x)
    model.merge_adapter()
    assert torch.allclose(model(x), y, atol=1e-5)
    model.unmerge_adapter()
    for n, w in zip(("fc1", "fc2"), before):
        assert torch.allclose(plain_matrix(getattr(model.base_model.model, n)), w, atol=1e-6)
    assert torch.allclose(model(x), y, atol=1e-6)
    with model.disable_adapter():
        assert torch.allclose(model(x), fresh()(x), atol=1e-6)
    merged = model.merge_and_unload()
    assert type(merged.fc1) is torch.nn.Linear and type(merged.fc2) is Conv1D
    assert torch.allclose(merged(x), y, atol=1e-5)


@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_safe_merge_refuses_nan_and_changes_nothing(method):
    model = make(method, init_weights=False)
    first = next(p for n, p in model.named_parameters() if n.startswith("base_model.model.fc2") and PREFIX[method] in n)
    with torch.no_grad():
        first.fill_(float("nan"))
    w1 = model.base_model.model.fc1.get_base_layer().weight.detach().clone()
    with pytest.raises(ValueError, match="NaN/Inf"):
        model.merge_adapter(safe_merge=True)
    assert torch.equal(model.base_model.model.fc1.get_base_layer().weight, w1)
    assert not model.base_model.model.fc1.merged


@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_save_load_round_trip(method, tmp_path):
    model = make(method, init_weights=False)
    x = torch.randn(3, 16)
    y = model(x)
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["peft_type"] == method.upper()
    loaded = PeftModel.from_pretrained(fresh(), tmp_path)
    assert torch.allclose(loaded(x), y, atol=1e-6)
    assert type(loaded.peft_config["default"]) is type(model.peft_config["default"])


@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_gradients_only_on_adapter_parameters(method):
    model = make(method, init_weights=False)
    model(torch.randn(4, 16)).pow(2).sum().backward()
    for name, p in model.named_parameters():
        if PREFIX[method] in name:
            assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert not p.requires_grad and p.grad is None, name


@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_second_adapter_and_delete(method):
    model = make(method, init_weights=False)
    model.add_adapter("other", CONFIGS[method](init_weights=False))
    x = torch.randn(2, 16)
    model.set_adapter("other")
    y_other = model(x)
    model.set_adapter("default")
    assert not torch.allclose(model(x), y_other)
    model.delete_adapter("other")
    assert "other" not in model.base_model.model.fc1.r


# --- bad configs: one clear error each -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"r": 0}, "r must be an int >= 1"),
        ({"freq": 0}, "freq=0"),
        ({"freq": float("nan")}, "freq must be a finite"),
        ({"scale": -1.0}, "scale must be > 0"),
        ({"dropout": 1.5}, "dropout=1.5"),
        ({"lora_alpha": "x"}, "lora_alpha"),
    ],
)
def test_sinlora_bad_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SinLoRAConfig(target_modules=["fc1"], **kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"r": 0}, "r must be an int >= 1"),
        ({"kron_shape": 0}, "kron_shape=0"),
        ({"kron_shape": [2, 2, 2]}, "pair"),
        ({"module_dropout": -0.1}, "module_dropout"),
        ({"alpha": float("inf")}, "alpha must be a finite"),
    ],
)
def test_kronlora_bad_config(kwargs, message):
    with pytest.raises(ValueError, match=message):
        KronLoRAConfig(target_modules=["fc1"], **kwargs)


def test_kronlora_shape_errors_name_the_module():
    with pytest.raises(ValueError, match=r"module 'fc1'.*kron_shape=\(5, 4\) does not divide the 24 x 16"):
        get_peft_model(fresh(), KronLoRAConfig(target_modules=["fc1"], kron_shape=[5, 4]))
    with pytest.raises(ValueError, match=r"module 'fc1'.*r=9 is out of range.*need 1 <= r <= 4"):
        get_peft_model(fresh(), KronLoRAConfig(target_modules=["fc1"], kron_shape=4, r=9))


@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_unsupported_module_type_is_named(method):
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3))
    with pytest.raises(TypeError, match=r"cannot adapt module '0' of type torch.nn.modules.conv.Conv2d"):
        get_peft_model(model, type(CONFIGS[method]())(target_modules=["0"]))


@pytest.mark.parametrize("method", sorted(CONFIGS))
def test_bfloat16_base_keeps_float32_adapter_and_merges(method):
    base = fresh().to(torch.bfloat16)
    torch.manual_seed(3)
    model = get_peft_model(base, CONFIGS[method](init_weights=False))
    layer = model.base_model.model.fc1
    assert layer.adapter_dtype("default") == torch.float32  # PEFT's autocast_adapter_dtype
    x = torch.randn(3, 16, dtype=torch.bfloat16)
    y = model(x)
    assert y.dtype == torch.bfloat16
    model.merge_adapter()
    assert layer.get_base_layer().weight.dtype == torch.bfloat16
    assert torch.allclose(model(x).float(), y.float(), atol=5e-2)


# --- the runtime scale (PEFT LoRA's set_scale / scale_layer / unscale_layer, used by diffusers) ------------------


@pytest.mark.parametrize("method", ["sinlora", "kronlora", "kradapter"])
def test_set_scale_multiplies_the_update_and_unscale_resets_it(method):
    torch.manual_seed(0)
    config = (
        kradapter.KRAdapterConfig(target_modules=["fc1", "fc2"], init_weights=False)
        if method == "kradapter"
        else CONFIGS[method](init_weights=False)
    )
    model = get_peft_model(fresh(0), config)
    layer = model.base_model.model.fc1
    x = torch.randn(4, 16)
    with torch.no_grad():
        base = layer.get_base_layer()(x)
        full = layer(x) - base
        delta = layer.delta_matrix("default").clone()
        layer.set_scale("default", 0.25)
        torch.testing.assert_close(layer.delta_matrix("default"), 0.25 * delta)
        torch.testing.assert_close(layer(x) - base, 0.25 * full, rtol=1e-5, atol=1e-6)
        layer.scale_layer(2.0)  # active adapters only: 0.25 * 2
        assert layer.update_scale == {"default": 0.5}
        layer.unscale_layer(2.0)
        assert layer.update_scale == {"default": 0.25}
        layer.merge()  # a merge applies the scaled update
        torch.testing.assert_close(layer(x) - base, 0.25 * full, rtol=1e-5, atol=1e-5)
        layer.unmerge()
        layer.unscale_layer()  # None: back to the configured update
        torch.testing.assert_close(layer(x) - base, full, rtol=1e-5, atol=1e-6)
        layer.set_scale("missing", 3.0)  # an adapter not on this layer is ignored, as in PEFT's LoRA
        assert layer.update_scale == {"default": 1.0}
