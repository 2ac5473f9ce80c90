"""A failed PeftModel.from_pretrained / load_adapter of one of our adapters leaves the model exactly as it was and
names the file; NaN/Inf weights are refused; tensors missing from the file are named in one warning; meta weights
are never saved, and the check of which tensors belong to an adapter matches whole name segments."""

from __future__ import annotations

import warnings

import pytest
import torch
from peft import PeftModel, get_peft_model
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file, save_file

from _tiny import fresh
from kradapter import KRAdapterConfig, KronLoRAConfig, SinLoRAConfig
from kradapter._peft_guards import AdapterLoadError

CONFIGS = {
    "kradapter": lambda: KRAdapterConfig(target_modules=["fc1", "fc2"], k1=2, init_weights=False),
    "kronlora": lambda: KronLoRAConfig(target_modules=["fc1"], r=2, kron_shape=2, init_weights=False),
    "sinlora": lambda: SinLoRAConfig(target_modules=["fc1", "fc2"], r=2, init_weights=False),
}


def _saved(tmp_path, method="kradapter", seed=1):
    directory = tmp_path / f"{method}-{seed}"
    get_peft_model(fresh(seed), CONFIGS[method]()).save_pretrained(directory)
    return directory


def _state(model):
    """Everything a failed load must leave alone: module tree, values, trainability, attributes."""
    return (
        [(n, type(m).__name__) for n, m in model.named_modules()],
        {k: v.clone() for k, v in model.state_dict().items()},
        [(n, p.requires_grad) for n, p in model.named_parameters()],
        sorted(vars(model)),
    )


def _same(a, b):
    assert a[0] == b[0] and a[2] == b[2] and a[3] == b[3]
    assert a[1].keys() == b[1].keys() and all(torch.equal(a[1][k], b[1][k]) for k in a[1])


BREAKS = {
    "truncated": lambda f: f.write_bytes(f.read_bytes()[:-7]),
    "empty": lambda f: f.write_bytes(b""),
    "missing": lambda f: f.unlink(),
    "garbage": lambda f: f.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......"),
}


@pytest.mark.parametrize("method", list(CONFIGS))
@pytest.mark.parametrize("break_", list(BREAKS))
def test_from_pretrained_with_a_broken_weights_file_restores_the_model_and_names_the_file(tmp_path, method, break_):
    directory = _saved(tmp_path, method)
    weights = directory / "adapter_model.safetensors"
    BREAKS[break_](weights)
    model = fresh(0)
    before = _state(model)
    with pytest.raises(AdapterLoadError, match=f"cannot load adapter {weights}.*the model is as it was before"):
        PeftModel.from_pretrained(model, str(directory))
    _same(_state(model), before)
    assert not any(isinstance(m, BaseTunerLayer) for m in model.modules())


def test_an_adapter_config_that_is_not_json_is_named_not_the_weights(tmp_path):
    directory = _saved(tmp_path)
    config = directory / "adapter_config.json"
    config.write_text(config.read_text()[:-5])  # cut short: still names the method, no longer JSON
    model = fresh(0)
    before = _state(model)
    with pytest.raises(AdapterLoadError, match=f"cannot load adapter {config}: not valid JSON"):
        PeftModel.from_pretrained(model, str(directory))
    _same(_state(model), before)


@pytest.mark.parametrize("break_", ["truncated", "missing"])
def test_load_adapter_failure_keeps_the_existing_adapters_only(tmp_path, break_):
    first, second = _saved(tmp_path, seed=1), _saved(tmp_path, seed=2)
    BREAKS[break_](second / "adapter_model.safetensors")
    peft_model = PeftModel.from_pretrained(fresh(0), str(first))
    x = torch.randn(3, 16)
    out_before = peft_model(x)
    before = _state(peft_model)
    with pytest.raises(AdapterLoadError, match=str(second / "adapter_model.safetensors")):
        peft_model.load_adapter(str(second), adapter_name="other")
    _same(_state(peft_model), before)
    assert list(peft_model.peft_config) == ["default"]
    assert torch.equal(peft_model(x), out_before)
    peft_model.load_adapter(str(first), adapter_name="other")  # the name is free again


def test_nan_weights_are_refused_naming_each_tensor(tmp_path):
    directory = _saved(tmp_path)
    weights = directory / "adapter_model.safetensors"
    state = load_file(weights)
    bad = sorted(state)[0]
    state[bad][0, 0] = float("nan")
    save_file(state, weights)
    model = fresh(0)
    before = _state(model)
    with pytest.raises(AdapterLoadError, match=f"{weights}: tensor '{bad}' holds NaN or Inf values"):
        PeftModel.from_pretrained(model, str(directory))
    _same(_state(model), before)


def test_tensors_missing_from_the_file_are_named_in_one_warning(tmp_path):
    directory = _saved(tmp_path)
    weights = directory / "adapter_model.safetensors"
    state = load_file(weights)
    dropped = sorted(state)[-1]
    save_file({k: v for k, v in state.items() if k != dropped}, weights)
    peft_model = PeftModel.from_pretrained(fresh(0), str(_saved(tmp_path, seed=2)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        peft_model.load_adapter(str(directory), adapter_name="other")
    # PEFT (>= 0.22) names them itself; a second warning of ours would say the same again
    naming = [str(w.message) for w in caught if dropped.removeprefix("base_model.model.") in str(w.message)]
    assert len(naming) == 1 and "missing" in naming[0], [str(w.message) for w in caught]


def test_meta_device_adapter_is_not_saved(tmp_path):
    with torch.device("meta"):
        model = fresh(0)
    peft_model = get_peft_model(model, CONFIGS["kradapter"]())
    with pytest.raises(ValueError, match="meta device.*nothing was written"):
        peft_model.save_pretrained(tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_adapter_named_b_is_saved_though_the_base_holds_a_meta_bias(tmp_path):
    # Only the adapter's own tensors must have values; 'b' is not the b of 'base_layer.bias'.
    peft_model = get_peft_model(fresh(0), CONFIGS["kradapter"](), adapter_name="b")
    fc1 = peft_model.base_model.model.fc1.base_layer
    fc1.bias = torch.nn.Parameter(torch.empty(24, device="meta"), requires_grad=False)
    peft_model.save_pretrained(tmp_path / "out")
    saved = load_file(tmp_path / "out" / "b" / "adapter_model.safetensors")
    assert sorted(saved) == [f"base_model.model.{m}.kradapter_{p}" for m in ("fc1", "fc2") for p in "UV"]
