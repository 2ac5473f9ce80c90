"""Validation shared by our configs: one clear ValueError naming the field and the bad value."""

from __future__ import annotations

import math


def check_positive_int(value, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{where} must be an int >= 1, got {value!r}")


def check_finite(value, where: str, positive: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{where} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise ValueError(f"{where} must be > 0, got {value!r}")


def check_probability(value, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{where}={value!r} must be in [0, 1)")


def normalise_targets(config) -> None:
    """PEFT convention: module-name lists become sets; layers_to_transform needs a list of names."""
    for name in ("target_modules", "exclude_modules"):
        value = getattr(config, name)
        if isinstance(value, list):
            setattr(config, name, set(value))
    if isinstance(config.target_modules, str) and config.layers_to_transform is not None:
        raise ValueError("layers_to_transform cannot be used when target_modules is a str (a regex)")
    if config.layers_pattern and config.layers_to_transform is None:
        raise ValueError("layers_pattern needs layers_to_transform")
