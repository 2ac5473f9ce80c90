"""KRAdapter on one module.

    h = W0 x + alpha * Delta W x,   Delta W = (U ⊙ V)[:m]   (transposed when d_out < d_in)

U (k1 x n) starts at zero and V (k2 x n) kaiming-uniform with negative slope sqrt(1/k1) (paper, section 3.2), so
the adapted model starts equal to the base model. Parameters live per adapter name in ParameterDicts, as in
PEFT's own layers, so several adapters can sit on one module and be switched, merged and deleted by PEFT.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Optional

import torch
import torch.nn.functional as F
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from ..._compat import Conv1D, check_adapters_to_merge
from ...ops import kradapter_delta, resolve_k
from .fused import fused_adapter_name, fused_linear, merged_kernel_conv2d


def weight_geometry(base_layer: nn.Module) -> tuple[int, int]:
    """(d_out, d_in) of the matrix the update acts on; a Conv2d kernel is flattened to out x (in/groups * kh * kw)."""
    w = base_layer.weight
    if isinstance(base_layer, Conv1D):  # GPT-2 style: weight stored as (d_in, d_out)
        return w.shape[1], w.shape[0]
    if isinstance(base_layer, nn.Conv2d):
        return w.shape[0], math.prod(w.shape[1:])
    if isinstance(base_layer, nn.Linear):
        return base_layer.out_features, base_layer.in_features
    raise TypeError(f"no KRAdapter geometry for {type(base_layer).__name__}")


def init_kradapter_(U: torch.Tensor, V: torch.Tensor, k1: int, init_weights: bool = True) -> None:
    """The paper's init: U = 0, V ~ kaiming-uniform(a = sqrt(1/k1)). init_weights=False makes U random too."""
    with torch.no_grad():
        nn.init.kaiming_uniform_(V, a=math.sqrt(1.0 / k1))
        if init_weights:
            nn.init.zeros_(U)
        else:
            nn.init.kaiming_uniform_(U, a=math.sqrt(1.0 / k1))


