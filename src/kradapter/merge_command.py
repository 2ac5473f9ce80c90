"""`kradapter merge`: an adapter merged into its base, written as a plain transformers model directory."""

from __future__ import annotations

import argparse

from .cli import command
from .merge import DTYPES


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", required=True, help="the base model: a local transformers model directory")
    parser.add_argument("--adapter", required=True, help="the saved adapter directory (save_pretrained output)")
    parser.add_argument("--out", required=True, help="new (or empty) directory for the merged model")
    parser.add_argument(
        "--dtype",
        choices=list(DTYPES),
        default=None,
        help="dtype of the saved weights (default: the base config's dtype, else float32)",
    )
    parser.add_argument(
        "--quantize",
        choices=["4bit", "8bit"],
        default=None,
        help="load the base quantized, as for QLoRA-style training, then dequantize to merge",
    )
    parser.add_argument("--max-shard-size", default="2GB", help="largest safetensors shard (default 2GB)")


@command("merge", "merge an adapter into its base and write a plain transformers model directory", _add_arguments)
def run_merge(args: argparse.Namespace) -> int:
    from .merge import merge_to_dir

    result = merge_to_dir(
        args.base, args.adapter, args.out, dtype=args.dtype, quantize=args.quantize, max_shard_size=args.max_shard_size
    )
    source = "dequantized base" if result.dequantized else "base"
    print(
        f"merged {args.adapter} into the {source} {args.base}: {result.out_dir} "
        f"({str(result.dtype).removeprefix('torch.')})"
    )
    print(f"  files: {', '.join(result.files)}")
    print(f"  largest logit difference, reloaded merged model vs unmerged adapted model: {result.max_logit_diff:.3g}")
    return 0
