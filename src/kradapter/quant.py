"""Quantized frozen bases: building a bitsandbytes config, and the two ways to merge a KRAdapter into one.

QLoRA-style training keeps the base quantized and the adapter in full precision; nothing here is needed for that
(``get_peft_model`` dispatches the quantized layers by itself). Merging is where a choice is needed, because
requantizing rounds away much of a typical update (benchmarks/quantized_merge.py); ``merge_adapter()`` and
``merge_and_unload()`` on a quantized base refuse and name these two:

- ``merge_requantized(model)``: in place; dequantize, add alpha * Delta W, requantize. Returns the measured error
  per layer. ``model.unmerge_adapter()`` restores the original quantized weights exactly.
- ``merge_to_full_precision(model)``: a new plain model whose every quantized layer is dequantized and whose
  adapters are merged in float; the quantized model is untouched. The adapter was trained against the dequantized
  weights, so this copy reproduces the trained model up to float rounding.
"""

from __future__ import annotations

import copy
import importlib.util
from typing import Any, cast

import torch
from torch import nn

from .methods.kradapter.bnb import dequantize_cpu_packed, is_cpu_packed, watch_cpu_layouts  # noqa: F401 (API)
from .methods.kradapter.quantized import MergeError, QuantizedLinear, dequantized_linear, is_plain_float_layer

QUANTIZE_CHOICES = ("4bit", "8bit")


def require_backend(package: str, purpose: str) -> None:
    """One clear error when a quantization backend is not installed (before any model is loaded).

    Args:
        package: The import name of the backend (``"bitsandbytes"``).
        purpose: What needs it, for the message.

    Raises:
        ImportError: If ``package`` is not installed; the message says what to install.
    """
    if importlib.util.find_spec(package) is None:
        raise ImportError(
            f"{purpose} needs the '{package}' package, which is not installed: pip install 'kradapter[quant]' "
            f"(or pip install {package})"
        )


def bnb_config(quantize: str, compute_dtype: torch.dtype | None = None):
    """transformers' ``BitsAndBytesConfig`` for ``"4bit"`` (QLoRA: NF4, double quantization) or ``"8bit"`` (LLM.int8()).

    Args:
        quantize: ``"4bit"`` or ``"8bit"``.
        compute_dtype: 4-bit only: the dtype of the matmuls; default bfloat16 on CUDA and float32 on CPU, where
            bfloat16 matmuls are slow.

    Returns:
        The config to pass as ``quantization_config`` to ``from_pretrained``.

    Raises:
        ValueError: If ``quantize`` is neither choice.
        ImportError: If bitsandbytes is not installed.
    """
    if quantize not in QUANTIZE_CHOICES:
        raise ValueError(f"quantize={quantize!r} is not supported; choose one of {list(QUANTIZE_CHOICES)}")
    require_backend("bitsandbytes", f"{quantize} quantization")
    from transformers import BitsAndBytesConfig

    if quantize == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    if compute_dtype is None:
        compute_dtype = torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype,
    )


def _transformer(model: nn.Module) -> nn.Module:
    """The wrapped model of a PeftModel or a PEFT tuner, so module names read as in the original model."""
    from peft.tuners.tuners_utils import BaseTuner

    if hasattr(model, "get_base_model"):
        return cast(Any, model).get_base_model()
    return model.model if isinstance(model, BaseTuner) else model


def quantized_layers(model: nn.Module) -> dict[str, QuantizedLinear]:
    """The KRAdapter layers of ``model`` that sit on a quantized base.

    Args:
        model: A PeftModel or a PEFT tuner model.

    Returns:
        Module name (as in the original model) -> layer.
    """
    return {name: m for name, m in _transformer(model).named_modules() if isinstance(m, QuantizedLinear)}


