"""KRAdapterModel: which module types get a KRAdapter layer. Injection, saving, loading and the handling of
several named adapters are PEFT's (BaseTuner); creating layers and model-wide merge checks are DeltaTuner's.

PEFT injects layer by layer, so a bad target found halfway would leave the model half-adapted: `inject_adapter`
first checks every target (type, k1 against its shape) and only then lets PEFT inject. Loaded tensors are checked
by DeltaTuner before any is copied; a failed load is undone by the load paths themselves (_peft_guards).
"""

from __future__ import annotations

import copy
from typing import cast

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from ..._compat import (
    DUMMY_TARGET_MODULES,
    Conv1D,
    _maybe_include_all_linear_layers,
    get_quantization_kwargs,
)
from ...ops import resolve_k
from .._delta_model import DeltaTuner, pattern_value
from .._geometry import weight_geometry
from . import bnb
from .combine import COMBINATIONS
from .config import KRAdapterConfig, check_alpha, check_k1
from .conv_nd import Conv1d, Conv3d
from .dispatch import dispatch_quantized
from .embedding import Embedding, embedding_blocker
from .layer import Conv2d, KRAdapterLayer, Linear
from .mha import MultiheadAttention, mha_blocker, out_proj_owner, out_proj_target_error
from .quantized import QuantizedLinear

