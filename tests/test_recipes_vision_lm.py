"""Commonsense (tiny Llama), image (tiny ResNet, Conv2d targets) and CLIP (tiny CLIPModel) recipes end to end."""

from __future__ import annotations

import json

import pytest
import torch

from kradapter.train.runner import run
from recipe_fixtures import (
    check_per_example,
    commonsense_data,
    image_data,
    tiny_clip,
    tiny_llama,
    tiny_resnet,
    train_args,
)


def test_answer_extraction_follows_llm_adapters():
    from kradapter.train.tasks.commonsense import answer_pattern, extract_answer

    multi = answer_pattern(["answer1", "answer3"])
    assert multi.pattern == "answer1|answer2|answer3|answer4|answer5"  # LLM-Adapters searches all five
    assert extract_answer("the correct answer is answer2 not answer1", multi) == "answer2"
    assert extract_answer("I think Answer2", multi) == ""  # case-sensitive, as the benchmark
    assert extract_answer("the correct answer is true", answer_pattern(["true", "false"])) == "true"
    assert answer_pattern(["option1", "option2"]).pattern == "option1|option2"
    assert answer_pattern(["ending1"]).pattern == "ending1|ending2|ending3|ending4"
    assert extract_answer("B) Paris", answer_pattern(["Paris", "Rome"])) == "Paris"


def test_generation_searches_a_rows_own_answer_texts_longest_first():
    from kradapter.train.tasks.commonsense import choice_pattern, extract_answer

    own = choice_pattern(["Go home", "Go home and rest", "Stay"])
    assert extract_answer("the correct answer is Go home and rest", own) == "Go home and rest"
    assert extract_answer("the correct answer is Go home.", own) == "Go home"
    assert extract_answer("the correct answer is a+b (c)", choice_pattern(["a+b (c)", "d"])) == "a+b (c)"
    assert extract_answer("no answer here", own) == ""


def test_generation_scores_rows_with_answer_texts_by_their_own_choices(tmp_path):
    """Rows with a `choices` column (answer texts): each response is searched for its own row's choices, so a
    word that is another row's answer does not count (a set-wide pattern would pick "three" for row 0)."""
    from transformers import AutoTokenizer

    from kradapter.train.tasks.commonsense import prepare

    model = tiny_llama(tmp_path)
    rows = [
        {"instruction": "which is one ?", "choices": ["one", "two"], "answer": "one"},
        {"instruction": "which is three ?", "choices": ["three", "two"], "answer": "three"},
        {"instruction": "is it yes ? Answer format: true/false", "answer": "true"},  # choices from its format line
    ]
    (tmp_path / "texts.json").write_text(json.dumps(rows))
    data = commonsense_data(tmp_path)[:1] + [f"id:texts={tmp_path / 'texts.json'}"]
    prepared = prepare(train_args("commonsense", tmp_path / "run", model=model, data=data, scoring="generate"))
    assert prepared.tests["texts"]["choices"] == [["one", "two"], ["three", "two"], ["true", "false"]]
    assert prepared.baselines["texts"]["chance"] == 0.5
    reply = AutoTokenizer.from_pretrained(model)("the correct answer is three one", add_special_tokens=False)

    class Replies(torch.nn.Module):  # answers every prompt with the same sentence
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def generate(self, input_ids, **kwargs):
            return torch.cat([input_ids, torch.tensor([reply["input_ids"]]).expand(len(input_ids), -1)], 1)

    scores = prepared.evaluate(Replies(), prepared.tests["texts"])
    assert scores["accuracy"] == pytest.approx(2 / 3)  # no "true"
    # per-example correctness in the test order, though generation ran longest prompt first (the last row here)
    lengths = [len(ids) for ids in prepared.tests["texts"]["input_ids"]]
    assert max(range(3), key=lambda i: lengths[i]) == 2 and scores["correct"] == [1, 1, 0]


def test_generation_options_refuse_values_that_cannot_run(capsys):
    from kradapter.cli import main

    for flag, value in (("--num-beams", "0"), ("--max-new-tokens", "0"), ("--cutoff-len", "1")):
        with pytest.raises(SystemExit):
            main(["train", "--task", "commonsense", flag, value])
        assert f"{flag}: must be an integer" in capsys.readouterr().err


def test_commonsense_end_to_end_with_zero_shot_and_groups(tmp_path):
    model = tiny_llama(tmp_path)
    data = commonsense_data(tmp_path) + [f"nid:again={tmp_path / 'cs_test.json'}"]
    m = run(
        train_args(
            "commonsense",
            tmp_path / "run",
            model=model,
            data=data,
            max_steps=3,
            max_new_tokens=6,
            batch_size=4,
            scoring="generate",
        )
    )
    assert set(m["tests"]["choice"]["extra"]) == {"balanced_accuracy"}  # generation has no acc_norm
    assert set(m["tests"]) == {"choice", "yesno", "again"}
    assert {t["group"] for t in m["tests"].values()} == {"ID", "OOD", "NID"}
    assert set(m["groups"]) == {"ID", "NID", "OOD"}
    zero = m["zero_shot"]
    assert set(zero["tests"]) == {"choice", "yesno", "again"} and set(zero["groups"]) == {"ID", "NID", "OOD"}
    assert "r_gen" in m  # None when the ID gain over zero-shot is exactly 0
    assert sorted(m["spectral"]) == sorted(
        f"model.layers.{i}.self_attn.{p}" for i in (0, 1) for p in ("k_proj", "v_proj")
    )
    assert (tmp_path / "run" / "zero_shot.json").exists()
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["zero_shot"] == zero
    check_per_example(tmp_path / "run", m)  # generated answers: correctness back in test order
    key = json.loads((tmp_path / "run" / "run.json").read_text())["key"]
    assert key["generation"] == {"num_beams": 4, "max_new_tokens": 6}
    greedy = train_args(
        "commonsense", tmp_path / "run", model=model, data=data, max_steps=3, max_new_tokens=6, batch_size=4
    )
    greedy.scoring, greedy.num_beams = "generate", 1
    with pytest.raises(ValueError, match="holds a different run .generation"):
        run(greedy)  # answers generated another way are not the same run


