"""Named adapters, modules_to_save, target selection (all-linear, layer indices, defaults) and per-module patterns."""

import torch
from peft import get_peft_model

from _kradapter_models import MLP, tiny_bert_classifier, tiny_gpt2, tiny_llama
from kradapter import KRAdapterConfig
from kradapter.methods.kradapter.layer import KRAdapterLayer


def adapter_layers(model):
    return {n.removeprefix("base_model.model."): m for n, m in model.named_modules() if isinstance(m, KRAdapterLayer)}


def test_two_named_adapters_add_set_delete():
    torch.manual_seed(0)
    base = MLP()
    x = torch.randn(4, 12)
    base_out = base(x)
    model = get_peft_model(base, KRAdapterConfig(target_modules=["lin0"], init_weights=False))
    out_a = model(x)
    model.add_adapter("other", KRAdapterConfig(target_modules=["lin0", "lin1"], k1=2, init_weights=False))
    assert model.active_adapters == ["default"]
    torch.testing.assert_close(model(x), out_a)  # adding does not activate
    # the inactive adapter is frozen, the active one trainable
    lin0 = model.base_model.model.lin0
    assert lin0.kradapter_U["default"].requires_grad and not lin0.kradapter_U["other"].requires_grad

    model.set_adapter("other")
    out_b = model(x)
    assert not torch.allclose(out_b, out_a) and not torch.allclose(out_b, base_out)
    assert lin0.kradapter_U["other"].requires_grad and not lin0.kradapter_U["default"].requires_grad
    assert lin0.kradapter_U["other"].shape[0] == 2  # its own k1

    model.set_adapter("default")
    torch.testing.assert_close(model(x), out_a)
    model.set_adapter("other")
    torch.testing.assert_close(model(x), out_b)

    model.delete_adapter("other")
    assert set(model.peft_config) == {"default"}
    assert "other" not in lin0.kradapter_U and "other" not in model.base_model.model.lin1.kradapter_U
    model.set_adapter("default")
    torch.testing.assert_close(model(x), out_a)


def test_two_adapters_active_at_once_add_up():
    torch.manual_seed(0)
    base = MLP()
    model = get_peft_model(base, KRAdapterConfig(target_modules=["lin0"], init_weights=False))
    model.add_adapter("other", KRAdapterConfig(target_modules=["lin0"], init_weights=False))
    layer = model.base_model.model.lin0
    x = torch.randn(4, 12)
    layer.set_adapter(["default", "other"])
    w = layer.get_base_layer().weight + layer.delta_matrix("default") + layer.delta_matrix("other")
    torch.testing.assert_close(layer(x), x @ w.T + layer.get_base_layer().bias)


def test_modules_to_save_trains_and_saves_a_copy_of_the_head(tmp_path):
    from safetensors.torch import load_file

    torch.manual_seed(0)
    model = get_peft_model(MLP(), KRAdapterConfig(target_modules=["lin0"], modules_to_save=["head"]))
    head = model.base_model.model.head
    original = head.original_module.weight.detach().clone()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    model(torch.randn(8, 12)).sum().backward()
    opt.step()
    assert torch.equal(head.original_module.weight, original)
    assert not torch.equal(head.modules_to_save["default"].weight, original)
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "adapter_model.safetensors")
    assert set(saved) == {
        "base_model.model.lin0.kradapter_U",
        "base_model.model.lin0.kradapter_V",
        "base_model.model.head.weight",
        "base_model.model.head.bias",
    }


def test_all_linear_targets_every_linear_but_the_output_head():
    model = get_peft_model(tiny_llama(), KRAdapterConfig(target_modules="all-linear"))
    names = adapter_layers(model)
    per_layer = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert {n.rsplit(".", 1)[-1] for n in names} == per_layer
    assert len(names) == 2 * len(per_layer)
    assert "lm_head" not in names


def test_all_linear_on_gpt2_picks_conv1d():
    model = get_peft_model(tiny_gpt2(), KRAdapterConfig(target_modules="all-linear"))
    assert {n.rsplit(".", 1)[-1] for n in adapter_layers(model)} == {"c_attn", "c_proj", "c_fc"}


