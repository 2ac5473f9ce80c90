"""KronLoRAModel: which modules get a Kron-LoRA layer and with which per-module settings."""

from __future__ import annotations

from .._delta_model import DeltaTuner, pattern_value
from .combine import COMBINATIONS
from .config import KronLoRAConfig
from .layer import KronLoRALayer, Linear


class KronLoRAModel(DeltaTuner):
    """Injects Kron-LoRA layers into a model (use through ``peft.get_peft_model`` with a ``KronLoRAConfig``)."""

    prefix: str = "kronlora_"
    tuner_layer_cls = KronLoRALayer
    layer_cls = Linear
    combinations = COMBINATIONS

    def layer_kwargs(self, config: KronLoRAConfig, current_key: str) -> dict:
        """Settings for the module at ``current_key``: rank_pattern / alpha_pattern entries override r / alpha.

        Args:
            config: The adapter's config.
            current_key: The module's name.

        Returns:
            Keyword arguments for the layer's ``update_layer``.
        """
        return {
            "r": pattern_value(config.rank_pattern, current_key, config.r),
            "kron_shape": config.kron_shape,
            "alpha": pattern_value(config.alpha_pattern, current_key, config.alpha),
            "dropout": config.dropout,
            "module_dropout": config.module_dropout,
            "init_weights": config.init_weights,
        }
