"""SinLoRA (Ji et al., arXiv 2403.19243) as a PEFT method: config, tuner model and layer."""

from .config import SinLoRAConfig
from .layer import Linear, SinLoRALayer
from .model import SinLoRAModel

__all__ = ["Linear", "SinLoRAConfig", "SinLoRALayer", "SinLoRAModel"]
