"""h = W0 x + alpha * Delta W x on every supported layer type; dropout, module_dropout; where gradients go."""

import pytest
import torch
import torch.nn.functional as F
from peft import get_peft_model
from transformers.pytorch_utils import Conv1D

from _kradapter_models import MLP, ConvNet, tiny_gpt2
from kradapter import KRAdapterConfig
from kradapter.methods.kradapter.layer import KRAdapterLayer


def reference_delta(layer: KRAdapterLayer, name: str = "default") -> torch.Tensor:
    """alpha * (U⊙V)[:m] (transposed if d_out < d_in), built with einsum from the layer's own U and V."""
    U, V = layer.kradapter_U[name], layer.kradapter_V[name]
    kr = torch.einsum("in,jn->ijn", U, V).reshape(-1, U.shape[1])
    m = max(layer.d_out, layer.d_in)
    delta = kr[:m] if layer.d_out >= layer.d_in else kr[:m].T
    return layer.alpha[name] * delta


@pytest.mark.parametrize("target", ["lin0", "lin1"])  # lin0: 12 -> 20 (d_out > d_in), lin1: 20 -> 10 (d_out < d_in)
def test_linear_forward_equals_w0x_plus_alpha_delta_x(target):
    torch.manual_seed(0)
    model = get_peft_model(MLP(), KRAdapterConfig(target_modules=[target], alpha=0.7, init_weights=False))
    layer = model.base_model.model.get_submodule(target)
    base = layer.get_base_layer()
    x = torch.randn(5, base.in_features)
    expected = F.linear(x, base.weight, base.bias) + x @ reference_delta(layer).T
    torch.testing.assert_close(layer(x), expected)
    assert layer.delta_matrix("default").shape == (base.out_features, base.in_features)


def test_conv1d_gpt2_forward_and_layout():
    torch.manual_seed(0)
    model = get_peft_model(tiny_gpt2(), KRAdapterConfig(target_modules=["c_attn", "c_proj"], init_weights=False))
    layer = model.base_model.model.transformer.h[0].attn.c_attn
    base = layer.get_base_layer()
    assert isinstance(base, Conv1D) and base.weight.shape == (32, 96)  # Conv1D stores W as (d_in, d_out)
    assert (layer.d_out, layer.d_in) == (96, 32)
    x = torch.randn(2, 3, 32)
    expected = x @ base.weight + base.bias + x @ reference_delta(layer).T
    torch.testing.assert_close(layer(x), expected)
    assert layer.get_delta_weight("default").shape == base.weight.shape
    torch.testing.assert_close(layer.get_delta_weight("default"), reference_delta(layer).T)


@pytest.mark.parametrize("target", ["conv0", "conv1"])  # conv0: stride 2, padding 1; conv1: dilation 2, groups 2
def test_conv2d_forward_equals_conv_with_w0_plus_delta(target):
    torch.manual_seed(0)
    model = get_peft_model(ConvNet(), KRAdapterConfig(target_modules=[target], alpha=0.5, init_weights=False))
    layer = model.base_model.model.get_submodule(target)
    base = layer.get_base_layer()
    c_out, c_in_per_group, kh, kw = base.weight.shape
    assert (layer.d_out, layer.d_in) == (c_out, c_in_per_group * kh * kw)
    x = torch.randn(2, base.in_channels, 9, 9)
    kernel = base.weight + reference_delta(layer).reshape(base.weight.shape)
    expected = F.conv2d(x, kernel, base.bias, base.stride, base.padding, base.dilation, base.groups)
    torch.testing.assert_close(layer(x), expected)


def test_whole_model_forward_matches_a_model_with_updated_weights():
    torch.manual_seed(0)
    base = MLP()
    reference = MLP()
    reference.load_state_dict(base.state_dict())
    model = get_peft_model(base, KRAdapterConfig(target_modules=["lin0", "lin1"], init_weights=False))
    with torch.no_grad():
        for name in ("lin0", "lin1"):
            layer = model.base_model.model.get_submodule(name)
            reference.get_submodule(name).weight += reference_delta(layer)
    x = torch.randn(4, 12)
    torch.testing.assert_close(model(x), reference(x))


def test_fresh_adapter_leaves_outputs_unchanged():
    torch.manual_seed(0)
    base = MLP()
    x = torch.randn(4, 12)
    expected = base(x)
    model = get_peft_model(base, KRAdapterConfig(target_modules=["lin0", "lin1"]))
    torch.testing.assert_close(model(x), expected)


def test_gradients_reach_only_u_v_and_modules_to_save():
    torch.manual_seed(0)
    model = get_peft_model(MLP(), KRAdapterConfig(target_modules=["lin0", "lin1"], modules_to_save=["head"]))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {
        "base_model.model.lin0.kradapter_U.default",
        "base_model.model.lin0.kradapter_V.default",
        "base_model.model.lin1.kradapter_U.default",
        "base_model.model.lin1.kradapter_V.default",
        "base_model.model.head.modules_to_save.default.weight",
        "base_model.model.head.modules_to_save.default.bias",
    }
    model(torch.randn(6, 12)).pow(2).sum().backward()
    for name, p in model.named_parameters():
        if name in trainable:
            assert p.grad is not None, name
        else:
            assert p.grad is None, name
    # with U = 0 at init, V gets no gradient on the first step and U does (the paper's zero-start)
    lin0 = model.base_model.model.lin0
    assert torch.count_nonzero(lin0.kradapter_U["default"].grad) > 0
    assert torch.count_nonzero(lin0.kradapter_V["default"].grad) == 0


def test_training_moves_u_and_v_and_only_them():
    torch.manual_seed(0)
    model = get_peft_model(MLP(), KRAdapterConfig(target_modules=["lin0", "lin1"], alpha=1.0))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    x, y = torch.randn(16, 12), torch.randint(0, 3, (16,))
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    for name, p in model.named_parameters():
        changed = not torch.equal(p, before[name])
        assert changed == ("kradapter_" in name), name


def test_dropout_applies_to_adapter_input_only_in_training():
    torch.manual_seed(0)
    model = get_peft_model(MLP(), KRAdapterConfig(target_modules=["lin0"], dropout=0.5, init_weights=False))
    layer = model.base_model.model.lin0
    base = layer.get_base_layer()
    x = torch.randn(64, 12)
    base_out = F.linear(x, base.weight, base.bias)
    delta = reference_delta(layer).detach()
    model.eval()
    torch.testing.assert_close(layer(x), base_out + x @ delta.T)
    model.train()
    torch.manual_seed(5)
    out = layer(x)
    torch.manual_seed(5)
    expected = base_out + F.dropout(x, 0.5, training=True) @ delta.T  # the base branch sees the clean x
    torch.testing.assert_close(out, expected)
    assert not torch.allclose(out, base_out + x @ delta.T)


def test_module_dropout_skips_the_whole_adapter_sometimes_in_training():
    torch.manual_seed(0)
    model = get_peft_model(MLP(), KRAdapterConfig(target_modules=["lin0"], module_dropout=0.5, init_weights=False))
    layer = model.base_model.model.lin0
    base = layer.get_base_layer()
    x = torch.randn(4, 12)
    base_out = F.linear(x, base.weight, base.bias)
    full = base_out + x @ reference_delta(layer).T
    model.train()
    outs = [layer(x) for _ in range(40)]
    skipped = sum(torch.equal(o, base_out) for o in outs)
    applied = sum(torch.allclose(o, full) for o in outs)
    assert skipped + applied == 40 and 5 < skipped < 35
    model.eval()
    assert all(torch.allclose(layer(x), full) for _ in range(10))
