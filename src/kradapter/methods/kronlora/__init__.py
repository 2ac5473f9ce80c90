"""Kron-LoRA (Shen, arXiv 2508.01961) as a PEFT method: config, tuner model, layer and factor quantization."""

from .config import KronLoRAConfig
from .layer import KronLoRALayer, Linear
from .model import KronLoRAModel
from .quantize import absmax_dequantize, absmax_quantize, fake_quantize, quantize_kronlora_

__all__ = [
    "KronLoRAConfig",
    "KronLoRALayer",
    "KronLoRAModel",
    "Linear",
    "absmax_dequantize",
    "absmax_quantize",
    "fake_quantize",
    "quantize_kronlora_",
]
