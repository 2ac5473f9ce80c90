"""The default AdamW learning rate of each method: one table, used by `kradapter train`, `compare` and `demo`.

Picked from the validation grids of benchmarks/RECIPES.md (MiniLM on tweets = "text", EfficientNet-Lite0 on MNIST
= "image"), each method at its budget-matched config and library-default multiplier (KRAdapter alpha 0.1):

- kradapter 3e-2: picked on text (validation 73.7 vs 64.0 at 1e-2); image picked 1e-2 (90.7 vs 87.3 at 3e-2).
  3e-2 costs image 3.4 points, 1e-2 would cost text 9.7, so 3e-2.
- lora 3e-3: picked on both.
- full 3e-4: picked on image (92.0 vs 85.7 at 1e-3); text picked 1e-3 (74.0 vs 69.0 at 3e-4); the smaller loss.
- randlora 3e-4: picked on text (its only grid).
- dora, krona, sinlora, kronlora: no grid was run; 1e-3 is a guess, not a measurement.

KRAdapter's update is alpha * (U ⊙ V) and Adam moves U and V by about lr per step, so the step on Delta W scales
with alpha * lr: the rate above is for alpha 0.1. At another alpha, start from 3e-3 / alpha and tune (--lr-grid).
"""

from __future__ import annotations

# the methods whose default above was picked on a validation grid; the values live in their specs
MEASURED = ("kradapter", "lora", "full", "randlora")


def default_lr(method: str) -> float:
    """The documented default learning rate of `method`: its spec's ``default_lr`` (the table above for ours and
    PEFT's; a plugin's own spec says its own)."""
    from .specs import get_spec

    return get_spec(method).default_lr


def is_measured(method: str) -> bool:
    """Whether `method`'s default rate was picked on a validation grid (False: a guess)."""
    return method in MEASURED
