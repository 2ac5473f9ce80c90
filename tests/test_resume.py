"""Resume after a crash and after Ctrl-C: the newest complete checkpoint (named in the log), never a partial one;
recorded steps and times match what happened; interrupt messages say what is on disk."""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal

import pytest
from transformers import TrainerCallback

from kradapter.train import runner
from kradapter.train.runner import TrainingInterrupted, run
from recipe_fixtures import text_data, tiny_bert, train_args


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("resume")
    return tiny_bert(tmp), text_data(tmp)


class _CtrlCAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGINT)


def _checkpoints(out):
    return sorted((out / "seeds" / "seed-0").glob("checkpoints-lr-*/checkpoint-*"))


def test_resume_skips_a_partial_checkpoint_and_says_which_it_took(bert, tmp_path, caplog):
    model, data = bert
    out = tmp_path / "run"
    with pytest.raises(TrainingInterrupted):
        run(train_args("text", out, model=model, data=data, max_steps=6, save_steps=100), extra_callbacks=[_CtrlCAt(2)])
    (complete,) = _checkpoints(out)
    # what a kill while the Trainer saved the next checkpoint leaves: no trainer_state.json, weights cut short
    partial = complete.parent / "checkpoint-5"
    shutil.copytree(complete, partial)
    (partial / "trainer_state.json").unlink()
    weights = partial / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with caplog.at_level(logging.INFO, logger="kradapter"):
        m = run(train_args("text", out, model=model, data=data, max_steps=6, save_steps=100))
    notes = caplog.text
    assert f"resuming seed 0 from {complete}" in notes and f"ignoring partial checkpoint {partial}" in notes
    assert m["training"]["steps"] == 6
    seed = json.loads((out / "seeds" / "seed-0" / "result.json").read_text())
    assert seed["resumed_from"] == complete.name and seed["steps_timed"] == 6


def test_ctrl_c_at_the_last_step_then_resume_reports_the_real_steps_and_time(bert, tmp_path):
    model, data = bert
    out = tmp_path / "run"
    with pytest.raises(TrainingInterrupted, match="step 8 of 8"):
        run(train_args("text", out, model=model, data=data, max_steps=8, save_steps=100), extra_callbacks=[_CtrlCAt(8)])
    m = run(train_args("text", out, model=model, data=data, max_steps=8, save_steps=100))
    seed = json.loads((out / "seeds" / "seed-0" / "result.json").read_text())
    assert m["training"]["steps"] == 8 and seed["steps"] == 8
    # the time per epoch comes from the 8 timed steps of the first session, not from the resume's overhead
    assert seed["steps_timed"] == 8 and seed["train_seconds"] > 0
    assert seed["seconds_per_epoch"] == pytest.approx(seed["train_seconds"] / seed["epochs_timed"])
    assert seed["effective_rank_history"]


def test_ctrl_c_during_final_evaluation_says_the_checkpoint_exists_and_resume_does_not_retrain(
    bert, tmp_path, monkeypatch, capsys
):
    from kradapter.cli import main

    model, data = bert
    out = tmp_path / "run"
    real = runner.adapter_deltas
    calls = []

    def ctrl_c_once(model):
        calls.append(1)
        if len(calls) == 1:
            raise KeyboardInterrupt
        return real(model)

    monkeypatch.setattr(runner, "adapter_deltas", ctrl_c_once)
    argv = [
        "train",
        "--task",
        "text",
        "--model",
        model,
        "--output-dir",
        str(out),
        "--quiet",
        "--max-steps",
        "4",
        "--save-steps",
        "100",
        "--logging-steps",
        "2",
        *sum((["--data", d] for d in data), []),
    ]
    assert main(argv) == 130
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("kradapter train")]
    (checkpoint,) = _checkpoints(out)
    assert checkpoint.name == "checkpoint-4"
    assert err and "nothing was written" not in err[-1] and str(checkpoint) in err[-1], err
    assert not (out / "metrics.json").exists()
    assert main(argv) == 0
    seed = json.loads((out / "seeds" / "seed-0" / "result.json").read_text())
    assert seed["steps"] == 4 and seed["steps_timed"] == 4 and seed["resumed_from"] == "checkpoint-4"
