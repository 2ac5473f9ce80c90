"""KRAdapter on a tiny open_clip CLIP built from a config (no weights, no network): the model family of the paper's
vision experiments, whose two towers attend through nn.MultiheadAttention (adapted in_proj and out_proj, as PEFT's
LoRA does).

open_clip needs torchvision, and PyPI's torchvision does not import beside this machine's torch 2.13.0 CPU file, so
this file runs in a venv of its own (bash .ci/open_clip_check.sh makes it; .ci/run does not call it, see there):
    pip install torch==2.14.1 torchvision==0.29.1 && pip install -e ".[test,openclip]"
"""

import pytest

open_clip = pytest.importorskip(
    "open_clip",
    reason="open_clip is not installed: pip install torch==2.14.1 torchvision==0.29.1 open-clip-torch "
    "(PyPI's torchvision does not import beside torch 2.13.0; bash .ci/open_clip_check.sh makes such a venv)",
)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from peft import LoraConfig, PeftModel, get_peft_model  # noqa: E402
from torch import nn  # noqa: E402

import kradapter  # noqa: E402, F401
from kradapter import KRAdapterConfig  # noqa: E402
from kradapter.budget import OUT_PROJ, match_model, peft_config_for, target_layers  # noqa: E402

# The shape of open_clip's model_configs/*.json, at toy size: ViT towers of width 32 (in_proj 96 x 32).
TINY_CONFIG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 16, "patch_size": 8, "width": 32, "head_width": 16, "layers": 2},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 2},
}
ATTENTION = [f"{tower}transformer.resblocks.{i}.attn" for tower in ("visual.", "") for i in range(2)]


def tiny_clip(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return open_clip.CLIP(**TINY_CONFIG).eval()


def frozen_clip() -> nn.Module:
    """The base as PEFT leaves it, every parameter frozen: the reference for exact comparisons. With torch 2.14.1
    the text tower of an unfrozen copy gives outputs ~1e-6 away (even under no_grad): another numerical path."""
    return tiny_clip().requires_grad_(False)


def batch():
    torch.manual_seed(7)
    return torch.randn(3, 3, 16, 16), torch.randint(1, 64, (3, 8))


def encode(model, image, text):
    with torch.no_grad():
        return model.encode_image(image), model.encode_text(text)


def adapted(init_weights=True, target_modules=("attn",), seed=1, **kw):
    torch.manual_seed(seed)
    config = KRAdapterConfig(target_modules=list(target_modules), init_weights=init_weights, alpha=0.5, **kw)
    return get_peft_model(tiny_clip(), config).eval()


def assert_outputs_close(got, want, atol=1e-5):
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=atol, rtol=atol)


def test_attn_targets_every_attention_module_of_both_towers_and_starts_as_the_base():
    model = adapted()
    wrapped = sorted(k for k, m in model.get_base_model().named_modules() if hasattr(m, "kradapter_U"))
    # each attention module holds the in_proj update and its out_proj (a KRAdapter Linear) the out_proj update
    assert wrapped == sorted([*ATTENTION, *(k + ".base_layer.out_proj" for k in ATTENTION)])
    image, text = batch()
    assert_outputs_close(encode(model, image, text), encode(frozen_clip(), image, text), atol=0)  # U = 0


def test_nonzero_adapter_changes_both_towers_and_merge_unmerge_unload_agree():
    model = adapted(init_weights=False)
    image, text = batch()
    out = encode(model, image, text)
    base_out = encode(frozen_clip(), image, text)
    for got, base_value in zip(out, base_out, strict=True):
        assert (got - base_value).abs().max() > 1e-3
    with model.disable_adapter():
        assert_outputs_close(encode(model, image, text), base_out, atol=0)
    before = {k: v.clone() for k, v in model.get_base_model().state_dict().items() if "kradapter" not in k}
    model.merge_adapter()
    assert_outputs_close(encode(model, image, text), out)
    model.unmerge_adapter()
    after = model.get_base_model().state_dict()
    for k, v in before.items():  # W0 + Delta W - Delta W: W0 up to float32 rounding
        torch.testing.assert_close(after[k], v, atol=1e-6, rtol=0)
    assert_outputs_close(encode(model, image, text), out)
    merged = model.merge_and_unload()
    assert type(merged.transformer.resblocks[0].attn) is nn.MultiheadAttention
    assert not any("kradapter" in k or "base_layer" in k for k in merged.state_dict())
    assert_outputs_close(encode(merged, image, text), out)
    # the merged model is a plain open_clip CLIP: its state dict loads into a fresh one
    plain = tiny_clip(seed=5)
    plain.load_state_dict(merged.state_dict())
    assert_outputs_close(encode(plain, image, text), out)


