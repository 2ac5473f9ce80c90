"""Kron-LoRA on one module.

    h = W0 x + Delta W x,   Delta W = (alpha / r) * A ⊗ (B1 B2)

A (a_out x a_in) and B2 (r x d_in/a_in) start kaiming-uniform(a = sqrt(5)) and B1 (d_out/a_out x r) at zero, so the
model starts unchanged. Shapes come from ``ops.kronlora_shapes`` and the math from ``ops.kronlora_delta``; merge,
unmerge and forward are DeltaLayer's.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ...ops import kronlora_delta, kronlora_shapes
from .._delta_layer import DeltaLayer


def init_kronlora_(A: torch.Tensor, B1: torch.Tensor, B2: torch.Tensor, init_weights: bool = True) -> None:
    """Initialise Kron-LoRA's factors: A and B2 kaiming-uniform (a = sqrt(5)), B1 zero (or random).

    Args:
        A: The ``(a_out, a_in)`` Kronecker factor, filled in place.
        B1: The ``(b_out, r)`` factor, filled in place.
        B2: The ``(r, b_in)`` factor, filled in place.
        init_weights: True: B1 = 0 (the model starts unchanged); False: B1 random too.
    """
    with torch.no_grad():
        nn.init.kaiming_uniform_(A, a=math.sqrt(5))
        nn.init.kaiming_uniform_(B2, a=math.sqrt(5))
        if init_weights:
            nn.init.zeros_(B1)
        else:
            nn.init.kaiming_uniform_(B1, a=math.sqrt(5))


class KronLoRALayer(DeltaLayer):
    """The Kron-LoRA state of one adapted module: A, B1, B2, r and alpha per adapter name.

    Merge, unmerge, safe merge and the forward come from the shared delta-layer base, on top of
    [`delta_matrix`][kradapter.methods.kronlora.layer.KronLoRALayer.delta_matrix].

    Args:
        base_layer: The module being adapted (``nn.Linear`` or transformers' ``Conv1D``).
        **kwargs: Kept for PEFT's layer protocol.
    """

    adapter_layer_names = ("kronlora_A", "kronlora_B1", "kronlora_B2")
    other_param_names = ("r", "alpha", "kronlora_dropout", "module_dropout", "update_scale")
    method_name = "KronLoRA"
    dropout_attr = "kronlora_dropout"

    def __init__(self, base_layer: nn.Module, **kwargs) -> None:
        self.kronlora_A = nn.ParameterDict({})
        self.kronlora_B1 = nn.ParameterDict({})
        self.kronlora_B2 = nn.ParameterDict({})
        self.r: dict[str, int] = {}
        self.alpha: dict[str, float] = {}
        super().__init__(base_layer, **kwargs)

    def update_layer(
        self,
        adapter_name: str,
        r: int = 8,
        kron_shape: int | list[int] = 4,
        alpha: float = 8.0,
        dropout: float = 0.0,
        module_dropout: float = 0.0,
        init_weights: bool = True,
        inference_mode: bool = False,
        **kwargs: Any,
    ) -> None:
        """Add (or replace) the adapter ``adapter_name`` on this layer.

        Args:
            adapter_name: The adapter's name.
            r: Rank of ``B1 B2``.
            kron_shape: A's shape, as in [`kronlora_shapes`][kradapter.ops.kronlora_shapes].
            alpha: Scaling numerator (the update is multiplied by ``alpha / r``).
            dropout: Dropout on the adapter's input.
            module_dropout: Probability of skipping the adapter for a training step.
            init_weights: True: B1 = 0; False: B1 random.
            inference_mode: Freeze the adapter.
            **kwargs: Ignored.

        Raises:
            ValueError: If ``kron_shape`` or ``r`` does not fit the layer.
        """
        shape_a, shape_b1, shape_b2 = kronlora_shapes(self.d_out, self.d_in, kron_shape, r)
        self.r[adapter_name] = r
        self.alpha[adapter_name] = float(alpha)
        self._set_dropouts(adapter_name, dropout, module_dropout)
        self.kronlora_A[adapter_name] = nn.Parameter(torch.empty(shape_a))
        self.kronlora_B1[adapter_name] = nn.Parameter(torch.empty(shape_b1))
        self.kronlora_B2[adapter_name] = nn.Parameter(torch.empty(shape_b2))
        init_kronlora_(
            self.kronlora_A[adapter_name], self.kronlora_B1[adapter_name], self.kronlora_B2[adapter_name], init_weights
        )
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=inference_mode)

    def delta_matrix(self, adapter_name: str) -> torch.Tensor:
        """``(alpha / r) * A ⊗ (B1 B2)``, ``(d_out, d_in)``, via [`kronlora_delta`][kradapter.ops.kronlora_delta].

        Args:
            adapter_name: The adapter.

        Returns:
            The scaled update.
        """
        return kronlora_delta(
            self.kronlora_A[adapter_name],
            self.kronlora_B1[adapter_name],
            self.kronlora_B2[adapter_name],
            self.alpha[adapter_name] / self.r[adapter_name] * self.update_scale[adapter_name],
        )


class Linear(nn.Module, KronLoRALayer):
    """Kron-LoRA around nn.Linear or transformers' Conv1D."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, **kwargs) -> None:
        super().__init__()
        KronLoRALayer.__init__(self, base_layer)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, **kwargs)

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        """The base output plus the active adapters' updates.

        Args:
            x: The input.
            *args: Passed to the base layer.
            **kwargs: Passed to the base layer.

        Returns:
            The layer's output.
        """
        return KronLoRALayer.forward(self, x, *args, **kwargs)
