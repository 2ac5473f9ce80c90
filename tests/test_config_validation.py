"""Config fields of the wrong type get one error naming the field; Kron-LoRA blames kron_shape when it is the
cause; a PeftModel whose only adapter was deleted says what to do."""

from __future__ import annotations

import re

import pytest
import torch
from peft import get_peft_model

from _tiny import fresh
from kradapter import KRAdapterConfig, KronLoRAConfig, SinLoRAConfig

WRONG = [
    (KRAdapterConfig, "dropout", "0.1", "a number"),
    (KRAdapterConfig, "target_modules", 5, "list of str"),
    (KRAdapterConfig, "init_weights", "yes", "True or False"),
    (KRAdapterConfig, "alpha_pattern", ["x"], "a dict"),
    (KRAdapterConfig, "layers_to_transform", "0", "list of int"),
    (KronLoRAConfig, "r", "4", "an int"),
    (KronLoRAConfig, "dropout", "0.1", "a number"),
    (KronLoRAConfig, "init_weights", 1, "True or False"),
    (SinLoRAConfig, "freq", "20", "a number"),
    (SinLoRAConfig, "target_modules", [1, 2], "list of str"),
]


@pytest.mark.parametrize("cls,field,value,message", WRONG, ids=[f"{c.__name__}.{f}" for c, f, _, _ in WRONG])
def test_field_of_the_wrong_type_is_one_error_naming_it(cls, field, value, message):
    with pytest.raises(ValueError, match=rf"\b{field}\b.*must be") as err:
        cls(**{field: value})
    assert repr(value) in str(err.value) and (message in str(err.value) or field in ("r", "dropout", "freq"))


def test_fields_of_the_right_types_pass():
    KRAdapterConfig(
        target_modules=["a"],
        k1="sqrt",
        alpha=1,
        dropout=0,
        layers_to_transform=[0],
        layers_pattern="layers",
        alpha_pattern={"a": 0.5},
    )
    KronLoRAConfig(kron_shape=(2, 2), r=2)
    SinLoRAConfig(scale=None, target_modules="all-linear")


def test_kronlora_names_kron_shape_when_it_leaves_no_room_for_r():
    # fc1 is 24 x 16; r=8 fits the layer, but A 12 x 16 leaves B 2 x 1
    with pytest.raises(ValueError, match=r"module 'fc1'.*kron_shape=16 is too large for r=8.*A is 12 x 16.*B 2 x 1"):
        get_peft_model(fresh(), KronLoRAConfig(target_modules=["fc1"], kron_shape=16, r=8))
    with pytest.raises(ValueError, match=r"r=40 is out of range"):  # r too big for the layer itself: r's fault
        get_peft_model(fresh(), KronLoRAConfig(target_modules=["fc1"], kron_shape=2, r=40))


@pytest.mark.parametrize(
    "config",
    [
        lambda: KRAdapterConfig(target_modules=["fc1"], k1=2),
        lambda: KronLoRAConfig(target_modules=["fc1"], r=2, kron_shape=2),
        lambda: SinLoRAConfig(target_modules=["fc1"], r=2),
    ],
    ids=["kradapter", "kronlora", "sinlora"],  # LoRA keeps PEFT's own behaviour: test_load_guards.py
)
def test_model_whose_only_adapter_was_deleted_says_what_to_do(config):
    model = get_peft_model(fresh(), config())
    model.delete_adapter("default")
    with pytest.raises(ValueError, match="no adapter left.*add_adapter.*unload"):
        model(torch.randn(2, 16))
    model.add_adapter("next", config())
    model.set_adapter("next")
    assert model(torch.randn(2, 16)).shape == (2, 8)


# --- values that cannot work: refused at construction (or, for sizes and names that need the model, at injection)
SMALL = {KronLoRAConfig: {"r": 2}}  # fc1 (24 x 16) with the default kron_shape leaves room for r <= 4
SCALES = [(KRAdapterConfig, "alpha"), (SinLoRAConfig, "lora_alpha"), (KronLoRAConfig, "alpha")]


