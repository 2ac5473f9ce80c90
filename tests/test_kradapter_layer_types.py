"""KRAdapter on nn.Embedding, nn.Conv1d and nn.Conv3d: forward against the plain formula with W0 + alpha Delta W,
gradients, merge / unmerge, save / load, mixed batches, and the refusals."""

import pytest
import torch
import torch.nn.functional as F
from peft import PeftModel, get_peft_model
from torch import nn

import kradapter  # noqa: F401
from _kradapter_models import assert_same_snapshot, snapshot
from kradapter import KRAdapterConfig


class EmbNet(nn.Module):
    """A tall embedding (vocab 50 > dim 8) and a wide one (vocab 6 < dim 10), then a head."""

    def __init__(self):
        super().__init__()
        self.tall = nn.Embedding(50, 8)
        self.wide = nn.Embedding(6, 10)
        self.head = nn.Linear(18, 3)

    def forward(self, ids):
        return self.head(torch.cat([self.tall(ids), self.wide(ids % 6)], dim=-1))


class ConvNdNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1a = nn.Conv1d(3, 6, 3, stride=2, padding=1)
        self.c1b = nn.Conv1d(6, 6, 3, padding=2, dilation=2, groups=2)
        self.c3a = nn.Conv3d(2, 4, 3, padding=1)
        self.c3b = nn.Conv3d(4, 4, (1, 2, 2), stride=(1, 2, 2), groups=2)

    def forward(self, x1, x3):
        a = self.c1b(torch.relu(self.c1a(x1))).mean(dim=(1, 2))
        b = self.c3b(torch.relu(self.c3a(x3))).mean(dim=(1, 2, 3, 4))
        return a + b


def adapted(model, targets, seed=0, **kw):
    torch.manual_seed(seed)
    return get_peft_model(model, KRAdapterConfig(target_modules=targets, init_weights=False, alpha=0.5, **kw))


def kr_layers(model):
    return {k.rsplit(".", 1)[-1]: m for k, m in model.named_modules() if hasattr(m, "kradapter_U")}


def reference_embedding(layer, ids):
    return F.embedding(ids, layer.get_base_layer().weight + layer.delta_matrix("default"))


@pytest.mark.parametrize("n_ids", [3, 60])  # fewer lookups than rows (row path) and more (whole Delta W)
def test_embedding_forward_and_gradients_equal_the_plain_formula(n_ids):
    torch.manual_seed(0)
    model = adapted(EmbNet(), ["tall", "wide"])
    ids = torch.randint(0, 50, (n_ids,))
    for name, layer in kr_layers(model).items():
        layer_ids = ids if name == "tall" else ids % 6
        out = layer(layer_ids)
        expected = reference_embedding(layer, layer_ids)
        torch.testing.assert_close(out, expected)
        g = torch.randn_like(out)
        got = torch.autograd.grad((out * g).sum(), [layer.kradapter_U["default"], layer.kradapter_V["default"]])
        want = torch.autograd.grad((expected * g).sum(), [layer.kradapter_U["default"], layer.kradapter_V["default"]])
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b)


def test_embedding_row_path_builds_only_looked_up_rows(monkeypatch):
    model = adapted(EmbNet(), ["tall"])
    layer = kr_layers(model)["tall"]
    monkeypatch.setattr(type(layer), "delta_matrix", lambda *a: pytest.fail("built the whole Delta W"))
    layer(torch.tensor([[1, 7], [49, 0]]))


def _merge_unmerge_save_load(model, inputs, make_base, tmp_path):
    model.eval()
    with torch.no_grad():
        out = model(**inputs)
        base_state = {k: v.clone() for k, v in model.get_base_model().state_dict().items() if "kradapter" not in k}
        model.merge_adapter()
        torch.testing.assert_close(model(**inputs), out, atol=1e-5, rtol=1e-5)
        model.unmerge_adapter()
        torch.testing.assert_close(model(**inputs), out)
        after = model.get_base_model().state_dict()
        for k, v in base_state.items():
            torch.testing.assert_close(after[k], v, atol=1e-6, rtol=0)
    model.save_pretrained(tmp_path)
    torch.manual_seed(123)
    fresh = make_base()
    fresh.load_state_dict({k.replace(".base_layer", ""): v for k, v in base_state.items()})
    reloaded = PeftModel.from_pretrained(fresh, tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**inputs), out)
        merged = reloaded.merge_and_unload()
        assert not any(hasattr(m, "kradapter_U") for m in merged.modules())
        torch.testing.assert_close(merged(**inputs), out, atol=1e-5, rtol=1e-5)


