"""One `kradapter train` per output directory: a second run gets one clear error naming the directory and the
holder's pid; a lock left by a dead process does not block."""

from __future__ import annotations

import os

import pytest
from transformers import TrainerCallback

from kradapter.outdir import LOCK, OutputDirBusy, OutputLock
from kradapter.train.runner import run
from recipe_fixtures import text_data, tiny_bert, train_args


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("lock")
    return tiny_bert(tmp), text_data(tmp)


class _SecondRunAt(TrainerCallback):
    """At a step of the first run, start a second run on the same directory through the CLI."""

    def __init__(self, argv):
        self.argv, self.code = argv, None

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 1 and self.code is None:
            from kradapter.cli import main

            self.code = main(self.argv)


def test_second_run_on_the_same_output_dir_is_refused_naming_dir_and_pid(bert, tmp_path, capsys):
    model, data = bert
    out = tmp_path / "run"
    second = _SecondRunAt(
        [
            "train",
            "--task",
            "text",
            "--model",
            model,
            "--output-dir",
            str(out),
            "--quiet",
            "--max-steps",
            "1",
            "--lr",
            "0.5",
            *sum((["--data", d] for d in data), []),
        ]
    )
    first = run(train_args("text", out, model=model, data=data, max_steps=2), extra_callbacks=[second])
    assert second.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("kradapter")]
    assert len(err) == 1 and str(out) in err[0] and f"pid {os.getpid()}" in err[0] and "in use" in err[0], err
    # the first run's printed scores are the ones its metrics.json holds
    import json

    assert json.loads((out / "metrics.json").read_text())["tests"] == first["tests"]
    assert first["learning_rate"] != 0.5


def test_lock_of_a_dead_process_does_not_block(bert, tmp_path):
    model, data = bert
    out = tmp_path / "run"
    out.mkdir()
    (out / LOCK).write_text("999999999\n")  # no such pid, and nobody holds the flock
    m = run(train_args("text", out, model=model, data=data, max_steps=1))
    assert m["training"]["steps"] == 1
    assert (out / LOCK).read_text() == ""  # released


def test_lock_is_exclusive_and_released(tmp_path):
    with OutputLock(tmp_path):
        assert (tmp_path / LOCK).read_text().strip() == str(os.getpid())
        with pytest.raises(OutputDirBusy, match=f"{tmp_path}.*pid {os.getpid()}"):
            with OutputLock(tmp_path):
                pass
    with OutputLock(tmp_path):  # free again
        pass
