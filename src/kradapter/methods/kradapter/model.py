"""KRAdapterModel: which module types get a KRAdapter layer. Injection, saving, loading and the handling of
several named adapters are PEFT's (BaseTuner)."""

from __future__ import annotations

from typing import Optional

import torch
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from peft.utils.other import get_pattern_key
from torch import nn
from transformers.pytorch_utils import Conv1D

from .config import KRAdapterConfig
from .layer import Conv2d, KRAdapterLayer, Linear

# The paper adapts attention key and value (sections 4.3 and H); used when target_modules is not given.
DEFAULT_TARGET_MODULES: dict[str, list[str]] = {
    **{t: ["k_proj", "v_proj"] for t in (
        "llama", "mistral", "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "opt", "clip",
        "clip_vision_model", "clip_text_model", "siglip", "bart", "mbart", "whisper", "gptj", "gpt_neo", "olmo",
        "olmo2", "granite", "smollm3", "phi")},
    **{t: ["key", "value"] for t in (
        "bert", "roberta", "xlm-roberta", "deberta", "electra", "vit", "albert", "camembert", "layoutlm", "mpnet")},
    "gpt2": ["c_attn"],
    "gpt_bigcode": ["c_attn"],
    "bloom": ["query_key_value"],
    "gpt_neox": ["query_key_value"],
    "falcon": ["query_key_value"],
    "phi3": ["qkv_proj"],
    "distilbert": ["k_lin", "v_lin"],
    "t5": ["k", "v"],
    "mt5": ["k", "v"],
}

SUPPORTED_BASE_TYPES = (nn.Linear, Conv1D, nn.Conv2d)


class KRAdapterModel(BaseTuner):
    """Injects KRAdapter layers into a model (use through ``peft.get_peft_model`` with a ``KRAdapterConfig``)."""

    prefix: str = "kradapter_"
    tuner_layer_cls = KRAdapterLayer
    target_module_mapping = DEFAULT_TARGET_MODULES

    def _create_and_replace(
        self,
        config: KRAdapterConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
    ) -> None:
        if current_key is None:
            raise ValueError("current_key must not be None")
        alpha_key = get_pattern_key(config.alpha_pattern.keys(), current_key)
        k1_key = get_pattern_key(config.k1_pattern.keys(), current_key)
        kwargs = {
            "k1": config.k1_pattern.get(k1_key, config.k1),
            "alpha": config.alpha_pattern.get(alpha_key, config.alpha),
            "dropout": config.dropout,
            "module_dropout": config.module_dropout,
            "init_weights": config.init_weights,
            "fused": config.fused,
        }
        if isinstance(target, KRAdapterLayer):
            target.update_layer(adapter_name, inference_mode=config.inference_mode, **kwargs)
            return
        new_module = self._create_new_module(adapter_name, target, current_key, **kwargs)
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)  # an added, inactive adapter stays frozen until set_adapter
        self._replace_module(parent, target_name, new_module, target)

    @staticmethod
    def _create_new_module(adapter_name: str, target: nn.Module, current_key: str, **kwargs) -> nn.Module:
        base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        if isinstance(base, nn.Conv2d):
            return Conv2d(target, adapter_name, **kwargs)
        if isinstance(base, (nn.Linear, Conv1D)):
            return Linear(target, adapter_name, **kwargs)
        raise TypeError(
            f"KRAdapter cannot adapt module '{current_key}' of type {type(base).__module__}.{type(base).__name__}; "
            "supported: torch.nn.Linear, transformers Conv1D, torch.nn.Conv2d"
        )

    # safe_merge checks every layer before touching any, so a bad adapter leaves the whole model unchanged.
    def _check_merge_finite(self, adapter_names: Optional[list[str]]) -> None:
        for key, module in self.model.named_modules():
            if not isinstance(module, KRAdapterLayer):
                continue
            names = module.active_adapters if adapter_names is None else adapter_names
            weight = module.get_base_layer().weight.data
            for name in names:
                if name in module.kradapter_U and name not in module.merged_adapters:
                    weight = module.merged_weight(name, weight)
                    if not torch.isfinite(weight).all():
                        raise ValueError(
                            f"merging adapter '{name}' into '{key}' gives NaN/Inf weights; nothing was merged"
                        )

    def merge_adapter(self, adapter_names: Optional[list[str]] = None, safe_merge: bool = False) -> None:
        if safe_merge:
            self._check_merge_finite(adapter_names)
        super().merge_adapter(adapter_names=adapter_names, safe_merge=safe_merge)

    def _unload_and_optionally_merge(self, merge=True, progressbar=False, safe_merge=False, adapter_names=None):
        if merge and safe_merge:
            self._check_merge_finite(adapter_names)
        return super()._unload_and_optionally_merge(
            merge=merge, progressbar=progressbar, safe_merge=safe_merge, adapter_names=adapter_names
        )
