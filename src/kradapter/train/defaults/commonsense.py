"""The commonsense default: BIG-bench tasks (PyPI sdist bigbench 1.0.0, Apache-2.0) rewritten in the LLM-Adapters
json format (instruction / answer / output), each multiple-choice row with its own `choices`:

* goal_step_wikihow step_inference and goal_inference (4-way: "the most reasonable step of 'Solve an Algebraic
  Expression' is ...", and the converse; BIG-bench tags them common sense) -> 400 held-out questions of each
  as the ID tests, the rest (3,153) as training data;
* social_iqa (3-way social commonsense)   -> OOD: another kind of commonsense question, answer texts;
* strategyqa (yes/no)                     -> OOD: the BoolQ template, answers true/false;
* winowhy (is this reasoning correct?)    -> OOD: a two-option template like WinoGrande's, answers option1/option2.

The multiple-choice sets are in the cloze form lm-evaluation-harness scores (the question alone, the answer's
text as the continuation). The default trained on social_iqa once, in LLM-Adapters' answer1/answer2/answer3
form and in this one: SmolLM2-135M learned nothing from its 1,450 questions in any form tried, while these
wikiHow questions move clearly above zero-shot (benchmarks/RECIPES.md, "Commonsense default that learns"). The
binary OOD sets use answer words the model never trains on, as in the paper's Table 3 (trained on
multiple-choice tasks, tested on binary-answer tasks). BIG-bench task files carry a canary asking that they never
be used as pre-training data; fine-tuning a local adapter for evaluation is the use they were published for, and
nothing from them is copied into this repository.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from ...io import cache_dir, read_json, write_text
from .bigbench import bigbench_tasks

TEST_ROWS = 400  # questions of each multiple-choice task held out, with a fixed seed, as its test file
WIKIHOW = {"step_inference": "goal_step_wikihow/step_inference", "goal_inference": "goal_step_wikihow/goal_inference"}
SETS = ("train", *WIKIHOW, "social_iqa", "strategyqa", "winowhy")
# The cache folder's name changes with the files' content, so a cache built by an older version is never read.
CACHE = "commonsense-bigbench-wikihow"


def held_out(examples: list[dict]) -> tuple[list[dict], list[dict]]:
    """(test, train): the examples shuffled with a fixed seed, the first TEST_ROWS as the test file."""
    shuffled = list(examples)
    random.Random(0).shuffle(shuffled)
    return shuffled[:TEST_ROWS], shuffled[TEST_ROWS:]


def split_social_iqa(examples: list[dict]) -> tuple[list[dict], list[dict]]:
    """(test, rest) BIG-bench social_iqa examples: the 3-way ones (4 of 1,954 have two choices), held out."""
    return held_out([e for e in examples if len(e["target_scores"]) == 3])


def answer_text_row(example: dict) -> dict:
    """A BIG-bench multiple-choice example in the cloze form: the question, its choices' texts, the gold text."""
    choices = [c.strip() for c in example["target_scores"]]
    answer = choices[list(example["target_scores"].values()).index(1)]
    return {
        "instruction": f"Please choose the correct answer to the question: {example['input'].strip()}",
        "input": "",
        "choices": choices,
        "answer": answer,
        "output": f"the correct answer is {answer}",
    }


def _social_iqa(example: dict) -> dict:
    """social_iqa in LLM-Adapters' social_i_qa template (answers listed, the model answers answerK): the form the
    default used before; benchmarks/commonsense_formats.py compares it with the others."""
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


def build_rows(tasks: dict[str, Path]) -> dict[str, list[dict]]:
    """Every file's rows from the BIG-bench task files {name: task.json} (names as bigbench_tasks takes them)."""
    rows: dict[str, list[dict]] = {"train": []}
    for name, task in WIKIHOW.items():
        test, train = held_out([answer_text_row(e) for e in read_json(tasks[task])["examples"]])
        rows[name] = test
        rows["train"] += train
    random.Random(1).shuffle(rows["train"])  # the two tasks interleaved
    rows["social_iqa"] = [answer_text_row(e) for e in split_social_iqa(read_json(tasks["social_iqa"])["examples"])[0]]
    rows["strategyqa"] = [_strategyqa(e) for e in read_json(tasks["strategyqa"])["examples"]]
    rows["winowhy"] = [_winowhy(e) for e in read_json(tasks["winowhy"])["examples"]]
    return rows


def commonsense_files() -> dict[str, Path]:
    """{name: path} of SETS: LLM-Adapters json files in the cache, built once."""
    root = cache_dir(CACHE)
    paths = {name: root / f"{name}.json" for name in SETS}
    if all(p.exists() for p in paths.values()):
        return paths
    rows = build_rows(bigbench_tasks((*WIKIHOW.values(), "social_iqa", "strategyqa", "winowhy")))
    for name in SETS:
        _write(paths[name], rows[name])
    return paths
