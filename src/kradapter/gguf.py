"""GGUF checkpoints (llama.cpp's format, often the only one a small model ships in) as trainable models.

transformers reads a GGUF file by dequantizing it to float32, but the model it returns stays marked as quantized:
the Trainer refuses to fine-tune it and `save_pretrained` refuses to save it. `dequantize_gguf` loads the file once,
rebuilds a plain model of the same architecture with those float32 weights and writes it, with the tokenizer, as an
ordinary checkpoint directory under the cache; later calls return that directory at once.

    from kradapter.gguf import dequantize_gguf
    path = dequantize_gguf("path/to/dir_with_one.gguf")      # or the .gguf file itself
    model = AutoModelForCausalLM.from_pretrained(path)       # trainable, saveable, adaptable

Needs the `gguf` package (pip install gguf, or kradapter[recipes]).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .io import cache_dir, staging_dir

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
DONE = "kradapter_gguf.txt"  # written last: its presence means the directory is complete


def find_gguf(path: str | os.PathLike) -> Path | None:
    """The GGUF file `path` stands for: the path itself if it is a .gguf file, else the one .gguf file in a
    directory that holds no ordinary weights; None when `path` is an ordinary checkpoint (or not local).

    Args:
        path: a model directory, a file, or a hub name (which is never a GGUF file here).

    Raises:
        ValueError: the directory holds several GGUF files and no ordinary weights (name the file instead).
    """
    path = Path(path)
    if path.is_file():
        return path if path.suffix == ".gguf" else None
    if not path.is_dir() or any((path / w).exists() for w in WEIGHT_FILES):
        return None
    found = sorted(path.glob("*.gguf"))
    if len(found) > 1:
        names = ", ".join(f.name for f in found)
        raise ValueError(f"{path} holds {len(found)} GGUF files ({names}): pass the one to use, e.g. {found[0]}")
    return found[0] if found else None


def dequantized_dir(gguf_file: str | os.PathLike) -> Path:
    """Where `dequantize_gguf` keeps the float32 copy of this file (keyed by its path, size and mtime, so an edited
    or replaced file is converted again)."""
    f = Path(gguf_file).resolve()
    st = f.stat()
    key = hashlib.sha256(f"{f}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]
    return cache_dir("gguf") / f"{f.stem}-{key}"


def is_dequantized(out: str | os.PathLike) -> bool:
    return (Path(out) / DONE).exists()


def dequantize_gguf(path: str | os.PathLike, gguf_file: str | None = None, out: str | os.PathLike | None = None) -> str:
    """A plain float32 checkpoint directory (config, model.safetensors, tokenizer) for the GGUF model at `path`
    (a .gguf file, or a directory holding one; `gguf_file` names it inside a directory holding several). Built
    once under `out` (default: `dequantized_dir`), returned at once afterwards. Safe to call from several
    processes at the same time (one converts, the others wait for it).

    Args:
        path: a .gguf file, or a directory holding one.
        gguf_file: the file's name inside `path`, when `path` is a directory holding several.
        out: where the checkpoint goes (default: `dequantized_dir(file)`, under the kradapter cache).

    Returns:
        The checkpoint directory, for `from_pretrained` or `kradapter train --model`.

    Raises:
        FileNotFoundError: no GGUF file at `path`.
        ImportError: the gguf package is missing.
        ValueError: the dequantized weights do not fit the architecture the file declares.
    """
    from filelock import FileLock

    path = Path(path)
    source = path / gguf_file if gguf_file else find_gguf(path)
    if source is None or not source.is_file():
        raise FileNotFoundError(f"{path}: no GGUF file found" + (f" named {gguf_file}" if gguf_file else ""))
    out = Path(out) if out is not None else dequantized_dir(source)
    out.mkdir(parents=True, exist_ok=True)
    with FileLock(str(out / ".lock")):
        if not is_dequantized(out):
            staging = staging_dir(out)
            _convert(source, staging)
            for item in sorted(staging.rglob("*")):
                if item.is_file():
                    target = out / item.relative_to(staging)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.replace(item, target)
            (out / DONE).write_text(f"dequantized from {source.resolve()}\n", encoding="utf-8")
            import shutil

            shutil.rmtree(staging, ignore_errors=True)
    return str(out)


def _convert(source: Path, dest: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        import gguf  # noqa: F401  (transformers needs it to read the file; say so in our words)
    except ImportError as err:
        raise ImportError(f"reading {source} needs the gguf package: pip install gguf") from err
    folder, name = str(source.parent), source.name
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    # The GGUF-loaded model carries the quantization marker; a model built from the cleaned config does not.
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    tied = (
        {k for k in missing if k.endswith("lm_head.weight")} if getattr(config, "tie_word_embeddings", False) else set()
    )
    if set(missing) - tied or unexpected:
        raise ValueError(
            f"{source}: dequantized weights do not fit {type(plain).__name__} (missing "
            f"{sorted(set(missing) - tied)[:5]}, unexpected {sorted(unexpected)[:5]})"
        )
    plain.tie_weights()
    plain.save_pretrained(dest)
    AutoTokenizer.from_pretrained(folder, gguf_file=name).save_pretrained(dest)
