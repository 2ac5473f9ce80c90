"""Which PEFT config each --method gets, at a budget matched to KRAdapter, and full fine-tuning.

The budget matcher (kradapter.budget) owns every method's parameter count and config; until it is available this
module covers kradapter, lora and full with the smallest possible stand-in (LoRA's rank chosen so its parameter
count is closest to KRAdapter's on the same targets, alpha = 2r as in the paper's appendix G).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn


def available_methods() -> tuple[str, ...]:
    try:
        from ..budget import METHODS
    except ImportError:
        return ("kradapter", "lora", "full")
    return tuple(METHODS)


def check_method(method: str) -> None:
    methods = available_methods()
    if method not in methods:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(methods)}")


def _stand_in_config(method: str, model: nn.Module, target_modules: list[str], **overrides):
    from peft import LoraConfig

    from .. import KRAdapterConfig
    from ..methods.kradapter.layer import weight_geometry
    from ..ops import kradapter_shapes

    if method == "full":
        return None
    if method == "kradapter":
        return KRAdapterConfig(target_modules=list(target_modules), **overrides)
    modules = dict(model.named_modules())
    kr_params = per_rank = 0
    for name in target_modules:
        d_out, d_in = weight_geometry(modules[name])
        (k1, n), (k2, _) = kradapter_shapes(d_out, d_in)
        kr_params += n * (k1 + k2)
        w = modules[name].weight
        per_rank += (d_out + d_in) if w.dim() == 2 else (w.shape[0] + d_in)  # conv: A is in*kh*kw, B is out
    r = max(1, round(kr_params / per_rank))
    return LoraConfig(r=r, lora_alpha=2 * r, target_modules=list(target_modules), **overrides)


def peft_config(method: str, model: nn.Module, target_modules: list[str], head: Optional[list[str]] = None):
    """The PeftConfig for `method` on `target_modules` (None for full fine-tuning)."""
    check_method(method)
    overrides = {"modules_to_save": list(head)} if head else {}
    try:
        from ..budget import peft_config_for
    except ImportError:
        peft_config_for = _stand_in_config
    return peft_config_for(method, model, list(target_modules), **overrides)


def apply_method(model: nn.Module, method: str, target_modules: list[str], head: Optional[list[str]] = None):
    """(model ready to train, reference weights). PEFT methods wrap the model with get_peft_model; full
    fine-tuning unfreezes the targets and the head in place and keeps a copy of the targets' initial weights so
    the update Delta W = W - W0 can be analysed like an adapter's."""
    from peft import get_peft_model

    config = peft_config(method, model, target_modules, head)
    if config is not None:
        return get_peft_model(model, config), None
    modules = dict(model.named_modules())
    model.requires_grad_(False)
    reference = {}
    for name in target_modules:
        modules[name].requires_grad_(True)
        reference[name] = modules[name].weight.detach().clone()
    for name in head or []:
        modules[name].requires_grad_(True)
    return model, reference


def trainable_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


@torch.no_grad()
def full_deltas(model: nn.Module, reference: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """W - W0 for every fully fine-tuned target."""
    modules = dict(model.named_modules())
    return {name: modules[name].weight.detach() - w0 for name, w0 in reference.items()}
