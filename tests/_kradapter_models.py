"""Tiny models shared by the KRAdapter tests: plain nn.Modules and transformers models built from configs."""

from __future__ import annotations

import torch
from torch import nn


class MLP(nn.Module):
    """Two Linear layers of opposite orientation (wide-out then narrow-out) and a head for modules_to_save."""

    def __init__(self, d_in: int = 12, hidden: int = 20, d_out: int = 3):
        super().__init__()
        self.lin0 = nn.Linear(d_in, hidden)
        self.lin1 = nn.Linear(hidden, hidden // 2)
        self.head = nn.Linear(hidden // 2, d_out)

    def forward(self, x):
        return self.head(torch.relu(self.lin1(torch.relu(self.lin0(x)))))


class ConvNet(nn.Module):
    """Conv2d layers with stride, padding, dilation and groups, then a Linear head."""

    def __init__(self):
        super().__init__()
        self.conv0 = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.conv1 = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        x = torch.relu(self.conv1(torch.relu(self.conv0(x))))
        return self.head(self.pool(x).flatten(1))


def tiny_llama(seed: int = 0, layers: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    return LlamaForCausalLM(cfg).eval()


def tiny_gpt2(seed: int = 0):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=32)
    return GPT2LMHeadModel(cfg).eval()


def tiny_bert_classifier(seed: int = 0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        max_position_embeddings=32,
        num_labels=3,
    )
    return BertForSequenceClassification(cfg).eval()


def snapshot(model: nn.Module) -> dict:
    """Everything 'unmodified' means: module tree, parameter values and requires_grad, and no PEFT bookkeeping."""
    return {
        "modules": [(name, type(m)) for name, m in model.named_modules()],
        "params": {name: (p.detach().clone(), p.requires_grad) for name, p in model.named_parameters()},
        "peft_config": hasattr(model, "peft_config"),
    }


def assert_same_snapshot(before: dict, after: dict) -> None:
    assert after["modules"] == before["modules"]
    assert after["params"].keys() == before["params"].keys()
    for name, (value, requires_grad) in before["params"].items():
        assert torch.equal(after["params"][name][0], value), name
        assert after["params"][name][1] == requires_grad, name
    assert after["peft_config"] == before["peft_config"]
