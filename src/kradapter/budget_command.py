"""`kradapter budget D_OUT D_IN`: each method's hyperparameters at a matched trainable-parameter budget."""

from __future__ import annotations

import argparse

from .budget import match_all
from .cli import command
from .specs import method_names


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "d_out",
        type=int,
        help="output features of the layer (a convolution: out_channels; an "
        "embedding: the vocabulary size; an attention module: 3E for in_proj, E for out_proj)",
    )
    parser.add_argument(
        "d_in",
        type=int,
        help="input features of the layer (a convolution: in_channels/groups * "
        "prod(kernel_size); an embedding: its dimension; an attention module: E)",
    )
    parser.add_argument(
        "--budget",
        type=int,
        default=None,
        help="trainable parameters to reach (default: KRAdapter's count for this shape)",
    )
    names = method_names()  # built-in and registered (--plugin) methods
    parser.add_argument(
        "--methods",
        nargs="+",
        default=list(names),
        metavar="METHOD",
        help=f"methods to match, space- or comma-separated (default: all of {', '.join(names)})",
    )


def _format_hparams(hparams: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in hparams.items()) or "-"


@command(
    "budget",
    "hyperparameters of each method at a matched trainable-parameter budget for one layer shape",
    _add_arguments,
)
def run_budget(args: argparse.Namespace) -> int:
    methods = [m for item in args.methods for m in item.split(",") if m]
    results = match_all(args.d_out, args.d_in, budget=args.budget, methods=methods)
    budget = next(iter(results.values()))["budget"]
    print(
        f"layer {args.d_out} x {args.d_in}, budget {budget:,} trainable parameters"
        f"{'' if args.budget is not None else ' (KRAdapter at k1 = sqrt)'}"
    )
    rows = [
        (m, _format_hparams(r["hparams"]), f"{r['trainable']:,}", f"{100 * (r['trainable'] / budget - 1):+.2f}%")
        for m, r in results.items()
    ]
    header = ("method", "hyperparameters", "trainable", "vs budget")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]
    for row in [header, *rows]:
        print(f"  {row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:>{widths[2]}}  {row[3]:>{widths[3]}}")
    if "full" in results:
        print("full is not matched: full fine-tuning trains the whole weight matrix.")
    print("Learning rates are not matched: methods want different ones, tune them per method.")
    return 0
