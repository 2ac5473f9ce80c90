"""GLUE (`--task glue --glue-task NAME`): the text recipe with GLUE's column names, label sets and metrics
(Matthews correlation for CoLA, Pearson for STS-B, accuracy otherwise), read from the public GLUE files
(e.g. the parquet/json/csv splits of the Hugging Face `glue` dataset, whose columns these are). GLUE's own test
splits have hidden labels (-1): pass the validation split as the test set, as the paper does."""

from __future__ import annotations

import argparse

from .base import Prepared
from .text import prepare_classification

# task -> (first text column, second text column or None, number of labels (1 = regression), metric)
GLUE_TASKS = {
    "cola": ("sentence", None, 2, "matthews"),
    "sst2": ("sentence", None, 2, "accuracy"),
    "mrpc": ("sentence1", "sentence2", 2, "accuracy"),
    "qqp": ("question1", "question2", 2, "accuracy"),
    "stsb": ("sentence1", "sentence2", 1, "pearson"),
    "mnli": ("premise", "hypothesis", 3, "accuracy"),
    "qnli": ("question", "sentence", 2, "accuracy"),
    "rte": ("sentence1", "sentence2", 2, "accuracy"),
    "wnli": ("sentence1", "sentence2", 2, "accuracy"),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument_group("glue task").add_argument(
        "--glue-task", choices=sorted(GLUE_TASKS), default=None, help="which GLUE task the --data files hold"
    )


def prepare(args: argparse.Namespace) -> Prepared:
    if args.glue_task is None:
        raise ValueError(f"--task glue needs --glue-task, one of {', '.join(sorted(GLUE_TASKS))}")
    first, second, num_labels, metric = GLUE_TASKS[args.glue_task]
    prepared = prepare_classification(
        args,
        task="glue",
        text_column=args.text_column or first,
        pair_column=args.text_pair_column or second,
        metric=metric,
        regression=num_labels == 1,
        classes=None if num_labels == 1 else list(range(num_labels)),
    )
    prepared.run_info["glue_task"] = args.glue_task
    return prepared


from .text import load_model, rebuild  # noqa: E402,F401  GLUE models load like the text task's
