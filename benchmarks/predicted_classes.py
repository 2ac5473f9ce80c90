"""Which classes a saved text-recipe adapter predicts on a jsonl test file (text, label): explains an accuracy far
below chance, as on the drug-review OOD set in RECIPES.md.

    PYTHONPATH=src python benchmarks/predicted_classes.py runs/compare-text/kradapter \
        ~/.cache/kradapter/text-sentiment/drugreview.jsonl [--rows 400]
"""

import argparse
import collections
import json

import torch
from peft import PeftModel
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import kradapter  # noqa: F401  (registers KRAdapter with PEFT, so its adapters load)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("adapter_dir")
    p.add_argument("jsonl")
    p.add_argument("--rows", type=int, default=400, help="the file's first N rows")
    args = p.parse_args()
    with open(f"{args.adapter_dir}/kradapter_run.json", encoding="utf-8") as f:
        info = json.load(f)
    classes = info["classes"]
    tokenizer = AutoTokenizer.from_pretrained(info["model"])
    base = AutoModelForSequenceClassification.from_pretrained(info["model"], num_labels=len(classes))
    model = PeftModel.from_pretrained(base, args.adapter_dir).eval()
    with open(args.jsonl, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f][: args.rows]
    predicted = []
    with torch.no_grad():
        for i in range(0, len(rows), 32):
            batch = tokenizer(
                [r["text"] for r in rows[i : i + 32]],
                truncation=True,
                max_length=128,
                padding=True,
                return_tensors="pt",
            )
            predicted += [classes[k] for k in model(**batch).logits.argmax(-1).tolist()]
    accuracy = sum(p == r["label"] for p, r in zip(predicted, rows)) / len(rows)
    print(
        f"{args.adapter_dir}: {len(rows)} rows; gold {dict(collections.Counter(r['label'] for r in rows))}; "
        f"predicted {dict(collections.Counter(predicted))}; accuracy {accuracy:.3f}"
    )


if __name__ == "__main__":
    main()
