"""Merge an adapter into its base and write a plain transformers model directory (what `kradapter merge` does).

The result needs no kradapter or PEFT to load: sharded safetensors, the config, the generation config and the
tokenizer files, loadable by ``AutoModel*.from_pretrained``. Quantized bases (4-bit / 8-bit, saved quantized or
quantized on load with ``quantize=``) are dequantized and the adapter merged in float
(``quant.merge_to_full_precision``), because requantizing would round away much of the update.

The directory is written beside the destination under a temporary name, reloaded from there with plain
transformers and compared with the unmerged adapted model on a few inputs, and only then renamed into place: an
interrupted or failed merge leaves no half-written model, and a non-empty destination is never touched. The
directory gets the permissions any new directory gets (the umask's), and a second merge or convert into the same
destination while one runs is refused (outdir.OutputLock, beside the destination).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .outdir import OutputLock, published_beside

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# Files a tokenizer or processor is made of (copied from the base, then from the adapter dir, which wins).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "chat_template.json",
    "chat_template.jinja",
    "preprocessor_config.json",
    "processor_config.json",
)


@dataclass(frozen=True)
class MergeResult:
    out_dir: Path
    max_logit_diff: float  # largest |logit| difference, reloaded merged model vs unmerged adapted model
    dtype: torch.dtype
    dequantized: bool  # the base was quantized and was dequantized before merging
    files: tuple[str, ...]


def check_out_dir(out_dir: str | os.PathLike) -> Path:
    """The destination must not exist or be an empty directory: nothing already there is ever replaced."""
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ValueError(f"output dir {out} exists and is not empty; choose a new directory (nothing was written)")
    return out


def _model_class(config):
    """The transformers class named by the base's config (its `architectures`), e.g. LlamaForCausalLM."""
    import transformers

    for name in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, name, None)
        if cls is not None:
            return cls
    return transformers.AutoModel


def load_adapted(base: str, adapter_dir: str, quantize: str | None = None):
    """(PeftModel, model class): the base as trained (quantized when `quantize` or its config says so) + adapter."""
    import transformers
    from peft import PeftConfig, PeftModel

    import kradapter  # noqa: F401  (registers our methods with PEFT)

    if not Path(adapter_dir, "adapter_config.json").is_file():
        raise FileNotFoundError(f"{adapter_dir} has no adapter_config.json: not a saved PEFT adapter directory")
    PeftConfig.from_pretrained(adapter_dir)  # a bad adapter config fails before the base is loaded
    from .train.defaults.models import local_copy

    base = local_copy(base) or base  # an offline default's public name: its packaged / cached copy
    model = _task_model(base, adapter_dir) if quantize is None else None
    if model is not None:
        cls = type(model)
    else:
        config = transformers.AutoConfig.from_pretrained(base)
        cls = _model_class(config)
        kwargs = {"dtype": torch.float32}
        if quantize is not None:
            from .quant import bnb_config

            kwargs["quantization_config"] = bnb_config(quantize, compute_dtype=torch.float32)
        model = cls.from_pretrained(base, **kwargs)
    model = model.eval()
    try:
        adapted = PeftModel.from_pretrained(model, adapter_dir).eval()
    except RuntimeError as err:  # PEFT's size mismatch from load_state_dict (our methods raise ValueError)
        raise ValueError(f"adapter {adapter_dir} does not fit base {base}: {err}") from None
    return adapted, cls


def _task_model(base: str, adapter_dir: str):
    """For an adapter `kradapter train` saved (its run info names the task): the base built as that task built it
    (e.g. a sequence classifier with the trained number of labels), if that is a transformers model; else None."""
    from transformers import PreTrainedModel

    from .io import read_json
    from .train.runner import RUN_INFO

    path = Path(adapter_dir, RUN_INFO)
    if not path.is_file():
        return None
    from .train.tasks import task_module

    info = {**read_json(path), "model": base}
    model = task_module(info["task"]).rebuild(info)
    return model.float() if isinstance(model, PreTrainedModel) else None


