"""What PEFT 0.22 expects of every method, checked for each of ours (KRAdapter, SinLoRA, Kron-LoRA).

Written after reading PEFT 0.22's BaseTunerLayer.set_training, PeftModel.load_adapter(strict_adapter_check=...),
PeftModel.merge_adapter(**kwargs) and its generic tests (warning-free loading, a refused safe merge leaves the
base unchanged, dtype and device after a merge).
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file, save_file

import _bounds as bounds
from _kradapter_models import MLP
from kradapter import KRAdapterConfig, KronLoRAConfig, SinLoRAConfig

TARGETS = ["lin0", "lin1"]
CONFIGS = {
    "kradapter": lambda **kw: KRAdapterConfig(target_modules=TARGETS, init_weights=False, **kw),
    "sinlora": lambda **kw: SinLoRAConfig(target_modules=TARGETS, init_weights=False, **kw),
    "kronlora": lambda **kw: KronLoRAConfig(target_modules=TARGETS, init_weights=False, kron_shape=2, r=2, **kw),
}
methods = pytest.mark.parametrize("method", list(CONFIGS))


def adapted(method, base=None, **kw):
    torch.manual_seed(0)
    base = base if base is not None else MLP()
    return base, get_peft_model(copy.deepcopy(base), CONFIGS[method](**kw))


def x():
    return torch.randn(5, 12, generator=torch.Generator().manual_seed(1))


@methods
def test_set_training_switches_the_adapter_dropout_only(method):
    from peft.tuners.tuners_utils import set_training

    _, model = adapted(method, dropout=0.5)
    model.train()
    dropouts = [m for n, m in model.named_modules() if n.endswith("dropout.default")]
    assert dropouts, "the adapter's dropout is kept per adapter name, as PEFT's set_training expects"
    set_training(model, "default", training=False)
    assert not any(m.training for m in dropouts)
    assert model.base_model.model.lin0.base_layer.training  # the base is not the adapter's to switch
    torch.testing.assert_close(model(x()), model(x()), rtol=0, atol=0)  # no dropout left: deterministic
    set_training(model, "default", training=True)
    assert all(m.training for m in dropouts)


@methods
def test_merge_adapter_takes_peft_keywords_and_names_unknown_ones(method):
    _, model = adapted(method)
    expected = model(x())
    tol = bounds.network_tol(model, x())  # both evaluations' float32 roundings per layer, times |W|...|x|
    model.merge_adapter(safe_merge=True)  # PeftModel passes **kwargs on to our tuner
    assert (model(x()) - expected).abs().max().item() <= tol
    model.unmerge_adapter()
    with pytest.raises(TypeError, match=r"merge_adapter got options \['no_such_option'\]"):
        model.merge_adapter(no_such_option=True)
    assert not any(getattr(m, "merged", False) for m in model.modules())


@methods
def test_loading_a_whole_adapter_warns_of_nothing(method, tmp_path):
    base, model = adapted(method)
    model.save_pretrained(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = PeftModel.from_pretrained(copy.deepcopy(base), tmp_path, strict_adapter_check="error")
    assert [str(w.message) for w in caught] == []
    torch.testing.assert_close(loaded(x()), model(x()), rtol=0, atol=0)


@methods
def test_strict_adapter_check_error_refuses_a_file_missing_a_tensor(method, tmp_path):
    base, model = adapted(method)
    model.save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "adapter_model.safetensors")
    dropped = sorted(k for k in tensors if ".lin1." in k)[0]
    del tensors[dropped]
    save_file(tensors, tmp_path / "adapter_model.safetensors")
    plain = copy.deepcopy(base)
    with pytest.raises(Exception, match="missing adapter keys"):
        PeftModel.from_pretrained(plain, tmp_path, strict_adapter_check="error")
    torch.testing.assert_close(plain(x()), base(x()), rtol=0, atol=0)  # the refused load left no wrapper behind


@methods
def test_a_refused_safe_merge_leaves_the_base_unchanged(method):
    base, model = adapted(method)
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if ".lin1." in n and p.requires_grad).fill_(float("nan"))
    weights = {n: p.detach().clone() for n, p in model.named_parameters() if "base_layer" in n}
    with pytest.raises(ValueError, match="NaN/Inf"):
        model.merge_adapter(safe_merge=True)
    for n, p in model.named_parameters():
        if n in weights:
            assert torch.equal(p, weights[n]), n
    assert not any(getattr(m, "merged", False) for m in model.modules())


@methods
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_merge_and_unload_keeps_the_base_dtype_and_device(method, dtype):
    base = MLP().to(dtype)
    _, model = adapted(method, base=base)
    merged = model.merge_and_unload()
    assert {p.dtype for p in merged.parameters()} == {dtype}
    assert {p.device for p in merged.parameters()} == {torch.device("cpu")}
    assert type(merged.lin0) is torch.nn.Linear
