"""The fused KRAdapter path (methods/kradapter/fused.py): exact gradients, dtypes, fallbacks, memory, checkpointing."""

import pytest
import torch
import torch.nn.functional as F
from peft import get_peft_model
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers.pytorch_utils import Conv1D

from kradapter import KRAdapterConfig
from kradapter.methods.kradapter import fused as fused_mod
from kradapter.methods.kradapter.layer import Linear
from kradapter.ops import kradapter_delta

FUSED_NODE = "KRAdapterLinearFunctionBackward"


def make_layer(d_in, d_out, k1="sqrt", dtype=torch.float64, conv1d=False, bias=True, seed=0, **kwargs):
    torch.manual_seed(seed)
    base = Conv1D(d_out, d_in) if conv1d else nn.Linear(d_in, d_out, bias=bias)
    if conv1d:
        nn.init.normal_(base.weight, std=0.2)
        nn.init.normal_(base.bias, std=0.2)
    base = base.to(dtype).requires_grad_(False)
    layer = Linear(base, "default", k1=k1, alpha=0.7, init_weights=False, **kwargs)
    return layer.to(dtype)


def reference(layer, x, U, V):
    """Autograd of the plain formula y = x (W0 + alpha * Delta W)^T + b."""
    base = layer.base_layer
    w0 = base.weight.T if isinstance(base, Conv1D) else base.weight
    weight = w0 + layer.alpha["default"] * kradapter_delta(U, V, layer.d_out, layer.d_in)
    return F.linear(x, weight, base.bias)


def grads_vs_reference(layer, x_shape, seed=1):
    torch.manual_seed(seed)
    U, V = layer.kradapter_U["default"], layer.kradapter_V["default"]
    x = torch.randn(*x_shape, layer.d_in, dtype=U.dtype, requires_grad=True)
    y = layer(x)
    assert type(y.grad_fn).__name__ == FUSED_NODE
    g = torch.randn_like(y)
    y.backward(g)
    U2, V2 = U.detach().clone().requires_grad_(), V.detach().clone().requires_grad_()
    x2 = x.detach().clone().requires_grad_()
    y2 = reference(layer, x2, U2, V2)
    y2.backward(g)
    return [(y, y2), (x.grad, x2.grad), (U.grad, U2.grad), (V.grad, V2.grad)]


@pytest.mark.parametrize(
    "d_in, d_out, k1, x_shape, conv1d",
    [
        (16, 16, "sqrt", (4, 5), False),  # square, exact k1 * k2 = m
        (12, 20, "sqrt", (7,), False),  # d_out > d_in, truncated (k1 * k2 = 20 > m? 4 * 5 = 20 = m)
        (20, 12, "sqrt", (2, 3, 4), False),  # d_out < d_in: Delta W transposed
        (7, 30, 4, (9,), False),  # truncated: k1 * k2 = 32 > m = 30
        (30, 7, 5, (3, 3), False),  # truncated and transposed
        (9, 30, 20, (5,), False),  # k1 * k2 - m >= k2: rows of U that never reach Delta W
        (300, 200, "cbrt", (6,), False),  # several reduction chunks
        (24, 40, 6, (2, 5), True),  # transformers Conv1D, d_out > d_in
        (40, 24, 6, (2, 5), True),  # Conv1D, d_out < d_in
    ],
)
def test_fused_gradients_equal_autograd_of_plain_formula_float64(d_in, d_out, k1, x_shape, conv1d):
    layer = make_layer(d_in, d_out, k1, conv1d=conv1d)
    for ours, ref in grads_vs_reference(layer, x_shape):
        torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)


def test_fused_without_bias_and_with_trained_bias():
    layer = make_layer(10, 14, bias=False)
    for ours, ref in grads_vs_reference(layer, (3,)):
        torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    layer = make_layer(10, 14)
    layer.base_layer.bias.requires_grad_(True)
    torch.manual_seed(2)
    x = torch.randn(4, 10, dtype=torch.float64)
    y = layer(x)
    assert type(y.grad_fn).__name__ == FUSED_NODE
    y.square().sum().backward()
    bias_grad = layer.base_layer.bias.grad.clone()
    layer.base_layer.bias.grad = None
    reference(layer, x, layer.kradapter_U["default"], layer.kradapter_V["default"]).square().sum().backward()
    torch.testing.assert_close(bias_grad, layer.base_layer.bias.grad, rtol=1e-10, atol=1e-12)


