"""KRAdapter on nn.MultiheadAttention (in_proj and out_proj, as PEFT's LoRA): outputs against a plain module holding
W0 + alpha Delta W, gradients, merge / unmerge / unload, save / load, several adapters, and the refusals."""

import pytest
import torch
from peft import PeftModel, get_peft_model
from torch import nn

import kradapter  # noqa: F401
from _kradapter_models import assert_same_snapshot, snapshot
from kradapter import KRAdapterConfig


class Encoder(nn.Module):
    """Two torch TransformerEncoderLayers (self-attention through nn.MultiheadAttention, like open_clip's CLIP)."""

    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(16, 4, dim_feedforward=24, dropout=0.0, batch_first=True) for _ in range(2)
        )
        self.head = nn.Linear(16, 3)

    def forward(self, x, mask=None):
        for layer in self.layers:
            x = layer(x, src_key_padding_mask=mask)
        return self.head(x)


def adapted(seed=1, **kw):
    torch.manual_seed(seed)
    config = KRAdapterConfig(target_modules=["self_attn"], init_weights=False, alpha=0.5, **kw)
    return get_peft_model(Encoder(), config)


def plain_reference(model, name="default"):
    """An Encoder whose attention weights are W0 + alpha Delta W, built from the adapter's own delta_matrix."""
    ref = Encoder()
    ref.load_state_dict(
        {
            k.replace("base_layer.", "").replace("out_proj.base_layer", "out_proj"): v
            for k, v in model.get_base_model().state_dict().items()
            if "kradapter" not in k
        }
    )
    with torch.no_grad():
        for i, layer in enumerate(model.get_base_model().layers):
            attn = layer.self_attn
            ref.layers[i].self_attn.in_proj_weight += attn.delta_matrix(name)
            ref.layers[i].self_attn.out_proj.weight += attn.out_proj_layer.delta_matrix(name)
    return ref


def inputs():
    torch.manual_seed(2)
    mask = torch.zeros(3, 5, dtype=torch.bool)
    mask[1, 3:] = True
    return torch.randn(3, 5, 16), mask


def test_forward_equals_the_summed_weights_and_gradients_reach_both_projections():
    model = adapted()
    x, mask = inputs()
    out = model(x, mask=mask)
    torch.testing.assert_close(out, plain_reference(model)(x, mask=mask), atol=1e-5, rtol=1e-5)
    out.square().sum().backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert len(trainable) == 8  # U, V of in_proj and out_proj in 2 layers
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable.values())
    with model.disable_adapter():
        torch.testing.assert_close(model(x, mask=mask), Encoder()(x, mask=mask))


def test_merge_unmerge_unload_and_save_load(tmp_path):
    model = adapted().eval()
    x, mask = inputs()
    before = {k: v.clone() for k, v in model.get_base_model().state_dict().items() if "kradapter" not in k}
    with torch.no_grad():
        out = model(x, mask=mask)
        model.merge_adapter()
        torch.testing.assert_close(model(x, mask=mask), out, atol=1e-5, rtol=1e-5)
        model.unmerge_adapter()
        for k, v in model.get_base_model().state_dict().items():
            if k in before:
                torch.testing.assert_close(v, before[k], atol=1e-6, rtol=0)
        torch.testing.assert_close(model(x, mask=mask), out)
    model.save_pretrained(tmp_path)
    reloaded = PeftModel.from_pretrained(Encoder(), tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x, mask=mask), out)
        merged = reloaded.merge_and_unload()
    attn = merged.layers[0].self_attn
    assert (
        type(attn) is nn.MultiheadAttention and type(attn.out_proj) is nn.modules.linear.NonDynamicallyQuantizableLinear
    )
    with torch.no_grad():
        torch.testing.assert_close(merged(x, mask=mask), out, atol=1e-5, rtol=1e-5)


