"""One spec per fine-tuning method, read by every tool (budget, approx, bench, train, report): see base.py for
what a spec holds and registry.py for how a user's own spec gets in."""

from .base import MethodSpec, OutOfReach, as_matrix, positive_int
from .full import FullSpec
from .ours import KRAdapterSpec, KronLoRASpec, SinLoRASpec
from .peft_methods import DoRASpec, KronASpec, LoRASpec, RandLoRASpec, krona_factors
from .registry import (
    ENTRY_POINT_GROUP,
    PLUGINS_ENV,
    add_plugin,
    get_spec,
    load_plugin,
    load_plugins,
    method_names,
    register_spec,
    spec_for_config,
)

BUILTIN = (KRAdapterSpec, LoRASpec, DoRASpec, RandLoRASpec, KronASpec, SinLoRASpec, KronLoRASpec, FullSpec)
for _cls in BUILTIN:
    register_spec(_cls())

__all__ = [
    "BUILTIN",
    "ENTRY_POINT_GROUP",
    "MethodSpec",
    "OutOfReach",
    "PLUGINS_ENV",
    "add_plugin",
    "as_matrix",
    "get_spec",
    "krona_factors",
    "load_plugin",
    "load_plugins",
    "method_names",
    "positive_int",
    "register_spec",
    "spec_for_config",
]
