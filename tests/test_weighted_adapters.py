"""add_weighted_adapter: the exact combinations give Delta W = sum_i w_i Delta W_i; the rest are refused."""

import pytest
import torch
from peft import PeftModel, get_peft_model

import kradapter  # noqa: F401
from _kradapter_models import MLP
from kradapter import KRAdapterConfig
from kradapter.methods.kronlora.config import KronLoRAConfig
from kradapter.methods.sinlora.config import SinLoRAConfig

TARGETS = ["lin0", "lin1"]
WEIGHTS = [0.7, -1.3]


def two_adapters(config_a, config_b=None, seed=0):
    torch.manual_seed(seed)
    model = get_peft_model(MLP().double(), config_a)
    model.add_adapter("b", config_b or config_a)
    return model


def layers(model):
    return {k: m for k, m in model.named_modules() if hasattr(m, "delta_matrix") and hasattr(m, "base_layer")}


def share(model, attr):
    with torch.no_grad():
        for layer in layers(model).values():
            getattr(layer, attr)["b"].copy_(getattr(layer, attr)["default"])


def assert_weighted_sum(model, name="ab", weights=WEIGHTS):
    assert len(layers(model)) == 2
    for key, layer in layers(model).items():
        expected = weights[0] * layer.delta_matrix("default") + weights[1] * layer.delta_matrix("b")
        torch.testing.assert_close(layer.delta_matrix(name), expected, atol=1e-12, rtol=1e-10, msg=key)


def kr(**kw):
    return KRAdapterConfig(target_modules=TARGETS, init_weights=False, **kw)


@pytest.mark.parametrize("shared_factor", ["kradapter_V", "kradapter_U"])
def test_kradapter_linear_of_adapters_sharing_a_factor_is_exact(shared_factor):
    model = two_adapters(kr(alpha=0.3), kr(alpha=2.0))
    share(model, shared_factor)
    model.add_weighted_adapter(["default", "b"], WEIGHTS, "ab", combination_type="linear")
    assert_weighted_sum(model)
    lin0 = model.base_model.model.lin0
    assert lin0.kradapter_U["ab"].shape == lin0.kradapter_U["default"].shape  # same size as the inputs


def test_kradapter_linear_without_a_shared_factor_is_refused_and_changes_nothing():
    model = two_adapters(kr())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="module '.*lin0'.*share neither V nor U.*'dense'"):
        model.add_weighted_adapter(["default", "b"], WEIGHTS, "ab", combination_type="linear")
    assert "ab" not in model.peft_config
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())


def test_kradapter_dense_is_exact_for_any_adapters_and_round_trips(tmp_path):
    model = two_adapters(kr(alpha=0.5, k1=2), kr(alpha=0.1))  # different k1 and alpha
    model.add_weighted_adapter(["default", "b"], WEIGHTS, "ab", combination_type="dense")
    assert_weighted_sum(model)
    assert model.peft_config["ab"].k1 == 1
    x = torch.randn(5, 12, dtype=torch.float64)
    model.set_adapter("ab")
    with torch.no_grad():
        out = model(x)
    model.save_pretrained(tmp_path, selected_adapters=["ab"])
    torch.manual_seed(5)
    reloaded = PeftModel.from_pretrained(MLP().double(), tmp_path / "ab", adapter_name="ab").eval()
    base = model.base_model.model
    with torch.no_grad():
        reloaded.base_model.model.load_state_dict(
            {k: v for k, v in base.state_dict().items() if "kradapter" not in k}, strict=False
        )
        torch.testing.assert_close(reloaded(x), out)


@pytest.mark.parametrize(
    "weights, match",
    [
        ([1.0], "got 1 weights for 2 adapters"),
        ([1.0, float("nan")], "weight nan for adapter 'b' is not a finite number"),
        ([1.0, float("inf")], "weight inf for adapter 'b'"),
    ],
)
def test_bad_weights_are_refused(weights, match):
    model = two_adapters(kr())
    with pytest.raises(ValueError, match=match):
        model.add_weighted_adapter(["default", "b"], weights, "ab", combination_type="dense")
    assert "ab" not in model.peft_config