def test_second_adapter_switches_and_deletes():
    model = adapted().eval()
    model.add_adapter("b", KRAdapterConfig(target_modules=["self_attn"], init_weights=False, alpha=0.2))
    x, mask = inputs()
    with torch.no_grad():
        out_default = model(x, mask=mask)
        model.set_adapter("b")
        out_b = model(x, mask=mask)
        torch.testing.assert_close(out_b, plain_reference(model, "b")(x, mask=mask), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(out_b, out_default)
        model.set_adapter("default")
        model.delete_adapter("b")
        torch.testing.assert_close(model(x, mask=mask), out_default)
    assert not any(n.endswith(".b") for n, _ in model.named_parameters())


def test_refusals():
    model = adapted().eval()
    x, _ = inputs()
    with pytest.raises(ValueError, match="does not support mixed-adapter batches"):
        model(x, adapter_names=["default"] * 3)
    separate = nn.Sequential(nn.MultiheadAttention(16, 4, kdim=8, vdim=8))
    before = snapshot(separate)
    with pytest.raises(ValueError, match="module '0': an nn.MultiheadAttention with kdim/vdim != embed_dim"):
        get_peft_model(separate, KRAdapterConfig(target_modules=["0"]))
    assert_same_snapshot(before, snapshot(separate))
    with pytest.raises(ValueError, match="module '0': k1=40 is out of range for a 16 x 16 layer"):
        get_peft_model(nn.Sequential(nn.MultiheadAttention(16, 4)), KRAdapterConfig(target_modules=["0"], k1=40))


def test_budget_counts_both_projections():
    from kradapter.budget import full_finetune_, peft_config_for, target_layers

    assert target_layers(Encoder(), ["layers.0.self_attn"]) == {
        "layers.0.self_attn": (48, 16),
        "layers.0.self_attn:out_proj": (16, 16),
    }
    kr = adapted()
    kr_count = sum(p.numel() for p in kr.parameters() if p.requires_grad)
    lora = get_peft_model(Encoder(), peft_config_for("lora", Encoder(), ["self_attn"]))
    lora_count = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    assert kr_count <= lora_count < kr_count + 2 * (64 + 32)  # the smallest LoRA rank at or above KRAdapter
    with pytest.raises(ValueError, match="'layers.0.self_attn' is a MultiheadAttention; sinlora is not matched"):
        peft_config_for("sinlora", Encoder(), ["self_attn"])
    model = Encoder()
    with pytest.raises(ValueError, match="'layers.0.self_attn' is a MultiheadAttention; full is not matched"):
        full_finetune_(model, ["self_attn"])
    assert all(p.requires_grad for p in model.parameters())  # refused before anything was frozen


def test_weighted_dense_combination_covers_both_projections():
    model = adapted()
    model.add_adapter("b", KRAdapterConfig(target_modules=["self_attn"], init_weights=False, alpha=0.2))
    model.add_weighted_adapter(["default", "b"], [0.5, 2.0], "ab", combination_type="dense")
    layers = [m for m in model.modules() if hasattr(m, "kradapter_U") and "ab" in m.kradapter_U]
    assert len(layers) == 4  # in_proj and out_proj of two attention layers
    for layer in layers:
        expected = 0.5 * layer.delta_matrix("default") + 2.0 * layer.delta_matrix("b")
        torch.testing.assert_close(layer.delta_matrix("ab"), expected, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(
    "targets",
    [["out_proj"], ["self_attn", "out_proj"], r".*self_attn(\.out_proj)?", "all-linear"],
    ids=["out_proj", "with-its-attention", "regex", "all-linear"],
)
def test_an_attention_out_proj_target_is_refused_as_it_would_never_act(targets):
    # nn.MultiheadAttention hands out_proj.weight to F.multi_head_attention_forward and never calls out_proj: a
    # KRAdapter Linear around it would train and change nothing (PEFT's LoRA makes such dead adapters silently)
    from kradapter.budget import target_layers

    model = Encoder()
    before = snapshot(model)
    message = (
        r"module 'layers.0.self_attn.out_proj' is the out_proj of the nn.MultiheadAttention 'layers.0.self_attn', "
        r"which reads out_proj.weight itself and never calls out_proj: an adapter there would never act. Target the "
        r"attention module 'layers.0.self_attn' instead"
    )
    with pytest.raises(ValueError, match=message):
        get_peft_model(model, KRAdapterConfig(target_modules=targets))
    assert_same_snapshot(before, snapshot(model))
    with pytest.raises(ValueError, match=message):
        target_layers(Encoder(), targets)
    # an out_proj Linear outside nn.MultiheadAttention (BART-style attention calls it) is a target as any Linear
    assert target_layers(nn.ModuleDict({"out_proj": nn.Linear(4, 3)}), ["out_proj"]) == {"out_proj": (3, 4)}


def test_attention_and_the_other_linears_named_instead_of_all_linear_all_act():
    torch.manual_seed(1)
    config = KRAdapterConfig(target_modules=["self_attn", "linear1", "linear2"], init_weights=False)
    model = get_peft_model(Encoder(), config)
    x, mask = inputs()
    model(x, mask=mask).square().sum().backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert len(trainable) == 2 * 2 * 4  # U and V of in_proj, out_proj, linear1, linear2 in 2 layers
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable.values())  # none is dead
