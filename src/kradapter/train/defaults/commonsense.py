"""The commonsense default: BIG-bench tasks (PyPI sdist bigbench 1.0.0, Apache-2.0) rewritten in the LLM-Adapters
json format (instruction / answer / output) with LLM-Adapters' own instruction templates:

* social_iqa (3-way multiple choice) -> the social_i_qa template, answers answer1..answer3: train and ID test;
* strategyqa (yes/no)                -> the BoolQ template, answers true/false: OOD;
* winowhy (is this reasoning correct?) -> a two-option template like WinoGrande's, answers option1/option2: OOD.

The OOD sets use answer formats the model never trains on, as in the paper's Table 3 (trained on "answer{1..5}"
tasks, tested on binary-answer tasks). BIG-bench task files carry a canary asking that they never be used as
pre-training data; fine-tuning a local adapter for evaluation is the use they were published for, and nothing
from them is copied into this repository.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from ...io import cache_dir, read_json, write_text
from .bigbench import bigbench_tasks

TEST_ROWS = 400  # social_iqa questions held out, with a fixed seed, as the ID test file


def split_social_iqa(examples: list[dict]) -> tuple[list[dict], list[dict]]:
    """(ID test, train) BIG-bench social_iqa examples: the 3-way ones, shuffled with a fixed seed."""
    kept = [e for e in examples if len(e["target_scores"]) == 3]  # 4 of 1,954 have two choices: keep it 3-way
    random.Random(0).shuffle(kept)
    return kept[:TEST_ROWS], kept[TEST_ROWS:]


def _social_iqa(example: dict) -> dict:
    choices = list(example["target_scores"])
    k = [example["target_scores"][c] for c in choices].index(1) + 1
    listed = " ".join(f"Answer{i}: {c}" for i, c in enumerate(choices, 1))
    instruction = (
        f"Please choose the correct answer to the question: {example['input'].strip()}\n\n{listed}\n\n"
        "Answer format: answer1/answer2/answer3"
    )
    return {
        "instruction": instruction,
        "input": "",
        "output": f"the correct answer is answer{k}",
        "answer": f"answer{k}",
    }


def _strategyqa(example: dict) -> dict:
    answer = "true" if example["target_scores"]["Yes"] == 1 else "false"
    instruction = (
        f"Please answer the following question with true or false, question: {example['input'].strip()}"
        "\n\nAnswer format: true/false"
    )
    return {"instruction": instruction, "input": "", "output": f"the correct answer is {answer}", "answer": answer}


def _winowhy(example: dict) -> dict:
    answer = "option1" if example["target_scores"]["correct"] == 1 else "option2"
    instruction = (
        f"Please choose whether the reasoning is correct: {example['input'].strip()}\n\n"
        "Option1: correct Option2: incorrect\n\nAnswer format: option1/option2"
    )
    return {"instruction": instruction, "input": "", "output": f"the correct answer is {answer}", "answer": answer}


def _write(path: Path, rows: list[dict]) -> None:
    write_text(path, json.dumps(rows, ensure_ascii=False, indent=1) + "\n")


def commonsense_files() -> dict[str, Path]:
    """{"train", "social_iqa", "strategyqa", "winowhy"}: LLM-Adapters json files in the cache, built once."""
    root = cache_dir("commonsense-bigbench")
    paths = {name: root / f"{name}.json" for name in ("train", "social_iqa", "strategyqa", "winowhy")}
    if all(p.exists() for p in paths.values()):
        return paths
    tasks = bigbench_tasks(("social_iqa", "strategyqa", "winowhy"))
    test, train = split_social_iqa(read_json(tasks["social_iqa"])["examples"])
    _write(paths["social_iqa"], [_social_iqa(e) for e in test])
    _write(paths["train"], [_social_iqa(e) for e in train])
    _write(paths["strategyqa"], [_strategyqa(e) for e in read_json(tasks["strategyqa"])["examples"]])
    _write(paths["winowhy"], [_winowhy(e) for e in read_json(tasks["winowhy"])["examples"]])
    return paths