def test_frozen_adapter_and_input_without_grad_skip_their_gradients():
    layer = make_layer(10, 14)
    layer.kradapter_V["default"].requires_grad_(False)
    x = torch.randn(3, 10, dtype=torch.float64)  # no grad: dX is not computed
    layer(x).sum().backward()
    assert layer.kradapter_V["default"].grad is None and layer.kradapter_U["default"].grad is not None


def saved_storages(fn):
    """(ptr, nbytes, shape) of every distinct storage autograd saves for backward while fn() runs."""
    seen = {}

    def pack(t):
        s = t.untyped_storage()
        seen[s.data_ptr()] = (s.nbytes(), tuple(t.shape))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, seen


def test_fused_saves_nothing_of_size_d_out_by_d_in_but_the_frozen_weight():
    layer = make_layer(64, 96, dtype=torch.float32)
    x = torch.randn(8, 64, requires_grad=True)
    weight_ptr = layer.base_layer.weight.untyped_storage().data_ptr()
    param_ptrs = {p.untyped_storage().data_ptr() for p in layer.parameters()}
    full = 64 * 96 * 4

    y, seen = saved_storages(lambda: layer(x))
    assert type(y.grad_fn).__name__ == FUSED_NODE
    big = {ptr for ptr, (nbytes, _) in seen.items() if nbytes >= full}
    assert big == {weight_ptr}
    # beyond parameters, only x itself is kept
    assert {ptr for ptr in seen if ptr not in param_ptrs} == {x.untyped_storage().data_ptr()}

    layer.fused = False  # the plain path keeps Delta W (a non-parameter d_out x d_in tensor) for backward
    y, seen = saved_storages(lambda: layer(x))
    assert any(nbytes >= full and ptr not in param_ptrs for ptr, (nbytes, _) in seen.items())


