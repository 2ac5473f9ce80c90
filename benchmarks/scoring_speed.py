"""Log-likelihood scoring vs generation with answer extraction on the same questions, in one run.

The commonsense default's model (SmolLM2-135M-Instruct, untouched: the zero-shot model) scores the first N questions
of a test set (default: 40 of social_iqa) both ways, exactly as `kradapter train --task commonsense` evaluates them
(`--scoring loglik`: every choice's log-likelihood, acc and acc_norm; `--scoring generate`: 16 greedy tokens and
LLM-Adapters' answer extraction). Prints seconds per mode, the speed ratio and each mode's zero-shot scores, and
the seconds of one forward pass over the whole prompts (generation's first step, batched as generation is). Both
modes are warmed up on two questions first, so neither pays the one-time imports.

    PYTHONPATH=src python benchmarks/scoring_speed.py --questions 40 --threads 1 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import time


def prepared_for(scoring: str, args):
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
    p.add_argument("--set", default="social_iqa", help="test set of the commonsense default (default social_iqa)")
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
    loglik, generate = prepared_for("loglik", args), prepared_for("generate", args)
    model = loglik.build_model()
    ds_l, ds_g = loglik.tests[args.set], generate.tests[args.set]
    assert ds_l["input_ids"] == ds_g["input_ids"]  # the same questions, the same prompts
    # one-time costs (imports the metrics pull in, first-call allocations) out of both timings
    for prep, ds in ((loglik, ds_l), (generate, ds_g)):
        prep.evaluate(model, ds.select(range(min(2, len(ds)))))
    times: dict[str, float] = {}
    scores = {}
    for _ in range(args.repeats):  # modes interleaved, the fastest of each kept: the load of a shared machine
        for name, prep, ds in (("loglik", loglik, ds_l), ("generate", generate, ds_g)):
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
    print(f"  generation / log-likelihood time: {times['generate'] / times['loglik']:.1f}x")


if __name__ == "__main__":
    main()
