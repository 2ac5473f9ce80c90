"""KRAdapterConfig: the fields a user sets, validated once at construction."""

from __future__ import annotations

from dataclasses import dataclass, field

from peft.config import PeftConfig

from ... import _registry
from ...ops import BUDGET_WORDS
from .._config_checks import check_field_types, check_patterns, check_scale, normalise_targets


def check_k1(k1, where: str = "k1") -> None:
    """Reject ``k1`` values that no layer could accept (the range against m is checked per layer).

    Args:
        k1: An int ``>= 1`` or one of the budget words ``"sqrt"``, ``"cbrt"``, ``"qdrt"``.
        where: The field's name, for the message.

    Raises:
        ValueError: If ``k1`` is an unknown word, not an int, or below 1.
    """
    if isinstance(k1, str):
        if k1 not in BUDGET_WORDS:
            raise ValueError(f"{where}={k1!r} is not a budget word; use an int >= 1 or one of {sorted(BUDGET_WORDS)}")
    elif isinstance(k1, bool) or not isinstance(k1, int):
        raise ValueError(f"{where} must be an int >= 1 or one of {sorted(BUDGET_WORDS)}, got {k1!r}")
    elif k1 < 1:
        raise ValueError(f"{where}={k1} must be >= 1")


def check_alpha(alpha, where: str = "alpha") -> None:
    """Refuse an ``alpha`` that cannot work: not a finite number, 0 (the adapter never trains), or so large that
    the update overflows (``_config_checks.SCALE_LIMIT``).

    Args:
        alpha: The value to check.
        where: The field's name, for the message.

    Raises:
        ValueError: If ``alpha`` is a bool, not a number, NaN, infinite, 0 or beyond the limit.
    """
    check_scale(alpha, where)


@dataclass
class KRAdapterConfig(PeftConfig):
    """Configuration of a Khatri-Rao adapter (arXiv 2508.00230).

    For a frozen weight W0 (d_out x d_in) with n = min(d_out, d_in) and m = max(d_out, d_in), the adapter trains
    U (k1 x n), initialised to zero, and V (k2 x n), kaiming-uniform with negative slope sqrt(1/k1). The update is
    ``alpha * (U ⊙ V)[:m]`` (transposed when d_out < d_in) and costs n * (k1 + k2) parameters.
    """

    target_modules: list[str] | str | None = field(
        default=None,
        metadata={
            "help": "Module names or a regex to adapt, or 'all-linear'. Defaults per architecture (attention key "
            "and value, as in the paper) when the model type is known."
        },
    )
    exclude_modules: list[str] | str | None = field(
        default=None, metadata={"help": "Module names or a regex never to adapt."}
    )
    k1: int | str = field(
        default="sqrt",
        metadata={
            "help": "Rows of U: an int, or 'sqrt' / 'cbrt' / 'qdrt' for floor(m^(1/2)), m^(1/3), m^(1/4) (the "
            "paper's low, medium and high budgets). k2 = ceil(m / k1)."
        },
    )
    alpha: float = field(default=0.1, metadata={"help": "Scale of the update: h = W0 x + alpha * Delta W x."})
    dropout: float = field(default=0.0, metadata={"help": "Dropout on the adapter's input."})
    module_dropout: float = field(
        default=0.0, metadata={"help": "Probability of skipping the whole adapter for a step (training only)."}
    )
    init_weights: bool = field(
        default=True,
        metadata={"help": "True: U = 0 so the model starts unchanged. False: U random too (for tests)."},
    )
    layers_to_transform: list[int] | int | None = field(
        default=None, metadata={"help": "Layer indices to adapt; needs target_modules as a list."}
    )
    layers_pattern: list[str] | str | None = field(
        default=None, metadata={"help": "Name of the layer list (e.g. 'layers', 'h') used with layers_to_transform."}
    )
    alpha_pattern: dict | None = field(
        default_factory=dict, metadata={"help": "Regex -> alpha, overriding `alpha` for matching modules."}
    )
    k1_pattern: dict | None = field(
        default_factory=dict, metadata={"help": "Regex -> k1, overriding `k1` for matching modules."}
    )
    fused: bool = field(
        default=True,
        metadata={
            "help": "Train Linear/Conv1D layers through the fused path: one GEMM with W0 + alpha * Delta W, "
            "nothing of size d_out x d_in kept for backward; Conv2d layers as one convolution with that kernel. "
            "Layers fall back to the plain path by themselves when it does not apply (adapter dropout in "
            "training, several active adapters, quantized or trained base weights). False always uses the plain "
            "path. Per adapter: a second adapter with another setting keeps its own; `layer.fused = False` "
            "switches every adapter on one layer."
        },
    )
    modules_to_save: list[str] | None = field(
        default=None, metadata={"help": "Modules besides the adapters to train and save (e.g. a classifier head)."}
    )

    def __post_init__(self):
        # A field of the wrong type: one error naming it (these fields have their own checks below).
        check_field_types(self, checked_below=("k1", "alpha"))
        super().__post_init__()
        self.peft_type = _registry.peft_type("KRADAPTER")
        normalise_targets(self)
        self.alpha_pattern = self.alpha_pattern or {}  # None (e.g. from a hand-written JSON) means no overrides
        self.k1_pattern = self.k1_pattern or {}
        check_patterns(self, ("alpha_pattern", "k1_pattern"))
        check_k1(self.k1)
        check_alpha(self.alpha)
        for key, value in (self.alpha_pattern or {}).items():
            check_alpha(value, f"alpha_pattern[{key!r}]")
        for key, value in (self.k1_pattern or {}).items():
            check_k1(value, f"k1_pattern[{key!r}]")
        if not isinstance(self.fused, bool):
            raise ValueError(f"fused must be True or False, got {self.fused!r}")
        for name in ("dropout", "module_dropout"):
            p = getattr(self, name)
            if not 0.0 <= p < 1.0:
                raise ValueError(f"{name}={p!r} must be in [0, 1)")

    def adapter_numel(self, d_out: int, d_in: int, settings: dict) -> int:
        """Parameters of the adapter on a d_out x d_in layer with `settings` (its k1): U and V, n (k1 + k2)."""
        from ...ops import resolve_k

        k1, k2 = resolve_k(d_out, d_in, settings["k1"])
        return min(d_out, d_in) * (k1 + k2)
