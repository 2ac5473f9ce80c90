"""Which PEFT config each --method gets, at a budget matched to KRAdapter, and full fine-tuning.

Budgets come from kradapter.budget (one trainable-count formula per method). The budget matcher handles Linear and
Conv1D targets; for Conv2d targets (plain vision models) the methods whose PEFT layers support convolutions and
whose counts are the same on the flattened kernel (out x in*kh*kw) are matched here with the matcher's own counts:
kradapter, lora, dora.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..budget import METHODS, check_method, full_finetune_, peft_config_for, trainable_count

CONV_METHODS = ("kradapter", "lora", "dora", "full")


def available_methods() -> tuple[str, ...]:
    return tuple(METHODS)


def _conv_geometry(model: nn.Module, target_modules: list[str]) -> list[tuple[int, int]] | None:
    """(d_out, d_in) of each target when any target is a Conv2d (None when none is)."""
    from ..methods.kradapter.layer import weight_geometry

    modules = dict(model.named_modules())
    if not any(isinstance(modules[n], nn.Conv2d) for n in target_modules):
        return None
    return [weight_geometry(modules[n]) for n in target_modules]


def _conv_config(method: str, shapes: list[tuple[int, int]], target_modules: list[str], **overrides):
    from peft import LoraConfig

    from .. import KRAdapterConfig

    if method not in CONV_METHODS:
        raise ValueError(f"method {method!r} cannot adapt Conv2d targets here; for convolutions use one of "
                         f"{', '.join(CONV_METHODS)}")
    if method == "kradapter":
        return KRAdapterConfig(target_modules=list(target_modules), **overrides)
    budget = sum(trainable_count("kradapter", o, i) for o, i in shapes)
    r = 1
    while sum(trainable_count(method, o, i, r=r) for o, i in shapes) < budget:
        r += 1
    return LoraConfig(r=r, lora_alpha=2 * r, use_dora=method == "dora", target_modules=list(target_modules),
                      **overrides)


def peft_config(method: str, model: nn.Module, target_modules: list[str], head: Optional[list[str]] = None):
    """The PeftConfig for `method` on `target_modules` (None for full fine-tuning)."""
    check_method(method)
    overrides = {"modules_to_save": list(head)} if head else {}
    shapes = _conv_geometry(model, target_modules)
    if shapes is not None:
        return None if method == "full" else _conv_config(method, shapes, target_modules, **overrides)
    return peft_config_for(method, model, list(target_modules), **({} if method == "full" else overrides))


def apply_method(model: nn.Module, method: str, target_modules: list[str], head: Optional[list[str]] = None):
    """(model ready to train, reference weights). PEFT methods wrap the model with get_peft_model; full
    fine-tuning trains the targets' weights (as budget.full_finetune_ does) and the head in place, and keeps a copy
    of the targets' initial weights so its update Delta W = W - W0 is analysed like an adapter's."""
    from peft import get_peft_model

    from .._quiet import peft_deprecations_silenced

    config = peft_config(method, model, target_modules, head)
    if config is not None:
        with peft_deprecations_silenced():
            return get_peft_model(model, config), None
    modules = dict(model.named_modules())
    if _conv_geometry(model, target_modules) is None:
        full_finetune_(model, list(target_modules))
    else:  # the budget matcher's full_finetune_ takes Linear/Conv1D only; same rule for convolutions
        model.requires_grad_(False)
        for name in target_modules:
            modules[name].weight.requires_grad_(True)
    for name in head or []:
        modules[name].requires_grad_(True)
    reference = {name: modules[name].weight.detach().clone() for name in target_modules}
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