def test_inexact_types_unknown_and_existing_names_and_other_targets_are_refused():
    model = two_adapters(kr())
    with pytest.raises(ValueError, match="combination_type='svd' is not exact for KRAdapter.*'dense', 'linear'"):
        model.add_weighted_adapter(["default", "b"], WEIGHTS, "ab", combination_type="svd")
    with pytest.raises(ValueError, match="adapter 'nope' does not exist"):
        model.add_weighted_adapter(["default", "nope"], WEIGHTS, "ab", combination_type="dense")
    with pytest.raises(ValueError, match="'b' already exists"):
        model.add_weighted_adapter(["default", "b"], WEIGHTS, "b", combination_type="dense")
    model.add_adapter("c", KRAdapterConfig(target_modules=["lin0"], init_weights=False))
    with pytest.raises(ValueError, match="'c' is not on module '.*lin1'.*same target modules"):
        model.add_weighted_adapter(["default", "c"], WEIGHTS, "ac", combination_type="dense")
    assert set(model.peft_config) == {"default", "b", "c"}


def kron(**kw):
    return KronLoRAConfig(target_modules=TARGETS, init_weights=False, **kw)


def test_kronlora_linear_sharing_b_and_cat_sharing_a_are_exact(tmp_path):
    model = two_adapters(kron(r=1, alpha=3.0), kron(r=1, alpha=0.5))
    share(model, "kronlora_B1")
    share(model, "kronlora_B2")
    model.add_weighted_adapter(["default", "b"], WEIGHTS, "ab", combination_type="linear")
    assert_weighted_sum(model)
    with pytest.raises(ValueError, match="do not share A"):
        model.add_weighted_adapter(["default", "b"], WEIGHTS, "cat", combination_type="cat")

    model = two_adapters(kron(r=1, alpha=3.0), kron(r=1, alpha=0.5), seed=1)
    share(model, "kronlora_A")
    model.add_weighted_adapter(["default", "b"], WEIGHTS, "ab", combination_type="cat")
    assert_weighted_sum(model)
    assert model.base_model.model.lin0.r["ab"] == 2
    model.save_pretrained(tmp_path, selected_adapters=["ab"])  # per-module rank survives save / load
    reloaded = PeftModel.from_pretrained(MLP().double(), tmp_path / "ab", adapter_name="ab")
    for key, layer in layers(reloaded).items():
        assert layer.kronlora_B1["ab"].shape[1] == 2, key


def test_kronlora_cat_beyond_the_largest_rank_is_refused_and_dense_is_exact():
    model = two_adapters(kron(r=2))  # lin0: B is 5 x 3, so two rank-2 adapters would need rank 4
    share(model, "kronlora_A")
    with pytest.raises(ValueError, match="concatenated rank 4 exceeds 3.*'dense'"):
        model.add_weighted_adapter(["default", "b"], WEIGHTS, "ab", combination_type="cat")
    model.add_weighted_adapter(["default", "b"], WEIGHTS, "ab", combination_type="dense")
    assert_weighted_sum(model)


def test_sinlora_linear_only_for_shared_weights():
    config = SinLoRAConfig(target_modules=TARGETS, init_weights=False, r=2)
    model = two_adapters(config, SinLoRAConfig(target_modules=TARGETS, init_weights=False, r=2, lora_alpha=3.0))
    with pytest.raises(ValueError, match="not linear in its weights"):
        model.add_weighted_adapter(["default", "b"], WEIGHTS, "ab", combination_type="linear")
    with pytest.raises(ValueError, match="'dense' is not exact for SinLoRA.*\\['linear'\\]"):
        model.add_weighted_adapter(["default", "b"], WEIGHTS, "ab", combination_type="dense")
    share(model, "sinlora_A")
    share(model, "sinlora_B")
    model.add_weighted_adapter(["default", "b"], WEIGHTS, "ab", combination_type="linear")
    assert_weighted_sum(model)
