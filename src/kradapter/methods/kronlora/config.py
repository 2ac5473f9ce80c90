"""KronLoRAConfig: the fields a user sets, validated once at construction."""

from __future__ import annotations

from dataclasses import dataclass, field

from peft.config import PeftConfig

from ... import _registry
from .._config_checks import (
    check_field_types,
    check_patterns,
    check_positive_int,
    check_probability,
    check_scale,
    normalise_targets,
)


def check_kron_shape(value, where: str = "kron_shape") -> None:
    """An int >= 1 or a pair of ints >= 1 (whether it divides a layer is checked per layer)."""
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise ValueError(f"{where}={value} must be >= 1")
        return
    if (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
    ):
        return
    raise ValueError(f"{where} must be an int >= 1 or a pair [a_out, a_in] of ints >= 1, got {value!r}")


@dataclass
class KronLoRAConfig(PeftConfig):
    """Configuration of a Kron-LoRA adapter (Shen, "Kronecker-LoRA: hybrid Kronecker-LoRA adapters for scalable,
    sustainable fine-tuning", arXiv 2508.01961).

    The paper factorises the update as a Kronecker product ``Delta W = A ⊗ B`` and compresses B with a rank-r LoRA
    decomposition ``B ≈ B1 B2``, so ``rank(Delta W) = rank(A) rank(B)`` can be far above r. Here A is (a_out x a_in)
    with (a_out, a_in) = ``kron_shape``, B1 is (d_out/a_out x r), B2 is (r x d_in/a_in), and the update is
    ``(alpha / r) * A ⊗ (B1 B2)``, costing a_out a_in + r (d_out/a_out + d_in/a_in) parameters.

    Our choices (the text available here, the abstract, does not fix them): A and B2 start kaiming-uniform and B1
    at zero, so the model starts unchanged (the LoRA convention for the B1 B2 stage); scaling alpha / r as in LoRA;
    an int kron_shape f means, per side, the largest divisor <= f. The paper reports that the adapter factors
    quantize to 8 or 4 bits with little loss: ``kradapter.methods.kronlora.quantize_kronlora_`` does that
    post-training (symmetric absmax, per row or per tensor) and reports the error.

    Methods want different learning rates; tune it per method rather than reusing LoRA's.
    """

    target_modules: list[str] | str | None = field(
        default=None,
        metadata={"help": "Module names or a regex to adapt, or 'all-linear'. Defaults to PEFT's LoRA targets."},
    )
    exclude_modules: list[str] | str | None = field(
        default=None, metadata={"help": "Module names or a regex never to adapt."}
    )
    r: int = field(default=8, metadata={"help": "Rank of B = B1 B2 (at most the smaller side of B)."})
    kron_shape: int | list[int] = field(
        default=4,
        metadata={
            "help": "Shape of A as [a_out, a_in] (must divide the layer), or an int f: per side the largest divisor "
            "of that side that is <= f."
        },
    )
    alpha: float = field(default=8.0, metadata={"help": "Scaling numerator: the update is multiplied by alpha / r."})
    dropout: float = field(default=0.0, metadata={"help": "Dropout on the adapter's input."})
    module_dropout: float = field(
        default=0.0, metadata={"help": "Probability of skipping the whole adapter for a step (training only)."}
    )
    init_weights: bool = field(
        default=True, metadata={"help": "True: B1 = 0 so the model starts unchanged. False: B1 random too (tests)."}
    )
    layers_to_transform: list[int] | int | None = field(
        default=None, metadata={"help": "Layer indices to adapt; needs target_modules as a list."}
    )
    layers_pattern: list[str] | str | None = field(
        default=None, metadata={"help": "Name of the layer list (e.g. 'layers', 'h') used with layers_to_transform."}
    )
    rank_pattern: dict | None = field(default_factory=dict, metadata={"help": "Regex -> r for matching modules."})
    alpha_pattern: dict | None = field(default_factory=dict, metadata={"help": "Regex -> alpha for matching modules."})
    modules_to_save: list[str] | None = field(
        default=None, metadata={"help": "Modules besides the adapters to train and save (e.g. a classifier head)."}
    )

    def __post_init__(self):
        # A field of the wrong type: one error naming it (these fields have their own checks below).
        check_field_types(self, checked_below=("r", "kron_shape", "alpha", "dropout", "module_dropout"))
        super().__post_init__()
        self.peft_type = _registry.peft_type("KRONLORA")
        normalise_targets(self)
        check_positive_int(self.r, "r")
        check_kron_shape(self.kron_shape)
        if isinstance(self.kron_shape, tuple):
            self.kron_shape = list(self.kron_shape)  # JSON round trip gives a list; keep one form
        check_patterns(self, ("rank_pattern", "alpha_pattern"))
        check_scale(self.alpha, "alpha")
        for key, value in (self.rank_pattern or {}).items():
            check_positive_int(value, f"rank_pattern[{key!r}]")
        for key, value in (self.alpha_pattern or {}).items():
            check_scale(value, f"alpha_pattern[{key!r}]")
        check_probability(self.dropout, "dropout")
        check_probability(self.module_dropout, "module_dropout")

    def adapter_numel(self, d_out: int, d_in: int, settings: dict) -> int:
        """Parameters of the adapter on a d_out x d_in layer with `settings` (r, kron_shape): A, B1 and B2."""
        from ...ops import kronlora_shapes

        shapes = kronlora_shapes(d_out, d_in, settings["kron_shape"], settings["r"])
        return sum(rows * cols for rows, cols in shapes)
