"""`kradapter compare`: methods in their own processes, then the table, markdown, JSON and plot."""

from __future__ import annotations

import json

from recipe_fixtures import text_data, tiny_bert

from kradapter.cli import main


def test_compare_two_methods_per_method_lr(tmp_path, capsys):
    model = tiny_bert(tmp_path)
    data = text_data(tmp_path)
    out = tmp_path / "cmp"
    argv = ["compare", "--task", "text", "--model", model, "--methods", "kradapter,lora",
            "--lr", "kradapter=5e-3,lora=2e-3", "--max-steps", "2", "--batch-size", "8", "--output-dir", str(out),
            "--quiet"]
    for d in data:
        argv += ["--data", d]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "eff. rank" in printed and "r_gen" in printed and "test (ID)" in printed
    table = json.loads((out / "comparison.json").read_text())["table"]
    assert [r[0] for r in table["rows"]] == ["kradapter", "lora"]
    assert [r[2] for r in table["rows"]] == ["0.005 (set, untuned)", "0.002 (set, untuned)"]
    assert table["rows"][0][table["header"].index("time x")] == "1.00"
    for name in ("comparison.md", "comparison.txt", "comparison.png"):
        assert (out / name).stat().st_size > 0
    for method in ("kradapter", "lora"):
        assert json.loads((out / method / "metrics.json").read_text())["method"] == method


def test_compare_rejects_unknown_method_and_lr_for_another_method(tmp_path, capsys):
    assert main(["compare", "--task", "text", "--methods", "kradapter,nope", "--output-dir", str(tmp_path)]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err
    assert main(["compare", "--task", "text", "--methods", "kradapter,lora", "--lr", "full=1e-4",
                 "--output-dir", str(tmp_path)]) == 2
    assert "'full' is not one of --methods" in capsys.readouterr().err
