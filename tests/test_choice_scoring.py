"""Multiple-choice log-likelihood scoring: exact against a plain per-sequence reference, batched and padded, on both
paths (one pass when choices differ in their last token only, one sequence per choice otherwise); choices parsing;
the commonsense task scored both ways; bad input refused before training."""

from __future__ import annotations

import json

import pytest
import torch

from kradapter.train.baselines import balanced_accuracy, set_baselines
from kradapter.train.runner import run
from kradapter.train.tasks.choice_scoring import as_classes, check_choices, choice_logprobs, pick, row_choices
from recipe_fixtures import check_per_example, commonsense_data, commonsense_rows, tiny_llama, train_args


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    path = tiny_llama(tmp_path_factory.mktemp("llama"))
    return path, AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def _reference(model, prompt, cont) -> float:
    """Sum of log p(cont[j] | prompt + cont[:j]) from one unpadded forward pass over prompt + cont."""
    ids = torch.tensor([prompt + cont])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
    return float(sum(logp[len(prompt) + j - 1, t] for j, t in enumerate(cont)))


def _gpt2():
    """Absolute position embeddings: a wrong position after padding or after the cached preamble shows."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(vocab_size=90, n_positions=64, n_embd=32, n_layer=2, n_head=4))


def _questions(vocab: int):
    g = torch.Generator().manual_seed(0)

    def ids(n):
        return torch.randint(6, vocab, (n,), generator=g).tolist()

    preamble, shared = ids(5), ids(3)  # every prompt starts with the preamble (reused from the cache)
    prompts = [preamble + ids(n) for n in (9, 1, 13, 7, 4, 11)]
    a, b = ids(2), ids(4)
    conts = [
        [shared + [10], shared + [11], shared + [12]],  # differ in the last token: the context pass scores all
        [a, b],  # different lengths, nothing shared
        [[20], [21]],  # single tokens
        [shared + a, shared + [30], shared + b],  # a shared part, then remainders of 2, 1 and 4 tokens
        [a, a + b],  # one choice is a prefix of the other
        [b[:1] + a, b[:1] + [31] + a],  # share one token, remainders of different lengths
    ]
    return prompts, conts


@pytest.mark.parametrize("which", ["llama", "gpt2"])
@pytest.mark.parametrize("batch_size", [1, 2, 64])
@pytest.mark.parametrize("reuse", [True, False])
def test_choice_logprobs_match_a_plain_forward_pass(llama, monkeypatch, which, batch_size, reuse):
    from kradapter.train.tasks import choice_scoring

    model = llama[1] if which == "llama" else _gpt2()
    if not reuse:  # the path for caches that cannot be extended after padding (sliding window, recurrent)
        monkeypatch.setattr(choice_scoring, "_reusable", lambda cache: False)
    prompts, conts = _questions(model.config.vocab_size)
    model.train()  # scoring must not depend on (or change) the mode
    got = choice_logprobs(model, prompts, conts, batch_size=batch_size, pad_id=0)
    assert model.training
    model.eval()
    for q, (p, cs) in enumerate(zip(prompts, conts)):
        for k, c in enumerate(cs):
            assert got[q][k] == pytest.approx(_reference(model, p, c), abs=1e-4), (q, k)
    model.train()


def test_one_question_and_prompts_without_a_common_beginning(llama):
    _, model = llama
    model.eval()
    assert choice_logprobs(model, [[7, 8, 9]], [[[10], [11, 12]]], 4, 0)[0] == pytest.approx(
        [_reference(model, [7, 8, 9], [10]), _reference(model, [7, 8, 9], [11, 12])], abs=1e-4
    )
    got = choice_logprobs(model, [[7, 8], [9]], [[[10], [11]], [[12, 13], [14]]], 4, 0)
    assert got[1] == pytest.approx([_reference(model, [9], [12, 13]), _reference(model, [9], [14])], abs=1e-4)
    with pytest.raises(ValueError, match="question 1: log-likelihood scoring needs a non-empty prompt"):
        choice_logprobs(model, [[7], []], [[[10], [11]], [[10], [11]]], 4, 0)


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
    for choices in (["x"], ["x", "y", "x"]):  # one choice, a repeated one: nothing to tell apart
        with pytest.raises(ValueError, match=r"f.json: row 0 offers choices .*at least two, none repeated"):
            check_choices([{"instruction": "Q?", "choices": choices, "answer": "x"}], "f.json")
    # generation scoring: a question may offer no choices, but one that does must offer its answer
    assert check_choices([{"instruction": "what?", "answer": "x"}], "f.json", required=False) == [None]
    with pytest.raises(ValueError, match=r"f.json: row 0 has answer 'z', not one of its choices"):
        check_choices([{"instruction": "Q?", "choices": ["x", "y"], "answer": "z"}], "f.json", required=False)
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
    check_per_example(tmp_path / "run", m)  # the chosen answer's correctness, per question


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


def test_answer_texts_count_as_positions_for_majority_and_balanced_accuracy():
    shared = [["answer1", "answer2"]] * 3
    assert as_classes(["answer2", "answer1", "answer2"], shared) == ["answer2", "answer1", "answer2"]
    texts = [["Rude", "Kind"], ["Go home", "Stay"], ["Sleep", "Eat"]]
    gold = as_classes(["Rude", "Go home", "Eat"], texts)
    assert gold == ["choice 1", "choice 1", "choice 2"]
    assert as_classes(["", "Stay", "Eat"], texts) == ["", "choice 2", "choice 2"]  # nothing extracted stays ""
    b = set_baselines(gold, [2, 2, 2])
    assert b["majority"] == pytest.approx(2 / 3) and b["majority_balanced"] == 0.5  # not 1/3 of unique texts
    always_first = as_classes(["Rude", "Go home", "Sleep"], texts)
    assert balanced_accuracy(always_first, gold) == 0.5


def test_commonsense_baselines_of_a_set_with_answer_texts(llama, tmp_path):
    from kradapter.train.tasks.commonsense import prepare

    offered = [["one", "two", "three"], ["two", "three", "one"], ["three", "one", "two"], ["one", "two", "three"]]
    rows = [
        {"instruction": "which is one ?", "choices": cs, "answer": a}
        for cs, a in zip(offered, ("one", "two", "three", "three"))
    ]
    (tmp_path / "texts.json").write_text(json.dumps(rows))
    data = commonsense_data(tmp_path)[:1] + [f"id:texts={tmp_path / 'texts.json'}"]
    prepared = prepare(train_args("commonsense", tmp_path / "run", model=llama[0], data=data))
    assert prepared.baselines["texts"]["majority"] == 0.75  # choice 1 in three rows (the text "three" in two)
    assert prepared.baselines["texts"]["chance"] == pytest.approx(1 / 3)
