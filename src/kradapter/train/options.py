"""Checks of `kradapter train` / `compare` numeric options, shared by argparse (an error before anything runs) and
by `runner.run` (the same error for a Namespace built in code). 0 and negative values are errors, never replaced
by a default."""

from __future__ import annotations

import argparse
import math

# option attribute -> (kind, minimum); None values mean "use the default" and are not checked.
OPTIONS = {
    "max_steps": ("int", 1),
    "batch_size": ("int", 1),
    "eval_batch_size": ("int", 1),
    "logging_steps": ("int", 1),
    "save_steps": ("int", 1),
    "rank_every": ("int", 1),
    "max_train_examples": ("int", 1),
    "max_eval_examples": ("int", 1),
    "val_size": ("int", 1),
    "threads": ("int", 1),
    "data_seed": ("int", 0),
    "cutoff_len": ("int", 2),
    "max_new_tokens": ("int", 1),
    "num_beams": ("int", 1),
    "max_length": ("int", 1),
    "image_size": ("int", 1),
    "shots": ("int", 1),
    "epochs": ("positive", None),
    "lr": ("positive", None),
    "warmup_ratio": ("ratio", None),
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_value(name: str, value) -> None:
    """One ValueError naming the option and the value when `value` is not allowed for `name`."""
    kind, minimum = OPTIONS[name]
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{_flag(name)} must be an integer >= {minimum}, got {value!r}")
        if name == "threads":
            from .._resources import check_threads

            check_threads(_flag(name), value)
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{_flag(name)} must be a finite number, got {value!r}")
    if kind == "positive" and value <= 0:
        raise ValueError(f"{_flag(name)} must be > 0, got {value!r}")
    if kind == "ratio" and not 0.0 <= value < 1.0:
        raise ValueError(f"{_flag(name)} must be in [0, 1), got {value!r}")


def check_options(args: argparse.Namespace) -> None:
    for name in OPTIONS:
        value = getattr(args, name, None)
        if value is not None and not (name == "lr" and isinstance(value, str)):  # compare: "METHOD=LR,..."
            check_value(name, value)
    check_labels_option(getattr(args, "labels", None))
    check_target_modules_option(getattr(args, "target_modules", None))


def check_labels_option(value: str | None) -> None:
    """--labels: each class once (a repeated name would make a class no row can ever have)."""
    if value is None:
        return
    labels = [v.strip() for v in value.split(",") if v.strip()]
    repeated = sorted({v for v in labels if labels.count(v) > 1})
    if repeated:
        raise ValueError(f"--labels {value!r}: {', '.join(map(repr, repeated))} listed more than once")
    if len(labels) < 2:
        raise ValueError(f"--labels {value!r}: classification needs at least 2 classes")


def check_target_modules_option(value: str | None) -> None:
    """--target-modules: every regex entry compiles (tasks.base.resolve_targets' rule says which are regexes)."""
    import re

    from .tasks.base import is_pattern

    for entry in [v.strip() for v in (value or "").split(",") if v.strip()]:
        if is_pattern(entry):
            try:
                re.compile(entry)
            except re.error as err:
                raise ValueError(f"--target-modules: {entry!r} is not a valid regular expression ({err})") from None


def option_type(name: str):
    """An argparse `type=` for option `name`: parses, then applies check_value."""
    kind = OPTIONS[name][0]

    def parse(text: str):
        try:
            value = int(text) if kind == "int" else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{'an integer' if kind == 'int' else 'a number'} expected, got {text!r}"
            ) from None
        try:
            check_value(name, value)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err).removeprefix(_flag(name) + " ")) from None
        return value

    parse.__name__ = name  # argparse names the type in some messages
    return parse
