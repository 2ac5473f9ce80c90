"""Scores used by the recipes: GLUE's (Matthews for CoLA, Pearson for STS-B, accuracy otherwise; from scikit-learn
and scipy) and the aggregates of the paper's tables (mean ± std over seeds, ID/NID/OOD group means, r_gen)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np


def accuracy(pred: Sequence, gold: Sequence) -> float:
    """Fraction of exact matches (scikit-learn's accuracy_score); NaN for an empty set."""
    from sklearn.metrics import accuracy_score

    return float(accuracy_score(list(gold), list(pred))) if len(gold) else float("nan")


def matthews(pred: Sequence[int], gold: Sequence[int]) -> float:
    """Matthews correlation, multi-class (scikit-learn's matthews_corrcoef; 0 when undefined)."""
    import warnings

    from sklearn.metrics import matthews_corrcoef

    with warnings.catch_warnings():  # one class only (a tiny eval set): sklearn warns, and the answer is 0
        warnings.simplefilter("ignore", UserWarning)
        return float(matthews_corrcoef(list(gold), list(pred)))


def pearson(pred: Sequence[float], gold: Sequence[float]) -> float:
    """Pearson's r (scipy.stats.pearsonr); 0 when undefined (fewer than 2 points, or a constant side)."""
    from scipy.stats import pearsonr

    pred, gold = np.asarray(pred, dtype=np.float64), np.asarray(gold, dtype=np.float64)
    if len(gold) < 2 or np.ptp(pred) == 0 or np.ptp(gold) == 0:
        return 0.0
    return float(pearsonr(pred, gold).statistic)


# The key under which a task's evaluate also returns each example's correctness (0/1, in the set's order) when its
# score is an accuracy: the runner stores it (per_example.json) for compare's intervals, never as a score.
CORRECT = "correct"


def correctness(pred: Sequence, gold: Sequence) -> list[int]:
    """1 where the prediction equals the gold answer, else 0, in the given order (accuracy is their mean)."""
    return [int(p == g) for p, g in zip(pred, gold, strict=True)]


def mse(pred: Sequence[float], gold: Sequence[float]) -> float:
    """Mean squared error (scikit-learn's mean_squared_error); NaN for an empty set."""
    from sklearn.metrics import mean_squared_error

    return float(mean_squared_error(list(gold), list(pred))) if len(gold) else float("nan")


METRICS = {"accuracy": accuracy, "matthews": matthews, "pearson": pearson}


def mean_std(values: Sequence[float | None]) -> dict:
    """{"mean", "std", "per_seed"}; std is the sample standard deviation (0 for one seed), None-safe."""
    vals = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    if not vals:
        return {"mean": None, "std": None, "per_seed": list(values)}
    arr = np.asarray(vals, dtype=np.float64)
    std = float(arr.std(ddof=1)) if len(arr) > 1 else 0.0
    return {"mean": float(arr.mean()), "std": std, "per_seed": list(values)}


def group_means(scores: dict[str, float], groups: dict[str, str]) -> dict[str, float]:
    """Mean score of the test sets in each group (ID, NID, OOD), for groups that have test sets."""
    out: dict[str, float] = {}
    for group in ("ID", "NID", "OOD"):
        members = [scores[name] for name, g in groups.items() if g == group and name in scores]
        if members:
            out[group] = float(np.mean(members))
    return out


def r_gen(groups: dict[str, float], zero_shot_groups: dict[str, float], eps: float = 1e-9) -> float | None:
    """The paper's r_gen = (mean OOD gain) / (ID gain), both over the zero-shot model; None when undefined."""
    if "ID" not in groups or "OOD" not in groups or "ID" not in zero_shot_groups or "OOD" not in zero_shot_groups:
        return None
    id_gain = groups["ID"] - zero_shot_groups["ID"]
    if abs(id_gain) < eps:
        return None
    return (groups["OOD"] - zero_shot_groups["OOD"]) / id_gain
