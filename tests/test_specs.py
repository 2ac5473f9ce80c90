"""The method-spec registry: every tool's methods, bounded budget searches equal to a plain scan, one Delta W."""

from __future__ import annotations

import time
from collections import Counter

import pytest
import torch
from peft import LoraConfig, get_peft_model
from peft.tuners.lokr.layer import factorization
from torch import nn

import kradapter  # noqa: F401
from kradapter import specs
from kradapter.approx import methods as approx_methods
from kradapter.budget import METHODS, match_layer, match_model
from kradapter.specs.peft_methods import lokr_factorization
from kradapter.train.deltas import adapter_deltas


def test_builtin_registry_lists_every_method_in_table_order():
    assert specs.method_names()[: len(METHODS)] == METHODS
    for name in METHODS:
        spec = specs.get_spec(name)
        assert spec.name == name and spec.summary
        assert spec.knob is None or spec.knob in spec.hparams
    assert [m for m in METHODS if specs.get_spec(m).flattened] == ["kradapter", "lora", "dora", "full"]
    assert [m for m in METHODS if specs.get_spec(m).grouped] == ["kradapter", "full"]
    assert [m for m in METHODS if specs.get_spec(m).multihead_attention] == ["kradapter", "lora"]


def test_unknown_and_duplicate_names_are_one_clear_error():
    with pytest.raises(ValueError, match="unknown method 'nope'; valid methods: kradapter, lora"):
        specs.get_spec("nope")

    class Other(specs.MethodSpec):
        name = "lora"

    with pytest.raises(ValueError, match="'lora' is already registered"):
        specs.register_spec(Other())

    class BadKnob(specs.MethodSpec):
        name = "badknob"
        hparams = {"r": 1}
        knob = "rank"

    with pytest.raises(ValueError, match="knob 'rank' is not one of its hparams"):
        specs.register_spec(BadKnob())


# --- bounded searches equal the plain scan over every knob value ---------------------------------------------------


def scan(method: str, shapes: list[tuple[int, int]], budget: int, knob_values, extra=lambda k: {}):
    """The plain search: every knob value in order, the first with the smallest total >= budget."""
    spec = specs.get_spec(method)
    best = None
    for k in knob_values:
        h = {spec.knob: k, **extra(k)}
        try:
            total = spec.total(Counter(shapes), spec.complete(h))
        except ValueError:
            continue
        if total >= budget and (best is None or total < best[1]):
            best = (h, total)
    return best


SHAPE_SETS = [[(24, 16)], [(12, 30)], [(97, 101)], [(64, 64), (64, 64), (16, 64)], [(360, 720), (7, 13)], [(128, 8)]]


@pytest.mark.parametrize("shapes", SHAPE_SETS)
@pytest.mark.parametrize("budget", [50, 700, 3_000, 20_000])
def test_closed_form_searches_equal_a_full_scan(shapes, budget):
    counter = Counter(shapes)
    side_max = max(max(s) for s in shapes)
    cases = {
        "kradapter": range(1, min(max(s) for s in shapes) + 1),
        "lora": range(1, side_max + 1),
        "dora": range(1, side_max + 1),
        "sinlora": range(1, side_max + 1),
        "randlora": range(1, max(min(s) for s in shapes) + 1),
    }
    for method, values in cases.items():
        expected = scan(method, shapes, budget, values)
        try:
            got = specs.get_spec(method).search(counter, budget, {})
        except specs.OutOfReach:
            got = None
        if method == "kradapter" and got and got[0] == {"k1": "sqrt"}:
            got = ({"k1": expected[0]["k1"]}, got[1])  # the default budget keeps the budget word
        assert got == expected, (method, shapes, budget)
    full_r = lambda f: {"r": specs.peft_methods.krona_full_r(list(counter), f)}  # noqa: E731
    expected = scan("krona", shapes, budget, [-1, *range(1, side_max + 1)], full_r)
    try:
        got = specs.get_spec("krona").search(counter, budget, {})
    except specs.OutOfReach:
        got = None
    assert got == expected, (shapes, budget)


def test_lokr_factorization_is_peft_s():
    for dim in [*range(1, 200), 720, 1024, 4096, 9973, 10_000]:
        for factor in [-1, 0, -3, *range(1, 64), dim - 1, dim, dim + 1]:
            assert lokr_factorization(dim, factor) == factorization(dim, factor), (dim, factor)


@pytest.mark.parametrize("shape", [(1_000_000, 1_000_000), (1_000_000, 999_983), (999_983, 999_979), (720_720, 10**6)])
def test_any_shape_up_to_1e6_answers_in_under_a_second(shape):
    for budget in (None, 10**7, 5 * 10**9):
        start = time.perf_counter()
        for method in METHODS:
            try:
                match_layer(method, *shape, budget=budget)
            except ValueError:
                pass  # out of reach is an answer too
        assert time.perf_counter() - start < 1.0, (shape, budget)


# --- one Delta W: the change the layer applies ---------------------------------------------------------------------


def _dora_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 10))
    model = get_peft_model(model, LoraConfig(target_modules=["0"], r=3, use_dora=True, init_lora_weights=False))
    layer = model.get_submodule("base_model.model.0")
    with torch.no_grad():  # a trained magnitude: DoRA's update is then not W0-free (at init it equals B A)
        layer.lora_magnitude_vector["default"].weight.mul_(1 + torch.rand(10))
    return model, layer


def test_dora_delta_is_merged_weight_minus_w0_everywhere():
    model, layer = _dora_model()
    w0 = layer.get_base_layer().weight.detach().clone()
    x = torch.randn(5, 12)
    expected = model(x) - nn.functional.linear(x, w0, layer.get_base_layer().bias)
    spec_delta = specs.get_spec("dora").delta(layer, "default")
    assert torch.allclose(x @ spec_delta.T, expected, atol=1e-5)  # what the layer adds to W0 x
    model.merge_adapter()
    assert torch.allclose(spec_delta, layer.get_base_layer().weight - w0, atol=1e-6)
    model.unmerge_adapter()
    # the spectral report and the approximation benchmark read the same function
    assert torch.allclose(adapter_deltas(model)["0"], spec_delta.detach())
    assert not torch.allclose(spec_delta, layer.get_delta_weight("default"), atol=1e-3)  # not B A scaling


def test_approx_build_uses_the_spec_delta_and_leaves_the_global_rng_alone():
    w0 = torch.randn(10, 12)
    state = torch.get_rng_state()
    adapted = approx_methods.build("dora", w0, seed=0)
    assert torch.equal(torch.get_rng_state(), state)
    layer = adapted.model.get_submodule("base_model.model.layer")
    assert torch.allclose(adapted.delta(), specs.get_spec("dora").delta(layer, "default"))


def test_conv2d_targets_match_on_the_flattened_kernel_with_peft_s_counts():
    model = nn.Sequential(nn.Conv2d(4, 6, 3), nn.Conv2d(6, 8, 1))
    for method in ("kradapter", "lora", "dora"):
        matched = match_model(method, model, ["0", "1"])
        assert matched["layers"] == {"0": (6, 36), "1": (8, 6)}
        config = kradapter.budget.peft_config_for(method, model, ["0", "1"])
        peft_model = get_peft_model(nn.Sequential(nn.Conv2d(4, 6, 3), nn.Conv2d(6, 8, 1)), config)
        assert sum(p.numel() for p in peft_model.parameters() if p.requires_grad) == matched["trainable"]
    assert kradapter.budget.peft_config_for("lora", model, ["0", "1"]).lora_alpha == 8  # PEFT's, as on text