def test_embedding_merge_unmerge_save_load(tmp_path):
    model = adapted(EmbNet(), ["tall", "wide"])
    _merge_unmerge_save_load(model, {"ids": torch.randint(0, 50, (4, 5))}, EmbNet, tmp_path)


@pytest.mark.parametrize("fused", [True, False])
def test_conv1d_conv3d_forward_equals_the_summed_kernel(fused):
    torch.manual_seed(0)
    model = adapted(ConvNdNet(), ["c1a", "c1b", "c3a", "c3b"], fused=fused)
    x1, x3 = torch.randn(2, 3, 11), torch.randn(2, 2, 4, 6, 6)
    conv = {"c1a": F.conv1d, "c1b": F.conv1d, "c3a": F.conv3d, "c3b": F.conv3d}
    inputs = {"c1a": x1, "c1b": torch.randn(2, 6, 9), "c3a": x3, "c3b": torch.randn(2, 4, 4, 6, 6)}
    for name, layer in kr_layers(model).items():
        base = layer.get_base_layer()
        kernel = base.weight + layer.delta_matrix("default").reshape(base.weight.shape)
        expected = conv[name](inputs[name], kernel, base.bias, base.stride, base.padding, base.dilation, base.groups)
        out = layer(inputs[name])
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
        (out.square().sum()).backward()
        assert layer.kradapter_U["default"].grad.abs().sum() > 0


def test_conv1d_conv3d_merge_unmerge_save_load(tmp_path):
    model = adapted(ConvNdNet(), ["c1a", "c1b", "c3a", "c3b"])
    inputs = {"x1": torch.randn(2, 3, 11), "x3": torch.randn(2, 2, 4, 6, 6)}
    _merge_unmerge_save_load(model, inputs, ConvNdNet, tmp_path)


def test_new_layer_types_take_mixed_batches():
    torch.manual_seed(0)
    model = adapted(EmbNet(), ["tall", "wide"])
    model.add_adapter("b", KRAdapterConfig(target_modules=["tall", "wide"], init_weights=False, alpha=0.5))
    model.eval()
    ids = torch.randint(0, 50, (3, 4))
    names = ["b", "__base__", "default"]
    with torch.no_grad():
        mixed = model(ids=ids, adapter_names=names)
        with model.disable_adapter():
            per = {"__base__": model(ids=ids)}
        for n in ("default", "b"):
            model.set_adapter(n)
            per[n] = model(ids=ids)
    for i, n in enumerate(names):
        torch.testing.assert_close(mixed[i], per[n][i])
    assert not torch.allclose(per["b"], per["default"])


def test_bad_targets_are_refused_before_anything_changes():
    model = EmbNet()
    model.wide.max_norm = 1.0
    before = snapshot(model)
    with pytest.raises(ValueError, match="module 'wide': an nn.Embedding with max_norm"):
        get_peft_model(model, KRAdapterConfig(target_modules=["tall", "wide"]))
    assert_same_snapshot(before, snapshot(model))
    with pytest.raises(ValueError, match=r"module 'tall': k1=99 is out of range for a 50 x 8 layer"):
        get_peft_model(EmbNet(), KRAdapterConfig(target_modules=["tall"], k1=99))
    net = nn.Sequential(nn.ConvTranspose2d(3, 4, 3))
    with pytest.raises(ValueError, match="module '0' of type torch.nn.modules.conv.ConvTranspose2d"):
        get_peft_model(net, KRAdapterConfig(target_modules=["0"]))


def test_budget_knows_the_new_layer_types():
    from kradapter.budget import target_layers

    layers = target_layers(ConvNdNet(), ["c1b", "c3a"])
    assert layers == {"c1b": (6, 9), "c3a": (4, 54)}
    assert target_layers(EmbNet(), ["tall", "wide"]) == {"tall": (50, 8), "wide": (6, 10)}


def test_budget_matches_lora_on_a_conv_target_by_its_real_count():
    from kradapter.budget import peft_config_for

    net = nn.Sequential(nn.Conv3d(4, 6, 3))
    config = peft_config_for("lora", net, ["0"])
    lora = get_peft_model(net, config)
    trainable = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    kr = get_peft_model(nn.Sequential(nn.Conv3d(4, 6, 3)), KRAdapterConfig(target_modules=["0"]))
    kr_trainable = sum(p.numel() for p in kr.parameters() if p.requires_grad)
    assert kr_trainable <= trainable < kr_trainable + (6 + 4 * 27)  # the smallest LoRA rank at or above KRAdapter
