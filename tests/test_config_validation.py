"""Config fields of the wrong type get one error naming the field; Kron-LoRA blames kron_shape when it is the
cause; a PeftModel whose only adapter was deleted says what to do."""

from __future__ import annotations

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