# The paper adapts attention key and value (sections 4.3 and H); used when target_modules is not given.
DEFAULT_TARGET_MODULES: dict[str, list[str]] = {
    **{
        t: ["k_proj", "v_proj"]
        for t in (
            "llama",
            "mistral",
            "mixtral",
            "qwen2",
            "qwen3",
            "gemma",
            "gemma2",
            "gemma3_text",
            "opt",
            "clip",
            "clip_vision_model",
            "clip_text_model",
            "siglip",
            "bart",
            "mbart",
            "whisper",
            "gptj",
            "gpt_neo",
            "olmo",
            "olmo2",
            "granite",
            "smollm3",
            "phi",
        )
    },
    **{
        t: ["key", "value"]
        for t in (
            "bert",
            "roberta",
            "xlm-roberta",
            "deberta",
            "electra",
            "vit",
            "albert",
            "camembert",
            "layoutlm",
            "mpnet",
        )
    },
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

SUPPORTED_BASE_TYPES = (nn.Linear, Conv1D, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding, nn.MultiheadAttention)


def unsupported_target_error(key: str, module: nn.Module) -> ValueError:
    """The one error for a target module KRAdapter cannot adapt, naming the module, its type and the types it can.

    Args:
        key: The module's name.
        module: The module.

    Returns:
        The ``ValueError`` to raise.
    """
    return ValueError(
        f"KRAdapter cannot adapt module '{key}' of type {type(module).__module__}.{type(module).__name__}; "
        "supported: torch.nn.Linear (also bitsandbytes/torchao quantized), transformers Conv1D, "
        "torch.nn.Conv1d / Conv2d / "
        "Conv3d, torch.nn.Embedding, torch.nn.MultiheadAttention"
    )


class KRAdapterModel(DeltaTuner):
    """Injects KRAdapter layers into a model (use through ``peft.get_peft_model`` with a ``KRAdapterConfig``)."""

    prefix: str = "kradapter_"
    tuner_layer_cls = KRAdapterLayer
    target_module_mapping = DEFAULT_TARGET_MODULES
    combinations = COMBINATIONS  # add_weighted_adapter's exact types ("linear" sharing V or U, "dense"): combine.py

    def layer_kwargs(self, config: KRAdapterConfig, current_key: str) -> dict:
        """Settings for the module at ``current_key``: ``k1_pattern`` / ``alpha_pattern`` entries override the defaults.

        Args:
            config: The adapter's config.
            current_key: The module's name.

        Returns:
            Keyword arguments for the layer's ``update_layer``.
        """
        return {
            **self._layer_settings(config, current_key),
            "dropout": config.dropout,
            "module_dropout": config.module_dropout,
            "init_weights": config.init_weights,
            "fused": config.fused,
        }

    @staticmethod
    def _layer_settings(config: KRAdapterConfig, key: str) -> dict:
        """k1 and alpha for the module at `key`: the first matching k1_pattern / alpha_pattern entry, else the
        default."""
        return {
            "k1": pattern_value(config.k1_pattern, key, config.k1),
            "alpha": pattern_value(config.alpha_pattern, key, config.alpha),
        }

    def new_layer(self, target: nn.Module, adapter_name: str, current_key: str, **kwargs) -> nn.Module:
        # One branch per supported base type. Quantized linears (bitsandbytes, torchao, ...) subclass nn.Linear,
        # so they are caught first (quantized.py, bnb.py); torchao needs the model's quantization config to
        # requantize after a merge.
        """The KRAdapter layer for one target: a quantized linear, a Conv2d, or a Linear / Conv1D.

        Args:
            target: The module to wrap.
            adapter_name: The adapter's name.
            current_key: The module's name, for the error.
            **kwargs: The layer settings.

        Returns:
            The new layer.

        Raises:
            ValueError: If the target's type is not supported.
        """
        quantized = dispatch_quantized(target, adapter_name, get_quantization_kwargs(self.model), **kwargs)
        if quantized is not None:
            return quantized
        base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        for base_type, layer_type in (
            (nn.Conv1d, Conv1d),
            (nn.Conv2d, Conv2d),
            (nn.Conv3d, Conv3d),
            (nn.Embedding, Embedding),
            (nn.MultiheadAttention, MultiheadAttention),
        ):
            if isinstance(base, base_type):
                return layer_type(target, adapter_name, **kwargs)
        if isinstance(base, (nn.Linear, Conv1D)):
            return Linear(target, adapter_name, **kwargs)
        raise unsupported_target_error(current_key, base)

    def _replace_module(self, parent, child_name, new_module, child) -> None:
        if isinstance(new_module, nn.MultiheadAttention):  # unloading an adapted attention gives back the module itself
            setattr(parent, child_name, new_module)
            return
        super()._replace_module(parent, child_name, new_module, child)

    # --- validate every target before PEFT replaces any module ----------------------------------------------------
    def inject_adapter(
        self,
        model: nn.Module,
        adapter_name: str,
        autocast_adapter_dtype: bool = True,
        low_cpu_mem_usage: bool = False,
        state_dict: dict[str, torch.Tensor] | None = None,
    ) -> None:
        """Check every target (type, ``k1`` against its shape, a loaded state dict's shapes), then let PEFT inject.

        Checking first means one error names the module and what is wrong, and the model is untouched.

        Args:
            model: The model to adapt.
            adapter_name: The adapter's name.
            autocast_adapter_dtype: Keep the adapter in float32 over a float16/bfloat16 base.
            low_cpu_mem_usage: Create the adapter on the meta device (PEFT's option).
            state_dict: The tensors about to be loaded, when loading.

        Raises:
            ValueError: If a target is of an unsupported type, ``k1`` does not fit its shape, or a tensor in
                ``state_dict`` does not fit the model.
        """
        self._check_targets(model, adapter_name, state_dict)
        super().inject_adapter(
            model,
            adapter_name,
            autocast_adapter_dtype=autocast_adapter_dtype,
            low_cpu_mem_usage=low_cpu_mem_usage,
            state_dict=state_dict,
        )
        bnb.watch_cpu_layouts(model)  # 4-bit layers repacked for CPU inference must still pass gradients (bnb.py)

    def _check_targets(self, model: nn.Module, adapter_name: str, state_dict=None) -> None:
        """Raise on the first target PEFT would fail on halfway: unsupported type or k1 out of range for its shape.

        Matches modules exactly as PEFT's inject_adapter does, on a copy of the config (PEFT resolves default and
        "all-linear" targets in place later)."""
        config = cast(KRAdapterConfig, self.peft_config[adapter_name])
        check_k1(config.k1)
        check_alpha(config.alpha)
        for key, value in (config.alpha_pattern or {}).items():
            check_alpha(value, f"alpha_pattern[{key!r}]")
        for key, value in (config.k1_pattern or {}).items():
            check_k1(value, f"k1_pattern[{key!r}]")
        config = cast(
            KRAdapterConfig, self._prepare_adapter_config(copy.deepcopy(config), self.get_model_config(model))
        )
        if config.target_modules == DUMMY_TARGET_MODULES:
            return
        config = _maybe_include_all_linear_layers(config, model)
        named_modules = list(model.named_modules())
        modules = dict(named_modules)
        inside_adapters = tuple(key + "." for key, module in named_modules if isinstance(module, BaseTunerLayer))
        if state_dict is not None:
            wanted = {k.rsplit("." + self.prefix, 1)[0].removeprefix("_orig_mod.") for k in state_dict}
        for key, module in named_modules:
            if not key or key.startswith(inside_adapters):
                continue
            if state_dict is not None:
                matched = key.removeprefix("_orig_mod.") in wanted
            else:
                matched = bool(self._check_target_module_exists(config, key))
            if not matched:
                continue
            if (owner := out_proj_owner(modules, key)) is not None:
                raise out_proj_target_error(key, owner)
            base = module.get_base_layer() if isinstance(module, BaseTunerLayer) else module
            if not isinstance(base, SUPPORTED_BASE_TYPES):
                raise unsupported_target_error(key, base)
            for base_type, blocker in ((nn.Embedding, embedding_blocker), (nn.MultiheadAttention, mha_blocker)):
                if isinstance(base, base_type) and (reason := blocker(base)) is not None:
                    raise ValueError(f"module '{key}': {reason}")
            shapes = [weight_geometry(base)]
            if isinstance(base, nn.MultiheadAttention):  # its out_proj gets an update of its own
                shapes.append(
                    weight_geometry(
                        base.out_proj.get_base_layer() if isinstance(base.out_proj, BaseTunerLayer) else base.out_proj
                    )
                )
            try:
                for d_out, d_in in shapes:
                    resolve_k(d_out, d_in, self._layer_settings(config, key)["k1"])
            except ValueError as err:
                raise ValueError(f"module '{key}': {err}") from None

    # Quantized layers that cannot merge (or need a requantize/copy choice) stop the merge before any layer changes.
    def check_merge(self, adapter_names: list[str] | None, safe_merge: bool) -> None:
        """Refuse a merge before any layer changes: a quantized base needs an explicit choice; safe merges check.

        Args:
            adapter_names: The adapters to merge (default: the active ones).
            safe_merge: Check every layer's merged weight for NaN/Inf before touching any weight.

        Raises:
            ValueError: If a layer sits on a quantized base (use
                [`merge_requantized`][kradapter.quant.merge_requantized] or
                [`merge_to_full_precision`][kradapter.quant.merge_to_full_precision]) or a merged weight is not finite.
        """
        for key, module in self.model.named_modules():
            if isinstance(module, QuantizedLinear) and (reason := module.merge_blocker()) is not None:
                raise ValueError(f"cannot merge KRAdapter into '{key}': {reason}")
        super().check_merge(adapter_names, safe_merge)
