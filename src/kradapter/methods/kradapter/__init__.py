"""KRAdapter as a PEFT method: its config, tuner model and layers (Linear / Conv1D, Conv2d)."""

from .config import KRAdapterConfig
from .layer import Conv2d, KRAdapterLayer, Linear
from .model import KRAdapterModel

__all__ = ["Conv2d", "KRAdapterConfig", "KRAdapterLayer", "KRAdapterModel", "Linear"]
