"""Which KRAdapter layer a quantized linear target gets: bitsandbytes' own classes (bnb.py) or the generic
QuantizedLinear. Its own module so that quantized.py and bnb.py (which subclasses it) do not import each other."""

from __future__ import annotations

from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn

from . import bnb
from .quantized import QuantizedLinear, is_plain_float_layer


def dispatch_quantized(target: nn.Module, adapter_name: str, quantization_kwargs: dict, **kwargs) -> nn.Module | None:
    """A KRAdapter layer for a quantized linear ``target``, or None when the target is not quantized.

    bitsandbytes layers get their own classes (bnb.py); any other backend PEFT recognises (torchao, HQQ, GPTQ, ...)
    gets QuantizedLinear with PEFT's backend, which refuses to merge where the backend cannot dequantize.
    """
    base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
    if not isinstance(base, nn.Linear) or is_plain_float_layer(base):
        return None
    from ..._compat import resolve_quantization_backend

    layer_cls = bnb.layer_class_for(base)
    backend = resolve_quantization_backend(base, **quantization_kwargs)
    if layer_cls is not None:
        return layer_cls(target, adapter_name, backend, **kwargs)
    if backend is None:
        if base.weight.is_floating_point():  # e.g. a DTensor shard under FSDP: an ordinary float weight
            return None
        from ..._compat import ForwardOnlyQuantizationBackend

        # An nn.Linear subclass with a non-float weight that PEFT does not know: train on it, never merge into it.
        backend = ForwardOnlyQuantizationBackend(f"unrecognised {type(base).__name__}")
    return QuantizedLinear(target, adapter_name, backend, **kwargs)
