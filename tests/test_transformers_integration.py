"""transformers' own PEFT integration (PeftAdapterMixin) with every kradapter method, on a tiny config-built Llama:
add_adapter, disable/enable_adapters, get_adapter_state_dict, save_pretrained, load_adapter, set_adapter and
AutoModelForCausalLM.from_pretrained(adapter_dir). No PeftModel wrapper is involved anywhere here."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import kradapter
from _kradapter_models import tiny_llama

# q_proj is 32 -> 32, k_proj / v_proj 32 -> 16 (grouped key/value heads): both orientations.
CONFIGS = {
    "kradapter": lambda seed: kradapter.KRAdapterConfig(
        target_modules=["q_proj", "k_proj", "v_proj"], init_weights=False, alpha=0.5
    ),
    "sinlora": lambda seed: kradapter.SinLoRAConfig(target_modules=["q_proj", "v_proj"], r=2, init_weights=False),
    "kronlora": lambda seed: kradapter.KronLoRAConfig(target_modules=["q_proj", "v_proj"], r=2, init_weights=False),
}
IDS = torch.arange(12).reshape(1, 12) % 64


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory):
    """A saved tiny Llama, so adapters record a base_model_name_or_path transformers can load."""
    path = tmp_path_factory.mktemp("base")
    tiny_llama(seed=0).save_pretrained(path)
    return path


def load_base(base_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(base_dir).eval()


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


def add(model, method: str, name: str, seed: int):
    torch.manual_seed(seed)  # the adapter's random initialisation
    model.add_adapter(CONFIGS[method](seed), adapter_name=name)


@pytest.mark.parametrize("method", CONFIGS)
def test_add_adapter_disable_enable_and_state_dict(base_dir, method):
    model = load_base(base_dir)
    plain = logits(model)
    add(model, method, "a", seed=1)
    assert model.active_adapters() == ["a"]
    adapted = logits(model)
    assert (adapted - plain).abs().max() > 1e-4  # init_weights=False: the adapter changes the output

    model.disable_adapters()
    torch.testing.assert_close(logits(model), plain, rtol=0, atol=0)
    model.enable_adapters()
    torch.testing.assert_close(logits(model), adapted, rtol=0, atol=0)

    state = model.get_adapter_state_dict("a")
    prefix = kradapter._registry.REGISTERED[method][1].prefix
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(prefix in n and n.endswith(".a") for n in trainable)  # only the adapter trains
    # The saved keys are the parameter names without the adapter name, and nothing else.
    assert sorted(state) == sorted(n[: -len(".a")] for n in trainable)
    for name, param in trainable.items():
        torch.testing.assert_close(state[name[: -len(".a")]], param.detach(), rtol=0, atol=0)


@pytest.mark.parametrize("method", CONFIGS)
def test_save_then_load_adapter_set_adapter_and_auto_from_pretrained(base_dir, tmp_path, method):
    from transformers import AutoModelForCausalLM

    trained = load_base(base_dir)
    add(trained, method, "default", seed=1)
    expected = logits(trained)
    trained.save_pretrained(tmp_path / "adapter")
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["peft_type"] == method.upper() and saved["base_model_name_or_path"] == str(base_dir)

    # One call: transformers reads adapter_config.json, loads the base it names, then the adapter.
    auto = AutoModelForCausalLM.from_pretrained(tmp_path / "adapter").eval()
    torch.testing.assert_close(logits(auto), expected, rtol=0, atol=0)

    model = load_base(base_dir)
    plain = logits(model)
    model.load_adapter(str(tmp_path / "adapter"), adapter_name="saved")
    add(model, method, "other", seed=2)  # a second, different adapter; add_adapter does not activate it
    model.set_adapter("saved")
    torch.testing.assert_close(logits(model), expected, rtol=0, atol=0)
    model.set_adapter("other")
    other = logits(model)
    assert (other - expected).abs().max() > 1e-4 and (other - plain).abs().max() > 1e-4
    model.set_adapter("saved")
    torch.testing.assert_close(logits(model), expected, rtol=0, atol=0)


def test_loading_without_import_kradapter_fails_naming_the_method(base_dir, tmp_path):
    """What a user sees without `import kradapter` (the README quotes it): PEFT cannot map the saved peft_type."""
    model = load_base(base_dir)
    add(model, "kradapter", "default", seed=1)
    model.save_pretrained(tmp_path / "adapter")
    code = (
        "from transformers import AutoModelForCausalLM\n"
        f"AutoModelForCausalLM.from_pretrained({str(tmp_path / 'adapter')!r})\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "KeyError: 'KRADAPTER'" in done.stderr.strip().splitlines()[-1]