def merge_requantized(
    model: nn.Module, adapter_names: list[str] | None = None, safe_merge: bool = False
) -> dict[str, MergeError]:
    """Merge the adapters into their quantized bases in place (requantizing) and return each layer's error.

    Every layer is checked before any is changed. Afterwards ``model.unload()`` gives the merged quantized base, and
    ``model.unmerge_adapter()`` puts the original quantized weights back exactly.

    Args:
        model: A PeftModel (or its KRAdapterModel) on a quantized base.
        adapter_names: The adapters to merge (default: the active ones).
        safe_merge: Check every merged weight for non-finite values before changing any.

    Returns:
        Module name -> [`MergeError`][kradapter.methods.kradapter.quantized.MergeError] (how much of the update the
        requantization lost).

    Raises:
        ValueError: If the model has no KRAdapter layer on a quantized base, or a layer's backend cannot dequantize
            (raised by the layers before any weight changes).
    """
    layers = quantized_layers(model)
    if not layers:
        raise ValueError("the model has no KRAdapter layer on a quantized base; use model.merge_adapter() instead")
    for layer in layers.values():
        layer.requantize_chosen = True
    try:
        cast(Any, model).merge_adapter(adapter_names=adapter_names, safe_merge=safe_merge)
    finally:
        for layer in layers.values():
            layer.requantize_chosen = False
    return {name: layer.merge_error for name, layer in layers.items() if layer.merge_error is not None}


def merge_to_full_precision(
    model: nn.Module, adapter_names: list[str] | None = None, dtype: torch.dtype | None = None
) -> nn.Module:
    """A new plain model: every quantized linear dequantized to ``dtype``, the adapters merged, PEFT wrappers removed.

    The adapter was trained against the dequantized weights, so the copy reproduces the adapted quantized model up
    to float rounding. ``model`` itself is left unchanged.

    Args:
        model: A PeftModel on a quantized base.
        adapter_names: The adapters to merge (default: the active ones).
        dtype: The dtype of the copy; default the base config's dtype, else float32.

    Returns:
        The merged full-precision model.

    Raises:
        ValueError: If any quantized layer, adapted or not, cannot be dequantized correctly (checked before anything
            is copied).
    """
    base = _transformer(model)
    if dtype is None:
        config_dtype = getattr(getattr(base, "config", None), "dtype", None)
        if isinstance(config_dtype, torch.dtype) and config_dtype.is_floating_point:
            dtype = config_dtype
        else:
            dtype = torch.float32
    _check_dequantizable(model)
    full = copy.deepcopy(model)
    for layer in quantized_layers(full).values():
        layer.dequantize_base_(dtype)
    merged = cast(Any, full).merge_and_unload(adapter_names=adapter_names)
    _dequantize_remaining_(merged, dtype)
    return merged


def _check_dequantizable(model: nn.Module) -> None:
    """Every quantized layer, adapted or not, must dequantize correctly; checked before anything is copied."""
    from ._compat import get_quantization_kwargs, resolve_quantization_backend

    adapted = quantized_layers(model)
    for name, layer in adapted.items():
        if (reason := layer.dequantize_blocker()) is not None:
            raise ValueError(f"cannot make a full-precision copy of '{name}': {reason}")
    adapted_bases = {id(layer.get_base_layer()) for layer in adapted.values()}
    kwargs = get_quantization_kwargs(_transformer(model))
    for name, module in _transformer(model).named_modules():
        if not isinstance(module, nn.Linear) or is_plain_float_layer(module) or id(module) in adapted_bases:
            continue
        backend = resolve_quantization_backend(module, **kwargs)
        if backend is None or not backend.supports_merge:
            raise ValueError(
                f"cannot make a full-precision copy: '{name}' ({type(module).__name__}) cannot be dequantized"
            )


def _dequantize_remaining_(model: nn.Module, dtype: torch.dtype) -> None:
    """Replace the quantized linears no adapter targeted with dequantized nn.Linear; drop quantization metadata."""
    from ._compat import drop_quantization_config, get_quantization_kwargs, resolve_quantization_backend

    kwargs = get_quantization_kwargs(model)
    for name, module in list(model.named_modules()):
        if not isinstance(module, nn.Linear) or is_plain_float_layer(module):
            continue
        backend = resolve_quantization_backend(module, **kwargs)
        if backend is None or not backend.supports_merge:
            raise ValueError(f"cannot dequantize '{name}' ({type(module).__name__}) for a full-precision copy")
        parent_name, _, child = name.rpartition(".")
        weight = (
            dequantize_cpu_packed(module.weight) if is_cpu_packed(module.weight) else backend.get_base_weight(module)
        )
        full = dequantized_linear(module, weight, dtype)
        setattr(model.get_submodule(parent_name), child, full)
    drop_quantization_config(model)
