"""The budget matcher: counts equal what PEFT creates, matches are minimal, the paper's 1024 x 768 numbers."""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model
from torch import nn
from transformers.pytorch_utils import Conv1D

import kradapter  # noqa: F401
from kradapter import budget
from kradapter.budget import METHODS, match_all, match_layer, peft_config_for, trainable_count
from kradapter.cli import main


def one_layer(d_out: int, d_in: int, conv1d: bool = False) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Module()
    model.fc = Conv1D(d_out, d_in) if conv1d else nn.Linear(d_in, d_out)
    return model


def peft_trainable(model: nn.Module, config) -> int:
    peft_model = get_peft_model(model, config)
    return sum(p.numel() for p in peft_model.parameters() if p.requires_grad)


def test_api_names():
    assert METHODS == ("kradapter", "lora", "dora", "randlora", "krona", "sinlora", "kronlora", "full")


def test_paper_numbers_at_1024_by_768():
    results = match_all(1024, 768)
    assert results["kradapter"]["trainable"] == 49_152
    assert results["lora"] == {"hparams": {"r": 28}, "trainable": 50_176, "budget": 49_152}
    assert results["sinlora"] == {"hparams": {"r": 28}, "trainable": 50_176, "budget": 49_152}
    for method, result in results.items():
        assert result["trainable"] >= 49_152, method


def test_cli_table(capsys):
    assert main(["budget", "1024", "768"]) == 0
    out = capsys.readouterr().out
    assert "budget 49,152" in out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert "49,152" in lines["kradapter"]
    assert "r=28" in lines["lora"] and "50,176" in lines["lora"]
    assert "r=28" in lines["sinlora"] and "50,176" in lines["sinlora"]
    assert set(METHODS) <= set(lines)


def test_cli_bad_method_is_one_line_error(capsys):
    assert main(["budget", "1024", "768", "--methods", "lora,bogus"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "bogus" in err and "kradapter, lora, dora" in err


# --- each count is what PEFT actually creates -------------------------------------------------------------------

SHAPES = [(24, 16), (12, 30), (20, 20)]
CASES = [
    ("kradapter", {"k1": "sqrt"}),
    ("kradapter", {"k1": 3}),
    ("lora", {"r": 1}),
    ("lora", {"r": 5}),
    ("dora", {"r": 2}),
    ("randlora", {"r": 1}),
    ("randlora", {"r": 3}),
    ("randlora", {"r": 7}),
    ("krona", {"decompose_factor": -1}),
    ("krona", {"decompose_factor": 2}),
    ("krona", {"decompose_factor": 4}),
    ("krona", {"decompose_factor": 4, "r": 1}),
    ("sinlora", {"r": 2}),
    ("kronlora", {"kron_shape": 2, "r": 1}),
    ("kronlora", {"kron_shape": 4, "r": 2}),
]


@pytest.mark.parametrize("d_out, d_in", SHAPES)
@pytest.mark.parametrize("method, hparams", CASES)
def test_count_equals_peft_parameters(method, hparams, d_out, d_in):
    expected = trainable_count(method, d_out, d_in, **hparams)
    model = one_layer(d_out, d_in)
    config = peft_config_for(method, model, ["fc"], **hparams)
    assert peft_trainable(model, config) == expected


def test_full_count_is_the_weight():
    assert trainable_count("full", 24, 16) == 24 * 16
    assert match_layer("full", 24, 16)["trainable"] == 384
    assert peft_config_for("full", one_layer(24, 16), ["fc"]) is None


@pytest.mark.parametrize("conv1d", [False, True])
@pytest.mark.parametrize("method", ["kradapter", "lora", "dora", "randlora", "sinlora", "kronlora"])
def test_conv1d_counts(method, conv1d):
    model = one_layer(24, 16, conv1d=conv1d)
    config = peft_config_for(method, model, ["fc"], budget=200)
    assert peft_trainable(model, config) == match_layer(method, 24, 16, budget=200)["trainable"]


def test_krona_is_lokr_with_full_kronecker_factors():
    model = one_layer(1024, 768)
    config = peft_config_for("krona", model, ["fc"])
    assert config.decompose_both is False and config.decompose_factor == 4 and config.alpha == config.r == 256
    layer = get_peft_model(model, config).base_model.model.fc
    assert tuple(layer.lokr_w1["default"].shape) == (4, 4)
    assert tuple(layer.lokr_w2["default"].shape) == (256, 192)
    for name in ("lokr_w1_a", "lokr_w1_b", "lokr_w2_a", "lokr_w2_b"):
        assert "default" not in getattr(layer, name), name  # no low-rank factors anywhere
    assert layer.scaling["default"] == 1.0
    assert sum(p.numel() for p in layer.parameters() if p.requires_grad) == 49_168


def test_full_finetune_unfreezes_only_target_weights():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 5))
    assert budget.full_finetune_(model, ["0"]) == 48 == match_layer("full", 8, 6)["trainable"]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["0.weight"]


