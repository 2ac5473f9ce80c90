"""Mixed-adapter batches: ``model(x, adapter_names=[...])``, one adapter name (or "__base__") per sample.

As in PEFT's LoRA: the model-level context (``mixed_batch_hooks``, entered by PeftModel.forward / generate) checks the
names once and puts ``adapter_names`` into the keyword arguments of every adapter layer's forward through pre-hooks;
each layer (``mixed_batch_forward``) runs its base once on the whole batch and adds every adapter's update to the rows
of the samples that asked for it. This is the plain path: the fused training path serves one adapter for the whole
batch, and mixed batches are for inference (refused in training mode).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch

from .._compat import AuxiliaryTrainingWrapper

BASE = "__base__"


def sub_batches(adapter_names: list[str], device: torch.device) -> dict[str, torch.Tensor]:
    """Sample indices per adapter name, in first-seen order."""
    rows: dict[str, list[int]] = {}
    for i, name in enumerate(adapter_names):
        rows.setdefault(name, []).append(i)
    return {name: torch.tensor(idx, device=device) for name, idx in rows.items()}


def check_layer_batch(layer, batch: int, adapter_names: list[str]) -> None:
    if len(adapter_names) != batch:
        raise ValueError(
            f"adapter_names has {len(adapter_names)} names but the batch has {batch} samples: give one adapter name "
            f"(or '{BASE}') per sample"
        )
    if layer.merged:
        raise ValueError(
            f"adapter_names= cannot be used while adapters {layer.merged_adapters} are merged into the weights; call "
            "unmerge_adapter() first"
        )


def mixed_batch_forward(
    layer,
    x: torch.Tensor,
    args: tuple,
    kwargs: dict,
    adapter_names: list[str],
    adapter_term: Callable[[torch.Tensor, str], torch.Tensor] | None = None,
) -> torch.Tensor:
    """base(x) plus, for the samples of each adapter, that adapter's update (DeltaLayer's plain formula).

    ``adapter_term(x_sub, name)`` is the update for a sub-batch; by default dropout(x) -> layer.adapter_output."""
    check_layer_batch(layer, x.shape[0], adapter_names)
    result = layer.base_layer(x, *args, **kwargs)
    if layer.disable_adapters:
        return result
    if adapter_term is None:
        adapter_term = layer.adapter_term

    for name, idx in sub_batches(adapter_names, x.device).items():
        if name == BASE or not layer.has_adapter(name):
            continue
        result = result.index_add(0, idx, adapter_term(x.index_select(0, idx), name).to(result.dtype))
    return result


def _inject_adapter_names(module, args, kwargs, adapter_names):
    kwargs["adapter_names"] = adapter_names
    return args, kwargs


@contextmanager
def mixed_batch_hooks(tuner, adapter_names: Any | None, num_beams: int | None = None):
    """Check ``adapter_names`` and hand it to every adapter layer (and modules_to_save wrapper) for one call."""
    if adapter_names is None:
        yield
        return
    method = tuner.tuner_layer_cls.method_name
    if isinstance(adapter_names, str) or not isinstance(adapter_names, (list, tuple)):
        raise TypeError(f"adapter_names must be a list of adapter names, one per sample, got {adapter_names!r}")
    if tuner.training:
        raise ValueError("adapter_names= (mixed-adapter batches) is for inference; call model.eval() first")
    layers = [m for m in tuner.model.modules() if isinstance(m, tuner.tuner_layer_cls)]
    known = set().union(*(getattr(m, m.adapter_layer_names[0]).keys() for m in layers))
    unknown = sorted({n for n in adapter_names if n != BASE} - known)
    if unknown:
        raise ValueError(
            f"adapter_names names adapter(s) {unknown} that this {method} model does not have; existing: "
            f"{sorted(known)}, or '{BASE}' for the base model"
        )
    names = list(adapter_names)
    if isinstance(num_beams, int) and num_beams > 1:  # generate repeats each sample num_beams times
        names = [n for n in names for _ in range(num_beams)]
    handles = []
    try:
        for module in tuner.model.modules():
            if isinstance(module, (tuner.tuner_layer_cls, AuxiliaryTrainingWrapper)):
                hook = partial(_inject_adapter_names, adapter_names=names)
                handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
        yield
    finally:
        for handle in handles:
            handle.remove()