def test_autocast_bfloat16_matches_merged_layer_and_keeps_float32_grads():
    layer = make_layer(48, 80, dtype=torch.float32)
    torch.manual_seed(3)
    x = torch.randn(6, 48, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert type(y.grad_fn).__name__ == FUSED_NODE and y.dtype == torch.bfloat16
    # the forward is the merged layer's forward under autocast
    merged = nn.Linear(48, 80)
    merged.weight.data = layer.merged_weight("default")
    merged.bias.data = layer.base_layer.bias.data
    with torch.autocast("cpu", dtype=torch.bfloat16):
        torch.testing.assert_close(y, merged(x), rtol=0, atol=0)
    y.float().square().sum().backward()
    U, V = layer.kradapter_U["default"], layer.kradapter_V["default"]
    assert U.grad.dtype == V.grad.dtype == x.grad.dtype == torch.float32
    fused_grads = [U.grad.clone(), V.grad.clone(), x.grad.clone()]
    U.grad = V.grad = x.grad = None
    layer.fused = False
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_plain = layer(x)
    assert type(y_plain.grad_fn).__name__ != FUSED_NODE
    torch.testing.assert_close(y, y_plain, rtol=0.02, atol=0.05)
    y_plain.float().square().sum().backward()
    for ours, plain in zip(fused_grads, [U.grad, V.grad, x.grad]):
        assert (ours - plain).norm() <= 0.03 * plain.norm()


@pytest.mark.parametrize("base_dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_frozen_base_of_another_dtype_with_float32_adapter(base_dtype):
    layer = make_layer(32, 24, dtype=torch.float32)
    layer.base_layer.to(base_dtype)
    torch.manual_seed(4)
    x = torch.randn(5, 32, dtype=base_dtype, requires_grad=True)
    y = layer(x)
    assert type(y.grad_fn).__name__ == FUSED_NODE and y.dtype == base_dtype
    y.float().sum().backward()
    U, V = layer.kradapter_U["default"], layer.kradapter_V["default"]
    assert U.grad.dtype == torch.float32 and x.grad.dtype == base_dtype
    # against the reference computed in float64 from the same values
    x64 = x.detach().double().requires_grad_()
    U64, V64 = U.detach().double().requires_grad_(), V.detach().double().requires_grad_()
    w0 = layer.base_layer.weight.double()
    ref = F.linear(x64, w0 + 0.7 * kradapter_delta(U64, V64, 24, 32), layer.base_layer.bias.double())
    ref.sum().backward()
    tol = 1e-5 if base_dtype == torch.float64 else 0.02  # the adapter itself is float32
    torch.testing.assert_close(y.double(), ref, rtol=tol, atol=tol * 5)
    assert (U.grad.double() - U64.grad).norm() <= tol * U64.grad.norm()
    assert (V.grad.double() - V64.grad).norm() <= tol * V64.grad.norm()


class QuantizedLike(nn.Parameter):
    """Stands in for a quantized weight (bnb Params4bit and friends are Parameter subclasses)."""


def path_of(layer, x):
    return type(layer(x).grad_fn).__name__


def test_fallbacks_to_the_plain_path():
    x = torch.randn(4, 16, dtype=torch.float64, requires_grad=True)
    layer = make_layer(16, 24, dropout=0.3)
    layer.train()
    assert path_of(layer, x) != FUSED_NODE  # adapter dropout active
    layer.eval()
    assert path_of(layer, x) == FUSED_NODE  # dropout is the identity in eval

    layer = make_layer(16, 24, fused=False)
    assert path_of(layer, x) != FUSED_NODE
    layer.fused = True
    assert path_of(layer, x) == FUSED_NODE

    layer = make_layer(16, 24)
    layer.base_layer.weight.requires_grad_(True)  # full fine-tuning mixed in: the weight gets its gradient
    y = layer(x)
    assert type(y.grad_fn).__name__ != FUSED_NODE
    y.sum().backward()
    assert layer.base_layer.weight.grad is not None

    layer = make_layer(16, 24)
    layer.base_layer.weight = QuantizedLike(layer.base_layer.weight.data, requires_grad=False)
    assert path_of(layer, x) != FUSED_NODE

    layer = make_layer(16, 24)
    layer.update_layer("other", k1=2, alpha=0.5, init_weights=False)
    layer.to(torch.float64)
    layer.set_adapter(["default", "other"])
    y = layer(x)
    assert type(y.grad_fn).__name__ != FUSED_NODE
    expected = reference(layer, x, layer.kradapter_U["default"], layer.kradapter_V["default"]) + 0.5 * F.linear(
        x, kradapter_delta(layer.kradapter_U["other"], layer.kradapter_V["other"], 24, 16)
    )
    torch.testing.assert_close(y, expected)
    layer.set_adapter("other")
    assert path_of(layer, x) == FUSED_NODE


def test_fused_setting_is_per_adapter():
    """A second adapter with another `fused` setting leaves the first adapter's path as it was."""
    from _tiny import fresh

    x = torch.randn(4, 16, requires_grad=True)
    model = get_peft_model(fresh(), KRAdapterConfig(target_modules=["fc1"], init_weights=False))
    model.add_adapter("plain", KRAdapterConfig(target_modules=["fc1"], init_weights=False, fused=False))
    layer = model.base_model.model.fc1
    assert layer.fused_path == {"default": True, "plain": False}
    assert path_of(layer, x) == FUSED_NODE  # "default" is active and still fused
    model.set_adapter("plain")
    assert path_of(layer, x) != FUSED_NODE
    model.set_adapter("default")
    assert path_of(layer, x) == FUSED_NODE
    model.delete_adapter("plain")
    assert layer.fused_path == {"default": True}

    # the other order: a fused adapter added after a plain one does not switch the plain one to fused
    model = get_peft_model(fresh(), KRAdapterConfig(target_modules=["fc1"], init_weights=False, fused=False))
    model.add_adapter("fast", KRAdapterConfig(target_modules=["fc1"], init_weights=False))
    layer = model.base_model.model.fc1
    assert path_of(layer, x) != FUSED_NODE and not layer.fused
    model.set_adapter("fast")
    assert path_of(layer, x) == FUSED_NODE
    layer.fused = False  # the per-layer switch sets every adapter on the layer
    assert layer.fused_path == {"default": False, "fast": False}
    assert path_of(layer, x) != FUSED_NODE


def test_fused_and_plain_paths_agree_in_a_peft_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    ids = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(0))
    losses, grads = {}, {}
    for fused in (True, False):
        torch.manual_seed(0)
        model = get_peft_model(
            LlamaForCausalLM(cfg).double(), KRAdapterConfig(init_weights=False, fused=fused, alpha=0.5)
        )
        calls = []
        orig = fused_mod.KRAdapterLinearFunction.apply
        fused_mod.KRAdapterLinearFunction.apply = lambda *a: calls.append(1) or orig(*a)
        try:
            loss = model(input_ids=ids, labels=ids).loss
        finally:
            fused_mod.KRAdapterLinearFunction.apply = orig
        assert len(calls) == (4 if fused else 0)  # k_proj and v_proj of 2 layers
        loss.backward()
        losses[fused] = loss.detach()
        grads[fused] = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    torch.testing.assert_close(losses[True], losses[False], rtol=1e-12, atol=1e-12)
    for name, g in grads[True].items():
        torch.testing.assert_close(g, grads[False][name], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_torch_checkpoint_gives_the_same_gradients(use_reentrant):
    layer = make_layer(20, 12, k1=3)
    x = torch.randn(3, 4, 20, dtype=torch.float64, requires_grad=True)
    layer(x).square().sum().backward()
    expected = [p.grad.clone() for p in (layer.kradapter_U["default"], layer.kradapter_V["default"], x)]
    for p in (layer.kradapter_U["default"], layer.kradapter_V["default"], x):
        p.grad = None
    checkpoint(lambda t: layer(t).square(), x, use_reentrant=use_reentrant).sum().backward()
    for got, want in zip([layer.kradapter_U["default"].grad, layer.kradapter_V["default"].grad, x.grad], expected):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_transformers_gradient_checkpointing_gives_the_same_gradients():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
    )
    ids = torch.randint(0, 64, (2, 7), generator=torch.Generator().manual_seed(1))
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = get_peft_model(LlamaForCausalLM(cfg).double(), KRAdapterConfig(init_weights=False))
        model.train()
        if ckpt:
            # transformers 5 renamed gradient_checkpointing_enable (kept as a deprecated alias)
            enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
            enable()
            model.enable_input_require_grads()
        calls = []
        orig = fused_mod.KRAdapterLinearFunction.apply
        fused_mod.KRAdapterLinearFunction.apply = lambda *a: calls.append(1) or orig(*a)
        try:
            model(input_ids=ids, labels=ids).loss.backward()
        finally:
            fused_mod.KRAdapterLinearFunction.apply = orig
        assert len(calls) == (8 if ckpt else 4)  # with checkpointing each layer's forward runs again in backward
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, rtol=1e-10, atol=1e-12)