def probe_inputs(config, n: int = 3, seq_len: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    """A few fixed inputs for comparing logits: token ids, or images for vision models."""
    g = torch.Generator().manual_seed(seed)
    vocab = getattr(config, "vocab_size", None) or getattr(getattr(config, "text_config", None), "vocab_size", None)
    if vocab:
        return {"input_ids": torch.randint(0, vocab, (n, seq_len), generator=g)}
    size = getattr(config, "image_size", 224)
    return {"pixel_values": torch.randn(n, getattr(config, "num_channels", 3), size, size, generator=g)}


def _logits(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        out = model(**{k: v.to(model.device) for k, v in inputs.items()})
    logits = out.logits if hasattr(out, "logits") else out.last_hidden_state
    return logits.float().cpu()


def _copy_tokenizer_files(sources: list[Path], dest: Path) -> None:
    for src in sources:
        for name in TOKENIZER_FILES:
            if (src / name).is_file():
                shutil.copy2(src / name, dest / name)


def merge_to_dir(
    base: str,
    adapter_dir: str,
    out_dir: str | os.PathLike,
    dtype: str | None = None,
    quantize: str | None = None,
    max_shard_size: str | int = "2GB",
) -> MergeResult:
    """Merge the adapter in `adapter_dir` into `base` and write a plain transformers model to `out_dir`.

    dtype: "float32" / "float16" / "bfloat16" for the saved weights (default: the base config's dtype, else
    float32); merging itself runs in float32. quantize: "4bit" / "8bit" to load the base quantized as it was during
    QLoRA-style training (a base saved quantized is detected from its config); it is dequantized before merging.
    """
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not supported; choose one of {list(DTYPES)}")
    with OutputLock(out_dir, beside=True, option="--out"):
        return _merge_locked(base, adapter_dir, check_out_dir(out_dir), dtype, quantize, max_shard_size)


def _merge_locked(base, adapter_dir, out: Path, dtype, quantize, max_shard_size) -> MergeResult:
    adapted, cls = load_adapted(base, adapter_dir, quantize)
    config = adapted.get_base_model().config
    if dtype is None:
        config_dtype = getattr(config, "dtype", None)
        target = (
            config_dtype if isinstance(config_dtype, torch.dtype) and config_dtype.is_floating_point else torch.float32
        )
    else:
        target = DTYPES[dtype]
    inputs = probe_inputs(config)
    reference = _logits(adapted, inputs)

    from .quant import merge_to_full_precision, quantized_layers

    dequantized = bool(quantized_layers(adapted)) or getattr(config, "quantization_config", None) is not None
    if dequantized:
        merged = merge_to_full_precision(adapted, dtype=torch.float32)
    else:
        merged = adapted.merge_and_unload()
    merged = merged.to(target)
    merged.config.dtype = target

    with published_beside(out, "merging") as tmp:
        merged.save_pretrained(tmp, max_shard_size=max_shard_size, safe_serialization=True)
        _copy_tokenizer_files([Path(base), Path(adapter_dir)], tmp)
        _check_plain(tmp)
        reloaded = cls.from_pretrained(tmp, dtype=target).eval()
        diff = (_logits(reloaded, inputs) - reference).abs().max().item()
        del reloaded
    return MergeResult(out, diff, target, dequantized, tuple(sorted(p.name for p in out.iterdir())))


def _check_plain(model_dir: Path) -> None:
    """The saved config must not ask for PEFT or a quantizer, and no adapter tensors may be left in the weights."""
    config = json.loads((model_dir / "config.json").read_text())
    if "quantization_config" in config:
        raise ValueError("the merged config still carries a quantization_config; the merge did not dequantize")
    from safetensors import safe_open

    for shard in model_dir.glob("*.safetensors"):
        with safe_open(shard, "pt") as f:
            leftover = [k for k in f.keys() if "base_layer" in k or ".kradapter_" in k or ".lora_" in k]
        if leftover:
            raise ValueError(f"merged weights still hold adapter tensors, e.g. '{leftover[0]}' in {shard.name}")