def test_save_load_round_trip(tmp_path):
    model = adapted(init_weights=False)
    image, text = batch()
    out = encode(model, image, text)
    model.save_pretrained(tmp_path)
    reloaded = PeftModel.from_pretrained(tiny_clip(), tmp_path).eval()
    assert_outputs_close(encode(reloaded, image, text), out, atol=0)


def test_training_step_reaches_only_the_adapter():
    model = adapted(init_weights=False)
    model.train()
    image, text = batch()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("kradapter_" in n for n in trainable)
    assert len(trainable) == 2 * 2 * len(ATTENTION)  # U and V, for in_proj and out_proj, in 4 attention modules
    before = {n: p.detach().clone() for n, p in trainable.items()}
    optimizer = torch.optim.SGD(trainable.values(), lr=0.1)
    image_features, text_features, logit_scale = model(image, text)
    logits = logit_scale * F.normalize(image_features, dim=-1) @ F.normalize(text_features, dim=-1).T
    labels = torch.arange(len(image))
    loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
    loss.backward()
    for name, p in model.named_parameters():
        if name in trainable:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name
    base_before = {k: v.clone() for k, v in model.get_base_model().state_dict().items() if "kradapter" not in k}
    optimizer.step()
    assert all(not torch.equal(p, before[n]) for n, p in trainable.items())
    for k, v in model.get_base_model().state_dict().items():
        if k in base_before:
            assert torch.equal(v, base_before[k]), k


def test_a_regex_target_adapts_the_vision_tower_only():
    torch.manual_seed(1)
    config = KRAdapterConfig(target_modules=r"visual\.transformer\.resblocks\.\d+\.attn", init_weights=False)
    model = get_peft_model(tiny_clip(), config).eval()
    image, text = batch()
    image_out, text_out = encode(model, image, text)
    base_image, base_text = encode(frozen_clip(), image, text)
    assert (image_out - base_image).abs().max() > 1e-3
    torch.testing.assert_close(text_out, base_text, atol=0, rtol=0)


def test_budget_matcher_counts_open_clip_attention_and_matches_lora_on_it():
    layers = target_layers(tiny_clip(), ["attn"])
    assert layers == {
        **{k: (96, 32) for k in ATTENTION},
        **{k + OUT_PROJ: (32, 32) for k in ATTENTION},
    }
    kr_count = sum(p.numel() for p in adapted().parameters() if p.requires_grad)
    assert match_model("kradapter", tiny_clip(), ["attn"])["trainable"] == kr_count
    lora_config = peft_config_for("lora", tiny_clip(), ["attn"])
    assert isinstance(lora_config, LoraConfig) and sorted(lora_config.target_modules) == sorted(ATTENTION)
    lora = get_peft_model(tiny_clip(), lora_config)
    lora_count = sum(p.numel() for p in lora.parameters() if p.requires_grad)
    assert lora_count == match_model("lora", tiny_clip(), ["attn"])["trainable"] >= kr_count


def test_names_a_user_writes_for_open_clip():
    # "attn" plus the MLP's Linear layers: every adapter acts (a gradient reaches each)
    torch.manual_seed(1)
    config = KRAdapterConfig(target_modules=["attn", "c_fc", "c_proj"], init_weights=False)
    model = get_peft_model(tiny_clip(), config)
    image, text = batch()
    image_features, text_features, _ = model(image, text)
    (image_features.square().sum() + text_features.square().sum()).backward()
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert len(trainable) == 2 * 4 * len(ATTENTION)  # U, V of in_proj, out_proj, c_fc, c_proj
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable.values())
    # an attention's out_proj alone (also what "all-linear" picks in open_clip) would be a dead adapter: refused
    for targets in (["out_proj"], "all-linear"):
        with pytest.raises(ValueError, match=r"module '.*attn.out_proj' is the out_proj of the nn.MultiheadAttention"):
            get_peft_model(tiny_clip(), KRAdapterConfig(target_modules=targets))


def test_a_model_from_open_clips_config_registry(tmp_path):
    # open_clip's own path: a model_configs-style JSON file registered, then create_model, no pretrained weights
    import json

    (tmp_path / "kradapter-tiny-clip.json").write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(tmp_path / "kradapter-tiny-clip.json")
    torch.manual_seed(0)
    base = open_clip.create_model("kradapter-tiny-clip", pretrained=None)
    assert base.state_dict().keys() == tiny_clip().state_dict().keys()
    model = get_peft_model(base, KRAdapterConfig(target_modules=["attn"], init_weights=False)).eval()
    image, text = batch()
    out = encode(model, image, text)
    assert_outputs_close(encode(model.merge_and_unload(), image, text), out)
