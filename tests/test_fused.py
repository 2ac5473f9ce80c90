"""The fused KRAdapter path (methods/kradapter/fused.py): exact gradients, dtypes, fallbacks, memory, checkpointing."""

import copy

import pytest
import torch
import torch.nn.functional as F
from peft import get_peft_model
from torch import nn
from torch.utils.checkpoint import checkpoint
from transformers.pytorch_utils import Conv1D

import _bounds as bounds
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


def absolute_reference(layer, x, U, V, g):
    """y, dX, dU, dV of the reference on the absolute values of x, U, V, W0, b and the upstream gradient g: each is
    a sum of products of those (alpha > 0), so this is the sum of |terms| that its rounding errors are relative to."""
    base = layer.base_layer
    w0 = (base.weight.T if isinstance(base, Conv1D) else base.weight).detach().double().abs()
    bias = None if base.bias is None else base.bias.detach().double().abs()
    x, U, V = (t.detach().double().abs().requires_grad_() for t in (x, U, V))
    g = g.double()
    y = F.linear(x, w0 + layer.alpha["default"] * kradapter_delta(U, V, layer.d_out, layer.d_in), bias)
    y.backward(g.abs())
    return [y.detach(), x.grad, U.grad, V.grad]


def reduction_bound(layer, n_rows):
    """L >= every reduction length in the layer's forward and backward (d_in + 1 for y, d_out for dX, rows x k2 or
    k1 for dU / dV through G = g^T x) plus the 3 roundings of W0 + alpha U ⊙ V: gamma_L covers each (Higham §3.1)."""
    k1, k2 = layer.kradapter_U["default"].shape[0], layer.kradapter_V["default"].shape[0]
    return layer.d_in + 1 + layer.d_out + n_rows * max(k1, k2) + 3


def float64_tol(layer, n_rows):
    """Two float64 evaluations of the fused layer (y, dX, dU, dV) in different orders, relative to the sum of
    |terms|: each within gamma_L of the exact value (tests/_bounds.py)."""
    return 2 * bounds.gamma(reduction_bound(layer, n_rows), torch.float64)


