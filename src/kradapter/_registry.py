"""The one place that talks to PEFT's method tables.

PEFT keys every method by a member of its ``PeftType`` enum, and ``register_peft_method`` refuses names the enum
does not know. We add our members to the enum (``_compat.add_peft_type``: PEFT offers no public hook for that) and
then register through PEFT's public ``register_peft_method``, so configs saved by ``save_pretrained`` carry
``"peft_type": "KRADAPTER"`` and ``PeftModel.from_pretrained`` finds our classes in any process that imported
``kradapter``. Registering also makes the model card PEFT writes on save name kradapter (model_card.py).
"""

from __future__ import annotations

from peft import PEFT_TYPE_TO_CONFIG_MAPPING
from peft.utils import register_peft_method

from . import model_card
from ._compat import add_model_card_hook, add_peft_type

# name -> (config class, model class), in registration order; read by `kradapter info`.
REGISTERED: dict[str, tuple[type, type]] = {}


def peft_type(name: str):
    """Return ``PeftType[name]``, adding the member if PEFT does not define it."""
    return add_peft_type(name)


def register(name: str, config_cls: type, model_cls: type):
    """Register one method with PEFT under the lower-case ``name`` (idempotent)."""
    member = peft_type(name.upper())
    if name not in REGISTERED:
        if PEFT_TYPE_TO_CONFIG_MAPPING.get(member) is not config_cls:
            register_peft_method(name=name, config_cls=config_cls, model_cls=model_cls, prefix=model_cls.prefix)
        REGISTERED[name] = (config_cls, model_cls)
        add_model_card_hook(model_card.update_card)
    return member
