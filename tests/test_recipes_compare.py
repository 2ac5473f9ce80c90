"""`kradapter compare`: methods in their own processes, then the table, markdown, JSON and plot."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kradapter.cli import main
from recipe_fixtures import text_data, tiny_bert


def test_compare_two_methods_per_method_lr(tmp_path, capsys):
    model = tiny_bert(tmp_path)
    data = text_data(tmp_path)
    out = tmp_path / "cmp"
    argv = [
        "compare",
        "--task",
        "text",
        "--model",
        model,
        "--methods",
        "kradapter,lora",
        "--lr",
        "kradapter=5e-3,lora=2e-3",
        "--max-steps",
        "2",
        "--batch-size",
        "8",
        "--output-dir",
        str(out),
        "--quiet",
    ]
    for d in data:
        argv += ["--data", d]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "eff. rank" in printed and "r_gen" in printed and "test (ID)" in printed
    saved = json.loads((out / "comparison.json").read_text())
    table = saved["table"]
    # the test sets' baselines come first: 8 of 24 rows of each class in "test", 6 of 18 in "shifted"
    assert [r[0] for r in table["rows"]] == ["majority class", "chance", "kradapter", "lora"]
    assert table["rows"][0][3:6] == ["33.3", "-", "33.3"] and table["rows"][1][3:6] == ["33.3", "-", "33.3"]
    assert [r[2] for r in table["rows"][2:]] == ["0.005 (set, untuned)", "0.002 (set, untuned)"]
    assert table["rows"][2][table["header"].index("cpu x")] == "1.00"
    assert "ID bal." in table["header"] and "OOD bal." in table["header"]
    # a method at or below a set's majority rate is flagged in the cells, the notes and the JSON
    metrics = {m: json.loads((out / m / "metrics.json").read_text()) for m in ("kradapter", "lora")}
    for method, m in metrics.items():
        for name, t in m["tests"].items():
            assert (name in m["not_above_majority"]) == (t["mean"] <= t["baseline"]["majority"])
            cell = saved["per_test"]["rows"][[r[0] for r in saved["per_test"]["rows"]].index(method)]
            assert cell[list(m["tests"]).index(name) + 1].endswith("†") == (name in m["not_above_majority"])
        assert saved["not_above_majority"][method] == m["not_above_majority"]
        if m["not_above_majority"]:
            assert f"† {method} does not beat the majority-class rate on" in printed
    assert "balanced_accuracy" in saved["per_test_extra"]
    for name in ("comparison.md", "comparison.txt", "comparison.png"):
        assert (out / name).stat().st_size > 0
    for method in ("kradapter", "lora"):
        assert json.loads((out / method / "metrics.json").read_text())["method"] == method
    check_intervals(out, metrics, saved, printed)


def check_intervals(out, metrics, saved, printed):
    """Per-example records beside metrics.json, the intervals they give, and the table without them."""
    from kradapter.train.compare import summarise

    for method, m in metrics.items():
        record = json.loads((out / method / "per_example.json").read_text())
        assert record["seeds"] == m["seeds"] == [0]
        for name, t in m["tests"].items():
            rows = record["tests"][name]
            assert len(rows) == 1 and len(rows[0]) == m["sizes"][name] and set(rows[0]) <= {0, 1}
            assert sum(rows[0]) / len(rows[0]) == t["mean"]  # the recorded score is their mean, exactly
    unc = saved["intervals"]
    assert unc["method"] == "bootstrap" and unc["samples"] == 2000 and "seeds with replacement" in unc["resampling"]
    assert unc["table"]["header"] == ["method", "ID", "OOD"]
    for method, m in metrics.items():
        for group in ("ID", "OOD"):
            iv = unc["per_method"][method][group]
            assert iv["estimate"] == m["groups"][group]["mean"] and iv["low"] <= iv["estimate"] <= iv["high"]
    assert [(p["a"], p["b"], p["set"]) for p in unc["pairwise"]] == [
        ("kradapter", "lora", "ID"),
        ("kradapter", "lora", "OOD"),
    ]
    for p, row in zip(unc["pairwise"], unc["pairwise_table"]["rows"]):
        means = [metrics[m]["groups"][p["set"]]["mean"] for m in ("kradapter", "lora")]
        # the mean of 0/1 differences against the difference of two means: rounding of sums of at most 24 terms
        assert p["difference"] == pytest.approx(means[0] - means[1], rel=0, abs=2 * 24 * np.finfo(float).eps)
        assert p["separated"] == (p["low"] > 0 or p["high"] < 0)
        assert row[-1] == "separated" or row[-1].startswith("not separated at this size")
    assert "95% intervals x 100:" in printed and "paired differences x 100" in printed and "1.96 * sd" in printed
    # one method against itself: difference 0, interval [0, 0], not separated
    same = summarise(
        out / "self", ["kradapter", "lora"], "", dict.fromkeys(["kradapter", "lora"], out / "kradapter"), samples=200
    )
    assert "kradapter - lora" in same
    pairs = json.loads((out / "self" / "comparison.json").read_text())["intervals"]["pairwise"]
    assert {(p["difference"], p["low"], p["high"], p["separated"], p["p"]) for p in pairs} == {
        (0.0, 0.0, 0.0, False, 1.0)
    }
    # a run from before the records: the table is still printed, with a note instead of intervals
    (out / "lora" / "per_example.json").unlink()
    text = summarise(out, ["kradapter", "lora"], "")
    assert "lora: no per-example results: rerun for intervals" in text and "eff. rank" in text
    old = json.loads((out / "comparison.json").read_text())["intervals"]
    assert old["per_method"]["lora"] is None and old["pairwise"] == []
    assert old["pairwise_table"]["rows"] == [
        ["kradapter - lora", "-", "-", "-", "-", "no per-example results: rerun for intervals"]
    ]


def test_unknown_interval_method_is_refused_at_parse_time(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["compare", "--task", "text", "--interval", "bca", "--output-dir", str(tmp_path / "a")])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "argument --interval: unknown interval method 'bca'; accepted: bootstrap" in err
    with pytest.raises(SystemExit):
        main(["compare", "--task", "text", "--bootstrap-samples", "5", "--output-dir", str(tmp_path / "a")])
    assert "argument --bootstrap-samples: must be an integer >= 100" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()


def test_compare_rejects_unknown_method_and_lr_for_another_method(tmp_path, capsys):
    assert main(["compare", "--task", "text", "--methods", "kradapter,nope", "--output-dir", str(tmp_path)]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err
    assert (
        main(
            [
                "compare",
                "--task",
                "text",
                "--methods",
                "kradapter,lora",
                "--lr",
                "full=1e-4",
                "--output-dir",
                str(tmp_path),
            ]
        )
        == 2
    )
    assert "'full' is not one of --methods" in capsys.readouterr().err


def test_budgets_run_every_method_at_each_budget_and_plot(tmp_path, capsys):
    from kradapter.budget import trainable_count

    model = tiny_bert(tmp_path)
    out = tmp_path / "abl"
    argv = [
        "compare",
        "--task",
        "text",
        "--model",
        model,
        "--methods",
        "kradapter,lora,full",
        "--budgets",
        "low,high",
        "--max-steps",
        "1",
        "--batch-size",
        "8",
        "--output-dir",
        str(out),
        "--quiet",
    ]
    for d in text_data(tmp_path):
        argv += ["--data", d]
    assert main(argv) == 0
    rows = json.loads((out / "budgets.json").read_text())["table"]["rows"]
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("kradapter", "low", "sqrt"),
        ("kradapter", "high", "qdrt"),
        ("lora", "low", "sqrt"),
        ("lora", "high", "qdrt"),
        ("full", "-", "-"),
    ]
    # KRAdapter's count at each k1 on the 4 key/value layers (32 x 32), LoRA matched to the smallest count >= it
    for budget, k1 in (("low", "sqrt"), ("high", "qdrt")):
        kr = json.loads((out / f"budget-{budget}" / "kradapter" / "metrics.json").read_text())
        lora = json.loads((out / f"budget-{budget}" / "lora" / "metrics.json").read_text())
        head = kr["trainable_params"] - 4 * trainable_count("kradapter", 32, 32, k1=k1)
        assert lora["trainable_params"] - head >= 4 * trainable_count("kradapter", 32, 32, k1=k1)
        assert lora["trainable_params"] - head - 4 * 64 < 4 * trainable_count("kradapter", 32, 32, k1=k1)
    low = json.loads((out / "budget-low" / "kradapter" / "metrics.json").read_text())
    high = json.loads((out / "budget-high" / "kradapter" / "metrics.json").read_text())
    assert low["trainable_params"] < high["trainable_params"] and high["k1"] == "qdrt"
    assert not (out / "budget-high" / "full").exists()  # full fine-tuning has one size: trained once
    assert (out / "budgets.png").stat().st_size > 0 and (out / "budget-high" / "comparison.md").exists()


def test_bad_budget_and_scoring_fail_before_training(tmp_path, capsys):
    assert main(["compare", "--task", "text", "--budgets", "low,huge", "--output-dir", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "unknown budget 'huge'" in err and "valid budgets: low, medium, high" in err
    assert not (tmp_path / "a").exists()
    assert main(["train", "--task", "text", "--scoring", "loglik", "--output-dir", str(tmp_path / "b")]) == 2
    assert "--scoring 'loglik': task 'text'" in capsys.readouterr().err
    assert not (tmp_path / "b").exists()
