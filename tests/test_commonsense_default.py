"""The commonsense default's files, built from BIG-bench task files (fakes in BIG-bench's format here, since the
real sdist is a 358 MB download): held-out test questions never in training, every multiple-choice row scorable
by log-likelihood, built once and then read from the cache, and the task's default data wired to them."""

from __future__ import annotations

import json
import random

import pytest

from kradapter.train.defaults import commonsense
from kradapter.train.tasks.choice_scoring import check_choices
from recipe_fixtures import tiny_llama, train_args


def _multiple_choice(name: str, n: int, k: int) -> dict:
    rng = random.Random(name)
    examples = []
    for i in range(n):
        gold = rng.randrange(k)
        examples.append(
            {
                "input": f"{name} question {i} ",
                "target_scores": {f" {name} choice {i}.{j} ": int(j == gold) for j in range(k)},
            }
        )
    return {"examples": examples}


@pytest.fixture
def fake_bigbench(tmp_path, monkeypatch):
    """bigbench_tasks replaced by small task files in BIG-bench's format; the cache in tmp_path."""
    monkeypatch.setenv("KRADAPTER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(commonsense, "TEST_ROWS", 5)
    siqa = _multiple_choice("siqa", 14, 3)
    siqa["examples"][0]["target_scores"] = {"yes": 1, "no": 0}  # a 2-way question: left out
    tasks = {
        "goal_step_wikihow/step_inference": _multiple_choice("step", 12, 4),
        "goal_step_wikihow/goal_inference": _multiple_choice("goal", 9, 4),
        "social_iqa": siqa,
        "strategyqa": {"examples": [{"input": f"q{i}", "target_scores": {"Yes": i % 2, "No": 1 - i % 2}} for i in range(6)]},
        "winowhy": {"examples": [{"input": f"r{i}", "target_scores": {"correct": i % 2, "incorrect": 1 - i % 2}} for i in range(4)]},
    }  # fmt: skip
    paths = {}
    for name, task in tasks.items():
        paths[name] = tmp_path / "bigbench" / name / "task.json"
        paths[name].parent.mkdir(parents=True)
        paths[name].write_text(json.dumps(task))
    calls = []

    def fake(names):
        calls.append(names)
        return {n: paths[n] for n in names}

    monkeypatch.setattr(commonsense, "bigbench_tasks", fake)
    return calls


def _load(path):
    return json.loads(path.read_text())


def test_files_hold_out_test_questions_and_are_scorable(fake_bigbench):
    files = commonsense.commonsense_files()
    assert set(files) == set(commonsense.SETS)
    rows = {name: _load(p) for name, p in files.items()}
    assert [len(rows[n]) for n in commonsense.SETS] == [(12 - 5) + (9 - 5), 5, 5, 5, 6, 4]
    train_questions = {r["instruction"] for r in rows["train"]}
    for name in ("step_inference", "goal_inference"):
        assert not train_questions & {r["instruction"] for r in rows[name]}  # held out means never trained on
    assert {r["instruction"].split(": ")[1].split()[0] for r in rows["train"]} == {"step", "goal"}
    for name in ("train", "step_inference", "goal_inference", "social_iqa"):
        check_choices(rows[name], name)  # every row's gold answer is among its own choices
        assert all(r["output"] == f"the correct answer is {r['answer']}" for r in rows[name])
        assert all(c == c.strip() for r in rows[name] for c in r["choices"])
    assert all(len(r["choices"]) == 3 for r in rows["social_iqa"])  # the 2-way question is not among them
    assert [r["answer"] for r in rows["strategyqa"]] == ["false", "true"] * 3
    assert [r["answer"] for r in rows["winowhy"]] == ["option2", "option1"] * 2
    check_choices(rows["strategyqa"], "strategyqa")  # answer words from the "Answer format:" line
    check_choices(rows["winowhy"], "winowhy")


def test_files_are_built_once_and_deterministic(fake_bigbench, tmp_path, monkeypatch):
    first = {n: p.read_bytes() for n, p in commonsense.commonsense_files().items()}
    assert len(fake_bigbench) == 1
    commonsense.commonsense_files()
    assert len(fake_bigbench) == 1  # read from the cache, not rebuilt
    monkeypatch.setenv("KRADAPTER_CACHE", str(tmp_path / "other-cache"))
    again = {n: p.read_bytes() for n, p in commonsense.commonsense_files().items()}
    assert again == first


def test_task_default_data_is_these_files(fake_bigbench, tmp_path):
    from kradapter.train.tasks import commonsense as task

    args = train_args("commonsense", tmp_path / "out", model=tiny_llama(tmp_path / "llama"), data=[], val_size=2)
    prepared = task.prepare(args)
    assert prepared.groups == {
        "step_inference": "ID",
        "goal_inference": "ID",
        "social_iqa": "OOD",
        "strategyqa": "OOD",
        "winowhy": "OOD",
    }
    assert prepared.sizes["train"] == (12 - 5) + (9 - 5) - 2
    assert prepared.defaults["max_steps"] == 150
    assert prepared.tests["step_inference"]["choices"][0][0].startswith("step choice")
    assert prepared.baselines["step_inference"]["chance"] == pytest.approx(0.25)
