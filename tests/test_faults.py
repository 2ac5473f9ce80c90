"""A kill (SIGKILL, in a forked child: nothing gets to clean up) or a full disk (ENOSPC) at each kind of write of a
`kradapter train` rerun over a finished run: the previous results stay whole and readable, and running the same
command again completes with no leftovers."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
from pathlib import Path

import pytest

from kradapter.train.runner import run
from recipe_fixtures import text_data, tiny_bert, train_args

PUBLISHED = (
    "metrics.json",
    "per_example.json",
    "summary.txt",
    "adapter_config.json",
    "adapter_model.safetensors",
    "kradapter_run.json",
)
OLD_LR, NEW_LR = 1e-2, 3e-2

# (what is written, which occurrence): each a distinct step of a run; checkpoints at steps 2 and 4.
POINTS = [
    ("checkpoint weights", 2),  # checkpoint-4's adapter file, left half-written
    ("checkpoint optimizer", 2),
    ("checkpoint trainer_state", 2),  # written last by Trainer, left half-written
    ("rmtree checkpoint-", 1),  # the Trainer deleting checkpoint-2 after checkpoint-4 is saved
    ("replace run.json", 1),
    ("replace result.json", 1),  # the seed's result, in its staging directory
    ("rename .staging-", 1),  # the seed's staging directory becomes a result set
    ("replace .published", 1),  # the seed's switch
    ("rmtree .result-", 1),  # the seed's old result set, deleted after the switch
    ("rmtree checkpoints-lr-", 1),  # the seed's checkpoints, deleted once it has finished
    ("replace metrics.json", 1),  # the run's metrics, in its staging directory
    ("replace per_example.json", 1),  # the run's per-example correctness, written after its metrics
    ("rename .staging-", 2),
    ("replace .published", 2),  # the run's switch
    ("rmtree .result-", 2),
]


class Injector:
    """Counts writes whose label starts with `label`; at the `nth`, calls `fault(path)`."""

    def __init__(self, label: str, nth: int, fault):
        self.label, self.nth, self.fault, self.count = label, nth, fault, 0

    def hit(self, label: str, path) -> None:
        if label.startswith(self.label):
            self.count += 1
            if self.count == self.nth:
                self.fault(path)


def install(injector: Injector, setattr) -> None:
    """Route the writes of a run through `injector` (setattr: monkeypatch.setattr, or plain setattr in a child)."""
    from transformers import Trainer, TrainerState

    replace, rename, rmtree = os.replace, os.rename, shutil.rmtree

    def name_of(path) -> str:
        return Path(path).name

    setattr(
        os, "replace", lambda src, dst, **k: (injector.hit(f"replace {name_of(dst)}", dst), replace(src, dst, **k))[1]
    )
    setattr(os, "rename", lambda src, dst, **k: (injector.hit(f"rename {name_of(src)}", src), rename(src, dst, **k))[1])
    setattr(
        shutil,
        "rmtree",
        lambda path, *a, **k: (injector.hit(f"rmtree {name_of(path)}", path), rmtree(path, *a, **k))[1],
    )
    save_model, save_optimizer, save_json = (
        Trainer.save_model,
        Trainer._save_optimizer_and_scheduler,
        TrainerState.save_to_json,
    )

    def saving_model(self, output_dir=None, _internal_call=False):
        save_model(self, output_dir, _internal_call)
        if _internal_call:
            weights = Path(output_dir) / "adapter_model.safetensors"
            injector.hit("checkpoint weights", weights)

    def saving_optimizer(self, output_dir):
        injector.hit("checkpoint optimizer", Path(output_dir) / "optimizer.pt")
        save_optimizer(self, output_dir)

    def saving_state(self, json_path):
        if Path(json_path).parent.name.startswith("checkpoint-"):
            injector.hit("checkpoint trainer_state", json_path)
        save_json(self, json_path)

    setattr(Trainer, "save_model", saving_model)
    setattr(Trainer, "_save_optimizer_and_scheduler", saving_optimizer)
    setattr(TrainerState, "save_to_json", saving_state)


def _half_written(path) -> None:
    """What a kill in the middle of writing `path` leaves: its first half (an empty file if it was not there)."""
    path = Path(path)
    data = path.read_bytes() if path.is_file() else b""
    path.write_bytes(data[: len(data) // 2])


def kill(path) -> None:
    if "weights" in str(path) or "trainer_state" in str(path):
        _half_written(path)
    os.kill(os.getpid(), signal.SIGKILL)


def disk_full(path) -> None:
    raise OSError(errno.ENOSPC, "No space left on device", str(path))


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished run at OLD_LR (built once, copied by each test) and the files it published."""
    tmp = tmp_path_factory.mktemp("faults")
    model, data = tiny_bert(tmp), text_data(tmp)
    out = tmp / "done"
    run(_args(out, model, data, OLD_LR))
    return model, data, out, {name: (out / name).read_bytes() for name in PUBLISHED}


