"""What every additive-update layer of ours shares: merge / unmerge / forward on top of one ``delta_matrix``.

    h = W0 x + Delta W x,   Delta W = delta_matrix(name)   (d_out x d_in, scaling included)

A method's layer subclasses ``DeltaLayer``, creates its parameters in ``update_layer`` (calling ``_set_dropouts``) and
defines ``delta_matrix(name)`` by calling its one function in ops.py. The rest lives here once: the base weight's
layout (_geometry.py: Conv1D stores W transposed, Conv2d as a kernel), merging and unmerging in float32 or better
(also for quantized bases, through PEFT's get_base_weight / set_base_weight), safe merges, module dropout,
disabling. A layer with a faster training path (KRAdapter's fused one) runs it from its own ``forward`` and falls
back to ``adapted_forward``, the plain path; a Conv2d layer overrides ``adapter_output``.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from .._compat import check_adapters_to_merge
from ._geometry import PEFT_CONVERTIBLE_TYPES, base_weight, summed_in_float32, to_weight_layout, weight_geometry
from ._mixed_batch import mixed_batch_forward


class DeltaLayer(BaseTunerLayer):
    """Base for layers whose update is a dense matrix built by one function (subclasses set the names below)."""

    method_name: str = ""  # shown in errors and repr
    dropout_attr: str = ""  # name of the ModuleDict holding per-adapter input dropout
    training: bool  # nn.Module's: every concrete layer is an nn.Module too (declared for the type checker)

    def __init__(self, base_layer: nn.Module, **kwargs) -> None:
        self.base_layer = base_layer
        setattr(self, self.dropout_attr, nn.ModuleDict({}))
        self.module_dropout: dict[str, float] = {}
        self.update_scale: dict[str, float] = {}  # runtime factor on each update (set_scale), 1.0 unless changed
        self._disable_adapters = False
        self.merged_adapters: list[str] = []
        self.d_out, self.d_in = weight_geometry(self.get_base_layer())
        self.out_features, self.in_features = self.d_out, self.d_in
        self.kwargs = kwargs

    # --- hooks for subclasses -----------------------------------------------------------------------------------
    def update_layer(self, adapter_name: str, *args: Any, **kwargs: Any) -> None:
        """Create adapter `adapter_name`'s parameters from the method's settings (each method's layer defines it)."""
        raise NotImplementedError

    def delta_matrix(self, adapter_name: str) -> torch.Tensor:
        """The scaled update as a (d_out x d_in) matrix, in the adapter's dtype, times update_scale[adapter_name]."""
        raise NotImplementedError

    def has_adapter(self, adapter_name: str) -> bool:
        return adapter_name in getattr(self, self.adapter_layer_names[0])

    def adapter_dtype(self, adapter_name: str) -> torch.dtype:
        return getattr(self, self.adapter_layer_names[0])[adapter_name].dtype

    def _set_dropouts(self, adapter_name: str, dropout: float, module_dropout: float) -> None:
        """Input dropout and module dropout of a new adapter; also starts its runtime scale at 1.0."""
        getattr(self, self.dropout_attr)[adapter_name] = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.module_dropout[adapter_name] = float(module_dropout)
        self.update_scale[adapter_name] = 1.0

    # --- a runtime factor on the update, as PEFT's LoRA layers have (diffusers' set_adapters(weights=...),
    # fuse_lora(lora_scale=...), a pipeline's per-call scale). A method's delta_matrix multiplies by it. ------------
    def set_scale(self, adapter: str, scale: float) -> None:
        """The update of `adapter` becomes `scale` times the configured one."""
        if self.has_adapter(adapter):
            self.update_scale[adapter] = float(scale)

    def scale_layer(self, scale: float) -> None:
        """Multiply the scale of every active adapter by `scale`."""
        if scale == 1:
            return
        for name in self.active_adapters:
            if self.has_adapter(name):
                self.update_scale[name] *= scale

    def unscale_layer(self, scale: float | None = None) -> None:
        """Divide the scale of every active adapter by `scale`; None resets it to 1.0 (the configured update)."""
        for name in self.active_adapters:
            if self.has_adapter(name):
                self.update_scale[name] = 1.0 if scale is None else self.update_scale[name] / scale

    # --- the update in the base weight's layout -------------------------------------------------------------------
    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        """The update in the base weight's layout (Conv1D transposed, Conv2d kernel shape), adapter dtype."""
        return to_weight_layout(self.get_base_layer(), self.delta_matrix(adapter_name))

    # --- PEFT's additive-delta protocol (peft.convert_to_lora, kradapter convert): W' = W + get_additive_delta ------
    def _get_additive_delta(self, adapter_name: str = "default") -> torch.Tensor:
        """W' - W for ``adapter_name``: get_delta_weight, the update merging adds (base weight's layout, adapter
        dtype). PEFT's public ``get_additive_delta`` calls this after refusing while adapters are merged."""
        return self.get_delta_weight(adapter_name)

    def supports_lora_conversion(self, adapter_name: str = "default") -> bool:
        """True where PEFT's convert_to_lora writes correct LoRA factors for this layer type (Linear, Conv1D,
        nn.MultiheadAttention); convolutions and embeddings convert with ``kradapter convert`` instead."""
        return isinstance(self.get_base_layer(), PEFT_CONVERTIBLE_TYPES)

    def merged_weight(self, adapter_name: str, weight: torch.Tensor | None = None, sign: float = 1.0) -> torch.Tensor:
        """W +/- Delta W computed in float32 or better, returned in W's dtype (W untouched). W defaults to the base
        weight, dequantized for a quantized base."""
        weight = self.get_base_weight() if weight is None else weight
        return summed_in_float32(weight, self.get_delta_weight(adapter_name).detach(), sign)

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        adapter_names = [n for n in check_adapters_to_merge(self, adapter_names) if self.has_adapter(n)]
        if not adapter_names:
            return
        weight = base_weight(self.get_base_layer())
        new_weight = weight.data
        for name in adapter_names:
            new_weight = self.merged_weight(name, new_weight)
            if safe_merge and not torch.isfinite(new_weight).all():
                raise ValueError(f"merging adapter '{name}' gives NaN/Inf weights; nothing was merged")
        weight.data = new_weight
        self.merged_adapters.extend(adapter_names)

    def unmerge(self) -> None:
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.", stacklevel=2)
            return
        weight = base_weight(self.get_base_layer())
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            if self.has_adapter(name):
                weight.data = self.merged_weight(name, weight.data, sign=-1.0)

    # --- forward --------------------------------------------------------------------------------------------------
    def _adapter_skipped(self, adapter_name: str) -> bool:
        p = self.module_dropout[adapter_name]
        return self.training and p > 0 and bool(torch.rand(1) < p)

    def adapter_output(self, h: torch.Tensor, adapter_name: str) -> torch.Tensor:
        """Delta W applied to the (dropped-out, adapter-dtype) input h; a Conv2d layer convolves instead."""
        return F.linear(h, self.delta_matrix(adapter_name))

    def adapter_term(self, x: torch.Tensor, adapter_name: str) -> torch.Tensor:
        """One adapter's update for the layer input x: its dropout, then Delta W (an Embedding looks up rows)."""
        h = getattr(self, self.dropout_attr)[adapter_name](x.to(self.adapter_dtype(adapter_name)))
        return self.adapter_output(h, adapter_name)

    def adapted_forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The plain path: base output plus every active, unmerged adapter's output."""
        adapter_names = kwargs.pop("adapter_names", None)
        if adapter_names is not None:  # one adapter per sample (_mixed_batch.py)
            return mixed_batch_forward(self, x, args, kwargs, adapter_names)
        base = self.base_layer
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return base(x, *args, **kwargs)
        result = base(x, *args, **kwargs)
        if self.merged:
            return result
        for name in self.active_adapters:
            if not self.has_adapter(name):
                continue
            compiled_skip = self.training and self.module_dropout[name] > 0 and torch.compiler.is_compiling()
            if not compiled_skip and self._adapter_skipped(name):
                continue
            out = self.adapter_term(x, name).to(result.dtype)
            if compiled_skip:  # under torch.compile the skip is a 0/1 factor: a Python branch would break the graph
                out = out * (torch.rand(()) >= self.module_dropout[name]).to(out.dtype)
            result = result + out
        return result

    forward = adapted_forward

    def __repr__(self) -> str:
        return f"{self.method_name.lower()}." + super().__repr__()
