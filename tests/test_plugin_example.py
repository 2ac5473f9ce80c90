"""examples/loha_spec.py, a method we do not ship (PEFT's LoHa), through `kradapter budget`, `approx`, `compare`
and `report` with --plugin, at tiny sizes. compare's runs are child processes: they get the plugin from
KRADAPTER_PLUGINS, which --plugin sets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kradapter.cli import main
from kradapter.specs import PLUGINS_ENV, registry
from recipe_fixtures import text_data, tiny_bert

EXAMPLE = str(Path(__file__).resolve().parents[1] / "examples" / "loha_spec.py")


@pytest.fixture
def plugin_state(monkeypatch):
    """The registry and KRADAPTER_PLUGINS as they were, after the test (loha is not a built-in)."""
    monkeypatch.setenv(PLUGINS_ENV, "")
    specs, loaded = dict(registry._SPECS), set(registry._loaded)
    yield
    registry._SPECS.clear()
    registry._SPECS.update(specs)
    registry._loaded.clear()
    registry._loaded.update(loaded)


def test_loha_plugin_through_budget_approx_compare_report(tmp_path, capsys, plugin_state):
    assert main(["--plugin", EXAMPLE, "budget", "1024", "768", "--methods", "lora,loha"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.split()[:1] == ["loha"])
    assert "r=14" in row and "50,176" in row  # 2 r (d_out + d_in) >= 49,152 at the smallest r

    approx_out = tmp_path / "approx"
    assert (
        main(
            [
                "--plugin",
                EXAMPLE,
                "approx",
                "--out",
                str(approx_out),
                "--size",
                "24",
                "16",
                "--iters",
                "3",
                "--figure5-size",
                "0",
                "--targets",
                "random",
                "--methods",
                "lora,loha",
                "--workers",
                "1",
            ]
        )
        == 0
    )
    doc = json.loads((approx_out / "approx.json").read_text())
    loha = doc["results"]["random"]["loha"]
    assert (
        loha["trainable"] == 2 * loha["hparams"]["r"] * (24 + 16) >= doc["results"]["random"]["lora"]["trainable"] - 40
    )
    assert loha["hparams"]["alpha"] == loha["hparams"]["r"]  # --scaling unit through the spec's unit_scale
    assert loha["nuclear_error"] > 0 and not loha["diverged"]
    capsys.readouterr()

    model, data = tiny_bert(tmp_path), text_data(tmp_path)
    cmp_out = tmp_path / "cmp"
    argv = [
        "--plugin",
        EXAMPLE,
        "compare",
        "--task",
        "text",
        "--model",
        model,
        "--methods",
        "loha",
        "--max-steps",
        "2",
        "--batch-size",
        "8",
        "--output-dir",
        str(cmp_out),
        "--quiet",
    ]
    for d in data:
        argv += ["--data", d]
    assert main(argv) == 0
    table = json.loads((cmp_out / "comparison.json").read_text())["table"]
    # the test sets' majority-class and chance rows come first, then one row per method
    assert [r[0] for r in table["rows"]] == ["majority class", "chance", "loha"]
    metrics = json.loads((cmp_out / "loha" / "metrics.json").read_text())
    assert metrics["method"] == "loha" and metrics["trainable_params"] > 0
    capsys.readouterr()

    assert main(["--plugin", EXAMPLE, "report", str(cmp_out / "loha")]) == 0
    report = capsys.readouterr().out
    assert "method loha" in report and "eff. rank" in report


def test_a_plugin_that_fails_is_one_error_naming_it(tmp_path, capsys, plugin_state):
    bad = tmp_path / "bad_spec.py"
    bad.write_text("raise RuntimeError('boom')\n")
    assert main(["--plugin", str(bad), "budget", "8", "8"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "bad_spec.py" in err and "boom" in err
    assert main(["--plugin", str(tmp_path / "missing.py"), "budget", "8", "8"]) == 2
    assert "missing.py does not exist" in capsys.readouterr().err