def test_commonsense_training_masks_the_prompt(tmp_path):
    from kradapter.train.tasks.commonsense import prepare

    model = tiny_llama(tmp_path)
    prepared = prepare(train_args("commonsense", tmp_path / "run", model=model, data=commonsense_data(tmp_path)))
    row = prepared.train[0]
    labels = row["labels"]
    n_prompt = sum(1 for v in labels if v == -100)
    assert 0 < n_prompt < len(labels)
    batch = prepared.collator([prepared.train[0], prepared.train[1]])
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape


def test_image_with_conv_targets_and_frozen_batchnorm(tmp_path):
    model = tiny_resnet(tmp_path)
    out = tmp_path / "run"
    m = run(train_args("image", out, model=model, data=image_data(tmp_path), max_steps=3, image_size=16, val_size=3))
    assert m["targets"] and all("convolution" in t or "shortcut" in t for t in m["targets"])
    assert not any("embedder" in t for t in m["targets"])  # the stem (3 input channels) is left alone
    assert len(m["spectral"]) == len(m["targets"])
    assert m["tests"]["dim"]["group"] == "OOD" and m["sizes"]["dim"] == 6
    check_per_example(out, m)
    # BatchNorm statistics did not move: the saved adapter alone reproduces the fine-tuned model
    from kradapter.train.tasks import load_model

    fresh = load_model("image", model, num_labels=3)
    from peft import PeftModel

    loaded = PeftModel.from_pretrained(load_model("image", model, num_labels=3), str(out))
    bn = {n: b for n, b in fresh.named_buffers() if "running_mean" in n}
    for n, b in loaded.named_buffers():
        if "running_mean" in n:
            key = n.replace("base_model.model.", "")
            assert torch.equal(b, bn[key])


def test_image_label_outside_training_classes_is_refused(tmp_path, capsys):
    from kradapter.cli import main
    from recipe_fixtures import image_folder

    model = tiny_resnet(tmp_path)
    data = image_data(tmp_path)
    odd = image_folder(tmp_path / "odd", ["circle", "hexagon"], 2, 3)
    assert (
        main(
            [
                "train",
                "--task",
                "image",
                "--model",
                model,
                "--data",
                data[0],
                "--data",
                f"test={odd}",
                "--output-dir",
                str(tmp_path / "run"),
                "--image-size",
                "16",
                "--quiet",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert str(odd) in err and "'hexagon'" in err and "circle, square, triangle" in err


def test_clip_k_shot_both_towers_zero_shot_and_r_gen(tmp_path):
    model = tiny_clip(tmp_path)
    out = tmp_path / "run"
    m = run(
        train_args(
            "clip", out, model=model, data=image_data(tmp_path), max_steps=3, shots=2, val_size=3, towers="vision,text"
        )
    )
    assert m["sizes"]["train"] == 6  # 2 shots x 3 classes
    towers = {t.split(".")[1] for t in m["targets"]}
    assert towers == {"vision_model", "text_model"}
    assert all(t.endswith(("k_proj", "v_proj")) for t in m["targets"])
    assert m["zero_shot"] is not None and set(m["zero_shot"]["groups"]) == {"ID", "OOD"}
    zs = m["zero_shot"]["groups"]
    if m["r_gen"]["mean"] is not None:  # r_gen = OOD gain / ID gain over zero-shot
        g = m["groups"]
        expected = (g["OOD"]["mean"] - zs["OOD"]) / (g["ID"]["mean"] - zs["ID"])
        assert m["r_gen"]["mean"] == pytest.approx(expected)
    vision_only = run(
        train_args(
            "clip",
            tmp_path / "vision",
            model=model,
            data=image_data(tmp_path),
            max_steps=1,
            shots=1,
            val_size=3,
            towers="vision",
        )
    )
    assert {t.split(".")[1] for t in vision_only["targets"]} == {"vision_model"}
    from kradapter.train.report import spectral_report

    assert set(spectral_report(out)["spectral"]) == set(m["spectral"])


def test_pointwise_conv_subclasses_become_plain_and_lora_can_adapt_them():
    from torch import nn

    from kradapter.train.methods import apply_method
    from kradapter.train.tasks.image import default_conv_targets, plain_pointwise_convs

    class PaddedConv(nn.Conv2d):  # like EfficientNet's TF-style 'same' convs: needs an extra constructor argument
        def __init__(self, cin, cout, k, image_size):
            super().__init__(cin, cout, k)
            self.pad = nn.ZeroPad2d(k // 2)

        def forward(self, x):
            return super().forward(self.pad(x))

    torch.manual_seed(0)
    net = nn.Sequential(PaddedConv(3, 8, 3, 16), PaddedConv(8, 8, 1, 16), nn.ReLU(), PaddedConv(8, 4, 1, 16))
    x = torch.randn(2, 3, 8, 8)
    before = net(x)
    plain_pointwise_convs(net)
    assert torch.equal(net(x), before)
    assert type(net[0]) is PaddedConv and type(net[1]) is nn.Conv2d and type(net[3]) is nn.Conv2d
    assert default_conv_targets(net) == ["1", "3"]  # the 3-channel stem is left alone
    lora, _ = apply_method(net, "lora", ["1", "3"])
    assert lora(x).shape == before.shape
