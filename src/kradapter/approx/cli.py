"""`kradapter approx` and `kradapter spectrum`: parse, call the library, print."""

from __future__ import annotations

import argparse
import time

from ..cli import command


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _approx_arguments(p: argparse.ArgumentParser) -> None:
    from .methods import method_names
    from .targets import all_target_names

    p.add_argument("--out", required=True, help="output directory (approx.json, figure1.png, figure5.png)")
    p.add_argument(
        "--size",
        type=int,
        nargs=2,
        default=(1024, 768),
        metavar=("D_OUT", "D_IN"),
        help="target matrix shape (default 1024 768, the paper's)",
    )
    p.add_argument("--iters", type=int, default=100, help="AdamW steps per fit (default 100)")
    p.add_argument("--lr", type=float, default=1e-2, help="AdamW learning rate (default 1e-2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--methods", type=_names, default=None, help=f"comma-separated, default all: {','.join(method_names())}"
    )
    p.add_argument(
        "--targets",
        type=_names,
        default=None,
        help=f"comma-separated, default all available: {','.join(all_target_names())}",
    )
    p.add_argument(
        "--real-a",
        default=None,
        help="checkpoint (HF model dir or .safetensors) for the 'checkpoint' "
        "target: its tensor, or with --real-b the delta b - a",
    )
    p.add_argument("--real-b", default=None, help="fine-tuned checkpoint; the target is b[tensor] - a[tensor]")
    p.add_argument("--tensor", default=None, help="tensor name in the checkpoint(s)")
    p.add_argument(
        "--figure5-size",
        type=int,
        default=128,
        help="side of the square Figure-5 fits (default 128 as in the paper; 0 skips them)",
    )
    p.add_argument(
        "--cache-dir",
        default=None,
        help="where the MiniLM fine-tuning delta is cached (default $KRADAPTER_CACHE or ~/.cache/kradapter)",
    )
    p.add_argument(
        "--scaling",
        choices=("unit", "peft"),
        default="unit",
        help="each method's output multiplier: 'unit' = 1 for every method (default; as in the paper "
        "authors' toy code), 'peft' = the configs' library defaults (e.g. KRAdapter alpha 0.1)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=2,
        help="fits run concurrently on this many threads (default 2, one per core here)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a busy 2-core machine more threads made each fit 10x slower)",
    )


@command(
    "approx",
    "fit target matrices with every PEFT method at KRAdapter's parameter budget (paper Fig. 1, 5)",
    _approx_arguments,
)
def run_approx_command(args: argparse.Namespace) -> int:
    import torch
    from tqdm.auto import tqdm
    from transformers.utils import logging as hf_logging

    from .._resources import check_threads
    from .report import format_table
    from .run import ApproxConfig, run_approx, total_steps, validate
    from .targets import RealSpec

    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    check_threads("--threads", args.threads)
    torch.set_num_threads(args.threads)
    hf_logging.set_verbosity_error()  # the real target's fresh head: its "newly initialized" notice is expected
    hf_logging.disable_progress_bar()  # one progress bar (the benchmark's) is enough
    cfg = validate(
        ApproxConfig(
            out=args.out,
            size=tuple(args.size),
            iters=args.iters,
            lr=args.lr,
            seed=args.seed,
            methods=args.methods,
            targets=args.targets,
            figure5_size=args.figure5_size,
            scaling=args.scaling,
            workers=args.workers,
            real=RealSpec(args.real_a, args.real_b, args.tensor, args.cache_dir),
        )
    )
    start = time.perf_counter()
    with tqdm(total=total_steps(cfg), desc="approx", unit="fit") as bar:

        def progress(done: str) -> None:
            bar.set_postfix_str(done)
            bar.update(1)

        doc = run_approx(cfg, progress)
    print(format_table(doc))
    print(
        f"wrote {args.out}/approx.json, figure1.png"
        + (", figure5.png" if cfg.figure5_size else "")
        + f" in {time.perf_counter() - start:.1f} s"
    )
    return 0


def _spectrum_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output directory (spectrum.json, figure4.png)")
    p.add_argument(
        "--shapes",
        default="768x1024,1024x1024,1024x4096,4096x4096",
        help="comma-separated D_OUTxD_IN list (default: the paper's four)",
    )
    p.add_argument("--k", type=int, default=16, help="factor rows k for the Theorem 3.1 rank sweep (default 16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")


def _shapes(text: str) -> list[tuple[int, int]]:
    shapes = []
    for item in _names(text):
        parts = item.lower().split("x")
        try:
            shape = tuple(int(x) for x in parts)
        except ValueError:
            shape = ()
        if len(shape) != 2 or min(shape) < 1:
            raise ValueError(f"shape {item!r} is not D_OUTxD_IN with positive integers (e.g. 768x1024)")
        shapes.append(shape)
    if not shapes:
        raise ValueError("--shapes is empty")
    return shapes


@command(
    "spectrum",
    "effective rank of Khatri-Rao vs Kronecker products at equal parameters (paper Fig. 4, Thm 3.1)",
    _spectrum_arguments,
)
def run_spectrum_command(args: argparse.Namespace) -> int:
    from pathlib import Path

    import torch
    from tqdm.auto import tqdm

    from ..io import check_writable_dir, write_json
    from .plots import figure4
    from .report import library_versions
    from .spectrum import run_spectrum

    shapes = _shapes(args.shapes)
    if args.k < 1:
        raise ValueError(f"--k must be >= 1, got {args.k}")
    from .._resources import check_threads
    from .spectrum import check_spectrum_memory

    check_spectrum_memory(shapes, args.k)
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        check_threads("--threads", args.threads)
        torch.set_num_threads(args.threads)
    out = check_writable_dir(args.out)
    with tqdm(total=len(shapes) + 1, desc="spectrum", unit="step") as bar:
        seen: list[str] = []

        def progress(label: str) -> None:
            if seen:
                bar.update(1)
            seen.append(label)
            bar.set_postfix_str(label)

        doc = run_spectrum(shapes, args.k, None, args.seed, progress)
        bar.update(1)
    doc["versions"] = library_versions()
    figure4(doc, out / "figure4.png")
    write_json(out / "spectrum.json", doc)
    print(
        f"{'shape':>12} {'KR params':>10} {'Kron params':>11} {'Kron factors':>22} {'eff.rank KR':>11} "
        f"{'eff.rank Kron':>13} {'KR/Kron':>8}"
    )
    for row in doc["shapes"]:
        kr, kn = row["khatri_rao"], row["kronecker"]
        factors = " x ".join(f"({a},{b})" for a, b in kn["factor_shapes"])
        print(
            f"{row['shape'][0]:>5}x{row['shape'][1]:<6} {kr['params']:>10,} {kn['params']:>11,} {factors:>22} "
            f"{kr['effective_rank']:>11.1f} {kn['effective_rank']:>13.1f} {row['effective_rank_ratio']:>8.3f}"
        )
    th = doc["theorem"]
    print(f"Theorem 3.1, U, V ~ N(0,1) of shape ({th['k']}, n): rank(U ⊙ V) vs n (bound min(n, k^2 = {th['k'] ** 2}))")
    print("  n:        " + " ".join(f"{p['n']:>5}" for p in th["points"]))
    print("  rank KR:  " + " ".join(f"{p['rank_khatri_rao']:>5}" for p in th["points"]))
    print("  rank LoRA:" + " ".join(f"{p['rank_lora']:>5}" for p in th["points"]))
    print(f"wrote {Path(args.out) / 'spectrum.json'}, {Path(args.out) / 'figure4.png'}")
    return 0