def test_default_targets_for_llama_are_key_and_value():
    model = get_peft_model(tiny_llama(), KRAdapterConfig())
    assert sorted(adapter_layers(model)) == [
        f"model.layers.{i}.self_attn.{p}" for i in (0, 1) for p in ("k_proj", "v_proj")
    ]
    assert model.peft_config["default"].target_modules == {"k_proj", "v_proj"}


def test_default_targets_for_bert_and_gpt2():
    assert {
        n.rsplit(".", 1)[-1] for n in adapter_layers(get_peft_model(tiny_bert_classifier(), KRAdapterConfig()))
    } == {"key", "value"}
    assert {n.rsplit(".", 1)[-1] for n in adapter_layers(get_peft_model(tiny_gpt2(), KRAdapterConfig()))} == {"c_attn"}


def test_trainable_parameter_count_on_llama():
    model = get_peft_model(tiny_llama(), KRAdapterConfig())
    trainable, total = model.get_nb_trainable_parameters()
    # k_proj, v_proj: 32 -> 16 (2 kv heads of 8): n = 16, m = 32, k1 = 5, k2 = 7 -> 16 * 12 = 192 per layer
    assert trainable == 2 * 2 * 192
    base_total = sum(p.numel() for p in tiny_llama().parameters())
    assert total == base_total + trainable


def test_layers_to_transform_and_layers_pattern():
    model = get_peft_model(
        tiny_llama(layers=3),
        KRAdapterConfig(target_modules=["k_proj", "v_proj"], layers_to_transform=[0, 2], layers_pattern="layers"),
    )
    assert sorted(adapter_layers(model)) == [
        f"model.layers.{i}.self_attn.{p}" for i in (0, 2) for p in ("k_proj", "v_proj")
    ]
    model = get_peft_model(tiny_llama(layers=3), KRAdapterConfig(target_modules=["q_proj"], layers_to_transform=1))
    assert sorted(adapter_layers(model)) == ["model.layers.1.self_attn.q_proj"]


def test_exclude_modules():
    model = get_peft_model(tiny_llama(), KRAdapterConfig(target_modules="all-linear", exclude_modules=["down_proj"]))
    assert "down_proj" not in {n.rsplit(".", 1)[-1] for n in adapter_layers(model)}


def test_alpha_pattern_and_k1_pattern_override_per_module():
    config = KRAdapterConfig(
        target_modules=["k_proj", "v_proj", "o_proj"],
        alpha=0.1,
        k1="sqrt",
        alpha_pattern={"v_proj": 0.5, r"layers\.1\.self_attn\.k_proj": 2.0},
        k1_pattern={"o_proj": "qdrt", "v_proj": 3},
    )
    model = get_peft_model(tiny_llama(), config)
    layers = adapter_layers(model)
    att = "model.layers.{}.self_attn.{}"
    assert layers[att.format(0, "k_proj")].alpha["default"] == 0.1
    assert layers[att.format(1, "k_proj")].alpha["default"] == 2.0
    assert layers[att.format(0, "v_proj")].alpha["default"] == 0.5
    assert layers[att.format(0, "o_proj")].alpha["default"] == 0.1
    assert layers[att.format(0, "k_proj")].k1["default"] == 5  # sqrt(32)
    assert layers[att.format(0, "v_proj")].k1["default"] == 3
    assert layers[att.format(0, "o_proj")].k1["default"] == 2  # qdrt(32)
    assert layers[att.format(0, "o_proj")].kradapter_U["default"].shape == (2, 32)
    assert layers[att.format(0, "o_proj")].kradapter_V["default"].shape == (16, 32)


def test_sequence_classifier_head_saved_automatically():
    model = get_peft_model(tiny_bert_classifier(), KRAdapterConfig(task_type="SEQ_CLS"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert any("classifier.modules_to_save.default" in n for n in trainable)
    out = model(input_ids=torch.randint(0, 64, (2, 5))).logits
    assert out.shape == (2, 3)


def test_print_trainable_parameters_reports_u_and_v(capsys):
    model = get_peft_model(MLP(), KRAdapterConfig(target_modules=["lin0"]))
    model.print_trainable_parameters()
    # lin0: 12 -> 20, n = 12, m = 20, k1 = 4, k2 = 5 -> 108
    assert "trainable params: 108 " in capsys.readouterr().out
