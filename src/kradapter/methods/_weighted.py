"""``add_weighted_adapter`` for our methods: a new adapter whose Delta W is exactly sum_i w_i Delta W_i.

PEFT's LoRA offers approximate combinations (an SVD truncated to a rank, ...). Here only combinations whose result
is exact (up to float rounding) are offered; each method lists its own in ``combinations`` (its ``combine.py``
says why each is exact), and any other type is refused with the reason. The driver below is shared:

1. check the inputs (known adapter names, one finite weight per adapter, a new name, the same target modules);
2. plan every layer first (a layer that cannot be combined exactly raises, naming the module): nothing changes
   until every layer is known to work;
3. add the new adapter through PEFT's own injection (its config: the first adapter's, with the plan's overrides),
   then copy the planned tensors in.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass
class LayerPlan:
    """The new adapter's tensors on one layer (parameter-dict name -> tensor) and per-module config settings
    (config pattern name, e.g. "k1_pattern", -> value for this module)."""

    tensors: dict[str, torch.Tensor]
    patterns: dict[str, object] = field(default_factory=dict)


# (combine(layer, adapters, weights) -> LayerPlan, {config field: value} for the new adapter's config)
Combination = tuple[Callable[..., LayerPlan], dict]


def check_weights(adapters: list[str], weights: list[float]) -> list[float]:
    if isinstance(adapters, str) or not adapters:
        raise ValueError(f"adapters must be a non-empty list of adapter names, got {adapters!r}")
    weights = list(weights)
    if len(weights) != len(adapters):
        raise ValueError(f"got {len(weights)} weights for {len(adapters)} adapters {list(adapters)}: need one each")
    for name, w in zip(adapters, weights):
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
            raise ValueError(f"weight {w!r} for adapter '{name}' is not a finite number")
    return [float(w) for w in weights]


def add_weighted_adapter(
    tuner,
    adapters: list[str],
    weights: list[float],
    adapter_name: str,
    combination_type: str,
    combinations: dict[str, Combination],
    method: str,
) -> None:
    weights = check_weights(adapters, weights)
    unknown = [a for a in adapters if a not in tuner.peft_config]
    if unknown:
        raise ValueError(f"adapter '{unknown[0]}' does not exist; existing adapters: {sorted(tuner.peft_config)}")
    if adapter_name in tuner.peft_config:
        raise ValueError(f"an adapter named '{adapter_name}' already exists; choose a new adapter_name")
    if combination_type not in combinations:
        raise ValueError(
            f"combination_type={combination_type!r} is not exact for {method} adapters; exact types: "
            f"{sorted(combinations)} (see the docstring of kradapter.methods.{method.lower().replace('-', '')}.combine)"
        )
    combine, config_update = combinations[combination_type]

    plans: dict[str, LayerPlan] = {}
    for key, layer in tuner.model.named_modules():
        if not isinstance(layer, tuner.tuner_layer_cls):
            continue
        present = [a for a in adapters if a in getattr(layer, layer.adapter_layer_names[0])]
        if not present:
            continue
        if len(present) != len(adapters):
            missing = next(a for a in adapters if a not in present)
            raise ValueError(
                f"adapter '{missing}' is not on module '{key}' but '{present[0]}' is: only adapters on the same "
                "target modules can be combined"
            )
        try:
            plans[key] = combine(layer, adapters, weights)
        except ValueError as err:
            raise ValueError(
                f"cannot combine {method} adapters on module '{key}' with '{combination_type}': {err}"
            ) from None

    config = copy.deepcopy(tuner.peft_config[adapters[0]])
    for attr, value in config_update.items():
        setattr(config, attr, copy.deepcopy(value))
    for key, plan in plans.items():  # exact per-module settings: the full module name as a regex
        for attr, value in plan.patterns.items():
            getattr(config, attr)[re.escape(key)] = value
    tuner.peft_config[adapter_name] = config
    try:
        tuner.inject_adapter(tuner.model, adapter_name)
        for key, plan in plans.items():
            layer = tuner.model.get_submodule(key)
            for attr, tensor in plan.tensors.items():
                param = getattr(layer, attr)[adapter_name]
                if param.shape != tensor.shape:  # a bug, not user input: never copy a wrong shape silently
                    raise RuntimeError(f"{key}.{attr}: planned {tuple(tensor.shape)}, built {tuple(param.shape)}")
                with torch.no_grad():
                    param.copy_(tensor)
    except BaseException:
        if adapter_name in tuner.peft_config:
            tuner.delete_adapter(adapter_name)
        raise


def weighted_sum(tensors: list[torch.Tensor], coefficients: list[float]) -> torch.Tensor:
    """sum_i c_i t_i, accumulated in float64 and returned in the first tensor's dtype."""
    total = torch.zeros_like(tensors[0], dtype=torch.float64)
    for t, c in zip(tensors, coefficients):
        total += c * t.detach().to(torch.float64)
    return total.to(tensors[0].dtype)


def shared(tensors: list[torch.Tensor]) -> bool:
    return all(t.shape == tensors[0].shape and torch.equal(t, tensors[0]) for t in tensors[1:])
