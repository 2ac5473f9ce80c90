"""`kradapter train`, `kradapter compare`, `kradapter report`: parse, call the recipes, print."""

from __future__ import annotations

import argparse
import os
import sys

from ..cli import command
from ..quant import QUANTIZE_CHOICES
from .options import option_type
from .tasks import TASKS, all_task_modules


def add_train_arguments(p: argparse.ArgumentParser, compare: bool = False) -> None:
    p.add_argument("--task", required=True, choices=list(TASKS), help="; ".join(f"{k}: {v}" for k, v in TASKS.items()))
    p.add_argument(
        "--model",
        default=None,
        help="local path or name for from_pretrained (default: the task's offline default model)",
    )
    p.add_argument(
        "--data",
        action="append",
        default=None,
        metavar="ROLE=PATH",
        help="repeatable: train=F, validation=F, test=F, id:NAME=F, nid:NAME=F, ood:NAME=F "
        "(json/jsonl/csv/tsv/parquet file or imagefolder dir); default: the task's offline data",
    )
    if not compare:
        p.add_argument(
            "--method",
            default="kradapter",
            help="kradapter (default), lora, dora, randlora, krona, "
            "sinlora, kronlora or full; budgets matched to KRAdapter",
        )
        p.add_argument(
            "--lr",
            type=option_type("lr"),
            default=None,
            help="learning rate (default per method, from the validation grids of benchmarks/RECIPES.md: "
            "kradapter 3e-2 at alpha 0.1, lora 3e-3, full 3e-4, randlora 3e-4; others 1e-3, not measured)",
        )
        p.add_argument("--output-dir", default=None, help="where results go (default runs/TASK-METHOD)")
        p.add_argument(
            "--budget",
            default=None,
            metavar="WORD",
            help="trainable budget: low (default, KRAdapter's k1 = m^(1/2)), medium (m^(1/3)) or high "
            "(m^(1/4)); comparators are matched to KRAdapter's count",
        )
    p.add_argument(
        "--lr-grid",
        default=None,
        metavar="LR,LR,...",
        help="try these learning rates on the validation split (first seed) and keep the best"
        + ("; per method: kradapter=1e-3:3e-3,lora=3e-4:1e-3" if compare else ""),
    )
    p.add_argument("--seeds", default="1", help="number of seeds (5 -> 0..4) or a list (0,3,7); default 1")
    p.add_argument(
        "--max-steps", type=option_type("max_steps"), default=None, help="training steps (overrides --epochs)"
    )
    p.add_argument(
        "--epochs", type=option_type("epochs"), default=None, help="training epochs when --max-steps is not given"
    )
    p.add_argument(
        "--batch-size",
        type=option_type("batch_size"),
        default=None,
        help="global training batch size, split evenly over "
        "the processes under torchrun / accelerate launch (default per task)",
    )
    p.add_argument("--eval-batch-size", type=option_type("eval_batch_size"), default=64)
    p.add_argument(
        "--target-modules",
        default=None,
        help="comma-separated module names (suffixes) or regexes to adapt (default: attention key and "
        "value; image: non-depthwise convs)",
    )
    p.add_argument(
        "--max-train-examples",
        type=option_type("max_train_examples"),
        default=None,
        help="cap on training rows (seeded sample)",
    )
    p.add_argument(
        "--max-eval-examples",
        type=option_type("max_eval_examples"),
        default=None,
        help="cap on rows per test set and validation",
    )
    p.add_argument(
        "--val-size",
        type=option_type("val_size"),
        default=None,
        help="rows held out of train as the validation split when no validation file is given",
    )
    p.add_argument(
        "--data-seed", type=option_type("data_seed"), default=0, help="seed of the data sampling (default 0)"
    )
    p.add_argument("--warmup-ratio", type=option_type("warmup_ratio"), default=0.0)
    p.add_argument("--logging-steps", type=option_type("logging_steps"), default=25)
    p.add_argument(
        "--save-steps",
        type=option_type("save_steps"),
        default=None,
        help="checkpoint every N steps (default: 4 per run)",
    )
    p.add_argument(
        "--rank-every",
        type=option_type("rank_every"),
        default=None,
        help="measure the effective rank of the updates every N steps (default: 20 points per run)",
    )
    p.add_argument("--keep-checkpoints", action="store_true", help="keep Trainer checkpoints after a seed ends")
    p.add_argument("--zero-shot-cache", default=None, help=argparse.SUPPRESS)
    p.add_argument(
        "--threads",
        type=option_type("threads"),
        default=None,
        help="torch CPU threads (default: torch's choice; 1 is faster on a busy shared machine)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument(
        "--deepspeed",
        default=None,
        metavar="CONFIG",
        help="train under DeepSpeed with this config (ZeRO-2/3, e.g. examples/deepspeed/zero3.json), launched by "
        "the deepspeed launcher or torchrun; needs kradapter[deepspeed]. Under accelerate launch --use_deepspeed "
        "give the config to accelerate instead",
    )
    p.add_argument(
        "--quantize",
        choices=QUANTIZE_CHOICES,
        default=None,
        help="load the base model quantized by bitsandbytes, QLoRA-style (4bit: NF4 + double "
        "quantization; 8bit: LLM.int8()); commonsense task, adapter methods; needs kradapter[quant]",
    )
    for module in all_task_modules():
        module.add_arguments(p)


