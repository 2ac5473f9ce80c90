"""What a score means: each test set's majority-class rate (always answering its most frequent label) and chance
rate (a uniform guess over the choices the model has), and a class-balanced score (balanced accuracy, the mean of
per-class recalls: 1/K for any constant answer), so a table shows at once when a number means "nothing learned"."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

BALANCED = "balanced_accuracy"


def balanced_accuracy(pred: Sequence, gold: Sequence) -> float:
    """Mean recall over the classes present in `gold` (scikit-learn's macro recall restricted to those classes, so
    a prediction outside them, e.g. an unextractable answer, counts as wrong without a warning)."""
    from sklearn.metrics import recall_score

    if not len(gold):
        return float("nan")
    pred = [str(p) for p in pred]
    gold = [str(g) for g in gold]
    return float(recall_score(gold, pred, labels=sorted(set(gold)), average="macro", zero_division=0))


def majority_rate(gold: Iterable) -> float:
    """Share of the most frequent label: the accuracy of always giving that answer."""
    counts = Counter(gold)
    total = sum(counts.values())
    return counts.most_common(1)[0][1] / total if total else float("nan")


def set_baselines(gold: Sequence, choices: int | Sequence[int]) -> dict:
    """{"majority", "chance"} of one test set; `choices`: the number of classes the model picks from, or one count
    per question (multiple choice with varying numbers of answers)."""
    gold = list(gold)
    counts = np.full(len(gold), choices, dtype=np.float64) if np.isscalar(choices) else np.asarray(choices, float)
    return {
        "majority": majority_rate(gold),
        "chance": float((1.0 / counts).mean()) if len(counts) else float("nan"),
        # a constant answer's balanced accuracy: one class recalled fully, the others not at all
        "majority_balanced": 1.0 / len(set(gold)) if gold else float("nan"),
    }


def group_baselines(baselines: dict[str, dict], groups: dict[str, str]) -> dict[str, dict]:
    """Mean majority and chance rates of the test sets in each group (ID, NID, OOD)."""
    out = {}
    for group in ("ID", "NID", "OOD"):
        members = [baselines[n] for n, g in groups.items() if g == group and n in baselines]
        if members:
            out[group] = {k: float(np.mean([b[k] for b in members])) for k in ("majority", "chance")}
    return out


def not_above_majority(tests: dict[str, dict], baselines: dict[str, dict]) -> list[tuple[str, float, float]]:
    """(test set, mean score, majority rate) for each set whose mean accuracy does not beat its majority rate."""
    flagged = []
    for name, block in tests.items():
        b = baselines.get(name)
        if b and block.get("mean") is not None and block["mean"] <= b["majority"] + 1e-12:
            flagged.append((name, block["mean"], b["majority"]))
    return flagged
