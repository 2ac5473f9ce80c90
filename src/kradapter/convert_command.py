"""`kradapter convert`: an adapter written as a plain PEFT LoRA adapter (truncated SVD of each layer's update)."""

from __future__ import annotations

import argparse

from .cli import command


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--adapter", required=True, help="the saved adapter directory (save_pretrained output)")
    parser.add_argument("--base", required=True, help="the base model: a local transformers or diffusers model dir")
    parser.add_argument("--to", choices=["lora"], default="lora", help="the format to write (LoRA)")
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--rank", type=int, help="one LoRA rank for every layer (1 .. each layer's smaller side)")
    target.add_argument(
        "--energy", type=float, help="per layer, the smallest rank keeping this share of sum sigma^2, in (0, 1]"
    )
    parser.add_argument("--out", required=True, help="new (or empty) directory for the LoRA adapter")


@command("convert", "convert an adapter to a plain PEFT LoRA adapter (SVD of each layer's update)", _add_arguments)
def run_convert(args: argparse.Namespace) -> int:
    from .convert import convert_to_dir

    result = convert_to_dir(args.base, args.adapter, args.out, rank=args.rank, energy=args.energy)
    conv = result.conversion
    width = max(len(c.name) for c in conv.layers)
    print(f"{'layer':<{width}}  {'shape':>11}  {'rank':>5}  {'rel. error':>10}  {'energy kept':>11}")
    for c in conv.layers:
        shape = f"{c.shape[0]}x{c.shape[1]}"
        print(f"{c.name:<{width}}  {shape:>11}  {c.rank:>5}  {c.relative_error:>10.4f}  {c.energy:>11.4f}")
    ranks = sorted({c.rank for c in conv.layers})
    rank_text = str(ranks[0]) if len(ranks) == 1 else f"{ranks[0]}..{ranks[-1]}"
    print(
        f"overall: {len(conv.layers)} layers, rank {rank_text}, relative Frobenius error of the update "
        f"{conv.relative_error:.4f}, energy kept {conv.energy:.4f}"
    )
    print(f"wrote a LoRA adapter to {result.out_dir}: {', '.join(result.files)} ({result.bytes_on_disk} bytes)")
    if result.max_output_diff is not None:
        print(f"  largest output difference, converted LoRA vs source adapter: {result.max_output_diff:.3g}")
    return 0