def grads_vs_reference(layer, x_shape, seed=1):
    """(ours, reference, tolerance) for y, dX, dU, dV: a componentwise float64 bound (float64_tol x magnitude)."""
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
    rel = float64_tol(layer, x.numel() // layer.d_in)
    mags = absolute_reference(layer, x, U, V, g)
    return [
        (a, b, rel * m) for (a, b), m in zip([(y, y2), (x.grad, x2.grad), (U.grad, U2.grad), (V.grad, V2.grad)], mags)
    ]


def assert_within(ours, ref, tol):
    assert ((ours - ref).abs() <= tol).all(), (ours - ref).abs().max().item()


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
    for ours, ref, tol in grads_vs_reference(layer, x_shape):
        assert_within(ours, ref, tol)


def test_fused_without_bias_and_with_trained_bias():
    layer = make_layer(10, 14, bias=False)
    for ours, ref, tol in grads_vs_reference(layer, (3,)):
        assert_within(ours, ref, tol)
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
    # db = sum_n 2 y_n: y's componentwise float64 bound carried through the sum of 4 rows, plus that sum's gamma_4.
    y_abs = absolute_reference(layer, x, layer.kradapter_U["default"], layer.kradapter_V["default"], y.detach())[0]
    rel = float64_tol(layer, 4) + bounds.gamma(4, torch.float64)
    assert_within(bias_grad, layer.base_layer.bias.grad, rel * 2 * y_abs.sum(0))


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
    # Forward, relative to |x| (|W0| + alpha |Delta W|) + |b| (tests/_bounds.py): the fused path rounds x, the
    # summed weight and y to bfloat16 (3 roundings), the plain path x, W0, Delta W, both outputs and their sum (the
    # weights' roundings are in different terms: 4 along any term); float32 accumulation (49 terms) in each.
    u = bounds.unit_roundoff(torch.bfloat16)
    fwd = (1 + u) ** 3 + (1 + u) ** 4 - 2 + 2 * bounds.gamma(49)
    y_abs, *_ = absolute_reference(layer, x, U, V, torch.zeros_like(y, dtype=torch.float32))
    assert_within(y.float(), y_plain.float(), fwd * y_abs)
    y_plain.float().square().sum().backward()
    # Backward: the upstream 2y carries the forward bound; then each path rounds g, x and a factor to bfloat16 and
    # G = g^T x to bfloat16 (4 roundings), reducing in float32 over at most 6 rows x max(k1, k2) (+ the 3 of W).
    mags = absolute_reference(layer, x, U, V, 2 * y_abs)[1:]
    bwd = fwd + 2 * ((1 + u) ** 4 - 1) + 2 * bounds.gamma(reduction_bound(layer, 6))
    for ours, plain, mag in zip(fused_grads, [U.grad, V.grad, x.grad], [mags[1], mags[2], mags[0]]):
        assert_within(ours, plain, bwd * mag)


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
    # W0 + alpha Delta W and y (forward), G = g^T x (backward) rounded once each to the base dtype; float32 (or
    # better) accumulation and the adapter's float32 reduction of G to dU, dV; the float64 reference's own gamma_L.
    u = bounds.unit_roundoff(base_dtype)
    L = reduction_bound(layer, 5)
    rel = (1 + u) ** 2 - 1 + bounds.gamma(L) + bounds.gamma(L, torch.float64)
    y_abs, _, dU_abs, dV_abs = absolute_reference(layer, x64, U64, V64, torch.ones_like(ref))
    assert_within(y.double(), ref.detach(), rel * y_abs)
    assert_within(U.grad.double(), U64.grad, rel * dU_abs)
    assert_within(V.grad.double(), V64.grad, rel * dV_abs)


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
        layers = {n: m for n, m in model.named_modules() if isinstance(m, Linear)}
        seen = {}  # each adapted layer's input and output gradient: the operands of its dU, dV

        def record(module, args, y, name):
            y.register_hook(lambda g: seen.__setitem__(name, (args[0], g)))

        hooks = [m.register_forward_hook(lambda m, a, y, n=n: record(m, a, y, n)) for n, m in layers.items()]
        try:
            with bounds.LastLinearInput(model.get_base_model().lm_head) as last:
                loss = model(input_ids=ids, labels=ids).loss
        finally:
            fused_mod.KRAdapterLinearFunction.apply = orig
        assert len(calls) == (4 if fused else 0)  # k_proj and v_proj of 2 layers
        loss.backward()
        for h in hooks:
            h.remove()
        losses[fused] = loss.detach()
        grads[fused] = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    # float64 forward along a Llama layer's longest path (tests/_bounds.py, as test_merge_command.py counts it):
    # 9 products (q, k, v, o, scores, probs @ v, gate, up, down) of length <= 49 and 31 elementwise roundings per
    # layer, then norm and lm_head; each path's own errors. The mean cross-entropy moves by at most 2 max|dlogit|
    # (its gradient in each token's logits has l1 norm <= 2) plus its own reduction over 64 logits and 18 tokens.
    u = bounds.unit_roundoff(torch.float64)
    forward = bounds.compose([bounds.float_linear(49, torch.float64)] * (9 * 2 + 1) + [2 * u] * (31 * 2 + 5))
    logit_tol = forward * last.magnitude()
    assert abs(losses[True] - losses[False]).item() <= 2 * logit_tol + bounds.gamma(64 + 18, torch.float64) * 2 * (
        losses[False].abs().item() + last.magnitude()
    )
    # Backward: the same path back (the upstream gradient of each adapted layer carries forward + backward errors),
    # then dU, dV from that layer's input and output gradient, relative to their sum of |terms| (absolute_reference).
    backward = bounds.compose([forward, forward])
    for name, layer in layers.items():
        x_in, g_out = seen[name]
        _, _, dU_abs, dV_abs = absolute_reference(
            layer,
            x_in.reshape(-1, layer.d_in),
            *layer.kradapter_U.values(),
            *layer.kradapter_V.values(),
            g_out.reshape(-1, layer.d_out),
        )
        rel = backward + float64_tol(layer, 18)
        assert_within(
            grads[True][f"{name}.kradapter_U.default"], grads[False][f"{name}.kradapter_U.default"], rel * dU_abs
        )
        assert_within(
            grads[True][f"{name}.kradapter_V.default"], grads[False][f"{name}.kradapter_V.default"], rel * dV_abs
        )


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
        assert torch.equal(got, want)  # checkpointing reruns the same forward: the same arithmetic


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
        assert torch.equal(grads[1][name], g), name  # the recomputed forward is the same arithmetic


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
    # aot_eager runs the same aten kernels in the same order as eager: the same arithmetic
    assert torch.equal(y, y_eager)
    for a, b in zip(got, [layer.kradapter_U["default"].grad, layer.kradapter_V["default"].grad, x.grad]):
        assert torch.equal(a, b)


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
    # Componentwise against the same computation on absolute values (upstream 1 + |y|, whose own error is y's):
    # each path within gamma_L of exact, L = every reduction length (x's elements bound all of them) + 3 roundings.
    twin = copy.deepcopy(fused)
    with torch.no_grad():
        for p in twin.parameters():
            p.abs_()
    xa = x.abs().requires_grad_()
    ya = twin(xa)
    ya.backward(1 + 2 * ya.detach())  # 1 + |y| + the forward's error, doubled to cover it (gamma_L << 1)
    mags = (ya.detach(), xa.grad, twin.kradapter_U["default"].grad, twin.kradapter_V["default"].grad)
    rel = 4 * bounds.gamma(x.numel() + fused.base_layer.weight.numel() + 3, torch.float64)
    for a, b, m in zip(*outs, mags):
        assert_within(a, b, rel * m)


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
    # x is bfloat16 already, and autocast casts the summed kernel and bias to bfloat16 as the base dtype does: the same
    # convolution on the same operands
    assert torch.equal(z, y)


def test_conv2d_kernel_is_summed_like_a_merge_when_adapter_and_base_dtypes_differ():
    # A bfloat16 adapter on a float32 base: the sum must not round W0 to bfloat16.
    layer = make_conv(dtype=torch.float32, in_channels=6, out_channels=10, kernel_size=3, padding=1)
    for p in (layer.kradapter_U["default"], layer.kradapter_V["default"]):
        p.data = p.data.to(torch.bfloat16)
    x = torch.randn(2, 6, 8, 8)
    merged = F.conv2d(x, layer.merged_weight("default"), layer.base_layer.bias, padding=1)
    torch.testing.assert_close(layer(x), merged, rtol=0, atol=0)
