"""Merging: round trips, merge_and_unload / unload / disable_adapter, safe_merge, and dtypes of the base."""

import pytest
import torch
from peft import get_peft_model
from torch import nn
from transformers.pytorch_utils import Conv1D

from _kradapter_models import MLP, ConvNet, tiny_gpt2
from kradapter import KRAdapterConfig
from kradapter.methods.kradapter.layer import KRAdapterLayer


def adapted(model_cls=MLP, targets=("lin0", "lin1"), seed=0, **kw):
    torch.manual_seed(seed)
    base = model_cls()
    kw.setdefault("init_weights", False)
    return get_peft_model(base, KRAdapterConfig(target_modules=list(targets), **kw))


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
    out = model(x)
    model.merge_adapter()
    assert all(m.merged for m in model.modules() if isinstance(m, KRAdapterLayer))
    torch.testing.assert_close(model(x), out, rtol=1e-5, atol=1e-5)
    changed = base_weights(model)
    assert any(not torch.equal(changed[n], before[n]) for n in before)
    model.unmerge_adapter()
    assert not any(m.merged for m in model.modules() if isinstance(m, KRAdapterLayer))
    for name, w in base_weights(model).items():
        torch.testing.assert_close(w, before[name], rtol=0, atol=1e-6)
    torch.testing.assert_close(model(x), out, rtol=1e-5, atol=1e-5)


def test_merge_is_w0_plus_delta_weight_for_conv1d():
    model = adapted(tiny_gpt2, ["c_attn"], alpha=0.3).eval()
    layer = model.base_model.model.transformer.h[1].attn.c_attn
    w0 = layer.get_base_layer().weight.detach().clone()
    model.merge_adapter()
    torch.testing.assert_close(layer.get_base_layer().weight, w0 + layer.get_delta_weight("default"))


def test_merge_and_unload_gives_plain_modules_with_same_outputs():
    model = adapted(tiny_gpt2, ["c_attn", "c_fc"]).eval()
    ids = torch.randint(0, 64, (2, 6))
    out = model(input_ids=ids).logits
    merged = model.merge_and_unload()
    assert not any(isinstance(m, KRAdapterLayer) for m in merged.modules())
    assert isinstance(merged.transformer.h[0].attn.c_attn, Conv1D)
    assert not any("kradapter" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(merged(input_ids=ids).logits, out, rtol=1e-4, atol=1e-4)


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
    torch.testing.assert_close(plain(x), expected)


def test_disable_adapter_context_gives_base_outputs():
    torch.manual_seed(0)
    base = MLP()
    x = torch.randn(3, 12)
    expected = base(x)
    model = get_peft_model(base, KRAdapterConfig(target_modules=["lin0", "lin1"], init_weights=False))
    out = model(x)
    assert not torch.allclose(out, expected)
    with model.disable_adapter():
        torch.testing.assert_close(model(x), expected)
    torch.testing.assert_close(model(x), out)
    model.merge_adapter()
    with model.disable_adapter():  # a merged adapter is taken out while disabled
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model(x), out, rtol=1e-5, atol=1e-6)


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
    merged = model.merge_and_unload(safe_merge=True)
    torch.testing.assert_close(merged(x), out, rtol=1e-5, atol=1e-6)


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
    torch.testing.assert_close(layer(x).float(), exact, rtol=2e-2, atol=2e-2)
    assert not torch.allclose(base(x).float(), exact, rtol=2e-2, atol=2e-2)  # the adapter's part is visible


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
