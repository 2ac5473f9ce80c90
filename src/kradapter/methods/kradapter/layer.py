"""KRAdapter on one module.

    h = W0 x + alpha * Delta W x,   Delta W = (U ⊙ V)[:m]   (transposed when d_out < d_in)

U (k1 x n) starts at zero and V (k2 x n) kaiming-uniform with negative slope sqrt(1/k1) (paper, section 3.2), so
the adapted model starts equal to the base model. Parameters live per adapter name in ParameterDicts, as in
PEFT's own layers, so several adapters can sit on one module and be switched, merged and deleted by PEFT.

Merge, unmerge, module dropout and the plain forward are DeltaLayer's (methods/_delta_layer.py); this layer adds
its parameters, its Delta W (ops.kradapter_delta) and the fused training path (fused.py), chosen per adapter.
"""

from __future__ import annotations

import math
from typing import Any, cast

import torch
from torch import nn

from ...ops import kradapter_delta, resolve_k
from .._delta_layer import DeltaLayer
from .._geometry import weight_geometry  # noqa: F401  (re-exported: budget and train import it from here)
from .fused import fused_adapter_name, fused_linear, merged_kernel_conv2d


def init_kradapter_(U: torch.Tensor, V: torch.Tensor, k1: int, init_weights: bool = True) -> None:
    """The paper's init: U = 0, V ~ kaiming-uniform(a = sqrt(1/k1)). init_weights=False makes U random too."""
    with torch.no_grad():
        nn.init.kaiming_uniform_(V, a=math.sqrt(1.0 / k1))
        if init_weights:
            nn.init.zeros_(U)
        else:
            nn.init.kaiming_uniform_(U, a=math.sqrt(1.0 / k1))


class KRAdapterLayer(DeltaLayer):
    """The KRAdapter state of one adapted module: ``U`` and ``V`` per adapter name, and the update they make.

    ``kradapter_U[name]`` is ``(k1, n)`` and ``kradapter_V[name]`` is ``(k2, n)`` with ``n = min(d_out, d_in)``;
    ``alpha[name]`` scales the update. Merge, unmerge, safe merge and the plain forward come from the shared
    delta-layer base, on top of
    [`delta_matrix`][kradapter.methods.kradapter.layer.KRAdapterLayer.delta_matrix]; the fused path is this class's.

    Args:
        base_layer: The module being adapted (``nn.Linear``, transformers' ``Conv1D`` or ``nn.Conv2d``).
        **kwargs: Kept for PEFT's layer protocol.
    """

    adapter_layer_names = ("kradapter_U", "kradapter_V")
    other_param_names = ("k1", "k2", "alpha", "kradapter_dropout", "module_dropout", "fused_path", "update_scale")
    method_name = "KRAdapter"
    dropout_attr = "kradapter_dropout"

    def __init__(self, base_layer: nn.Module, **kwargs) -> None:
        self.kradapter_U = nn.ParameterDict({})
        self.kradapter_V = nn.ParameterDict({})
        self.k1: dict[str, int] = {}
        self.k2: dict[str, int] = {}
        self.alpha: dict[str, float] = {}
        self.fused_path: dict[str, bool] = {}  # per adapter: False forces the plain path (see fused.py)
        super().__init__(base_layer, **kwargs)

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
        """Add (or replace) the adapter ``adapter_name`` on this layer and make the active adapters trainable.

        Args:
            adapter_name: The adapter's name.
            k1: Rows of U, as in [`resolve_k`][kradapter.ops.resolve_k].
            alpha: Scale of the update.
            dropout: Dropout on the adapter's input.
            module_dropout: Probability of skipping the adapter for a training step.
            init_weights: True: U = 0 (the model starts unchanged); False: U random.
            inference_mode: Freeze the adapter.
            fused: Allow the fused training path for this adapter.
            **kwargs: Ignored (PEFT passes config fields other methods use).

        Raises:
            ValueError: If ``k1`` is invalid for this layer's shape.
        """
        k1, k2 = resolve_k(self.d_out, self.d_in, k1)
        n = min(self.d_out, self.d_in)
        self.k1[adapter_name], self.k2[adapter_name] = k1, k2
        self.alpha[adapter_name] = float(alpha)
        self.fused_path[adapter_name] = bool(fused)
        self._set_dropouts(adapter_name, dropout, module_dropout)
        self.kradapter_U[adapter_name] = nn.Parameter(torch.empty(k1, n))
        self.kradapter_V[adapter_name] = nn.Parameter(torch.empty(k2, n))
        self.reset_kradapter_parameters(adapter_name, init_weights)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=inference_mode)

    def reset_kradapter_parameters(self, adapter_name: str, init_weights: bool = True) -> None:
        """Initialise U and V of ``adapter_name`` as the paper does: U zero (or random), V kaiming-uniform.

        Args:
            adapter_name: The adapter; nothing happens if the layer does not hold it.
            init_weights: True: U = 0; False: U kaiming-uniform too.
        """
        if adapter_name in self.kradapter_U:
            init_kradapter_(
                self.kradapter_U[adapter_name], self.kradapter_V[adapter_name], self.k1[adapter_name], init_weights
            )

    @property
    def fused(self) -> bool:
        """True when every adapter on this layer may take the fused path. Setting it sets every adapter's choice
        (an adapter added later takes its own config's ``fused``)."""
        return all(self.fused_path.values())

    @fused.setter
    def fused(self, value: bool) -> None:
        for name in self.fused_path:
            self.fused_path[name] = bool(value)

    # --- the update -------------------------------------------------------------------------------------------
    def delta_matrix(self, adapter_name: str) -> torch.Tensor:
        """alpha * Delta W as a (d_out x d_in) matrix, in the adapter's dtype: what spectral reports analyse."""
        U, V = self.kradapter_U[adapter_name], self.kradapter_V[adapter_name]
        return self.scaled_alpha(adapter_name) * kradapter_delta(U, V, self.d_out, self.d_in)

    def scaled_alpha(self, adapter_name: str) -> float:
        """alpha times the runtime scale (set_scale): the factor on Delta W that the layer applies."""
        return self.alpha[adapter_name] * self.update_scale[adapter_name]

    # --- forward ------------------------------------------------------------------------------------------------
    # fused_forward(layer, x, name): one adapter's whole output (base included) through the fused path.
    fused_forward = staticmethod(fused_linear)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The fused path when it applies to this call (fused.fused_adapter_name), else DeltaLayer's plain path."""
        name = fused_adapter_name(self, x, args, kwargs)
        if name is None:
            return self.adapted_forward(x, *args, **kwargs)
        if self._adapter_skipped(name):
            return self.base_layer(x)
        return self.fused_forward(self, x, name)


