"""Every numeric option of `kradapter train` is checked before any work: 0, negative or non-finite values get one
error naming the option, never a silent default or a traceback after files were written."""

from __future__ import annotations

import argparse

import pytest

from kradapter.cli import main
from kradapter.train.runner import run
from recipe_fixtures import train_args

BAD = [
    ("--max-steps", "0"),
    ("--max-steps", "-3"),
    ("--batch-size", "0"),
    ("--epochs", "-1"),
    ("--epochs", "0"),
    ("--lr", "-1"),
    ("--lr", "0"),
    ("--lr", "nan"),
    ("--eval-batch-size", "0"),
    ("--logging-steps", "0"),
    ("--save-steps", "-2"),
    ("--warmup-ratio", "1.5"),
    ("--threads", "0"),
    ("--max-train-examples", "0"),
    ("--max-steps", "2.5"),
]


@pytest.mark.parametrize("flag,value", BAD)
def test_bad_numeric_option_is_refused_by_the_cli(tmp_path, capsys, flag, value):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--task", "text", "--output-dir", str(out), f"{flag}={value}"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and value in err, err
    assert not out.exists()


@pytest.mark.parametrize(
    "name,value",
    [
        ("max_steps", 0),
        ("batch_size", 0),
        ("epochs", -1.0),
        ("lr", -1.0),
        ("max_steps", True),
        ("warmup_ratio", float("inf")),
    ],
)
def test_bad_numeric_option_is_refused_by_the_library_before_any_work(tmp_path, name, value):
    out = tmp_path / "run"
    args = train_args("text", out, model=str(tmp_path / "no-model"), **{name: value})
    with pytest.raises(ValueError, match=f"--{name.replace('_', '-')} must"):
        run(args)
    assert not out.exists()


def test_good_values_parse():
    from kradapter.train.commands import add_train_arguments

    p = argparse.ArgumentParser()
    add_train_arguments(p)
    a = p.parse_args(["--task", "text", "--max-steps", "3", "--lr", "2e-4", "--epochs", "0.5", "--warmup-ratio", "0"])
    assert (a.max_steps, a.lr, a.epochs, a.warmup_ratio) == (3, 2e-4, 0.5, 0.0)
