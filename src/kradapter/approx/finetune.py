"""A real fine-tuning delta made offline: the packaged MiniLM briefly fine-tuned on real rated tweets.

No pair of related pretrained/fine-tuned checkpoints ships on the package registries this project can reach, so the
benchmark's default real delta is produced here: full-precision AdamW fine-tuning of MiniLM's last encoder layer
(with its pooler and a fresh 3-way head) for sentiment classification, then W_after - W_before of one tensor.
"""

from __future__ import annotations

import torch


def finetune_minilm_delta(tensor: str, recipe: dict) -> torch.Tensor:
    """Fine-tune per `recipe` (see targets.MINILM_FINETUNE) and return the change of `tensor` (a model.safetensors
    key, without the classifier model's "bert." prefix). Seeded by the recipe on a fork of torch's RNG: the
    caller's RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe["seed"])
        return _finetune(tensor, recipe)


def _finetune(tensor: str, recipe: dict) -> torch.Tensor:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from ..assets import LABELS, load_sentiment, packaged_minilm_path, packaged_sentiment_csv

    path = packaged_minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(LABELS))
    trained = ("bert.encoder.layer.5.", "bert.pooler.", "classifier.")
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(trained))
    param = model.get_parameter("bert." + tensor)
    if not param.requires_grad:
        raise ValueError(f"{tensor!r} is frozen by the fine-tuning recipe; pick a tensor of encoder layer 5")
    before = param.detach().clone()

    steps, bs = recipe["steps"], recipe["batch_size"]
    rows = load_sentiment(packaged_sentiment_csv(), steps * bs, recipe["seed"])
    opt = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=recipe["lr"], weight_decay=recipe["weight_decay"]
    )
    model.train()
    for step in range(steps):
        batch = rows[step * bs : (step + 1) * bs]
        enc = tokenizer(
            [t for t, _ in batch], padding=True, truncation=True, max_length=recipe["max_length"], return_tensors="pt"
        )
        loss = model(**enc, labels=torch.tensor([y for _, y in batch])).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return (param.detach() - before).float()
