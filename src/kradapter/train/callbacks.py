"""Trainer callbacks: the effective rank of the adapted updates as training goes, a Ctrl-C that stops at the
end of the current step with a checkpoint saved, and a stop at the first NaN/Inf loss."""

from __future__ import annotations

import math
import signal

import numpy as np
from transformers import TrainerCallback

from ..dist import gathered_trainable
from ..spectral import effective_rank
from .deltas import adapter_deltas
from .methods import full_deltas


class EffectiveRankCallback(TrainerCallback):
    """Every `every` steps, the effective rank of each adapted layer's Delta W (kradapter.spectral), logged as
    `eff_rank` (mean over layers) next to the loss, and kept in `history` as (step, mean, min, max)."""

    def __init__(self, model, every: int, reference=None):
        self.model, self.every, self.reference = model, max(1, int(every)), reference
        self.history: list[tuple[int, float, float, float]] = []

    def measure(self, step: int) -> None:
        with gathered_trainable(self.model):  # whole under ZeRO-3 (a collective: every rank measures)
            deltas = (
                full_deltas(self.model, self.reference) if self.reference is not None else adapter_deltas(self.model)
            )
        if not deltas or not all(bool(d.isfinite().all()) for d in deltas.values()):
            return  # a diverged update has no spectrum; DivergenceGuard stops the run
        ranks = [effective_rank(d) for d in deltas.values()]
        self.history.append((step, float(np.mean(ranks)), float(np.min(ranks)), float(np.max(ranks))))

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step % self.every == 0 or state.global_step == state.max_steps:
            self.measure(state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        # Runs before the progress printer (user callbacks come first), so the value shows up in the log line.
        if logs is not None and self.history and "loss" in logs:
            logs["eff_rank"] = round(self.history[-1][1], 2)


class TrainingDiverged(ValueError):
    """The training loss became NaN or Inf: the run stopped; its line names the step, learning rate and method."""


class DivergenceGuard(TrainerCallback):
    """Stop training at the first logged loss (or gradient norm) that is NaN or Inf, recording where
    (`diverged`: step, value and learning rate) for the one line the runner reports."""

    def __init__(self):
        self.diverged: dict | None = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.diverged is not None or not logs:
            return
        values = {k: logs[k] for k in ("loss", "grad_norm") if isinstance(logs.get(k), (int, float))}
        if any(not math.isfinite(v) for v in values.values()):
            lr = logs.get("learning_rate", args.learning_rate)
            self.diverged = {"step": state.global_step, "lr": lr, **values}
            control.should_training_stop = True
            control.should_save = False  # a checkpoint of NaN weights would be resumed from

    def error(self, method: str, lr: float) -> TrainingDiverged:
        """The one-line error for a run that diverged (`lr`: the run's peak learning rate)."""
        d = self.diverged or {}
        what = ", ".join(f"{k} {d[k]:.4g}" for k in ("loss", "grad_norm") if k in d)
        return TrainingDiverged(
            f"training diverged at step {d.get('step')}: {what} (method {method}, learning rate {lr:g}, "
            f"{d.get('lr', lr):.3g} at that step); lower the learning rate; no result was written"
        )


class GracefulInterrupt(TrainerCallback):
    """First Ctrl-C: finish the current step, save a checkpoint, stop. Second Ctrl-C: stop at once."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handler(self, signum, frame):
        if self.requested:
            self.uninstall()
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGINT, self._handler)
        except ValueError:  # not the main thread: leave Ctrl-C alone
            self._previous = None
        return self

    def uninstall(self):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def __exit__(self, *exc):
        self.uninstall()
        return False

    def on_step_end(self, args, state, control, **kwargs):
        if self.requested:
            control.should_save = True
            control.should_training_stop = True
