"""The recipes' tasks. Each module offers add_arguments(parser), prepare(args) -> Prepared,
load_model(path, ...) -> the task's model (the one place it is loaded) and rebuild(run_info) -> the base model a
saved run was trained on."""

from __future__ import annotations

import importlib
from types import ModuleType

TASKS = {
    "text": "sequence classification / regression on csv/json/parquet (default: MiniLM on rated tweets)",
    "glue": "GLUE tasks with GLUE's columns and metrics (needs the GLUE files)",
    "commonsense": "causal-LM commonsense QA in the LLM-Adapters json format (default: SmolLM2 on MMLU)",
    "image": "image classification with a plain vision model (default: EfficientNet-Lite0 on MNIST)",
    "clip": "CLIP image classification with text prompts as the head (needs a local CLIP checkpoint)",
}


def task_module(name: str) -> ModuleType:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {', '.join(TASKS)}")
    return importlib.import_module(f"{__name__}.{name}")


def all_task_modules() -> list[ModuleType]:
    return [task_module(name) for name in TASKS]


def load_model(task: str, path: str, **options):
    """The model of `task` from `path` (options: num_labels / regression for text and glue, num_labels for image,
    classes / template for clip)."""
    return task_module(task).load_model(path, **options)