def test_all_linear_targets_like_peft():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50, n_positions=16))
    layers = budget.target_layers(gpt2, "all-linear")
    assert set(layers) == {
        "transformer.h.0.attn.c_attn",
        "transformer.h.0.attn.c_proj",
        "transformer.h.0.mlp.c_fc",
        "transformer.h.0.mlp.c_proj",
    }  # no lm_head
    assert layers["transformer.h.0.attn.c_attn"] == (48, 16)  # Conv1D: (d_out, d_in) read from the transposed weight
    config = peft_config_for("sinlora", gpt2, "all-linear")
    assert peft_trainable(gpt2, config) == budget.match_model("sinlora", gpt2, "all-linear")["trainable"]


def test_krona_refuses_conv1d():
    with pytest.raises(ValueError, match="LoKr.*Conv1D.*fc"):
        peft_config_for("krona", one_layer(24, 16, conv1d=True), ["fc"])


# --- matches are minimal -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("d_out, d_in", [(1024, 768), (768, 1024), (96, 40), (50, 50)])
@pytest.mark.parametrize("method", [m for m in METHODS if m != "full"])
def test_match_is_smallest_count_at_or_above_budget(method, d_out, d_in):
    result = match_layer(method, d_out, d_in)
    target = trainable_count("kradapter", d_out, d_in)
    assert result["budget"] == target
    assert result["trainable"] >= target
    assert trainable_count(method, d_out, d_in, **result["hparams"]) == result["trainable"]
    if method in ("lora", "dora", "sinlora"):
        assert trainable_count(method, d_out, d_in, r=result["hparams"]["r"] - 1) < target
    if method == "randlora":  # brute force over every rank
        counts = [trainable_count(method, d_out, d_in, r=r) for r in range(1, min(d_out, d_in) + 1)]
        assert result["trainable"] == min(c for c in counts if c >= target)


def test_explicit_budget_and_fixed_hyperparameters():
    assert match_layer("lora", 100, 60, budget=1000) == {"hparams": {"r": 7}, "trainable": 1120, "budget": 1000}
    result = match_layer("kronlora", 1024, 768, kron_shape=[2, 2])
    assert result["hparams"]["kron_shape"] == [2, 2] and result["trainable"] >= 49_152
    assert match_layer("lora", 100, 60, r=3)["trainable"] == 480  # everything fixed: reported, not matched


def test_model_total_is_matched_over_mixed_layers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(24, 32), nn.ReLU(), nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 40))
    targets = ["0", "2", "4"]
    kr_total = sum(trainable_count("kradapter", o, i) for o, i in [(32, 24), (24, 32), (40, 24)])
    kr_config = peft_config_for("kradapter", model, targets)
    assert peft_trainable(model, kr_config) == kr_total
    model = nn.Sequential(nn.Linear(24, 32), nn.ReLU(), nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 40))
    for method in ("lora", "dora", "sinlora", "randlora", "kronlora", "krona"):
        model_copy = nn.Sequential(nn.Linear(24, 32), nn.ReLU(), nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 40))
        matched = budget.match_model(method, model_copy, targets)
        config = peft_config_for(method, model_copy, targets, **({"lora_alpha": 16} if method == "lora" else {}))
        assert matched["trainable"] >= kr_total
        assert peft_trainable(model_copy, config) == matched["trainable"], method
    lora_r = budget.match_model("lora", model, targets)["hparams"]["r"]
    assert sum((lora_r - 1) * (o + i) for o, i in [(32, 24), (24, 32), (40, 24)]) < kr_total


def test_overrides_pass_through():
    model = one_layer(24, 16)
    config = peft_config_for("lora", model, ["fc"], lora_alpha=32, lora_dropout=0.1)
    assert (
        config.lora_alpha == 32
        and config.lora_dropout == 0.1
        and config.r == match_layer("lora", 24, 16)["hparams"]["r"]
    )
    config = peft_config_for("sinlora", model, ["fc"], freq=7.0)
    assert config.freq == 7.0
    config = peft_config_for("dora", model, ["fc"])
    assert config.use_dora is True


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: trainable_count("adalora", 4, 4), "unknown method 'adalora'; valid methods: kradapter, lora"),
        (lambda: match_layer("lora", 0, 4), "d_out must be an int >= 1"),
        (lambda: match_layer("lora", 4, 4, budget=-3), "budget must be an int >= 1"),
        (lambda: trainable_count("lora", 4, 4, k1=2), r"lora has no hyperparameter\(s\) \['k1'\]"),
        (lambda: match_layer("randlora", 8, 8, budget=10_000), "randlora cannot reach a budget of 10,000"),
        (lambda: match_all(8, 8, methods=["lora", "nope"]), "unknown method 'nope'"),
        (lambda: peft_config_for("bogus", one_layer(4, 4), ["fc"]), "unknown method 'bogus'"),
        (lambda: peft_config_for("lora", one_layer(4, 4), ["nothere"]), "no module of the model matches"),
        (
            lambda: peft_config_for("lora", one_layer(4, 4), ["fc"], lora_alfa=2),
            r"LoraConfig has no field\(s\) \['lora_alfa'\]",
        ),
        (lambda: peft_config_for("sinlora", nn.Sequential(nn.Conv2d(3, 3, 3)), ["0"]), "target module '0' is a Conv2d"),
        (
            lambda: peft_config_for("lora", nn.Sequential(nn.Conv2d(4, 4, 3, groups=2)), ["0"]),
            "'0' is a Conv2d with groups > 1; lora is matched on",
        ),
    ],
)
def test_bad_input_one_clear_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()
