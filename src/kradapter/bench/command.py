"""`kradapter bench`: parse, run the pipeline with a progress bar, print the table, write DIR/bench.json."""

from __future__ import annotations

import argparse

from ..cli import command
from .options import DEFAULT_SHAPES, SECTIONS, BenchOptions, parse_sections, parse_shapes


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = BenchOptions()
    p.add_argument("--out", required=True, help="directory for bench.json (created if missing)")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma list of {', '.join(SECTIONS)} (default all)")
    p.add_argument("--tokens", type=int, default=d.tokens, help=f"tokens N for the layer sections (default {d.tokens})")
    p.add_argument(
        "--shapes",
        default=",".join(f"{i}x{o}" for i, o in DEFAULT_SHAPES),
        help="layer shapes IN x OUT, as nn.Linear(IN, OUT)",
    )
    p.add_argument("--k1", default=str(d.k1), help="KRAdapter k1: an int or sqrt / cbrt / qdrt (default sqrt)")
    p.add_argument(
        "--repeats", type=int, default=d.repeats, help=f"timing rounds per layer shape (default {d.repeats})"
    )
    p.add_argument("--warmup", type=int, default=d.warmup)
    p.add_argument("--hidden", type=int, default=d.hidden)
    p.add_argument("--layers", type=int, default=d.layers)
    p.add_argument("--heads", type=int, default=d.heads)
    p.add_argument("--kv-heads", type=int, default=d.kv_heads)
    p.add_argument("--intermediate", type=int, default=d.intermediate)
    p.add_argument("--vocab", type=int, default=d.vocab)
    p.add_argument("--batch", type=int, default=d.batch)
    p.add_argument("--seq", type=int, default=d.seq)
    p.add_argument(
        "--model-repeats",
        type=int,
        default=d.model_repeats,
        help=f"timing rounds of training steps and of inference (default {d.model_repeats})",
    )
    p.add_argument(
        "--memory-steps",
        type=int,
        default=d.memory_steps,
        help=f"training steps in each peak-memory measurement (default {d.memory_steps})",
    )
    p.add_argument(
        "--memory-one-process",
        action="store_true",
        help="measure every method's peak memory in one process (quicker; by default one process each)",
    )
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    p.add_argument(
        "--device",
        default=None,
        help="cpu, cuda or cuda:N (default: cuda when available, else cpu); on CUDA the timings "
        "synchronise the GPU and peak memory is torch.cuda.max_memory_allocated",
    )


def options_from_args(args: argparse.Namespace) -> BenchOptions:
    import torch

    k1 = int(args.k1) if args.k1.isdigit() else args.k1
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    opts = BenchOptions(
        sections=parse_sections(args.sections),
        tokens=args.tokens,
        shapes=parse_shapes(args.shapes),
        k1=k1,
        repeats=args.repeats,
        warmup=args.warmup,
        hidden=args.hidden,
        layers=args.layers,
        heads=args.heads,
        kv_heads=args.kv_heads,
        intermediate=args.intermediate,
        vocab=args.vocab,
        batch=args.batch,
        seq=args.seq,
        model_repeats=args.model_repeats,
        memory_steps=args.memory_steps,
        memory_one_process=args.memory_one_process,
        seed=args.seed,
        threads=args.threads,
        device=device,
    )
    opts.validate()
    return opts


@command(
    "bench", "time and measure the fused KRAdapter path against naive, LoRA, frozen and the 3-GEMM limit", add_arguments
)
def run_bench_command(args: argparse.Namespace) -> int:
    import warnings

    from tqdm.auto import tqdm

    from ..io import check_writable_dir, write_json
    from .pipeline import count_units, run_bench
    from .report import format_report

    opts = options_from_args(args)
    out = check_writable_dir(args.out)
    if opts.threads is not None:
        import torch

        opts.validate()
        torch.set_num_threads(opts.threads)
    # PEFT still calls transformers' renamed gradient-checkpointing helpers; not ours to act on
    warnings.filterwarnings("ignore", message=".*is deprecated and will be removed in v6.*", category=FutureWarning)
    bar = tqdm(total=count_units(opts), desc="bench", unit="step")

    def progress(label: str) -> None:
        bar.set_postfix_str(label)
        bar.update(1)

    results = run_bench(opts, progress)
    bar.close()
    path = write_json(out / "bench.json", results)
    print(format_report(results))
    print(f"wrote {path}")
    return 0
