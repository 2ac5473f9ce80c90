"""The one place that talks to PEFT's method tables.

PEFT keys every method by a member of its ``PeftType`` enum, and ``register_peft_method`` refuses names the enum
does not know. We add our members to the enum (PEFT offers no public hook for that) and then register through
PEFT's public ``register_peft_method``, so configs saved by ``save_pretrained`` carry ``"peft_type": "KRADAPTER"``
and ``PeftModel.from_pretrained`` finds our classes in any process that imported ``kradapter``.
"""

from __future__ import annotations

from peft.utils.peft_types import PeftType, register_peft_method

# name -> (config class, model class), in registration order; read by `kradapter info`.
REGISTERED: dict[str, tuple[type, type]] = {}


def peft_type(name: str) -> PeftType:
    """Return ``PeftType[name]``, adding the member if PEFT does not define it."""
    if name in PeftType.__members__:
        return PeftType[name]
    member = str.__new__(PeftType, name)
    member._name_ = name
    member._value_ = name
    member._sort_order_ = len(PeftType._member_names_)
    PeftType._member_map_[name] = member
    PeftType._value2member_map_[name] = member
    PeftType._member_names_.append(name)
    # EnumType.__setattr__ forbids assigning members; type.__setattr__ makes `PeftType.NAME` resolve.
    type.__setattr__(PeftType, name, member)
    return member


def register(name: str, config_cls: type, model_cls: type) -> PeftType:
    """Register one method with PEFT under the lower-case ``name`` (idempotent)."""
    member = peft_type(name.upper())
    if name not in REGISTERED:
        from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

        if PEFT_TYPE_TO_CONFIG_MAPPING.get(member) is not config_cls:
            register_peft_method(name=name, config_cls=config_cls, model_cls=model_cls, prefix=model_cls.prefix)
        REGISTERED[name] = (config_cls, model_cls)
    return member
