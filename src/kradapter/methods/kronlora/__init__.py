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