@pytest.mark.parametrize("cls,field", SCALES, ids=[c.__name__ for c, _ in SCALES])
@pytest.mark.parametrize("value,message", [(0, "=0 makes every update zero"), (1e38, "too large"), (-1e5, "too large")])
def test_a_scale_that_cannot_work_is_refused_naming_the_field(cls, field, value, message):
    with pytest.raises(ValueError, match=rf"^{field}={re.escape(repr(value))}.*{message}|^{field}=0 makes"):
        cls(**{field: value})
    with pytest.raises(ValueError, match=r"alpha_pattern\['fc1'\]"):
        cls(alpha_pattern={"fc1": value})


@pytest.mark.parametrize("cls,field", SCALES, ids=[c.__name__ for c, _ in SCALES])
def test_the_largest_accepted_scale_gives_finite_outputs(cls, field):
    # 65504 (float16's largest value) is accepted; with init_weights=False the update is non-zero and stays finite
    config = cls(**{field: 65504.0, "target_modules": ["fc1"], "init_weights": False, **SMALL.get(cls, {})})
    out = get_peft_model(fresh(), config)(torch.randn(2, 16))
    assert torch.isfinite(out).all()


REGEXES = [
    (KRAdapterConfig, {"target_modules": "fc(1"}, "target_modules: 'fc\\(1'"),
    (KRAdapterConfig, {"k1_pattern": {"fc[": 2}}, "k1_pattern key: 'fc\\['"),
    (KRAdapterConfig, {"alpha_pattern": {"*fc": 2.0}}, "alpha_pattern key: '\\*fc'"),
    (SinLoRAConfig, {"rank_pattern": {"fc(": 2}}, "rank_pattern key"),
    (SinLoRAConfig, {"exclude_modules": "fc)"}, "exclude_modules"),
    (KronLoRAConfig, {"alpha_pattern": {"fc(": 2.0}}, "alpha_pattern key"),
]


@pytest.mark.parametrize("cls,kwargs,named", REGEXES, ids=[f"{c.__name__}-{next(iter(k))}" for c, k, _ in REGEXES])
def test_an_invalid_regex_is_one_error_naming_field_and_pattern(cls, kwargs, named):
    with pytest.raises(ValueError, match=rf"{named}.*is not a valid regular expression"):
        cls(**kwargs)


@pytest.mark.parametrize(
    "config",
    [
        lambda: SinLoRAConfig(target_modules=["fc1", "fc2"], r=10**12),
        lambda: SinLoRAConfig(target_modules=["fc1", "fc2"], rank_pattern={"fc1": 10**12}),
    ],
    ids=["r", "rank_pattern"],
)
def test_an_adapter_too_large_for_memory_is_refused_before_allocating_naming_module_and_size(config):
    # 10**12 x (24 + 16) float32 parameters = 160 TB: more than any machine's memory
    model = fresh()
    with pytest.raises(
        ValueError,
        match=r"SinLoRA on module 'fc1' \(24 x 16\) with r=1000000000000: its adapter has "
        r"40,000,000,000,000 parameters \(149,011\.6 GiB in float32\).*more than the",
    ):
        get_peft_model(model, config())
    assert not any("sinlora" in n for n, _ in model.named_parameters())


@pytest.mark.parametrize("cls", [KRAdapterConfig, SinLoRAConfig, KronLoRAConfig], ids=lambda c: c.__name__)
def test_modules_to_save_that_match_nothing_are_refused_at_injection(cls):
    model = fresh()
    with pytest.raises(ValueError, match=r"modules_to_save: 'nonexistent' matches no module"):
        get_peft_model(model, cls(target_modules=["fc1"], modules_to_save=["nonexistent"], **SMALL.get(cls, {})))
    assert [type(m).__name__ for m in model.modules()] == ["TinyMLP", "Linear", "Tanh", "Conv1D"]
    get_peft_model(fresh(), cls(target_modules=["fc1"], modules_to_save=["fc2"], **SMALL.get(cls, {})))  # accepted
