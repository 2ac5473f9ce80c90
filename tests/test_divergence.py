"""A NaN/Inf loss stops `kradapter train` with one line naming the step, learning rate and method, and writes no
result; no spectral report is computed from a non-finite update."""

from __future__ import annotations

import pytest
import torch

from kradapter.spectral import effective_rank, spectral_summary
from kradapter.train.deltas import spectral_table
from recipe_fixtures import text_data, tiny_bert


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bert")
    return tiny_bert(tmp), text_data(tmp)


def test_a_diverging_run_stops_with_one_line_and_writes_no_result(bert, tmp_path, capsys):
    from kradapter.cli import main

    model, data = bert
    out = tmp_path / "run"
    argv = ["train", "--task", "text", "--model", model, "--output-dir", str(out), "--quiet"]
    for d in data:
        argv += ["--data", d]
    # Adam's first step moves every trained weight by ~lr: at 1e30 the next forward overflows to Inf/NaN
    argv += ["--lr", "1e30", "--max-steps", "6", "--logging-steps", "1", "--batch-size", "8"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("kradapter train: error: training diverged at step ")
    assert "(method kradapter, learning rate 1e+30" in err[0] and "loss " in err[0]
    assert any(f"{what} {bad}" in err[0] for what in ("loss", "grad_norm") for bad in ("nan", "inf"))
    step = int(err[0].split("at step ")[1].split(":")[0])
    assert 1 <= step < 6  # stopped at the first non-finite loss, not at the end
    assert not (out / "metrics.json").exists() and not list(out.rglob("result.json"))
    assert not list(out.rglob("checkpoint-*"))  # no checkpoint of NaN weights to resume from


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_no_spectral_report_of_a_non_finite_update(bad):
    delta = torch.randn(6, 4)
    delta[2, 1] = bad
    with pytest.raises(ValueError, match=r"Delta W of layer\.0 holds NaN or Inf values.*no spectral report"):
        spectral_table({"layer.0": delta})
    for measure in (effective_rank, spectral_summary):
        with pytest.raises(ValueError, match=r"\(6, 4\) matrix holds NaN or Inf values"):
            measure(delta)
