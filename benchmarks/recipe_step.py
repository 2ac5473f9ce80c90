"""One training step of a recipe's real model, per method, timed in the same run: what the `s/epoch` columns of
RECIPES.md would show on a quiet machine. Methods are applied exactly as `kradapter train` applies them (budgets
matched to KRAdapter's count, the head trained); `kradapter-plain` is KRAdapter with `fused=False` (the plain path:
base layer plus a second full-size product with Delta W). Rounds are interleaved, the order reversed every other
round; prints median seconds per step and ratios to LoRA.

    PYTHONPATH=src python benchmarks/recipe_step.py --task text      # MiniLM, key/value, batch 16 x 64 tokens
    PYTHONPATH=src python benchmarks/recipe_step.py --task image     # EfficientNet-Lite0, 32 convs, batch 32 x 64 x 64
"""

import argparse
import copy
import statistics
import time

import torch

from kradapter.train.methods import apply_method


def text_case(batch: int):
    from kradapter.train.tasks.text import _default_model, load_model

    model = load_model(_default_model(), num_labels=3)
    targets = [n for n, _ in model.named_modules() if n.endswith(("attention.self.key", "attention.self.value"))]
    ids = torch.randint(1000, 20000, (batch, 64))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": torch.randint(0, 3, (batch,))}
    return model, targets, ["classifier"], inputs


def image_case(batch: int):
    from kradapter.train.tasks.image import default_conv_targets, load_model

    model = load_model("efficientnet-lite0", num_labels=10)
    inputs = {"pixel_values": torch.randn(batch, 3, 64, 64), "labels": torch.randint(0, 10, (batch,))}
    return model, default_conv_targets(model), ["backbone._fc"], inputs


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--task", choices=("text", "image"), default="text")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--batch", type=int, default=None, help="default: the recipe's (text 16, image 32)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    batch = args.batch or (16 if args.task == "text" else 32)
    base, targets, head, inputs = (text_case if args.task == "text" else image_case)(batch)
    steps = {}
    for name in ("kradapter", "kradapter-plain", "lora", "full"):
        model, _ = apply_method(copy.deepcopy(base), name.split("-")[0], targets, head)
        if name == "kradapter-plain":
            for m in model.modules():
                if hasattr(m, "fused"):
                    m.fused = False
        model.train()
        opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-4)

        def step(model=model, opt=opt):
            opt.zero_grad(set_to_none=True)
            model(**inputs)["loss"].backward()
            opt.step()

        step()  # warm-up: gradients and optimizer state
        steps[name] = step
    times = {name: [] for name in steps}
    for r in range(args.rounds):
        for name in list(steps) if r % 2 == 0 else list(steps)[::-1]:
            start = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - start)
    med = {name: statistics.median(t) for name, t in times.items()}
    print(
        f"task {args.task}: {len(targets)} adapted modules, batch {batch}, {args.threads} thread(s), "
        f"{args.rounds} rounds"
    )
    for name, m in med.items():
        paired = statistics.median(a / b for a, b in zip(times[name], times["lora"]))
        print(f"  {name:<16} {m:.3f} s per training step   / LoRA {m / med['lora']:.3f} (paired {paired:.3f})")


if __name__ == "__main__":
    main()
