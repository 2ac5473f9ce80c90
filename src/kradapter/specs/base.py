"""What a fine-tuning method is to every tool here: one ``MethodSpec`` per method.

The budget matcher, the approximation benchmark, the speed bench, the recipes and the spectral report all read a
method through its spec; none of them branches on a method's name. A spec says:

* ``count(d_out, d_in, **hparams)``: trainable parameters it adds to one d_out x d_in layer (a Conv2d kernel counts
  as the flattened out x in*kh*kw matrix);
* ``search(shapes, budget, fixed)``: its hyperparameters with the smallest total count >= budget over those layers
  (the default searches ``knob`` assuming the count never decreases in it, by bisection);
* ``config(targets, hparams, conv1d)``: the PEFT config (``None`` for full fine-tuning: the caller trains the
  targets' weights);
* ``unit_scale(config)``: the config fields that make its output multiplier 1 (``kradapter approx --scaling unit``);
* ``delta(layer, adapter)``: Delta W as a d_out x d_in matrix, the change the layer really applies to W0 (with
  gradients to the adapter's parameters): merged weight minus W0 where the two differ from ``get_delta_weight``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import fields
from typing import Any

import torch
from torch import nn

from .search import smallest_monotone

# ``shapes`` below: a Counter of (d_out, d_in) -> how many targeted layers have that shape.


class OutOfReach(ValueError):
    """No setting of the method reaches the budget; ``largest`` is the biggest total it can reach."""

    def __init__(self, largest: int, fixed: dict):
        super().__init__(f"largest count {largest}")
        self.largest, self.fixed = largest, fixed


def positive_int(value, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{where} must be an int >= 1, got {value!r}")
    return value


def as_matrix(layer: nn.Module, weight: torch.Tensor) -> torch.Tensor:
    """A weight-shaped update as d_out x d_in: Conv1D's (in, out) transposed, a conv kernel flattened."""
    from .._compat import Conv1D

    base = layer.get_base_layer() if hasattr(layer, "get_base_layer") else layer
    if isinstance(base, Conv1D):
        return weight.T
    return weight.reshape(weight.shape[0], -1)


class MethodSpec:
    """One method. Subclass it, set the class attributes, override what differs; ``register_spec`` an instance."""

    name: str = ""
    summary: str = ""  # one line for listings
    hparams: dict[str, Any] = {}  # the hyperparameters ``count`` depends on, with their defaults
    knob: str | None = None  # the one that sets the size, which ``search`` varies (None: nothing to match)
    conv1d: bool = True  # its PEFT layer adapts transformers Conv1D targets
    flattened: bool = False  # adapts conv (1d/2d/3d) and Embedding targets, ``count`` on the flattened matrix
    grouped: bool = False  # ... grouped convolutions too
    multihead_attention: bool = False  # adapts nn.MultiheadAttention (in_proj and out_proj counted)
    trains_base: bool = False  # no adapter: the targets' own weights train (full fine-tuning)
    config_only: tuple[str, ...] = ()  # hparams that, given as config overrides, are not held fixed in matching
    default_lr: float = 1e-3  # `kradapter train`'s learning rate when none is given (tune it: --lr-grid)

    # --- counts and budgets --------------------------------------------------------------------------------
    def count(self, d_out: int, d_in: int, **hparams: Any) -> int:
        raise NotImplementedError(f"method spec {self.name!r} defines no count()")

    def complete(self, given: dict[str, Any]) -> dict[str, Any]:
        """``given`` over the defaults; unknown names are one error listing the known ones."""
        unknown = set(given) - set(self.hparams)
        if unknown:
            raise ValueError(
                f"{self.name} has no hyperparameter(s) {sorted(unknown)}; its count depends on {sorted(self.hparams)}"
            )
        return {**self.hparams, **given}

    def total(self, shapes: Counter, hparams: dict[str, Any]) -> int:
        return sum(n * self.count(o, i, **hparams) for (o, i), n in shapes.items())

    def knob_range(self, shapes: Counter, fixed: dict[str, Any]) -> tuple[int, int]:
        """Values ``search`` may try: by default 1 .. the largest side of any layer."""
        return 1, max(max(s) for s in shapes)

    def sized(self, shapes: Counter, fixed: dict[str, Any]) -> dict[str, Any]:
        """The hyperparameters when the caller fixed the knob: nothing to match (override to fill dependents)."""
        return dict(fixed)

    def search(self, shapes: Counter, budget: int, fixed: dict[str, Any]) -> tuple[dict, int]:
        """``(hparams, total)`` with the smallest total >= budget. Default: bisection on ``knob``, valid when the
        count never decreases as the knob grows (override it for a method where it can)."""
        lo, hi = self.knob_range(shapes, fixed)
        best, largest = smallest_monotone(lambda k: self.total(shapes, {**fixed, self.knob: k}), lo, hi, budget)
        if best is None:
            raise OutOfReach(largest, fixed)
        return {**fixed, self.knob: best[0]}, best[1]

    def match(self, shapes: Counter, budget: int, fixed: dict[str, Any]) -> tuple[dict, int]:
        """What the budget matcher calls: search, unless the size is fixed or there is none."""
        self.complete(fixed)
        if self.knob is None:
            return dict(fixed), self.total(shapes, self.complete(fixed))
        if self.knob in fixed:
            hparams = self.sized(shapes, fixed)
            return hparams, self.total(shapes, self.complete(hparams))
        return self.search(shapes, budget, dict(fixed))

    # --- PEFT -------------------------------------------------------------------------------------------------
    def config_class(self) -> type | None:
        """The PEFT config class (imported on demand); None for a method without one."""
        return None

    def override_fields(self) -> set[str]:
        cls = self.config_class()
        return set() if cls is None else {f.name for f in fields(cls)} - {"target_modules", "peft_type", "use_dora"}

    def config(self, targets: list[str], hparams: dict[str, Any], conv1d: list[str]):
        """The PEFT config on ``targets`` (``conv1d``: those that are transformers Conv1D) with ``hparams`` (matched
        values and the caller's overrides)."""
        cls = self.config_class()
        if cls is None:
            return None
        return cls(target_modules=list(targets), **hparams)

    def matches_config(self, config) -> bool:
        """Whether a saved PEFT config is this method's (how `kradapter report` names an adapter's method)."""
        cls = self.config_class()
        return cls is not None and type(config) is cls

    def unit_scale(self, config) -> dict[str, Any]:
        """Config fields that set the output multiplier to 1."""
        raise ValueError(f"no unit scaling is defined for method {self.name!r}")

    # --- the update ---------------------------------------------------------------------------------------------
    def delta(self, layer: nn.Module, adapter: str) -> torch.Tensor:
        """Delta W (d_out x d_in) that ``layer`` applies for ``adapter``, with gradients."""
        return as_matrix(layer, layer.get_delta_weight(adapter))

    def __repr__(self) -> str:
        return f"<MethodSpec {self.name}>"
