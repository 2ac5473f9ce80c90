"""Load a KRAdapter (or SinLoRA / Kron-LoRA) adapter saved by diffusers' ``save_lora_adapter`` back into a model.

diffusers saves any PEFT adapter (weights, plus its config as JSON under the ``lora_adapter_metadata`` key of the
safetensors header), but its ``load_lora_adapter`` always builds a LoraConfig from that config and fails on every
other method. ``load_adapter`` reads the same file, rebuilds the method's own config through PEFT's table (the
method must be registered: ``import kradapter``), injects the adapter with PEFT and loads the weights:

    unet.save_lora_adapter(directory)                  # diffusers, unchanged
    kradapter.diffusers_io.load_adapter(unet, directory, adapter_name="style")
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

METADATA_KEY = "lora_adapter_metadata"  # diffusers.loaders.lora_base.LORA_ADAPTER_METADATA_KEY
WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # diffusers' default file name


def _adapter_file(path: str | Path, weight_name: str) -> Path:
    path = Path(path)
    file = path / weight_name if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"no adapter file at {file} (give the directory save_lora_adapter wrote, or the file)")
    return file


def read_adapter(path: str | Path, weight_name: str = WEIGHT_NAME, prefix: str | None = None):
    """(PEFT config, state dict without adapter names) from a file diffusers' save_lora_adapter wrote."""
    from peft.config import PeftConfig
    from safetensors import safe_open
    from safetensors.torch import load_file

    file = _adapter_file(path, weight_name)
    with safe_open(str(file), framework="pt") as f:
        header = f.metadata() or {}
    if METADATA_KEY not in header:
        raise ValueError(
            f"{file} has no '{METADATA_KEY}' in its header, so its adapter config is unknown; it was not "
            "written by diffusers' save_lora_adapter"
        )
    settings = json.loads(header[METADATA_KEY])
    try:
        config = PeftConfig.from_peft_type(**settings)
    except KeyError:
        raise ValueError(
            f"{file} holds a {settings.get('peft_type')!r} adapter, a method PEFT does not know in this "
            "process; run `import kradapter` first"
        ) from None
    state_dict = load_file(str(file))
    if prefix is not None:  # pipeline-level files prefix every key with the component ('unet.')
        state_dict = {k.removeprefix(f"{prefix}."): v for k, v in state_dict.items() if k.startswith(f"{prefix}.")}
    return config, state_dict


def load_adapter(
    model: nn.Module,
    path: str | Path,
    adapter_name: str = "default",
    weight_name: str = WEIGHT_NAME,
    prefix: str | None = None,
) -> None:
    """Add the adapter saved at `path` to `model` (a diffusers model, or any model) as `adapter_name`, weights loaded.

    Raises before changing the model if the name is taken; if the file's weights do not all fit the injected layers,
    the adapter is removed again and the error names the tensors.
    """
    from peft import inject_adapter_in_model, set_peft_model_state_dict
    from peft.tuners.tuners_utils import BaseTunerLayer

    config, state_dict = read_adapter(path, weight_name, prefix)
    if adapter_name in getattr(model, "peft_config", {}):
        raise ValueError(f"adapter name {adapter_name!r} is already in use in this model; choose another")
    inject_adapter_in_model(config, model, adapter_name=adapter_name)
    # diffusers' models keep the configs of their adapters here (add_adapter does the same)
    model.peft_config = {**getattr(model, "peft_config", {}), adapter_name: config}
    layers = {key: m for key, m in model.named_modules() if isinstance(m, BaseTunerLayer)}
    expected = tuple(
        f"{key}.{attr}.{adapter_name}"
        for key, m in layers.items()
        for attr in m.adapter_layer_names
        if adapter_name in getattr(m, attr, {})
    )
    try:
        result = set_peft_model_state_dict(model, state_dict, adapter_name=adapter_name)
        problem = None
        missing = [k for k in result.missing_keys if k.startswith(expected)]
        unexpected = [k for k in result.unexpected_keys if f".{adapter_name}" in k]
        if missing or unexpected or not expected:
            problem = f"missing {missing[:3]}, unexpected {unexpected[:3]}" if expected else "no layer matched"
    except RuntimeError as err:  # tensors of the wrong shape
        problem = str(err).splitlines()[-1].strip()
    if problem is not None:
        for m in layers.values():
            if adapter_name in getattr(m, m.adapter_layer_names[0], {}):
                m.delete_adapter(adapter_name)
        del model.peft_config[adapter_name]
        if not model.peft_config:
            del model.peft_config
        raise ValueError(
            f"the adapter weights in {path} do not fit this model ({problem}); adapter {adapter_name!r} was not loaded"
        )
