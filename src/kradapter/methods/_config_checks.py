"""Validation shared by our configs: one clear ValueError naming the field and the bad value."""

from __future__ import annotations

import math
import re


def check_positive_int(value, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{where} must be an int >= 1, got {value!r}")


def check_finite(value, where: str, positive: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{where} must be a finite number, got {value!r}")
    if positive and value <= 0:
        raise ValueError(f"{where} must be > 0, got {value!r}")


# float16's largest finite value: with a scale beyond it, a half-precision model's update overflows to Inf for an
# input and Delta W of order 1, and float32 follows by 1e38. No useful adapter scale comes near it.
SCALE_LIMIT = 65504.0


def check_scale(value, where: str) -> None:
    """An adapter's scale (alpha, lora_alpha): a finite number, not 0 (every update would be 0 and get no
    gradient), at most SCALE_LIMIT in size."""
    check_finite(value, where)
    if value == 0:
        raise ValueError(f"{where}=0 makes every update zero, so the adapter can never train; use a non-zero value")
    if abs(value) > SCALE_LIMIT:
        raise ValueError(
            f"{where}={value!r} is too large: the update it scales overflows to Inf (in float16 beyond "
            f"{SCALE_LIMIT:g}); use |{where}| <= {SCALE_LIMIT:g}"
        )


def check_probability(value, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{where}={value!r} must be in [0, 1)")


def check_regex(pattern, where: str) -> None:
    """A regex field (target_modules given as a str, a *_pattern key): re.error becomes one ValueError naming the
    field and the pattern."""
    try:
        re.compile(pattern)
    except re.error as err:
        raise ValueError(f"{where}: {pattern!r} is not a valid regular expression ({err})") from None


def check_patterns(config, fields: tuple[str, ...]) -> None:
    """Every regex a config holds: target_modules / exclude_modules given as a str, and the keys of `fields`
    (rank_pattern, alpha_pattern, k1_pattern; PEFT matches their keys as regexes)."""
    for name in ("target_modules", "exclude_modules"):
        value = getattr(config, name, None)
        if isinstance(value, str):
            check_regex(value, name)
    for name in fields:
        for key in getattr(config, name, None) or {}:
            check_regex(key, f"{name} key")


def normalise_targets(config) -> None:
    """PEFT convention: module-name lists become sets; layers_pattern needs layers_to_transform. (PeftConfig's own
    __post_init__ refuses layers_to_transform with a regex target_modules since PEFT 0.22.)"""
    for name in ("target_modules", "exclude_modules"):
        value = getattr(config, name)
        if isinstance(value, list):
            setattr(config, name, set(value))
    if config.layers_pattern and config.layers_to_transform is None:
        raise ValueError("layers_pattern needs layers_to_transform")


def check_field_types(config, checked_below: tuple[str, ...] = ()) -> None:
    """Each field a method's config declares (not PeftConfig's own) against its annotation: one ValueError naming
    the field, its value and the expected type (a string "0.1" for a float, 5 for module names, "yes" for a bool).
    Fields in `checked_below` are left to the config's own, more specific checks."""
    import dataclasses
    import typing

    from peft.config import PeftConfig

    inherited = {f.name for f in dataclasses.fields(PeftConfig)}
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        if f.name in inherited or f.name in checked_below or f.name not in hints:
            continue
        value = getattr(config, f.name)
        if not _fits(value, hints[f.name]):
            raise ValueError(
                f"{type(config).__name__}.{f.name} must be {_describe(hints[f.name])}, got {value!r} "
                f"({type(value).__name__})"
            )


def _fits(value, tp) -> bool:
    import numbers
    import types
    import typing

    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is typing.Any:
        return True
    if origin is typing.Union or origin is types.UnionType:
        return any(_fits(value, a) for a in args)
    if tp is type(None):
        return value is None
    if origin is typing.Literal:
        return value in args
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if tp in (list, set, tuple) or origin in (list, set, tuple):  # PEFT turns module-name lists into sets
        return isinstance(value, (list, set, tuple)) and (not args or all(_fits(v, args[0]) for v in value))
    if tp is dict or origin is dict:
        return isinstance(value, dict)
    return True  # a type these checks do not know: not judged here


def _describe(tp) -> str:
    import types
    import typing

    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union or origin is types.UnionType:
        return " or ".join(_describe(a) for a in args)
    if tp is type(None):
        return "None"
    if origin in (list, set, tuple):
        return f"a list of {getattr(args[0], '__name__', args[0])}" if args else "a list"
    if origin is dict or tp is dict:
        return "a dict"
    words = {bool: "True or False", int: "an int", float: "a number", str: "a str"}
    return words.get(tp, getattr(tp, "__name__", str(tp)))
