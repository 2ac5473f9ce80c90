"""Full fine-tuning as a comparator: no adapter; the targets' weight matrices train (their biases stay frozen, as
no adapter trains them either), and Delta W = W - W0 against a copy kept at the start."""

from __future__ import annotations

from .base import MethodSpec


class FullSpec(MethodSpec):
    name = "full"
    summary = "full fine-tuning of the targets' weights, d_out d_in parameters (never matched)"
    hparams = {}
    knob = None
    flattened = grouped = True
    trains_base = True
    default_lr = 3e-4  # kradapter/learning_rates.py

    def count(self, d_out, d_in):
        return d_out * d_in

    def delta(self, layer, adapter):
        raise ValueError("full fine-tuning has no adapter layer: its Delta W is W - W0 (train.methods.full_deltas)")
