"""Which Trainer checkpoint a rerun resumes from, and training time that survives a resume.

A kill or a full disk while the Trainer saves leaves a partial checkpoint-N beside the previous, complete one.
Trainer writes trainer_state.json last, so a checkpoint is complete when that file parses and the weights,
optimizer and scheduler files it wrote before are there and readable.
"""

from __future__ import annotations

import json
import pickle
import re
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

from transformers import TrainerCallback

from .._compat import ExportableState, saved_callback_state
from ..bench.timing import synchronize

WEIGHTS = (
    "adapter_model.safetensors",
    "model.safetensors",
    "adapter_model.bin",
    "pytorch_model.bin",
    "model.safetensors.index.json",
)
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def incomplete_reason(checkpoint: Path) -> str | None:
    """None for a checkpoint a resume can use, else what is wrong with it."""
    try:
        json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "no readable trainer_state.json"
    weights = [checkpoint / name for name in WEIGHTS if (checkpoint / name).is_file()]
    if not weights:
        return "no weights file"
    if weights[0].suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(weights[0]), "pt"):
                pass
        except Exception:  # safetensors raises its own error types for truncated or corrupt files
            return f"{weights[0].name} is unreadable"
    try:
        if not any(p.name.startswith("optimizer") for p in checkpoint.iterdir()):
            return "no optimizer state"
    except OSError:  # being deleted (another rank dropping partial checkpoints)
        return "unreadable"
    return None


def latest_complete_checkpoint(root: Path) -> tuple[Path | None, list[tuple[Path, str]]]:
    """(the newest complete checkpoint-N under `root` or None, [(partial checkpoint, reason)] newer than it)."""
    if not root.is_dir():
        return None, []
    found = sorted(
        ((int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _CHECKPOINT.match(p.name))), reverse=True
    )
    skipped = []
    for _, path in found:
        reason = incomplete_reason(path)
        if reason is None:
            return path, skipped
        skipped.append((path, reason))
    return None, skipped


def drop_partial(skipped: list[tuple[Path, str]]) -> None:
    """Partial checkpoints would confuse the Trainer's rotation (it sorts by mtime); nothing in them is usable."""
    for path, _ in skipped:
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def explain_unloadable(checkpoint: Path | None):
    """Around a resume from `checkpoint`: a file in it that torch cannot load (corrupt, or holding objects its
    weights_only loader refuses: pickle.UnpicklingError) becomes one ValueError naming the file and how to discard
    the checkpoint, instead of the same raw traceback on every rerun."""
    try:
        yield
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        bad = unloadable_file(checkpoint) if checkpoint is not None else None
        if bad is None:
            raise
        raise ValueError(
            f"checkpoint {checkpoint}: {bad[0].name} cannot be loaded ({bad[1]}); to discard this checkpoint, "
            f"delete {checkpoint} (rm -r): the rerun resumes from the previous one or starts the seed over"
        ) from err


def unloadable_file(checkpoint: Path) -> tuple[Path, str] | None:
    """The first torch file in `checkpoint` that torch.load(weights_only=True) refuses, with the reason."""
    import torch

    if not checkpoint.is_dir():
        return None
    for path in sorted(checkpoint.iterdir()):
        if path.suffix in (".pt", ".pth", ".bin") and path.is_file():
            try:
                torch.load(path, map_location="cpu", weights_only=True)
            except Exception as err:  # noqa: BLE001  any refusal is the answer; its text goes in the message
                return path, f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    return None


class StepTimer(TrainerCallback, ExportableState):
    """Seconds spent in training steps, summed over every session of a run: its state is saved in each
    checkpoint's trainer_state.json, so a resumed run counts the steps before the interrupt too, and the time to
    load a checkpoint is not counted as training.

    Wall seconds (what a user waits) and this process's CPU seconds (all its threads; much less sensitive to other
    work on a shared machine) are both kept, with the 1-minute load average at the first and the last timed step
    of this session: a reader can tell a slow step from a busy machine."""

    def __init__(self, seconds: float = 0.0, steps: int = 0, cpu_seconds: float = 0.0):
        self.seconds, self.steps, self.cpu_seconds = float(seconds), int(steps), float(cpu_seconds)
        self._last: float | None = None
        self._last_cpu: float | None = None
        self.load_first: float | None = None
        self.load_last: float | None = None

    def restore(self, checkpoint: Path | None) -> None:
        if checkpoint is None:
            return
        state = json.loads((checkpoint / "trainer_state.json").read_text(encoding="utf-8"))
        saved = saved_callback_state(state, type(self).__name__)
        self.seconds = float(saved.get("args", {}).get("seconds", 0.0))
        self.steps = int(saved.get("args", {}).get("steps", 0))
        self.cpu_seconds = float(saved.get("args", {}).get("cpu_seconds", 0.0))

    def on_step_begin(self, args, state, control, **kwargs):
        synchronize()  # on CUDA the clock must cover the step's kernels, not just their launch
        if self.load_first is None:
            self.load_first = load_average()
        self._last, self._last_cpu = time.perf_counter(), time.process_time()

    def on_step_end(self, args, state, control, **kwargs):
        if self._last is not None:
            synchronize()
            self.seconds += time.perf_counter() - self._last
            self.cpu_seconds += time.process_time() - (self._last_cpu or 0.0)
            self.steps += 1
            self._last = self._last_cpu = None
            self.load_last = load_average()

    def state(self) -> dict:
        return {
            "args": {"seconds": self.seconds, "steps": self.steps, "cpu_seconds": self.cpu_seconds},
            "attributes": {},
        }


def load_average() -> float | None:
    """The machine's 1-minute load average (None where the OS has none)."""
    import os

    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None