def _args(out, model, data, lr):
    return train_args(
        "text", out, model=model, data=data, lr=lr, max_steps=4, save_steps=2, logging_steps=2, max_eval_examples=6
    )


def _check_whole(out: Path, old: dict) -> str:
    """The published files are all the old ones, or all from one finished new run: 'old' or 'new'."""
    now = {name: (out / name).read_bytes() for name in PUBLISHED}  # every name readable: none missing or dangling
    seed = json.loads((out / "seeds" / "seed-0" / "result.json").read_text())  # the seed's results are kept too
    assert seed["learning_rate"] in (OLD_LR, NEW_LR)
    if now == old:
        return "old"
    metrics = json.loads(now["metrics.json"])
    assert metrics["learning_rate"] == NEW_LR, "a mix of old and new files"
    seed = out / "seeds" / "seed-0"
    assert json.loads((seed / "result.json").read_text())["learning_rate"] == NEW_LR
    assert now["adapter_model.safetensors"] == (seed / "adapter_model.safetensors").read_bytes()
    return "new"


def _rerun_completes(out: Path, model, data) -> None:
    metrics = run(_args(out, model, data, NEW_LR))
    assert metrics["learning_rate"] == NEW_LR and metrics["training"]["steps"] == 4
    assert json.loads((out / "metrics.json").read_text())["learning_rate"] == NEW_LR
    leftovers = [p for p in out.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".staging-")]
    versions = [p for p in out.rglob(".result-*")]
    assert not leftovers and len(versions) == 2, (leftovers, versions)  # DIR's and seed-0's current sets only
    assert not list(out.rglob("checkpoint-*"))


@pytest.mark.parametrize("label,nth", POINTS, ids=[f"{label}#{nth}" for label, nth in POINTS])
def test_kill_at_each_write_keeps_results_whole_and_a_rerun_completes(finished, tmp_path, label, nth):
    model, data, done, old = finished
    out = tmp_path / "run"
    shutil.copytree(done, out, symlinks=True)
    pid = os.fork()
    if pid == 0:  # the child: rerun at another learning rate, killed at the chosen write
        code = 3
        try:
            install(Injector(label, nth, kill), setattr)
            run(_args(out, model, data, NEW_LR))
            code = 4  # the write never happened
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (
        f"the child was not killed at {label}#{nth} (exit status {os.waitstatus_to_exitcode(status)})"
    )
    _check_whole(out, old)
    _rerun_completes(out, model, data)


@pytest.mark.parametrize(
    "label,nth", [("checkpoint weights", 2), ("replace result.json", 1), ("replace .published", 2)]
)
def test_full_disk_at_a_write_keeps_results_whole_and_a_rerun_completes(finished, tmp_path, monkeypatch, label, nth):
    model, data, done, old = finished
    out = tmp_path / "run"
    shutil.copytree(done, out, symlinks=True)
    injector = Injector(label, nth, disk_full)
    with monkeypatch.context() as patch:
        install(injector, patch.setattr)
        with pytest.raises(OSError, match="No space left"):
            run(_args(out, model, data, NEW_LR))
    assert _check_whole(out, old) == "old"
    _rerun_completes(out, model, data)