def test_torch_compile_traces_the_fused_function():
    layer = make_layer(16, 24, dtype=torch.float32)
    x = torch.randn(5, 16, requires_grad=True)
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    y = compiled(x)
    y.square().sum().backward()
    got = [layer.kradapter_U["default"].grad.clone(), layer.kradapter_V["default"].grad.clone(), x.grad.clone()]
    for p in (layer.kradapter_U["default"], layer.kradapter_V["default"], x):
        p.grad = None
    y_eager = layer(x)
    assert type(y_eager.grad_fn).__name__ == FUSED_NODE
    y_eager.square().sum().backward()
    torch.testing.assert_close(y, y_eager)
    for a, b in zip(got, [layer.kradapter_U["default"].grad, layer.kradapter_V["default"].grad, x.grad]):
        torch.testing.assert_close(a, b)


# --- Conv2d: one convolution with the summed kernel ----------------------------------------------------------------
def make_conv(dtype=torch.float64, **conv_kwargs):
    from kradapter.methods.kradapter.layer import Conv2d

    torch.manual_seed(0)
    base = nn.Conv2d(**conv_kwargs).to(dtype).requires_grad_(False)
    return Conv2d(base, "default", alpha=0.7, init_weights=False).to(dtype)


CONV_CASES = [
    dict(in_channels=6, out_channels=10, kernel_size=3, padding=1),
    dict(in_channels=12, out_channels=4, kernel_size=(1, 3), stride=2, bias=False),  # d_out < d_in: transposed
    dict(in_channels=8, out_channels=8, kernel_size=3, groups=2, dilation=2, padding=2, padding_mode="reflect"),
    dict(in_channels=5, out_channels=7, kernel_size=1),
]


