"""KronLoRAModel: which modules get a Kron-LoRA layer and with which per-module settings."""

from __future__ import annotations

from ..._compat import get_pattern_key
from .._delta_model import DeltaTuner
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
        r_key = get_pattern_key(config.rank_pattern.keys(), current_key)
        alpha_key = get_pattern_key(config.alpha_pattern.keys(), current_key)
        return {
            "r": config.rank_pattern.get(r_key, config.r),
            "kron_shape": config.kron_shape,
            "alpha": config.alpha_pattern.get(alpha_key, config.alpha),
            "dropout": config.dropout,
            "module_dropout": config.module_dropout,
            "init_weights": config.init_weights,
        }
