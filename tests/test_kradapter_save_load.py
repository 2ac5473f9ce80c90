"""save_pretrained / PeftModel.from_pretrained, in this process and in a fresh one; loads that must fail cleanly."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file, save_file

from _kradapter_models import MLP, assert_same_snapshot, snapshot, tiny_llama
from kradapter import KRAdapterConfig
from kradapter.methods.kradapter.layer import KRAdapterLayer

TESTS_DIR = Path(__file__).resolve().parent

LOAD_IN_FRESH_PROCESS = """
import sys, torch
sys.path.insert(0, sys.argv[1])
import kradapter                      # the only registration this process does
from peft import PeftModel
from _kradapter_models import tiny_llama
model = PeftModel.from_pretrained(tiny_llama(seed=0), sys.argv[2])
assert type(model.peft_config["default"]).__name__ == "KRAdapterConfig"
with torch.no_grad():
    logits = model(input_ids=torch.arange(12).reshape(2, 6)).logits
torch.save(logits, sys.argv[3])
"""


def trained_llama_adapter(tmp_path):
    model = get_peft_model(tiny_llama(seed=0), KRAdapterConfig(init_weights=False, alpha=0.5, k1="cbrt"))
    model.save_pretrained(tmp_path / "adapter")
    with torch.no_grad():
        logits = model(input_ids=torch.arange(12).reshape(2, 6)).logits
    return model, logits


def test_saved_files_and_config(tmp_path):
    model, _ = trained_llama_adapter(tmp_path)
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "KRADAPTER"
    assert cfg["k1"] == "cbrt" and cfg["alpha"] == 0.5 and sorted(cfg["target_modules"]) == ["k_proj", "v_proj"]
    weights = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert len(weights) == 2 * 2 * 2  # U and V on k_proj and v_proj of 2 layers
    assert all(".kradapter_U" in k or ".kradapter_V" in k for k in weights)
    assert weights["base_model.model.model.layers.0.self_attn.k_proj.kradapter_U"].shape == (3, 16)  # cbrt(32) = 3


def test_from_pretrained_in_a_fresh_process_gives_same_outputs(tmp_path):
    _, logits = trained_llama_adapter(tmp_path)
    out = tmp_path / "logits.pt"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (*sys.path, os.environ.get("PYTHONPATH", "")) if p)}
    proc = subprocess.run(
        [sys.executable, "-c", LOAD_IN_FRESH_PROCESS, str(TESTS_DIR), str(tmp_path / "adapter"), str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    torch.testing.assert_close(torch.load(out), logits)


def test_from_pretrained_in_process_trainable_flag_and_merge(tmp_path):
    _, logits = trained_llama_adapter(tmp_path)
    ids = torch.arange(12).reshape(2, 6)
    loaded = PeftModel.from_pretrained(tiny_llama(seed=0), tmp_path / "adapter")
    assert not any(p.requires_grad for p in loaded.parameters())  # inference by default, as in PEFT
    torch.testing.assert_close(loaded(input_ids=ids).logits, logits)
    trainable = PeftModel.from_pretrained(tiny_llama(seed=0), tmp_path / "adapter", is_trainable=True)
    assert {n for n, p in trainable.named_parameters() if p.requires_grad} == {
        n for n, _ in trainable.named_parameters() if "kradapter_" in n
    }
    merged = trainable.merge_and_unload()
    torch.testing.assert_close(merged(input_ids=ids).logits, logits, rtol=1e-4, atol=1e-4)


def test_load_adapter_as_second_named_adapter(tmp_path):
    _, logits = trained_llama_adapter(tmp_path)
    ids = torch.arange(12).reshape(2, 6)
    model = get_peft_model(tiny_llama(seed=0), KRAdapterConfig())
    base_logits = model(input_ids=ids).logits
    model.load_adapter(tmp_path / "adapter", adapter_name="trained")
    torch.testing.assert_close(model(input_ids=ids).logits, base_logits)
    model.set_adapter("trained")
    torch.testing.assert_close(model(input_ids=ids).logits, logits)


def test_low_cpu_mem_usage_load(tmp_path):
    _, logits = trained_llama_adapter(tmp_path)
    loaded = PeftModel.from_pretrained(tiny_llama(seed=0), tmp_path / "adapter", low_cpu_mem_usage=True)
    torch.testing.assert_close(loaded(input_ids=torch.arange(12).reshape(2, 6)).logits, logits)


def test_directory_without_config_is_one_clear_error(tmp_path):
    base = MLP()
    before = snapshot(base)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="adapter_config.json"):
        PeftModel.from_pretrained(base, tmp_path / "empty")
    assert_same_snapshot(before, snapshot(base))


def save_mlp_adapter(path, **config):
    torch.manual_seed(0)
    get_peft_model(
        MLP(), KRAdapterConfig(target_modules=["lin0", "lin1"], init_weights=False, **config)
    ).save_pretrained(path)


def test_weights_for_another_model_are_rejected_and_base_left_untouched(tmp_path):
    save_mlp_adapter(tmp_path)
    base = MLP(d_in=12, hidden=30)  # lin0 30 x 12, lin1 15 x 30: other shapes
    before = snapshot(base)
    with pytest.raises(
        ValueError,
        match=r"tensor 'base_model\.model\.lin0\.kradapter_U' has shape \(4, 12\) in the "
        r"checkpoint but \(5, 12\) in the model",
    ):
        PeftModel.from_pretrained(base, tmp_path)
    assert_same_snapshot(before, snapshot(base))
    assert not any(isinstance(m, KRAdapterLayer) for m in base.modules())
    # and the base model is still usable for a correct adapter afterwards
    get_peft_model(base, KRAdapterConfig(target_modules=["lin0"]))


def test_weights_edited_to_wrong_shape_are_rejected(tmp_path):
    save_mlp_adapter(tmp_path)
    weights = load_file(tmp_path / "adapter_model.safetensors")
    weights["base_model.model.lin1.kradapter_V"] = torch.zeros(2, 10)
    save_file(weights, tmp_path / "adapter_model.safetensors")
    base = MLP()
    before = snapshot(base)
    with pytest.raises(
        ValueError,
        match=r"'base_model\.model\.lin1\.kradapter_V' has shape \(2, 10\) in the checkpoint "
        r"but \(5, 10\) in the model",
    ):
        PeftModel.from_pretrained(base, tmp_path, is_trainable=True)
    assert_same_snapshot(before, snapshot(base))


def test_config_k1_changed_is_rejected_with_low_cpu_mem_usage(tmp_path):
    save_mlp_adapter(tmp_path)
    cfg_path = tmp_path / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["k1"] = 2
    cfg_path.write_text(json.dumps(cfg))
    base = MLP()
    before = snapshot(base)
    with pytest.raises(ValueError, match=r"kradapter_U' has shape \(4, 12\) in the checkpoint but \(2, 12\)"):
        PeftModel.from_pretrained(base, tmp_path, low_cpu_mem_usage=True)
    assert_same_snapshot(before, snapshot(base))


def test_mismatched_second_adapter_leaves_the_first_intact(tmp_path):
    save_mlp_adapter(tmp_path / "small", k1=2)
    torch.manual_seed(1)
    model = get_peft_model(MLP(), KRAdapterConfig(target_modules=["lin0", "lin1"], init_weights=False))
    x = torch.randn(3, 12)
    out = model(x)
    state = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg_path = tmp_path / "small" / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["k1"] = 3
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"adapter 'second' was not loaded"):
        model.load_adapter(tmp_path / "small", adapter_name="second")
    assert set(model.peft_config) == {"default"}
    assert {n: p for n, p in model.named_parameters()}.keys() == state.keys()
    for n, p in model.named_parameters():
        assert torch.equal(p, state[n])
    torch.testing.assert_close(model(x), out)


def test_saved_head_of_another_size_is_rejected_and_base_left_untouched(tmp_path):
    torch.manual_seed(0)
    get_peft_model(MLP(), KRAdapterConfig(target_modules=["lin0"], modules_to_save=["head"])).save_pretrained(tmp_path)
    base = MLP(d_out=5)
    before = snapshot(base)
    with pytest.raises(
        ValueError,
        match=r"tensor 'base_model\.model\.head\.modules_to_save\.weight' has shape \(3, 10\) "
        r"in the checkpoint but \(5, 10\) in the model",
    ):
        PeftModel.from_pretrained(base, tmp_path)
    assert_same_snapshot(before, snapshot(base))
