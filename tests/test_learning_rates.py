"""One learning-rate table: train, compare and demo read it; compare's table and plot say what was tuned."""

from __future__ import annotations

from kradapter.learning_rates import default_lr, is_measured
from kradapter.specs import method_names
from kradapter.train.compare import _seed_caption, _untuned, parse_lr_map


def test_defaults_are_the_documented_ones():
    measured = {m: default_lr(m) for m in method_names() if is_measured(m)}
    assert measured == {"kradapter": 3e-2, "lora": 3e-3, "full": 3e-4, "randlora": 3e-4}
    assert default_lr("dora") == 1e-3 and not is_measured("dora") and is_measured("lora")


def test_compare_uses_the_table_and_marks_untuned_rates():
    assert parse_lr_map(None, ["kradapter", "lora"]) == {"kradapter": 3e-2, "lora": 3e-3}
    assert _untuned("lora", 3e-3) == " (default, untuned)"
    assert _untuned("lora", 1e-3) == " (set, untuned)"


def test_compare_plot_says_how_many_seeds():
    one = {"seeds": [0]}
    three = {"seeds": [0, 1, 2]}
    assert _seed_caption({"a": one, "b": one}) == "test-set groups (1 seed: no error bars)"
    assert _seed_caption({"a": three, "b": three}) == "test-set groups (mean ± std over 3 seeds)"
    assert _seed_caption({"a": one, "b": three}) == "test-set groups (mean ± std over 1-3 seeds)"