@pytest.mark.parametrize("conv_kwargs", CONV_CASES)
def test_conv2d_summed_kernel_path_equals_the_plain_path_float64(conv_kwargs):
    fused, plain = make_conv(**conv_kwargs), make_conv(**conv_kwargs)
    plain.load_state_dict(fused.state_dict())
    plain.fused = False
    x = torch.randn(3, conv_kwargs["in_channels"], 9, 11, dtype=torch.float64)
    outs = []
    for layer in (fused, plain):
        xi = x.clone().requires_grad_()
        y = layer(xi)
        y.backward(torch.ones_like(y) + y.detach())
        outs.append((y, xi.grad, layer.kradapter_U["default"].grad, layer.kradapter_V["default"].grad))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_conv2d_runs_one_convolution_in_training_and_falls_back_with_dropout(monkeypatch):
    layer = make_conv(in_channels=6, out_channels=10, kernel_size=3, padding=1)
    calls = []
    conv2d = F.conv2d
    monkeypatch.setattr(F, "conv2d", lambda *a, **k: (calls.append(1), conv2d(*a, **k))[1])
    layer(torch.randn(2, 6, 8, 8, dtype=torch.float64))
    assert len(calls) == 1
    calls.clear()
    layer.fused = False
    layer(torch.randn(2, 6, 8, 8, dtype=torch.float64))
    assert len(calls) == 2  # base + Delta W
    layer.fused = True
    layer.update_layer("drop", dropout=0.5, init_weights=False)
    layer.set_adapter("drop")
    assert fused_mod.fused_adapter_name(layer.train(), torch.randn(1, 6, 4, 4, dtype=torch.float64), (), {}) is None


def test_conv2d_bfloat16_base_with_float32_adapter_and_autocast():
    layer = make_conv(dtype=torch.float32, in_channels=6, out_channels=10, kernel_size=3, padding=1)
    layer.base_layer.to(torch.bfloat16)
    x = torch.randn(2, 6, 8, 8, dtype=torch.bfloat16)
    y = layer(x)  # no autocast: the summed kernel is cast once to the base's dtype
    assert y.dtype == torch.bfloat16
    merged = F.conv2d(x, layer.merged_weight("default"), layer.base_layer.bias, padding=1)
    torch.testing.assert_close(y, merged, rtol=0, atol=0)
    y.float().sum().backward()
    assert layer.kradapter_U["default"].grad.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = layer(x.float())
    assert z.dtype == torch.bfloat16
    torch.testing.assert_close(z.float(), y.float(), rtol=0.05, atol=0.05)


def test_conv2d_kernel_is_summed_like_a_merge_when_adapter_and_base_dtypes_differ():
    # A bfloat16 adapter on a float32 base: the sum must not round W0 to bfloat16.
    layer = make_conv(dtype=torch.float32, in_channels=6, out_channels=10, kernel_size=3, padding=1)
    for p in (layer.kradapter_U["default"], layer.kradapter_V["default"]):
        p.data = p.data.to(torch.bfloat16)
    x = torch.randn(2, 6, 8, 8)
    merged = F.conv2d(x, layer.merged_weight("default"), layer.base_layer.bias, padding=1)
    torch.testing.assert_close(layer(x), merged, rtol=0, atol=0)
