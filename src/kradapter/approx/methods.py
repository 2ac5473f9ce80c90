"""Each method's update, built through its real PEFT layer (the benchmark has no copy of any method's math).

The W0 rule, the same for every method: a fixed random base weight W0 (torch.randn, unit RMS like the targets,
seeded by --seed, shared by all targets) sits in a bias-free nn.Linear; the method's PEFT adapter is put on it
with peft.get_peft_model and the fit drives the layer's effective weight W0 + Delta W towards W0 + T. Delta W is
the adapter's own get_delta_weight -- or, for LoRA variants whose update depends on W0 (DoRA: magnitude times
the normalised direction of W0 + B A), PEFT's own merge of that variant, minus W0. Only DoRA's update depends on
W0 at all; for the other methods the rule is the same as fitting Delta W to T. "full" trains the whole matrix,
starting from W0.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from .targets import name_seed

ADAPTER = "default"
LAYER = "layer"  # name of the adapted module inside the one-layer model


def method_names() -> tuple[str, ...]:
    """Every method the benchmark runs: the budget matcher's list."""
    from ..budget import METHODS

    return tuple(METHODS)


def make_w0(d_out: int, d_in: int, seed: int) -> torch.Tensor:
    return torch.randn(d_out, d_in, generator=torch.Generator().manual_seed(name_seed(seed, "W0")))


SCALINGS = ("unit", "peft")
SCALING_HELP = {
    "unit": "every method's output multiplier set to 1 (KRAdapter alpha=1, LoRA/DoRA lora_alpha=r, RandLoRA "
            "randlora_alpha=r, KronA (LoKr) alpha=r, SinLoRA lora_alpha=r and scale=1 so Delta W = sin(freq B A), "
            "Kron-LoRA alpha=r), as the paper authors' released toy code does; everything else as the budget "
            "matcher returns it",
    "peft": "the configs exactly as the budget matcher returns them: library defaults (KRAdapter alpha=0.1, "
            "LoRA/DoRA lora_alpha=8, RandLoRA randlora_alpha=640, SinLoRA lora_alpha=8 and scale=sqrt(d_in), "
            "Kron-LoRA alpha=8) except LoKr, which the matcher sets to alpha=r",
}


@dataclass
class Adapted:
    """One method set up on W0: its trainable parameters and a function giving Delta W (with gradients)."""

    method: str
    params: list[nn.Parameter]
    delta: Callable[[], torch.Tensor]
    hparams: dict = field(default_factory=dict)
    model: nn.Module | None = None

    @property
    def trainable(self) -> int:
        return sum(p.numel() for p in self.params)


def one_layer_model(w0: torch.Tensor) -> nn.Module:
    d_out, d_in = w0.shape
    linear = nn.Linear(d_in, d_out, bias=False)
    with torch.no_grad():
        linear.weight.copy_(w0)
    return nn.Sequential(OrderedDict([(LAYER, linear)]))


def peft_delta(layer: nn.Module, adapter: str = ADAPTER) -> torch.Tensor:
    """Delta W of one PEFT tuner layer on an nn.Linear, with gradients to the adapter's parameters."""
    variant = getattr(layer, "lora_variant", {}).get(adapter)
    if variant is not None:
        # DoRA & co: PEFT's own merged weight minus W0 (DoRA's weight norm is detached there, as in its forward).
        base = layer.get_base_layer().weight
        return variant.merge_safe(layer, adapter, base) - base
    return layer.get_delta_weight(adapter)


def build(method: str, w0: torch.Tensor, seed: int, scaling: str = "unit") -> Adapted:
    """Set `method` up on W0 at the budget matcher's hyperparameters for W0's shape (KRAdapter's count)."""
    if method not in method_names():
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(method_names())}")
    if scaling not in SCALINGS:
        raise ValueError(f"unknown scaling {scaling!r}; valid: {', '.join(SCALINGS)}")
    torch.manual_seed(name_seed(seed, "init:" + method))  # adapter init, independent of the other methods run
    if method == "full":
        weight = nn.Parameter(w0.clone())
        return Adapted(method, [weight], lambda: weight - w0, {"trains": "the whole matrix, from W0"})

    import peft

    import kradapter  # noqa: F401  (registers kradapter's methods with PEFT)

    model = one_layer_model(w0)
    from ..budget import peft_config_for

    config = peft_config_for(method, model, [LAYER])
    if scaling == "unit":
        config = peft_config_for(method, model, [LAYER], **unit_scale(method, config))
    peft_model = peft.get_peft_model(model, config)
    layer = peft_model.get_submodule(f"base_model.model.{LAYER}")
    params = [p for p in peft_model.parameters() if p.requires_grad]
    return Adapted(method, params, lambda: peft_delta(layer), config_hparams(config), peft_model)


def unit_scale(method: str, config) -> dict:
    """The config fields that make the method's output multiplier 1 (see SCALING_HELP["unit"])."""
    if method == "kradapter":
        return {"alpha": 1.0}
    if method in ("lora", "dora"):
        return {"lora_alpha": config.r, "use_rslora": False}
    if method == "randlora":
        return {"randlora_alpha": config.r}
    if method in ("krona", "kronlora"):
        return {"alpha": config.r}
    if method == "sinlora":
        return {"lora_alpha": config.r, "scale": 1.0}
    raise ValueError(f"no unit scaling is defined for method {method!r}")


def config_hparams(config) -> dict:
    """The config's fields that differ from the class defaults: what the budget matcher (or we) chose."""
    default = type(config)().to_dict() if _constructible(type(config)) else {}
    skip = {"target_modules", "peft_type", "task_type", "base_model_name_or_path", "revision", "inference_mode"}
    out = {}
    for key, value in config.to_dict().items():
        if key in skip or default.get(key, object()) == value:
            continue
        out[key] = sorted(value) if isinstance(value, set) else value
    return out


def _constructible(cls) -> bool:
    try:
        cls()
    except Exception:
        return False
    return True
