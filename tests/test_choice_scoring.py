"""Multiple-choice log-likelihood scoring: exact against a plain per-sequence reference, batched and padded, on both
paths (one pass when choices differ in their last token only, one sequence per choice otherwise); choices parsing;
the commonsense task scored both ways; bad input refused before training."""

from __future__ import annotations

import json

import pytest
import torch

from kradapter.train.runner import run
from kradapter.train.tasks.choice_scoring import check_choices, choice_logprobs, pick, row_choices
from recipe_fixtures import commonsense_data, commonsense_rows, tiny_llama, train_args


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    path = tiny_llama(tmp_path_factory.mktemp("llama"))
    return path, AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def _reference(model, prompt, cont) -> float:
    """Sum of log p(cont[j] | prompt + cont[:j]) from one unpadded forward pass."""
    ids = torch.tensor([prompt + cont])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
    return float(sum(logp[len(prompt) + j - 1, t] for j, t in enumerate(cont)))


def test_choice_logprobs_match_a_plain_forward_pass(llama):
    _, model = llama
    g = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size

    def ids(n):
        return torch.randint(6, vocab, (n,), generator=g).tolist()

    prompts = [ids(n) for n in (9, 4, 13, 7)]
    shared = ids(3)
    conts = [
        [shared + [10], shared + [11], shared + [12]],  # differ in the last token: one pass
        [ids(2), ids(5)],  # different lengths: one sequence each
        [[20], [21]],  # single-token choices
        [shared + ids(2), shared + [30]],  # share a prefix but not only the last token
    ]
    model.train()  # scoring must not depend on (or change) the mode
    got = choice_logprobs(model, prompts, conts, batch_size=2, pad_id=0)
    assert model.training
    for q, (p, cs) in enumerate(zip(prompts, conts)):
        for k, c in enumerate(cs):
            assert got[q][k] == pytest.approx(_reference(model.eval(), p, c), abs=1e-4)
    model.train()


def test_choices_come_from_a_column_or_the_answer_format_line():
    assert row_choices({"instruction": "Q? Answer format: answer1/answer2/answer3"}) == [
        "answer1",
        "answer2",
        "answer3",
    ]
    assert row_choices({"instruction": "Answer format: a/b\n\nthen Answer format: true/false"}) == ["true", "false"]
    assert row_choices({"instruction": "no format", "choices": ["x", "y"]}) == ["x", "y"]
    assert row_choices({"instruction": "no format here"}) is None
    with pytest.raises(ValueError, match=r"f.json: row 1 has no choices"):
        check_choices(
            [
                {"instruction": "Answer format: true/false", "answer": "true"},
                {"instruction": "what?", "answer": "true"},
            ],
            "f.json",
        )
    with pytest.raises(ValueError, match=r"f.json: row 0 has answer 'maybe', not one of its choices"):
        check_choices([{"instruction": "Answer format: true/false", "answer": "maybe"}], "f.json")
    # acc picks the largest sum; acc_norm the largest sum per character of continuation
    acc, norm = pick([[-4.0, -6.0]], [["a", "b"]], [["x" * 2, "x" * 10]])
    assert acc == ["a"] and norm == ["b"]


def test_commonsense_loglik_default_reports_acc_norm_balanced_and_baselines(llama, tmp_path):
    path, _ = llama
    data = commonsense_data(tmp_path)
    m = run(train_args("commonsense", tmp_path / "run", model=path, data=data, max_steps=2, batch_size=4))
    rows = {"choice": commonsense_rows(10, 1, "choice"), "yesno": commonsense_rows(10, 2, "bool")}
    for name, t in m["tests"].items():
        assert set(t["extra"]) == {"acc_norm", "balanced_accuracy"}
        gold = [r["answer"] for r in rows[name]]
        assert t["baseline"]["majority"] == pytest.approx(max(gold.count(a) for a in set(gold)) / len(gold))
        assert t["baseline"]["chance"] == pytest.approx(1 / 3 if name == "choice" else 1 / 2)
        assert set(m["zero_shot"]["extra"][name]) == {"acc_norm", "balanced_accuracy"}
    assert json.loads((tmp_path / "run" / "run.json").read_text())["key"]["scoring"] == "loglik"
    assert "acc_norm" in (tmp_path / "run" / "summary.txt").read_text()


def test_loglik_needs_choices_and_fails_before_training(llama, tmp_path, capsys):
    from kradapter.cli import main

    path, _ = llama
    data = commonsense_data(tmp_path)
    bad = tmp_path / "bad.json"
    rows = commonsense_rows(4, 3, "bool")
    rows[2]["instruction"] = "is it yes ?"  # no answer format, no choices column
    bad.write_text(json.dumps(rows))
    argv = ["train", "--task", "commonsense", "--model", path, "--output-dir", str(tmp_path / "out"), "--quiet"]
    for d in data + [f"ood:bad={bad}"]:
        argv += ["--data", d]
    assert main(argv) == 2
    assert f"{bad}: row 2 has no choices to score by log-likelihood" in capsys.readouterr().err
    assert not (tmp_path / "out" / "run.json").exists() and not list((tmp_path / "out").glob("seeds/*"))
    assert main(argv + ["--scoring", "exact"]) == 2
    assert "--scoring 'exact': task 'commonsense' supports loglik, generate" in capsys.readouterr().err
