"""`kradapter merge`: an adapter merged into its base, written as a plain transformers model directory."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from .cli import command
from .merge import DTYPES


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--base", required=True, type=_base, help="the base model: a local transformers model directory"
    )
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
    parser.add_argument(
        "--max-shard-size", default="2GB", type=_shard_size, help="largest safetensors shard, e.g. 500MB (default 2GB)"
    )


def _base(value: str) -> str:
    """An absolute or relative path (/..., ./..., ~/...) that does not exist is refused here, naming it; anything
    else may be a hub id and goes on to from_pretrained."""
    looks_like_path = value.startswith((".", "/", "~"))  # "user/name" may be a hub id: from_pretrained decides
    if looks_like_path and not Path(value).expanduser().is_dir():
        raise argparse.ArgumentTypeError(f"{value}: no such model directory")
    return value


def _shard_size(value: str) -> str | int:
    """A positive size: bytes, or a number with KB / MB / GB / TB (transformers' units)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(KB|MB|GB|TB)?\s*", value, flags=re.I)
    if m is None or float(m[1]) <= 0:
        raise argparse.ArgumentTypeError(f"{value!r} is not a positive size (bytes, or e.g. 500MB, 2GB)")
    return value.strip() if m[2] else int(float(m[1]))


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
