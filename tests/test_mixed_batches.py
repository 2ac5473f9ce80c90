"""Mixed-adapter batches (adapter_names=): each sample equals running its adapter alone ("__base__": the base)."""

import pytest
import torch
from peft import get_peft_model

import kradapter  # noqa: F401
from _kradapter_models import MLP, ConvNet, tiny_gpt2, tiny_llama
from kradapter import KRAdapterConfig
from kradapter.methods.kronlora.config import KronLoRAConfig
from kradapter.methods.sinlora.config import SinLoRAConfig

NAMES = ["a", "b", "__base__", "a", "b"]


def two_adapter_model(model, config_a, config_b):
    torch.manual_seed(1)
    model = get_peft_model(model, config_a, adapter_name="a")
    model.add_adapter("b", config_b)
    return model.eval()


def alone(model, name, **inputs):
    with torch.no_grad():
        if name == "__base__":
            with model.disable_adapter():
                return model(**inputs)
        model.set_adapter(name)
        return model(**inputs)


def assert_rows_match(model, names, key, inputs, out=lambda o: o):
    with torch.no_grad():
        mixed = out(model(**inputs, adapter_names=names))
    per = {n: out(alone(model, n, **inputs)) for n in set(names)}
    for i, name in enumerate(names):
        torch.testing.assert_close(mixed[i], per[name][i], atol=1e-5, rtol=1e-5, msg=f"sample {i} ({name})")
    assert not torch.allclose(per["a"], per["b"]) and not torch.allclose(per["a"], per["__base__"])


@pytest.mark.parametrize(
    "make_config",
    [
        lambda **kw: KRAdapterConfig(target_modules=["lin0", "lin1"], init_weights=False, alpha=0.5, **kw),
        lambda **kw: SinLoRAConfig(target_modules=["lin0", "lin1"], init_weights=False, r=2, **kw),
        lambda **kw: KronLoRAConfig(target_modules=["lin0", "lin1"], init_weights=False, r=2, **kw),
    ],
    ids=["kradapter", "sinlora", "kronlora"],
)
def test_linear_mixed_batch_equals_each_adapter_alone(make_config):
    model = two_adapter_model(MLP(), make_config(modules_to_save=["head"]), make_config(modules_to_save=["head"]))
    with torch.no_grad():  # distinct heads per adapter, so modules_to_save is mixed too
        model.base_model.model.head.modules_to_save["b"].weight.mul_(-1)
    assert_rows_match(model, NAMES, "x", {"x": torch.randn(5, 12)})


def test_conv1d_gpt2_mixed_batch():
    config = KRAdapterConfig(target_modules=["c_attn", "c_proj"], init_weights=False, alpha=0.5)
    model = two_adapter_model(tiny_gpt2(), config, config)
    ids = torch.randint(0, 64, (5, 6))
    assert_rows_match(model, NAMES, "input_ids", {"input_ids": ids}, out=lambda o: o.logits)


def test_conv2d_mixed_batch():
    config = KRAdapterConfig(target_modules=["conv0", "conv1"], init_weights=False, alpha=0.5)
    model = two_adapter_model(ConvNet(), config, config)
    assert_rows_match(model, NAMES, "x", {"x": torch.randn(5, 3, 9, 9)})


@pytest.mark.parametrize("num_beams", [1, 2])  # beam search repeats every sample num_beams times
def test_generate_with_adapter_names_equals_each_adapter_alone(num_beams):
    config = KRAdapterConfig(target_modules=["q_proj", "v_proj", "o_proj"], init_weights=False, alpha=2.0)
    model = two_adapter_model(tiny_llama(), config, config)
    ids = torch.randint(0, 64, (3, 4))
    names = ["b", "__base__", "a"]
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=0, num_beams=num_beams)
    with torch.no_grad():
        mixed = model.generate(input_ids=ids, adapter_names=names, **kwargs)
        per = {}
        for name in set(names):
            if name == "__base__":
                with model.disable_adapter():
                    per[name] = model.generate(input_ids=ids, **kwargs)
            else:
                model.set_adapter(name)
                per[name] = model.generate(input_ids=ids, **kwargs)
    for i, name in enumerate(names):
        assert torch.equal(mixed[i], per[name][i]), (i, name)
    assert len({tuple(per[n][0].tolist()) for n in per}) > 1  # the adapters do change what is generated


def test_bad_adapter_names_are_refused():
    config = KRAdapterConfig(target_modules=["lin0"], init_weights=False)
    model = two_adapter_model(MLP(), config, config)
    x = torch.randn(3, 12)
    with pytest.raises(ValueError, match=r"adapter\(s\) \['typo'\].*existing: \['a', 'b'\]"):
        model(x=x, adapter_names=["a", "typo", "b"])
    with pytest.raises(ValueError, match="adapter_names has 2 names but the batch has 3 samples"):
        model(x=x, adapter_names=["a", "b"])
    with pytest.raises(TypeError, match="list of adapter names"):
        model(x=x, adapter_names="a")
    model.merge_adapter(["a"])
    with pytest.raises(ValueError, match=r"merged into the weights.*unmerge_adapter"):
        model(x=x, adapter_names=["a", "b", "a"])
    model.unmerge_adapter()
    model.train()
    with pytest.raises(ValueError, match="for inference"):
        model(x=x, adapter_names=["a", "b", "a"])
    model.eval()
    model(x=x, adapter_names=["a", "b", "a"])  # no hook is left behind by the failed calls
    assert all(not m._forward_pre_hooks for m in model.modules())


def test_quantized_4bit_base_mixed_batch(tmp_path):
    pytest.importorskip("bitsandbytes")
    from transformers import LlamaForCausalLM

    from kradapter import quant

    tiny_llama().save_pretrained(tmp_path)
    base = LlamaForCausalLM.from_pretrained(tmp_path, quantization_config=quant.bnb_config("4bit"), device_map="cpu")
    config = KRAdapterConfig(target_modules=["q_proj", "v_proj"], init_weights=False, alpha=2.0)
    model = two_adapter_model(base, config, config)
    assert_rows_match(model, NAMES, "input_ids", {"input_ids": torch.randint(0, 64, (5, 6))}, out=lambda o: o.logits)