def _train_arguments(p: argparse.ArgumentParser) -> None:
    add_train_arguments(p)


@command(
    "train",
    "fine-tune with any method on a task (text, glue, commonsense, image, clip); writes metrics, "
    "adapter, spectral report",
    _train_arguments,
)
def run_train(args: argparse.Namespace) -> int:
    from .runner import TrainingInterrupted, run

    args.output_dir = args.output_dir or f"runs/{args.task}-{args.method}"
    _quiet_libraries()
    _show_run_notes()
    from ..dist import finish, is_main_process

    if args.model:
        args.model = _trainable_model_path(args.model, is_main_process())

    try:
        metrics = run(args)
    except TrainingInterrupted as err:
        print(f"kradapter train: {err}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:  # run() turns every Ctrl-C once it has started into TrainingInterrupted
        print("kradapter train: interrupted before the run started; nothing was written", file=sys.stderr)
        return 130
    from .runner import format_summary

    if is_main_process():  # under torchrun every rank holds the same results; one prints them
        print(format_summary(metrics), end="")
        print(f"results: {args.output_dir}/metrics.json, summary.txt; adapter: {args.output_dir}")
    finish()  # torchrun: barrier, then leave the process group
    return 0


def _trainable_model_path(model: str, speak: bool) -> str:
    """A GGUF file (or a directory holding one) is dequantized once to a plain checkpoint the Trainer can train."""
    from ..gguf import dequantize_gguf, dequantized_dir, find_gguf, is_dequantized

    source = find_gguf(model)
    if source is None:
        return model
    out = dequantized_dir(source)
    if speak:
        done = is_dequantized(out)
        print(
            f"--model {model}: {source.name} is a GGUF file, which the Trainer cannot train; "
            + (
                f"using its float32 copy in {out}"
                if done
                else f"dequantizing it once to float32 in {out} (later runs reuse it)"
            ),
            flush=True,
        )
    return dequantize_gguf(source, out=out)


def _show_run_notes() -> None:
    """The runner's notes (which checkpoint a rerun resumes from, leftovers it removed) go to stderr."""
    import logging

    logger = logging.getLogger("kradapter.train")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("kradapter train: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def _quiet_libraries() -> None:
    """transformers' and datasets' info chatter (newly initialised heads, cache notices) is expected here."""
    import datasets
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # per-file "Loading weights" bars; training and evaluation keep theirs
    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()


def _compare_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--methods",
        default="kradapter,lora,full",
        help="comma-separated methods to compare (default kradapter,lora,full)",
    )
    p.add_argument(
        "--lr",
        default=None,
        metavar="LR | METHOD=LR,...",
        help="one learning rate for all, or per method, e.g. kradapter=3e-3,lora=1e-3 (others: their default)",
    )
    p.add_argument("--output-dir", default=None, help="where runs and tables go (default runs/compare-TASK)")
    p.add_argument(
        "--budgets",
        default=None,
        metavar="WORD,...",
        help="budget ablation (the paper's Figure 3): every method at each of these budgets (low, medium, "
        "high: KRAdapter's k1 = m^(1/2), m^(1/3), m^(1/4), comparators matched), plotted as score against "
        "trainable parameters; runs go to DIR/budget-WORD/METHOD",
    )
    from .uncertainty import DEFAULT_SAMPLES, INTERVAL_METHODS, parse_interval, parse_samples

    p.add_argument(
        "--interval",
        type=parse_interval,
        default=INTERVAL_METHODS[0],
        metavar="METHOD",
        help="how compare computes its intervals and paired tests: bootstrap (the default and only one: over "
        "test examples and seeds, see docs/guides/recipes.md)",
    )
    p.add_argument(
        "--bootstrap-samples",
        type=parse_samples,
        default=DEFAULT_SAMPLES,
        metavar="N",
        help=f"bootstrap draws (default {DEFAULT_SAMPLES}, seeded: the same runs give the same intervals)",
    )
    add_train_arguments(p, compare=True)


@command(
    "compare", "run several methods on one task and print/plot the paper-style comparison table", _compare_arguments
)
def run_compare(args: argparse.Namespace) -> int:
    from .compare import run

    _quiet_libraries()
    try:
        return run(args, train=run_train)
    except KeyboardInterrupt:
        print("kradapter compare: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


def _report_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("adapter_dir", help="a directory written by `kradapter train` or by PEFT's save_pretrained")
    p.add_argument("--base", default=None, help="base model path (default: the one the adapter records)")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the report as JSON")


@command(
    "report",
    "spectral report (effective rank, nuclear and Frobenius norms) of every adapted layer of a saved adapter",
    _report_arguments,
)
def run_report(args: argparse.Namespace) -> int:
    from ..io import write_json
    from .deltas import format_spectral_table
    from .report import spectral_report

    if args.json and os.path.isdir(args.json):
        raise ValueError(
            f"--json {args.json} is a directory; give a file path, e.g. {os.path.join(args.json, 'report.json')}"
        )
    _quiet_libraries()
    report = spectral_report(args.adapter_dir, args.base)
    print(f"{report['directory']}: method {report['method']}, {len(report['spectral'])} adapted layers")
    print(format_spectral_table(report["spectral"]))
    if args.json:
        write_json(args.json, report)
    return 0
