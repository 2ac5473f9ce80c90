"""Sections a and b: one adapted layer at N tokens, forward + backward, five ways.

kradapter  our layer (fused path)
naive      the same layer on the plain path: materialise Delta W, then W0 x + x Delta W^T (the official snippet)
lora       PEFT LoRA at the same budget: the smallest r with r (d_in + d_out) >= KRAdapter's count
frozen     the bare frozen layer (forward and dX only)
3gemm      three plain GEMMs of the layer's size (forward, dX, dW): the limit for an adapter that trains a full-rank
           update from dW
"""

from __future__ import annotations

import copy
import dataclasses

import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from .. import KRAdapterConfig, budget

METHODS = ("kradapter", "naive", "lora", "frozen", "3gemm")


def kradapter_count(d_out: int, d_in: int, k1: int | str) -> int:
    return budget.trainable_count("kradapter", d_out, d_in, k1=k1)


def lora_rank_at_budget(d_out: int, d_in: int, k1: int | str) -> int:
    """Smallest LoRA rank whose trainable count r * (d_in + d_out) reaches KRAdapter's n * (k1 + k2)."""
    return budget.match_layer("lora", d_out, d_in, budget=kradapter_count(d_out, d_in, k1))["hparams"]["r"]


class OneLayer(nn.Module):
    """A model that is one linear layer, so PEFT can adapt it by name."""

    def __init__(self, linear: nn.Module):
        super().__init__()
        self.proj = linear

    def forward(self, x):
        return self.proj(x)


def build_layers(d_in: int, d_out: int, k1: int | str, seed: int) -> dict[str, nn.Module]:
    with torch.random.fork_rng(devices=[]):  # seeded layers, the caller's RNG left as it was
        torch.manual_seed(seed)
        return _build_layers(d_in, d_out, k1)


def _build_layers(d_in: int, d_out: int, k1: int | str) -> dict[str, nn.Module]:
    base = nn.Linear(d_in, d_out).requires_grad_(False)
    r = lora_rank_at_budget(d_out, d_in, k1)
    kr = KRAdapterConfig(target_modules=["proj"], k1=k1, init_weights=False)
    ours = get_peft_model(OneLayer(copy.deepcopy(base)), kr)
    naive = get_peft_model(OneLayer(copy.deepcopy(base)), dataclasses.replace(kr, fused=False))
    naive.load_state_dict(ours.state_dict())  # the same function, two paths
    return {
        "kradapter": ours,
        "naive": naive,
        "lora": get_peft_model(
            OneLayer(copy.deepcopy(base)),
            LoraConfig(target_modules=["proj"], r=r, lora_alpha=r, init_lora_weights=False),
        ),
        "frozen": OneLayer(base),
    }


def layer_case(d_in: int, d_out: int, tokens: int, k1: int | str, seed: int, device: str = "cpu"):
    """(candidates: name -> fwd+bwd closure, modules, x) for one shape, on `device` (built on CPU, then moved, so
    every device gets the same values)."""
    modules = {name: m.to(device) for name, m in build_layers(d_in, d_out, k1, seed).items()}
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(tokens, d_in, generator=g).to(device).requires_grad_(True)
    dy = torch.randn(tokens, d_out, generator=g).to(device)
    w = modules["frozen"].proj.weight.detach()

    def fwd_bwd(module):
        params = [p for p in module.parameters() if p.requires_grad]

        def run():
            x.grad = None
            for p in params:
                p.grad = None
            module(x).backward(dy)

        return run

    def three_gemms():
        xd = x.detach()
        torch.mm(xd, w.T)  # forward
        torch.mm(dy, w)  # dX
        torch.mm(dy.T, xd)  # dW

    candidates = {name: fwd_bwd(m) for name, m in modules.items()}
    candidates["3gemm"] = three_gemms
    return candidates, modules, x


def trainable_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def adapter_bytes(module: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in module.parameters() if p.requires_grad)
