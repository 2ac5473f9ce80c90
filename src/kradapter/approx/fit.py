"""Fit one method's update to a target: AdamW, MSE, fixed iterations (the paper's appendix C.1).

The loss is MSE(Delta W, T), which is MSE(W0 + Delta W, W0 + T) without two extra passes over the matrix.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .methods import Adapted


@dataclass
class FitResult:
    delta: torch.Tensor  # the fitted Delta W (d_out x d_in), detached
    final_loss: float  # MSE(Delta W, T) after the last step
    seconds: float  # wall-clock of the optimisation loop only


def fit(adapted: Adapted, target: torch.Tensor, iters: int, lr: float, weight_decay: float = 0.01) -> FitResult:
    # fused: the same AdamW update in one kernel, ~7x faster on CPU for the 786k-parameter "full" method.
    opt = torch.optim.AdamW(adapted.params, lr=lr, weight_decay=weight_decay, fused=True)  # betas (0.9, 0.999)
    start = time.perf_counter()
    for _ in range(iters):
        opt.zero_grad(set_to_none=True)
        loss = F.mse_loss(adapted.delta(), target)
        loss.backward()
        opt.step()
    seconds = time.perf_counter() - start
    with torch.no_grad():
        delta = adapted.delta().detach().clone()
        final = float(F.mse_loss(delta, target))
    return FitResult(delta, final, seconds)