class Linear(nn.Module, KRAdapterLayer):
    """KRAdapter around nn.Linear or transformers' Conv1D. Trains through the fused path (fused.py) whenever it
    applies; the plain path (base(x) + alpha * dropout(x) Delta W^T) otherwise."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, **kwargs) -> None:
        super().__init__()
        KRAdapterLayer.__init__(self, base_layer)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, **kwargs)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The base output plus the active adapters' ``alpha * Delta W x``, through the fused path when it applies.

        Args:
            x: The input.
            *args: Passed to the base layer.
            **kwargs: Passed to the base layer.

        Returns:
            The layer's output.
        """
        return KRAdapterLayer.forward(self, x, *args, **kwargs)


class Conv2d(nn.Module, KRAdapterLayer):
    """KRAdapter around nn.Conv2d: the update acts on the kernel flattened to out x (in/groups * kh * kw). Trains as
    one convolution with W0 + alpha * Delta W (fused.merged_kernel_conv2d) whenever the fused path's conditions
    hold; the plain path (base(x) + conv(dropout(x), alpha * Delta W)) otherwise."""

    fused_forward = staticmethod(merged_kernel_conv2d)

    def __init__(self, base_layer: nn.Module, adapter_name: str, **kwargs) -> None:
        super().__init__()
        KRAdapterLayer.__init__(self, base_layer)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, **kwargs)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The base convolution plus the adapters' update: one convolution with the summed kernel when it applies.

        Args:
            x: The input.
            *args: Passed to the base layer.
            **kwargs: Passed to the base layer.

        Returns:
            The layer's output.
        """
        return KRAdapterLayer.forward(self, x, *args, **kwargs)

    def adapter_output(self, h: torch.Tensor, adapter_name: str) -> torch.Tensor:
        # _conv_forward honours the base layer's stride, padding (and padding_mode), dilation and groups.
        """The plain path's update: ``h`` convolved with the kernel ``alpha * Delta W`` (the base's geometry).

        Args:
            h: The (dropped-out, adapter-dtype) input.
            adapter_name: The adapter.

        Returns:
            The update's contribution to the output.
        """
        conv = cast("nn.Conv1d | nn.Conv2d | nn.Conv3d", self.get_base_layer())  # this class and conv_nd's
        return conv._conv_forward(h, self.get_delta_weight(adapter_name), None)
