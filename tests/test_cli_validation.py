"""Every numeric option of `kradapter train` is checked before any work: 0, negative or non-finite values get one
error naming the option, never a silent default or a traceback after files were written."""

from __future__ import annotations

import argparse
import errno
import pickle

import pytest
import torch

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
    # sizes where 0 once silently meant "default" / "all data" / "no truncation", and -5 an OverflowError
    ("--image-size", "0"),
    ("--shots", "0"),
    ("--max-length", "0"),
    ("--max-length", "-5"),
    ("--threads", "100000"),  # more threads than the machine offers: once blamed on the data file
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


def _refused(capsys, argv: list[str], *needles: str) -> str:
    """main(argv) returns 2 and prints one error line holding every needle."""
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and all(n in err for n in needles), err
    return err


@pytest.mark.parametrize(
    "option,needles",
    [
        (["--seeds=-1,-2"], ["--seeds", "-1"]),
        (["--seeds", "100000000000"], ["--seeds", "at most"]),
        (["--lr-grid", "nan,1e-3"], ["--lr-grid", "finite"]),
        (["--lr-grid", "inf,1e-3"], ["--lr-grid", "finite"]),
        (["--labels", "neg,neg,pos"], ["--labels", "'neg' listed more than once"]),
        (["--target-modules", "key(,value"], ["--target-modules", "'key('", "regular expression"]),
    ],
)
def test_list_options_are_refused_before_anything_is_written(tmp_path, capsys, option, needles):
    out = tmp_path / "run"
    _refused(capsys, ["train", "--task", "text", "--output-dir", str(out), *option], *needles)
    assert not out.exists()


@pytest.mark.parametrize("grid", ["kradapter=nan:1e-3", "inf,1e-3"])
def test_compare_refuses_a_non_finite_grid_before_writing(tmp_path, capsys, grid):
    out = tmp_path / "cmp"
    _refused(capsys, ["compare", "--task", "text", "--methods", "kradapter,lora", "--output-dir", str(out),
                      "--lr-grid", grid], "--lr-grid", "finite")  # fmt: skip
    assert not out.exists()


def test_val_size_beyond_the_data_names_the_row_count_and_leaves_no_directory(tmp_path, capsys):
    from recipe_fixtures import text_data, tiny_bert

    model, data = tiny_bert(tmp_path), text_data(tmp_path)
    out = tmp_path / "run"
    argv = ["train", "--task", "text", "--model", model, "--output-dir", str(out), "--val-size", "1000000000"]
    _refused(capsys, argv + [f"--data={d}" for d in data], "--val-size 1000000000", "60 rows")
    assert not out.exists()  # the lock directory the refused run created is gone


@pytest.mark.parametrize(
    "argv,needles",
    [
        (["approx", "--size", "200000", "200000"], ["--size 200000 200000", "needs at least", "available"]),
        (["approx", "--figure5-size", "100000"], ["--figure5-size 100000", "needs at least", "available"]),
        (["spectrum", "--k", "100000"], ["--k 100000", "needs at least", "available"]),
        (["bench", "--tokens", str(10**12)], ["tokens=1000000000000", "needs at least", "available"]),
    ],
)
def test_absurd_sizes_are_refused_with_a_memory_estimate_before_allocating(tmp_path, capsys, argv, needles):
    out = tmp_path / "out"
    _refused(capsys, [*argv, "--out", str(out)], *needles)
    assert not out.exists()


def test_report_json_into_a_directory_is_one_line(tmp_path, capsys):
    _refused(capsys, ["report", str(tmp_path / "adapter"), "--json", str(tmp_path)], "--json", "is a directory")


@pytest.mark.parametrize(
    "error,needles",
    [
        (OSError(errno.ENOSPC, "No space left on device"), ["No space left on device", "writing under"]),
        (OSError(errno.EROFS, "Read-only file system", "/ro/x.json"), ["Read-only file system", "/ro/x.json"]),
        (IsADirectoryError(errno.EISDIR, "Is a directory", "/d"), ["Is a directory", "/d"]),
    ],
)
def test_os_errors_of_any_command_are_one_line_naming_the_path(tmp_path, capsys, monkeypatch, error, needles):
    import kradapter.cli as cli

    def fail(args):
        raise error

    cli._load_commands()
    monkeypatch.setitem(cli.COMMANDS, "fails", ("raises an OSError", lambda p: p.add_argument("--out"), fail))
    assert main(["fails", "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("kradapter fails: error:") and all(n in err for n in needles)
    if "writing under" in needles:
        assert str(tmp_path / "o") in err


def test_a_checkpoint_file_the_safe_loader_refuses_is_named_with_how_to_discard_it(tmp_path):
    from kradapter.train.checkpoints import explain_unloadable

    ckpt = tmp_path / "checkpoint-4"
    ckpt.mkdir()
    torch.save({"x": torch.zeros(2)}, ckpt / "scheduler.pt")
    torch.save({"state": argparse.Namespace(a=1)}, ckpt / "optimizer.pt")  # weights_only refuses the class
    with pytest.raises(ValueError, match=r"optimizer\.pt cannot be loaded.*delete .*checkpoint-4") as err:
        with explain_unloadable(ckpt):
            torch.load(ckpt / "optimizer.pt", weights_only=True)
    assert isinstance(err.value.__cause__, pickle.UnpicklingError)
    with pytest.raises(RuntimeError, match="unrelated"), explain_unloadable(tmp_path / "absent"):
        raise RuntimeError("unrelated")  # an error no checkpoint file explains passes through unchanged


def test_demo_refuses_a_test_size_beyond_its_data_before_scoring(capsys):
    from test_demo import HAVE_ASSETS

    if not HAVE_ASSETS:
        pytest.skip("the demo's packaged model and tweets are not installed")
    _refused(capsys, ["demo", "--test-size", "1000000000"], "--test-size 1000000000", "the packaged set has 38,158")
