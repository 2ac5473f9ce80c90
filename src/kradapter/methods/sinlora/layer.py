"""SinLoRA on one module.

    h = W0 x + Delta W x,   Delta W = (lora_alpha / r) * sin(freq * B A) / scale

A (r x d_in) is kaiming-uniform(a = sqrt(5)) and B (d_out x r) zero, as in the official code, so the model starts
unchanged. The math is ``ops.sinlora_delta``; merge, unmerge and forward are DeltaLayer's.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ...ops import sinlora_delta
from .._delta_layer import DeltaLayer


def init_sinlora_(A: torch.Tensor, B: torch.Tensor, init_weights: bool = True) -> None:
    """Initialise SinLoRA's factors as the official code does: A kaiming-uniform (a = sqrt(5)), B zero (or random).

    Args:
        A: The ``(r, d_in)`` factor, filled in place.
        B: The ``(d_out, r)`` factor, filled in place.
        init_weights: True: B = 0 (the model starts unchanged); False: B kaiming-uniform too.
    """
    with torch.no_grad():
        nn.init.kaiming_uniform_(A, a=math.sqrt(5))
        if init_weights:
            nn.init.zeros_(B)
        else:
            nn.init.kaiming_uniform_(B, a=math.sqrt(5))


class SinLoRALayer(DeltaLayer):
    """The SinLoRA state of one adapted module: A, B, r, lora_alpha, freq and scale per adapter name.

    Merge, unmerge, safe merge and the forward come from the shared delta-layer base, on top of
    [`delta_matrix`][kradapter.methods.sinlora.layer.SinLoRALayer.delta_matrix].

    Args:
        base_layer: The module being adapted (``nn.Linear`` or transformers' ``Conv1D``).
        **kwargs: Kept for PEFT's layer protocol.
    """

    adapter_layer_names = ("sinlora_A", "sinlora_B")
    other_param_names = ("r", "lora_alpha", "freq", "scale", "sinlora_dropout", "module_dropout", "update_scale")
    method_name = "SinLoRA"
    dropout_attr = "sinlora_dropout"

    def __init__(self, base_layer: nn.Module, **kwargs) -> None:
        self.sinlora_A = nn.ParameterDict({})
        self.sinlora_B = nn.ParameterDict({})
        self.r: dict[str, int] = {}
        self.lora_alpha: dict[str, float] = {}
        self.freq: dict[str, float] = {}
        self.scale: dict[str, float] = {}
        super().__init__(base_layer, **kwargs)

    def update_layer(
        self,
        adapter_name: str,
        r: int = 8,
        lora_alpha: float = 8.0,
        freq: float = 20.0,
        scale: float | None = None,
        dropout: float = 0.0,
        module_dropout: float = 0.0,
        init_weights: bool = True,
        inference_mode: bool = False,
        **kwargs: Any,
    ) -> None:
        """Add (or replace) the adapter ``adapter_name`` on this layer.

        Args:
            adapter_name: The adapter's name.
            r: Rank of B A inside the sine.
            lora_alpha: Scaling numerator (the update is multiplied by ``lora_alpha / r``).
            freq: The sine's frequency.
            scale: Divisor of the sine; None means ``sqrt(d_in)``.
            dropout: Dropout on the adapter's input.
            module_dropout: Probability of skipping the adapter for a training step.
            init_weights: True: B = 0; False: B random.
            inference_mode: Freeze the adapter.
            **kwargs: Ignored.

        Raises:
            ValueError: If ``r`` is not an int >= 1.
        """
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise ValueError(f"r must be an int >= 1, got {r!r}")
        self.r[adapter_name] = r
        self.lora_alpha[adapter_name] = float(lora_alpha)
        self.freq[adapter_name] = float(freq)
        self.scale[adapter_name] = math.sqrt(self.d_in) if scale is None else float(scale)
        self._set_dropouts(adapter_name, dropout, module_dropout)
        self.sinlora_A[adapter_name] = nn.Parameter(torch.empty(r, self.d_in))
        self.sinlora_B[adapter_name] = nn.Parameter(torch.empty(self.d_out, r))
        init_sinlora_(self.sinlora_A[adapter_name], self.sinlora_B[adapter_name], init_weights)
        self._move_adapter_to_device_of_base_layer(adapter_name)
        self.set_adapter(self.active_adapters, inference_mode=inference_mode)

    def delta_matrix(self, adapter_name: str) -> torch.Tensor:
        """``(lora_alpha / r) * sin(freq * B A) / scale`` (d_out x d_in), via ``ops.sinlora_delta``.

        Args:
            adapter_name: The adapter.

        Returns:
            The scaled update.
        """
        scaling = self.lora_alpha[adapter_name] / self.r[adapter_name] * self.update_scale[adapter_name]
        return sinlora_delta(
            self.sinlora_A[adapter_name],
            self.sinlora_B[adapter_name],
            self.freq[adapter_name],
            self.scale[adapter_name],
            scaling,
        )


class Linear(nn.Module, SinLoRALayer):
    """SinLoRA around nn.Linear or transformers' Conv1D."""

    def __init__(self, base_layer: nn.Module, adapter_name: str, **kwargs) -> None:
        super().__init__()
        SinLoRALayer.__init__(self, base_layer)
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
        return SinLoRALayer.forward(self, x, *args, **kwargs)
