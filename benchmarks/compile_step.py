"""torch.compile against eager: one AdamW training step of the Llama-shaped bench model (src/kradapter/bench/model.py:
k_proj and v_proj adapted, d_out < d_in under grouped-query attention) for KRAdapter and for LoRA at the same
trainable count, compiled with fullgraph=True. Prints each method's median step times and the ratio compiled / eager,
all from one run with the four variants interleaved round by round, so machine load shifts them alike; checks that
the compiled first step's loss equals eager's.

    PYTHONPATH=src python benchmarks/compile_step.py [--hidden 1024 --layers 4 --seq 512 ...] [--device cuda]

Defaults are `kradapter bench`'s model; on a small shared CPU pass smaller sizes (the README says which).
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time

import torch

from kradapter.bench.model import build_base, make_batch, prepare, train_step
from kradapter.bench.options import BenchOptions

METHODS = ("kradapter", "lora")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    defaults = BenchOptions()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for name in ("hidden", "layers", "heads", "kv_heads", "intermediate", "vocab", "batch", "seq"):
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(defaults, name))
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (each runs every variant once)")
    parser.add_argument("--backend", default="inductor")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    opts = BenchOptions(
        **{
            k: getattr(args, k)
            for k in ("hidden", "layers", "heads", "kv_heads", "intermediate", "vocab", "batch", "seq")
        }
    )
    opts.validate()
    device = torch.device(args.device)
    ids = make_batch(opts).to(device)
    base = build_base(opts).to(device)

    steps, first = {}, {}
    for method in METHODS:
        for mode in ("eager", "compiled"):
            model = prepare(method, copy.deepcopy(base), opts)
            run = torch.compile(model, backend=args.backend, fullgraph=True) if mode == "compiled" else model
            steps[method, mode] = train_step(run, ids)
            start = time.perf_counter()
            first[method, mode] = (steps[method, mode](), time.perf_counter() - start)  # compiles, if compiled
    times: dict = {key: [] for key in steps}
    for _ in range(args.repeats):
        for key, step in steps.items():
            sync(device)
            start = time.perf_counter()
            step()
            sync(device)
            times[key].append(time.perf_counter() - start)

    load = ", ".join(f"{v:.1f}" for v in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    print(
        f"torch {torch.__version__}, device {device}, backend {args.backend}, fullgraph=True; hidden {opts.hidden}, "
        f"layers {opts.layers}, heads {opts.heads}/{opts.kv_heads}, batch {opts.batch} x seq {opts.seq}; "
        f"median of {args.repeats} rounds; load average {load}; {torch.get_num_threads()} threads"
    )
    print(
        "| method | eager step (ms) | compiled step (ms) | compiled / eager | first compiled step (s) | "
        "first loss eager = compiled |"
    )
    print("|---|---|---|---|---|---|")
    for method in METHODS:
        eager, comp = (statistics.median(times[method, m]) for m in ("eager", "compiled"))
        same = abs(first[method, "eager"][0] - first[method, "compiled"][0]) <= 1e-4 * abs(first[method, "eager"][0])
        print(
            f"| {method} | {eager * 1e3:.1f} | {comp * 1e3:.1f} | {comp / eager:.2f} | "
            f"{first[method, 'compiled'][1]:.1f} | {same} |"
        )


if __name__ == "__main__":
    main()
