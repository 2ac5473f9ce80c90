"""Log-likelihood scoring vs generation with answer extraction on the same questions, in one run.

The commonsense default's model (SmolLM2-135M-Instruct, untouched: the zero-shot model) scores the first N questions
of a test set (default: 40 of social_sciences) 3 ways, exactly as `kradapter train --task commonsense` evaluates them:
`--scoring loglik` (every choice's log-likelihood, acc and acc_norm); `--scoring generate` (LLM-Adapters' protocol:
4-beam search for 32 tokens, then its answer extraction); and greedy generation of 16 tokens (`--num-beams 1
--max-new-tokens 16`, the cheapest generation). Prints seconds per mode, the speed ratios and each mode's zero-shot
scores, and the seconds of one forward pass over the whole prompts (generation's first step, batched as generation
is). Every mode is warmed up on two questions first, so none pays the one-time imports.

    PYTHONPATH=src python benchmarks/scoring_speed.py --questions 40 --threads 1 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import time


def prepared_for(scoring: str, args, extra: tuple[str, ...] = ()):
    from kradapter.cli import _load_commands
    from kradapter.train.commands import add_train_arguments
    from kradapter.train.tasks.commonsense import prepare

    _load_commands()
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    targs = parser.parse_args(
        [
            "--task",
            "commonsense",
            "--scoring",
            scoring,
            "--quiet",
            "--max-eval-examples",
            str(args.questions),
            "--eval-batch-size",
            str(args.batch_size),
            *extra,
        ]
    )
    return prepare(targs)


def prompt_pass(model, prompts: list[list[int]], batch_size: int) -> float:
    """Seconds of one no-grad forward over every prompt, longest first, left-padded, last position's logits only."""
    import torch

    order = sorted(prompts, key=len, reverse=True)
    t0 = time.perf_counter()
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            batch = order[start : start + batch_size]
            width = len(batch[0])
            ids = torch.zeros((len(batch), width), dtype=torch.long)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for i, s in enumerate(batch):
                ids[i, width - len(s) :], mask[i, width - len(s) :] = torch.tensor(s), 1
            model(input_ids=ids, attention_mask=mask, logits_to_keep=1)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--questions", type=int, default=40)
    p.add_argument(
        "--set", default="social_sciences", help="test set of the commonsense default (default social_sciences)"
    )
    p.add_argument("--batch-size", type=int, default=64, help="--eval-batch-size (generation uses half, as train)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=1, help="time each mode this many times, keep the fastest")
    args = p.parse_args()

    import datasets
    import torch
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    datasets.disable_progress_bars()
    torch.set_num_threads(args.threads)
    modes = {  # name -> the task prepared for it: loglik, LLM-Adapters' protocol (the task's defaults), greedy
        "loglik": prepared_for("loglik", args),
        "generate": prepared_for("generate", args),
        "greedy": prepared_for("generate", args, ("--num-beams", "1", "--max-new-tokens", "16")),
    }
    model = modes["loglik"].build_model()
    sets = {name: prep.tests[args.set] for name, prep in modes.items()}
    ds_l = sets["loglik"]
    assert all(ds["input_ids"] == ds_l["input_ids"] for ds in sets.values())  # the same questions and prompts
    # one-time costs (imports the metrics pull in, first-call allocations) out of every timing
    for name, prep in modes.items():
        prep.evaluate(model, sets[name].select(range(min(2, len(ds_l)))))
    times: dict[str, float] = {}
    scores = {}
    for _ in range(args.repeats):  # modes interleaved, the fastest of each kept: the load of a shared machine
        for name, prep in modes.items():
            ds = sets[name]
            t0 = time.perf_counter()
            scores[name] = prep.evaluate(model, ds)
            times[name] = min(times.get(name, float("inf")), time.perf_counter() - t0)
        t = prompt_pass(model, ds_l["input_ids"], max(1, args.batch_size // 2))
        times["prompts"] = min(times.get("prompts", float("inf")), t)
    load = os.getloadavg()[0]
    print(
        f"{len(ds_l)} questions of {args.set}, SmolLM2-135M-Instruct zero-shot, {args.threads} thread(s), "
        f"load average {load:.2f}, fastest of {args.repeats}"
    )
    for name in scores:
        shown = ", ".join(f"{k} {100 * v:.1f}" for k, v in scores[name].items())
        print(f"  {name:<9} {times[name]:7.1f} s   {shown}")
    print(
        f"  prompts   {times['prompts']:7.1f} s   one forward pass over the whole prompts, batched as generation "
        "(its first step): generation's floor"
    )
    print(
        f"  generation / log-likelihood time: {times['generate'] / times['loglik']:.1f}x (LLM-Adapters' protocol: "
        f"4 beams, 32 tokens), {times['greedy'] / times['loglik']:.1f}x (greedy, 16 tokens)"
    )


if __name__ == "__main__":
    main()
