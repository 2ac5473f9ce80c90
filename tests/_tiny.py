"""Tiny offline models shared by the method tests: a Linear pair and a GPT-2 style Conv1D pair."""

from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D


class TinyMLP(nn.Module):
    """fc1: 16 -> 24 (nn.Linear), act, fc2: 24 -> 8 (transformers Conv1D, weight stored d_in x d_out)."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.fc1 = nn.Linear(16, 24)
        self.act = nn.Tanh()
        self.fc2 = Conv1D(8, 24)
        with torch.no_grad():
            self.fc2.weight.normal_(0, 0.2)
            self.fc2.bias.normal_(0, 0.1)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


def fresh(seed: int = 0) -> TinyMLP:
    return TinyMLP(seed)
