"""Every bad input gives one clear error that names the problem, and leaves the model as it was."""

import math

import pytest
import torch
from peft import get_peft_model
from torch import nn

from _kradapter_models import MLP, assert_same_snapshot, snapshot, tiny_llama
from kradapter import KRAdapterConfig


class Mixed(nn.Module):
    """Supported layers before and after an unsupported one, so a half-done injection would show."""

    def __init__(self):
        super().__init__()
        self.first = nn.Linear(8, 8)
        self.block = nn.ModuleDict(
            {
                "emb": nn.Embedding(10, 8),
                "conv1d": nn.Conv1d(8, 8, 3),
                "norm": nn.LayerNorm(8),
                "convt": nn.ConvTranspose1d(8, 8, 3),
            }
        )
        self.last = nn.Linear(8, 30)


def assert_rejected(model, config, match, error=ValueError):
    before = snapshot(model)
    with pytest.raises(error, match=match):
        get_peft_model(model, config)
    assert_same_snapshot(before, snapshot(model))


def test_target_matching_no_module():
    assert_rejected(MLP(), KRAdapterConfig(target_modules=["q_proj"]), r"Target modules \{'q_proj'\} not found")


def test_layers_to_transform_matching_no_layer():
    assert_rejected(
        tiny_llama(),
        KRAdapterConfig(target_modules=["k_proj"], layers_to_transform=[7]),
        r"not found in the base model.*layers_to_transform",
    )


@pytest.mark.parametrize(
    "target,path,type_name",
    [
        ("convt", "block.convt", "torch.nn.modules.conv.ConvTranspose1d"),
        ("norm", "block.norm", "torch.nn.modules.normalization.LayerNorm"),
    ],
)
def test_unsupported_layer_type_names_module_and_type(target, path, type_name):
    config = KRAdapterConfig(target_modules=["first", target, "last"])
    assert_rejected(Mixed(), config, rf"cannot adapt module '{path}' of type {type_name}; supported: torch\.nn\.Linear")


def test_regex_target_reaching_an_unsupported_module():
    assert_rejected(Mixed(), KRAdapterConfig(target_modules=r".*(first|norm|last)"), r"'block\.norm' of type")


@pytest.mark.parametrize("k1", [0, -3])
def test_k1_below_one(k1):
    with pytest.raises(ValueError, match=rf"k1={k1} must be >= 1"):
        KRAdapterConfig(target_modules=["lin0"], k1=k1)


@pytest.mark.parametrize("k1", ["sqrtt", "log", "SQRT", 2.5, True, None])
def test_k1_not_an_int_or_budget_word(k1):
    with pytest.raises(ValueError, match=r"k1.*(budget word|int >= 1)"):
        KRAdapterConfig(target_modules=["lin0"], k1=k1)


def test_k1_pattern_bad_word_and_value():
    with pytest.raises(ValueError, match=r"k1_pattern\['lin1'\]='half' is not a budget word"):
        KRAdapterConfig(target_modules=["lin0"], k1_pattern={"lin1": "half"})
    with pytest.raises(ValueError, match=r"k1_pattern\['lin1'\]=0 must be >= 1"):
        KRAdapterConfig(target_modules=["lin0"], k1_pattern={"lin1": 0})


def test_k1_above_m_is_caught_before_any_module_is_replaced():
    # lin0: 12 -> 20 (m = 20) accepts k1 = 20; lin1: 20 -> 10 (m = 20) too; head: 10 -> 3 (m = 10) does not.
    # PEFT injects in module order, so without the up-front check lin0 and lin1 would already be replaced.
    config = KRAdapterConfig(target_modules=["lin0", "lin1", "head"], k1=20)
    assert_rejected(MLP(), config, r"module 'head': k1=20 is out of range for a 3 x 10 layer: need 1 <= k1 <= m=10")


def test_k1_pattern_above_m_for_one_module():
    config = KRAdapterConfig(target_modules=["lin0", "lin1"], k1_pattern={"lin1": 21})
    assert_rejected(MLP(), config, r"module 'lin1': k1=21 is out of range")


@pytest.mark.parametrize("alpha", [math.nan, math.inf, -math.inf, "0.1", None])
def test_alpha_not_finite(alpha):
    with pytest.raises(ValueError, match=r"alpha must be a finite number"):
        KRAdapterConfig(target_modules=["lin0"], alpha=alpha)


def test_alpha_pattern_not_finite():
    with pytest.raises(ValueError, match=r"alpha_pattern\['lin1'\] must be a finite number, got nan"):
        KRAdapterConfig(target_modules=["lin0"], alpha_pattern={"lin1": math.nan})


def test_config_changed_after_construction_is_checked_at_injection():
    config = KRAdapterConfig(target_modules=["lin0", "lin1"])
    config.alpha = math.inf
    assert_rejected(MLP(), config, r"alpha must be a finite number, got inf")
    config = KRAdapterConfig(target_modules=["lin0", "lin1"])
    config.alpha_pattern["lin1"] = math.nan
    assert_rejected(MLP(), config, r"alpha_pattern\['lin1'\] must be a finite number")
    config = KRAdapterConfig(target_modules=["lin0", "lin1"])
    config.k1 = "huge"
    assert_rejected(MLP(), config, r"k1='huge' is not a budget word")


@pytest.mark.parametrize("field", ["dropout", "module_dropout"])
@pytest.mark.parametrize("p", [-0.1, 1.0])
def test_dropout_out_of_range(field, p):
    with pytest.raises(ValueError, match=rf"{field}={p} must be in \[0, 1\)"):
        KRAdapterConfig(target_modules=["lin0"], **{field: p})


def test_layers_options_need_each_other():
    with pytest.raises(ValueError, match="layers_pattern needs layers_to_transform"):
        KRAdapterConfig(target_modules=["k_proj"], layers_pattern="layers")
    with pytest.raises(ValueError, match="layers_to_transform.* cannot be used when .?target_modules.? is a str"):
        KRAdapterConfig(target_modules="k_proj", layers_to_transform=[0])


def test_unknown_model_type_without_targets():
    assert_rejected(MLP(), KRAdapterConfig(), r"specify `target_modules`")


def test_bad_second_adapter_leaves_the_first_untouched():
    torch.manual_seed(0)
    model = get_peft_model(MLP(), KRAdapterConfig(target_modules=["lin0"], init_weights=False))
    x = torch.randn(2, 12)
    out = model(x)
    before = snapshot(model)
    with pytest.raises(ValueError, match=r"module 'head': k1=11"):
        model.add_adapter("other", KRAdapterConfig(target_modules=["lin0", "lin1", "head"], k1=11))
    assert_same_snapshot(before, snapshot(model))
    assert set(model.peft_config) == {"default"}
    torch.testing.assert_close(model(x), out)
    # the name is free again: a good config under the same name works
    model.add_adapter("other", KRAdapterConfig(target_modules=["lin0", "lin1", "head"]))
