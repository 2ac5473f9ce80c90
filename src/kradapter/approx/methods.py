"""Each method's update, built through its real PEFT layer (the benchmark has no copy of any method's math).

The W0 rule, the same for every method: a fixed random base weight W0 (torch.randn, unit RMS like the targets,
seeded by --seed, shared by all targets) sits in a bias-free nn.Linear; the method's PEFT adapter is put on it
with peft.get_peft_model and the fit drives the layer's effective weight W0 + Delta W towards W0 + T. Delta W is
the adapter's own get_delta_weight -- or, for LoRA variants whose update depends on W0 (DoRA: magnitude times
the normalised direction of W0 + B A), PEFT's own merge of that variant, minus W0. Only DoRA's update depends on
W0 at all; for the other methods the rule is the same as fitting Delta W to T. "full" trains the whole matrix,
starting from W0. Every method comes from the spec registry (kradapter.specs): its config, its unit scaling and its
Delta W (``spec.delta``, the one definition the spectral report uses too), so a registered user method runs here.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from .targets import name_seed

ADAPTER = "default"
LAYER = "layer"  # name of the adapted module inside the one-layer model


def method_names() -> tuple[str, ...]:
    """Every method the benchmark runs: every registered spec."""
    from ..specs import method_names as registered

    return registered()


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


def build(method: str, w0: torch.Tensor, seed: int, scaling: str = "unit") -> Adapted:
    """Set `method` up on W0 at the budget matcher's hyperparameters for W0's shape (KRAdapter's count)."""
    from ..specs import get_spec

    if method not in method_names():
        raise ValueError(f"unknown method {method!r}; valid: {', '.join(method_names())}")
    if scaling not in SCALINGS:
        raise ValueError(f"unknown scaling {scaling!r}; valid: {', '.join(SCALINGS)}")
    spec = get_spec(method)
    if spec.trains_base:
        weight = nn.Parameter(w0.clone())
        return Adapted(method, [weight], lambda: weight - w0, {"trains": "the whole matrix, from W0"})

    import peft

    import kradapter  # noqa: F401  (registers kradapter's methods with PEFT)

    from ..budget import peft_config_for

    # PEFT initialises adapters from torch's global RNG: seed a fork of it, independent of the other methods run,
    # and leave the caller's RNG as it was
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(name_seed(seed, "init:" + method))
        model = one_layer_model(w0)
        config = peft_config_for(method, model, [LAYER])
        if scaling == "unit":
            config = peft_config_for(method, model, [LAYER], **spec.unit_scale(config))
        peft_model = peft.get_peft_model(model, config)
    layer = peft_model.get_submodule(f"base_model.model.{LAYER}")
    params = [p for p in peft_model.parameters() if p.requires_grad]
    return Adapted(method, params, lambda: spec.delta(layer, ADAPTER), config_hparams(config), peft_model)


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
