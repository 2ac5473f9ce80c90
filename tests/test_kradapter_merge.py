"""Merging: round trips, merge_and_unload / unload / disable_adapter, safe_merge, and dtypes of the base."""

import pytest
import torch
from peft import get_peft_model
from torch import nn
from transformers.pytorch_utils import Conv1D

import _bounds as bounds
from _kradapter_models import MLP, ConvNet, tiny_gpt2
from kradapter import KRAdapterConfig
from kradapter.methods.kradapter.layer import KRAdapterLayer


def adapted(model_cls=MLP, targets=("lin0", "lin1"), seed=0, **kw):
    torch.manual_seed(seed)
    base = model_cls()
    kw.setdefault("init_weights", False)
    return get_peft_model(base, KRAdapterConfig(target_modules=list(targets), **kw))


def adapted_layers(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, KRAdapterLayer)]


def base_weights(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if "kradapter_" not in n}


@pytest.mark.parametrize(
    "model_cls,targets,shape",
    [
        (MLP, ("lin0", "lin1"), (7, 12)),
        (ConvNet, ("conv0", "conv1", "head"), (2, 3, 8, 8)),
    ],
)
def test_merge_unmerge_round_trip(model_cls, targets, shape):
    model = adapted(model_cls, targets).eval()
    x = torch.randn(*shape)
    before = base_weights(model)
    deltas = {n + ".weight": m.get_delta_weight("default").detach() for n, m in adapted_layers(model)}
    out = model(x)
    # Merged W0 + alpha Delta W against W0 + alpha Delta W summed by the forward (float32 per layer, tests/_bounds.py);
    # the avg pool is one more float32 reduction (16 positions).
    tol = bounds.network_tol(model, x, extra=[bounds.float_linear(16)])
    model.merge_adapter()
    assert all(m.merged for m in model.modules() if isinstance(m, KRAdapterLayer))
    assert (model(x) - out).abs().max().item() <= tol
    changed = base_weights(model)
    assert any(not torch.equal(changed[n], before[n]) for n in before)
    model.unmerge_adapter()
    assert not any(m.merged for m in model.modules() if isinstance(m, KRAdapterLayer))
    u = bounds.unit_roundoff(torch.float32)
    for name, w in base_weights(model).items():
        # fl(fl(W0 + D) - D): one rounding of W0 + D, one of the difference: <= (2u + u^2) (|W0| + |D|).
        d = deltas.get(name.replace(".base_layer", ""), torch.zeros_like(w))
        assert ((w - before[name]).abs() <= (2 * u + u * u) * (before[name].abs() + d.abs())).all(), name
    assert (model(x) - out).abs().max().item() <= tol


def test_merge_is_w0_plus_delta_weight_for_conv1d():
    model = adapted(tiny_gpt2, ["c_attn"], alpha=0.3).eval()
    layer = model.base_model.model.transformer.h[1].attn.c_attn
    w0 = layer.get_base_layer().weight.detach().clone()
    model.merge_adapter()
    # float32 base and adapter: the merge is this one addition, so the same rounding
    assert torch.equal(layer.get_base_layer().weight, w0 + layer.get_delta_weight("default"))


def test_merge_and_unload_gives_plain_modules_with_same_outputs():
    model = adapted(tiny_gpt2, ["c_attn", "c_fc"]).eval()
    ids = torch.randint(0, 64, (2, 6))
    with torch.no_grad(), bounds.LastLinearInput(model.get_base_model().lm_head) as last:
        out = model(input_ids=ids).logits
    # float32 merge of c_attn, c_fc in 2 layers (in_features 32, + bias) against the unmerged forward, relative to
    # the logits' operand magnitude (tests/_bounds.py conventions, as in test_merge_command.py).
    tol = bounds.compose([bounds.float_linear(33)] * 4) * last.magnitude()
    merged = model.merge_and_unload()
    assert not any(isinstance(m, KRAdapterLayer) for m in merged.modules())
    assert isinstance(merged.transformer.h[0].attn.c_attn, Conv1D)
    assert not any("kradapter" in n for n, _ in merged.named_parameters())
    assert (merged(input_ids=ids).logits - out).abs().max().item() <= tol


def test_unload_gives_back_base_model_and_weights():
    torch.manual_seed(0)
    base = MLP()
    x = torch.randn(3, 12)
    expected = base(x)
    weights = {n: p.detach().clone() for n, p in base.named_parameters()}
    model = get_peft_model(base, KRAdapterConfig(target_modules=["lin0", "lin1"], init_weights=False))
    assert not torch.allclose(model(x), expected)
    plain = model.unload()
    assert type(plain.lin0) is nn.Linear and type(plain.lin1) is nn.Linear
    assert {n: p for n, p in plain.named_parameters()}.keys() == weights.keys()
    for n, p in plain.named_parameters():
        assert torch.equal(p, weights[n])
    assert torch.equal(plain(x), expected)  # the same modules and weights: the same arithmetic


