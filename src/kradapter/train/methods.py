"""Which PEFT config each --method gets, at a budget matched to KRAdapter, and full fine-tuning.

Everything per method comes from its spec (kradapter.specs) through the budget matcher: Linear, Conv1D and Conv2d
targets alike (a Conv2d kernel counts as its flattened out x in*kh*kw matrix, for the methods whose spec says their
PEFT layer adapts convolutions), with every method's own config defaults (LoRA: PEFT's lora_alpha=8 on text and
image tasks alike).
"""

from __future__ import annotations

import torch
from torch import nn

from ..budget import check_method, full_finetune_, peft_config_for, target_layers, trainable_count
from ..specs import get_spec, method_names

__all__ = ["apply_method", "available_methods", "check_method", "full_deltas", "peft_config", "trainable_parameters"]


def available_methods() -> tuple[str, ...]:
    return method_names()


# `kradapter compare --budgets`: the paper's Figure 3 budgets, KRAdapter's k1 = m^(1/2), m^(1/3), m^(1/4). A
# smaller k1 means a larger k2 = m / k1 and so more parameters, n (k1 + k2): low (the default) is the fewest.
BUDGETS = {"low": "sqrt", "medium": "cbrt", "high": "qdrt"}


def budget_k1(word: str | None) -> str:
    """KRAdapter's k1 for a budget word (None: the default, low = sqrt); one error naming the valid words."""
    if word is None:
        return BUDGETS["low"]
    if word not in BUDGETS:
        raise ValueError(
            f"unknown budget {word!r}; valid budgets: {', '.join(BUDGETS)} "
            "(KRAdapter's k1 = m^(1/2), m^(1/3), m^(1/4); comparators matched to it)"
        )
    return BUDGETS[word]


def peft_config(
    method: str, model: nn.Module, target_modules: list[str], head: list[str] | None = None, k1: str = "sqrt"
):
    """The PeftConfig for `method` on `target_modules` (None for full fine-tuning), at the trainable count of
    KRAdapter with this `k1` on the same targets."""
    spec = get_spec(method)
    overrides = {"modules_to_save": list(head)} if head and not spec.trains_base else {}
    budget = None
    if k1 != "sqrt":
        if method == "kradapter":  # the reference method: its own k1, not a count to match
            overrides["k1"] = k1
        else:
            budget = sum(
                trainable_count("kradapter", o, i, k1=k1)
                for o, i in target_layers(model, list(target_modules)).values()
            )
    return peft_config_for(method, model, list(target_modules), budget, **overrides)


def apply_method(
    model: nn.Module, method: str, target_modules: list[str], head: list[str] | None = None, k1: str = "sqrt"
):
    """(model ready to train, reference weights). PEFT methods wrap the model with get_peft_model; full
    fine-tuning trains the targets' weights (budget.full_finetune_) and the head in place, and keeps a copy of the
    targets' initial weights so its update Delta W = W - W0 is analysed like an adapter's."""
    from peft import get_peft_model

    config = peft_config(method, model, target_modules, head, k1)
    if config is not None:
        return get_peft_model(model, config), None
    modules = dict(model.named_modules())
    full_finetune_(model, list(target_modules))
    for name in head or []:
        modules[name].requires_grad_(True)
    reference = {name: modules[name].weight.detach().clone() for name in target_modules}
    return model, reference


def use_public_base_names(peft_model) -> None:
    """Before saving a trained adapter: one trained on an offline default records the model's public name as its
    base, not the local copy's path PEFT took from the model, so that it names a base any machine can load. Save
    with ``save_embedding_layers=False`` then (no task resizes the embeddings): PEFT would otherwise look the public
    name up on the hub to decide, which an offline machine cannot."""
    from .defaults.models import public_name

    for config in peft_model.peft_config.values():
        name = public_name(config.base_model_name_or_path)
        if name is not None:
            config.base_model_name_or_path = name


def save_adapter(peft_model, directory) -> None:
    """Save a trained adapter in one process (PEFT's save_pretrained) under its public base name."""
    use_public_base_names(peft_model)
    peft_model.save_pretrained(str(directory), save_embedding_layers=False)


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