class KRAdapterLayer(BaseTunerLayer):
    adapter_layer_names = ("kradapter_U", "kradapter_V")
    other_param_names = ("k1", "k2", "alpha", "kradapter_dropout", "module_dropout")

    def __init__(self, base_layer: nn.Module, **kwargs) -> None:
        self.base_layer = base_layer
        self.kradapter_U = nn.ParameterDict({})
        self.kradapter_V = nn.ParameterDict({})
        self.kradapter_dropout = nn.ModuleDict({})
        self.k1: dict[str, int] = {}
        self.k2: dict[str, int] = {}
        self.alpha: dict[str, float] = {}
        self.module_dropout: dict[str, float] = {}
        self._disable_adapters = False
        self.merged_adapters: list[str] = []
        self.d_out, self.d_in = weight_geometry(self.get_base_layer())
        self.out_features, self.in_features = self.d_out, self.d_in
        self.kwargs = kwargs

    def update_layer(
        self,
        adapter_name: str,
        k1: int | str = "sqrt",
        alpha: float = 0.1,
        dropout: float = 0.0,
        module_dropout: float = 0.0,
        init_weights: bool = True,
        inference_mode: bool = False,
        fused: bool = True,
        **kwargs: Any,
    ) -> None:
        self.fused = bool(fused)  # per layer: False forces the plain path (see fused.py)
        k1, k2 = resolve_k(self.d_out, self.d_in, k1)
        n = min(self.d_out, self.d_in)
        self.k1[adapter_name], self.k2[adapter_name] = k1, k2
        self.alpha[adapter_name] = float(alpha)
        self.module_dropout[adapter_name] = float(module_dropout)
        self.kradapter_dropout[adapter_name] = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.kradapter_U[adapter_name] = nn.Parameter(torch.empty(k1, n))
        self.kradapter_V[adapter_name] = nn.Parameter(torch.empty(k2, n))
        self.reset_kradapter_parameters(adapter_name, init_weights)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=inference_mode)

    def reset_kradapter_parameters(self, adapter_name: str, init_weights: bool = True) -> None:
        if adapter_name in self.kradapter_U:
            init_kradapter_(
                self.kradapter_U[adapter_name], self.kradapter_V[adapter_name], self.k1[adapter_name], init_weights
            )

    # --- the update -------------------------------------------------------------------------------------------
    def delta_matrix(self, adapter_name: str) -> torch.Tensor:
        """alpha * Delta W as a (d_out x d_in) matrix, in the adapter's dtype: what spectral reports analyse."""
        U, V = self.kradapter_U[adapter_name], self.kradapter_V[adapter_name]
        return self.alpha[adapter_name] * kradapter_delta(U, V, self.d_out, self.d_in)

    def get_delta_weight(self, adapter_name: str) -> torch.Tensor:
        """alpha * Delta W in the base weight's layout (Conv1D transposed, Conv2d kernel shape), adapter dtype."""
        delta = self.delta_matrix(adapter_name)
        base = self.get_base_layer()
        if isinstance(base, Conv1D):
            return delta.T
        return delta.reshape(base.weight.shape)

    # --- merge / unmerge ----------------------------------------------------------------------------------------
    def merged_weight(self, adapter_name: str, weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        """W + alpha * Delta W computed in float32 or better, returned in W's dtype (W untouched)."""
        weight = self.get_base_weight() if weight is None else weight
        delta = self.get_delta_weight(adapter_name).detach()
        compute = torch.promote_types(torch.promote_types(weight.dtype, delta.dtype), torch.float32)
        return (weight.to(compute) + delta.to(device=weight.device, dtype=compute)).to(weight.dtype)

    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        adapter_names = check_adapters_to_merge(self, adapter_names)
        adapter_names = [name for name in adapter_names if name in self.kradapter_U]
        if not adapter_names:
            return
        base = self.get_base_layer()
        new_weight = base.weight.data
        for name in adapter_names:
            new_weight = self.merged_weight(name, new_weight)
            if safe_merge and not torch.isfinite(new_weight).all():
                raise ValueError(f"merging adapter '{name}' gives NaN/Inf weights; nothing was merged")
        base.weight.data = new_weight
        self.merged_adapters.extend(adapter_names)

    def unmerge(self) -> None:
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.")
            return
        base = self.get_base_layer()
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            if name in self.kradapter_U:
                delta = self.get_delta_weight(name).detach()
                w = base.weight.data
                compute = torch.promote_types(torch.promote_types(w.dtype, delta.dtype), torch.float32)
                base.weight.data = (w.to(compute) - delta.to(device=w.device, dtype=compute)).to(w.dtype)

    # --- forward ------------------------------------------------------------------------------------------------
    def _adapter_skipped(self, adapter_name: str) -> bool:
        p = self.module_dropout[adapter_name]
        return self.training and p > 0 and bool(torch.rand(1) < p)

    def _adapter_output(self, x: torch.Tensor, adapter_name: str) -> torch.Tensor:
        raise NotImplementedError

    def fused_or_plain_forward(self, x: torch.Tensor, args: tuple, kwargs: dict, fused_forward) -> torch.Tensor:
        """fused_forward(self, x, name) when the fused path applies to this call (fused.fused_adapter_name), else
        the plain path."""
        name = fused_adapter_name(self, x, args, kwargs)
        if name is None:
            return self.adapted_forward(x, *args, **kwargs)
        if self._adapter_skipped(name):
            return self.base_layer(x)
        return fused_forward(self, x, name)

    def adapted_forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """Base output plus every active, unmerged adapter's output."""
        if kwargs.pop("adapter_names", None) is not None:
            raise ValueError("KRAdapter does not support mixed-adapter batches (adapter_names=...)")
        base = self.base_layer
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return base(x, *args, **kwargs)
        if self.merged:
            return base(x, *args, **kwargs)
        result = base(x, *args, **kwargs)
        for name in self.active_adapters:
            if name not in self.kradapter_U or self._adapter_skipped(name):
                continue
            result = result + self._adapter_output(x, name).to(result.dtype)
        return result

    def __repr__(self) -> str:
        return "kradapter." + super().__repr__()


class Linear(nn.Module, KRAdapterLayer):
    """KRAdapter around nn.Linear or transformers' Conv1D. Trains through the fused path (fused.py) whenever it
    applies; the plain path (base(x) + alpha * dropout(x) Delta W^T) otherwise."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, **kwargs) -> None:
        super().__init__()
        KRAdapterLayer.__init__(self, base_layer)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, **kwargs)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.fused_or_plain_forward(x, args, kwargs, fused_linear)

    def _adapter_output(self, x: torch.Tensor, adapter_name: str) -> torch.Tensor:
        U = self.kradapter_U[adapter_name]
        x = self.kradapter_dropout[adapter_name](x.to(U.dtype))
        return F.linear(x, self.delta_matrix(adapter_name))


class Conv2d(nn.Module, KRAdapterLayer):
    """KRAdapter around nn.Conv2d: the update acts on the kernel flattened to out x (in/groups * kh * kw). Trains as
    one convolution with W0 + alpha * Delta W (fused.merged_kernel_conv2d) whenever the fused path's conditions
    hold; the plain path (base(x) + conv(dropout(x), alpha * Delta W)) otherwise."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, **kwargs) -> None:
        super().__init__()
        KRAdapterLayer.__init__(self, base_layer)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, **kwargs)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.fused_or_plain_forward(x, args, kwargs, merged_kernel_conv2d)

    def _adapter_output(self, x: torch.Tensor, adapter_name: str) -> torch.Tensor:
        U = self.kradapter_U[adapter_name]
        x = self.kradapter_dropout[adapter_name](x.to(U.dtype))
        base = self.get_base_layer()
        # _conv_forward honours the base layer's stride, padding (and padding_mode), dilation and groups.
        return base._conv_forward(x, self.get_delta_weight(adapter_name), None)
