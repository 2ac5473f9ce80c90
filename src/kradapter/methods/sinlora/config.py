"""SinLoRAConfig: the fields a user sets, validated once at construction."""

from __future__ import annotations

from dataclasses import dataclass, field

from peft.config import PeftConfig

from ... import _registry
from .._config_checks import (
    check_field_types,
    check_finite,
    check_patterns,
    check_positive_int,
    check_probability,
    check_scale,
    normalise_targets,
)


@dataclass
class SinLoRAConfig(PeftConfig):
    """Configuration of a sine-activated low-rank adapter, SinLoRA (Ji et al., arXiv 2403.19243).

    For a frozen weight W0 (d_out x d_in) the adapter trains A (r x d_in), kaiming-uniform, and B (d_out x r), zero,
    and adds ``Delta W = (lora_alpha / r) * sin(freq * B A) / scale``: still r (d_out + d_in) parameters, but the
    sine makes the update full rank.

    Where the formula comes from: the official code, github.com/samy-ji/Sine-Low-Rank,
    ``llm/peft/src/peft/tuners/sinlora.py`` (class ``Linear``), computes ``sin(freq * B @ A) / s * scaling`` with
    ``scaling = lora_alpha / r`` in forward and merge, inits A kaiming-uniform(a=sqrt(5)) and B zero, and overwrites
    the config's ``s`` with ``sqrt(in_features)`` in the layer constructor; ``scale=None`` here reproduces that.
    That repository's ``finetune.py`` has no usable default frequency (``freq: int = 0``, which gives a zero update).
    The default ``freq=20.0`` is the one the KRAdapter authors' matrix-approximation code uses for SinLoRA
    (github.com/PaulAlbert31/KRAdapter, ``config.py``: ``'SinLoRA': {'rank': 64, 'frequency': 20.0, 'scaling': 1.0}``),
    where the update is ``sin(20 B A)`` with no further scaling (``scale=1``, ``lora_alpha=r`` here).

    Methods want different learning rates; tune it per method rather than reusing LoRA's.
    """

    target_modules: list[str] | str | None = field(
        default=None,
        metadata={"help": "Module names or a regex to adapt, or 'all-linear'. Defaults to PEFT's LoRA targets."},
    )
    exclude_modules: list[str] | str | None = field(
        default=None, metadata={"help": "Module names or a regex never to adapt."}
    )
    r: int = field(default=8, metadata={"help": "Rank of the product B A inside the sine."})
    lora_alpha: float = field(
        default=8.0, metadata={"help": "Scaling numerator: the update is multiplied by lora_alpha / r."}
    )
    freq: float = field(default=20.0, metadata={"help": "Sine frequency (omega): Delta W ~ sin(freq * B A)."})
    scale: float | None = field(
        default=None,
        metadata={"help": "Divisor of the sine: None means sqrt(d_in) per layer, as the official code does."},
    )
    dropout: float = field(default=0.0, metadata={"help": "Dropout on the adapter's input."})
    module_dropout: float = field(
        default=0.0, metadata={"help": "Probability of skipping the whole adapter for a step (training only)."}
    )
    init_weights: bool = field(
        default=True, metadata={"help": "True: B = 0 so the model starts unchanged. False: B random too (for tests)."}
    )
    layers_to_transform: list[int] | int | None = field(
        default=None, metadata={"help": "Layer indices to adapt; needs target_modules as a list."}
    )
    layers_pattern: list[str] | str | None = field(
        default=None, metadata={"help": "Name of the layer list (e.g. 'layers', 'h') used with layers_to_transform."}
    )
    rank_pattern: dict | None = field(default_factory=dict, metadata={"help": "Regex -> r for matching modules."})
    alpha_pattern: dict | None = field(
        default_factory=dict, metadata={"help": "Regex -> lora_alpha for matching modules."}
    )
    modules_to_save: list[str] | None = field(
        default=None, metadata={"help": "Modules besides the adapters to train and save (e.g. a classifier head)."}
    )

    def __post_init__(self):
        # A field of the wrong type: one error naming it (these fields have their own checks below).
        check_field_types(self, checked_below=("r", "lora_alpha", "freq", "scale", "dropout", "module_dropout"))
        super().__post_init__()
        self.peft_type = _registry.peft_type("SINLORA")
        normalise_targets(self)
        check_positive_int(self.r, "r")
        check_patterns(self, ("rank_pattern", "alpha_pattern"))
        check_scale(self.lora_alpha, "lora_alpha")
        check_finite(self.freq, "freq")
        if self.freq == 0:
            raise ValueError("freq=0 makes sin(freq * B A) identically zero; use a non-zero frequency")
        if self.scale is not None:
            check_finite(self.scale, "scale", positive=True)
        for key, value in (self.rank_pattern or {}).items():
            check_positive_int(value, f"rank_pattern[{key!r}]")
        for key, value in (self.alpha_pattern or {}).items():
            check_scale(value, f"alpha_pattern[{key!r}]")
        check_probability(self.dropout, "dropout")
        check_probability(self.module_dropout, "module_dropout")

    def adapter_numel(self, d_out: int, d_in: int, settings: dict) -> int:
        """Parameters of the adapter on a d_out x d_in layer with `settings` (its r): A and B, r (d_in + d_out)."""
        return settings["r"] * (d_in + d_out)
