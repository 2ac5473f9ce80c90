"""The Trainer's progress bar, labelled with the run it belongs to, and its log lines kept off stdout.

transformers' ProgressCallback draws an unlabelled bar and writes each log dict (loss, learning rate, ...) to stdout
through tqdm, where `kradapter train` and `compare` print their tables; with ``disable_tqdm`` the Trainer prints the
same dicts with print(). Here the bar says which method, seed and learning rate it counts, and the log lines go to
stderr beside it (or nowhere under --quiet): stdout holds only the results.
"""

from __future__ import annotations

import sys

from tqdm.auto import tqdm
from transformers import TrainerCallback


class LabelledProgress(TrainerCallback):
    """A training bar labelled `label` on stderr; the Trainer's log dicts written above it, on stderr too."""

    def __init__(self, label: str, show: bool = True):
        self.label, self.show = label, show
        self.bar = None
        self.done = 0

    def on_train_begin(self, args, state, control, **kwargs):
        if self.show and state.is_world_process_zero:
            self.bar = tqdm(total=state.max_steps, desc=self.label, file=sys.stderr, dynamic_ncols=True)
            self.bar.update(state.global_step)  # a resumed run starts where its checkpoint left off
            self.done = state.global_step

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.done)
            self.done = state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.bar is not None and logs:
            shown = {k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in logs.items() if k != "total_flos"}
            self.bar.write(f"{self.label}: {shown}", file=sys.stderr)

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def use_labelled_progress(trainer, label: str, show: bool) -> None:
    """Replace the Trainer's own progress bar or printer with a LabelledProgress."""
    from transformers.trainer_callback import PrinterCallback, ProgressCallback

    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(LabelledProgress(label, show))
