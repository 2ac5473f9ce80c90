"""Sections c and d: a Llama-shaped model built from a config (no download), k_proj and v_proj adapted as in the
paper. Training step time and peak memory for KRAdapter, LoRA at the same budget and full fine-tuning; inference
of the merged KRAdapter model against the base model, and of unmerged KRAdapter against unmerged LoRA."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from peft import get_peft_model
from torch import nn

from .. import budget
from ..specs import get_spec
from .options import BenchOptions

TARGETS = ["k_proj", "v_proj"]
TRAIN_METHODS = ("kradapter", "lora", "full")
REFERENCE = "kradapter"  # the method whose count is the budget


def llama_config(opts: BenchOptions):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=opts.vocab,
        hidden_size=opts.hidden,
        intermediate_size=opts.intermediate,
        num_hidden_layers=opts.layers,
        num_attention_heads=opts.heads,
        num_key_value_heads=opts.kv_heads,
        max_position_embeddings=max(opts.seq, 128),
        tie_word_embeddings=False,
    )


def build_base(opts: BenchOptions) -> nn.Module:
    from transformers import LlamaForCausalLM

    with torch.random.fork_rng(devices=[]):  # seeded weights, the caller's RNG left as it was
        torch.manual_seed(opts.seed)
        return LlamaForCausalLM(llama_config(opts)).to(opts.device).eval()


def kv_shape(opts: BenchOptions) -> tuple[int, int]:
    """(d_out, d_in) of k_proj and v_proj: grouped heads make them hidden -> kv_heads * head_dim."""
    return opts.kv_heads * (opts.hidden // opts.heads), opts.hidden


def prepare(method: str, base: nn.Module, opts: BenchOptions, kradapter_init_weights: bool = True) -> nn.Module:
    """The model to train (or run) for `method`, configured by the budget matcher; wraps `base` in place. The
    reference, KRAdapter at --k1, sets the budget every other method is matched to."""
    if method not in TRAIN_METHODS:
        raise ValueError(f"unknown training method {method!r}; choose from {', '.join(TRAIN_METHODS)}")
    if get_spec(method).trains_base:
        return base.requires_grad_(True)
    if method == REFERENCE:
        config = budget.peft_config_for(REFERENCE, base, TARGETS, k1=opts.k1, init_weights=kradapter_init_weights)
    else:
        kr_total = budget.match_model(REFERENCE, base, TARGETS, k1=opts.k1)["trainable"]
        config = budget.peft_config_for(method, base, TARGETS, budget=kr_total)
    return get_peft_model(base, config).to(opts.device)  # adapters on the base's device, whatever the method


def make_batch(opts: BenchOptions) -> torch.Tensor:
    g = torch.Generator().manual_seed(opts.seed + 1)
    return torch.randint(0, opts.vocab, (opts.batch, opts.seq), generator=g).to(opts.device)


def train_step(model: nn.Module, ids: torch.Tensor) -> Callable[[], float]:
    """A closure running one AdamW step (forward, backward, update, gradients freed) on the trainable weights."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    model.train()

    def step() -> float:
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    return step


def training_models(opts: BenchOptions) -> dict[str, nn.Module]:
    base = build_base(opts)
    return {method: prepare(method, copy.deepcopy(base), opts) for method in TRAIN_METHODS}


def inference_models(opts: BenchOptions) -> dict[str, nn.Module]:
    """base, merged KRAdapter (random U so the merge changes the weights), unmerged KRAdapter, unmerged LoRA."""
    base = build_base(opts).requires_grad_(False)  # as frozen as the PEFT models' bases
    merged = prepare("kradapter", copy.deepcopy(base), opts, kradapter_init_weights=False).merge_and_unload()
    models = {
        "base": base,
        "kradapter_merged": merged,
        "kradapter": prepare("kradapter", copy.deepcopy(base), opts, kradapter_init_weights=False),
        "lora": prepare("lora", copy.deepcopy(base), opts),
    }
    return {name: m.eval() for name, m in models.items()}


def forward_only(model: nn.Module, ids: torch.Tensor) -> Callable[[], None]:
    def run():
        with torch.inference_mode():
            model(input_ids=ids)

    return run