def test_disable_adapter_context_gives_base_outputs():
    torch.manual_seed(0)
    base = MLP()
    x = torch.randn(3, 12)
    expected = base(x)
    model = get_peft_model(base, KRAdapterConfig(target_modules=["lin0", "lin1"], init_weights=False))
    out = model(x)
    assert not torch.allclose(out, expected)
    with model.disable_adapter():
        assert torch.equal(model(x), expected)  # the base layers alone: the same arithmetic
    assert torch.equal(model(x), out)
    tol = bounds.network_tol(model, x)  # merged against unmerged, float32 per layer (tests/_bounds.py)
    model.merge_adapter()
    with model.disable_adapter():  # a merged adapter is taken out while disabled: W0 up to 2u (round trip above)
        assert (model(x) - expected).abs().max().item() <= tol
    assert (model(x) - out).abs().max().item() <= tol


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("how", ["merge_adapter", "merge_and_unload"])
def test_safe_merge_raises_before_any_weight_is_touched(bad, how):
    model = adapted(MLP, ("lin0", "lin1", "head"))
    with torch.no_grad():  # only the last layer in module order is bad: earlier ones must not be merged either
        model.base_model.model.head.kradapter_U["default"][0, 0] = bad
    before = base_weights(model)
    modules_before = [(n, type(m)) for n, m in model.named_modules()]
    with pytest.raises(ValueError, match=r"into 'head' gives NaN/Inf"):
        getattr(model, how)(safe_merge=True)
    after = base_weights(model)
    assert after.keys() == before.keys()
    for name, w in before.items():
        assert torch.equal(after[name], w), f"{name} was modified"
    assert [(n, type(m)) for n, m in model.named_modules()] == modules_before
    assert not any(m.merged for m in model.modules() if isinstance(m, KRAdapterLayer))


def test_safe_merge_passes_for_finite_adapter():
    model = adapted(MLP, ("lin0",)).eval()
    x = torch.randn(2, 12)
    out = model(x)
    tol = bounds.network_tol(model, x)  # merged against unmerged, float32 per layer (tests/_bounds.py)
    merged = model.merge_and_unload(safe_merge=True)
    assert (merged(x) - out).abs().max().item() <= tol


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_base_keeps_adapter_in_fp32_by_default(dtype):
    torch.manual_seed(0)
    model = get_peft_model(MLP().to(dtype), KRAdapterConfig(target_modules=["lin0", "lin1"], init_weights=False))
    adapter_params = [p for n, p in model.named_parameters() if "kradapter_" in n]
    assert adapter_params and all(p.dtype == torch.float32 for p in adapter_params)
    assert model.base_model.model.lin0.get_base_layer().weight.dtype == dtype
    out = model(torch.randn(3, 12).to(dtype))
    assert out.dtype == dtype and torch.isfinite(out).all()
    # the output is W0 x + alpha Delta W x up to the base dtype's rounding (fused or plain path alike)
    layer = model.base_model.model.lin0
    base = layer.get_base_layer()
    x = torch.randn(3, 12).to(dtype)
    exact = torch.nn.functional.linear(
        x.float(), base.weight.float() + layer.delta_matrix("default"), base.bias.float()
    )
    # W0 + alpha Delta W summed in float32 and rounded to dtype once, float32 accumulation, output rounded once;
    # the float32 reference's own gamma_13 (tests/_bounds.py); magnitude |x| (|W0| + alpha |Delta W|) + |b|.
    magnitude = (x.float().abs() @ (base.weight.float().abs() + layer.delta_matrix("default").abs()).T).max()
    tol = (bounds.low_precision_linear(13, dtype) + bounds.gamma(13)) * (magnitude + base.bias.float().abs().max())
    assert (layer(x).float() - exact).abs().max().item() <= tol
    assert (base(x).float() - exact).abs().max().item() > tol  # the adapter's part is visible


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_adapter_dtype_false_keeps_base_dtype(dtype):
    torch.manual_seed(0)
    model = get_peft_model(
        MLP().to(dtype), KRAdapterConfig(target_modules=["lin0"], init_weights=False), autocast_adapter_dtype=False
    )
    adapter_params = [p for n, p in model.named_parameters() if "kradapter_" in n]
    assert adapter_params and all(p.dtype == dtype for p in adapter_params)
    out = model(torch.randn(3, 12).to(dtype))
    assert out.dtype == dtype and torch.isfinite(out).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_merge_casts_back_to_base_dtype(dtype):
    torch.manual_seed(0)
    model = get_peft_model(MLP().to(dtype), KRAdapterConfig(target_modules=["lin0"], init_weights=False))
    layer = model.base_model.model.lin0
    w0 = layer.get_base_layer().weight.detach().clone()
    expected = (w0.float() + layer.get_delta_weight("default").detach()).to(dtype)  # summed in fp32, cast once
    model.merge_adapter()
    merged_w = layer.get_base_layer().weight
    assert merged_w.dtype == dtype
    assert torch.equal(merged_w, expected)
    unloaded = model.merge_and_unload()
    assert unloaded.lin0.weight.dtype == dtype
