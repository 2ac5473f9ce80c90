"""SinLoRAModel: which modules get a SinLoRA layer and with which per-module settings."""

from __future__ import annotations

from .._delta_model import DeltaTuner, pattern_value
from .combine import COMBINATIONS
from .config import SinLoRAConfig
from .layer import Linear, SinLoRALayer


class SinLoRAModel(DeltaTuner):
    """Injects SinLoRA layers into a model (use through ``peft.get_peft_model`` with a ``SinLoRAConfig``)."""

    prefix: str = "sinlora_"
    tuner_layer_cls = SinLoRALayer
    layer_cls = Linear
    combinations = COMBINATIONS

    def layer_kwargs(self, config: SinLoRAConfig, current_key: str) -> dict:
        """Settings for the module at ``current_key``: rank_pattern / alpha_pattern entries override r / lora_alpha.

        Args:
            config: The adapter's config.
            current_key: The module's name.

        Returns:
            Keyword arguments for the layer's ``update_layer``.
        """
        return {
            "r": pattern_value(config.rank_pattern, current_key, config.r),
            "lora_alpha": pattern_value(config.alpha_pattern, current_key, config.lora_alpha),
            "freq": config.freq,
            "scale": config.scale,
            "dropout": config.dropout,
            "module_dropout": config.module_dropout,
            "init_weights": config.init_weights,
        }
