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
    """(PEFT config, state dict without adapter names) from a file diffusers' save_lora_adapter wrote.

    A file that cannot be read, or whose header holds no valid config, is refused naming the file.
    """
    from peft.config import PeftConfig
    from safetensors import safe_open

    from ._load_checks import read_weights

    file = _adapter_file(path, weight_name)
    try:
        with safe_open(str(file), framework="pt") as f:
            header = f.metadata() or {}
        state_dict = read_weights(file)
    except Exception as err:
        raise ValueError(f"cannot read adapter file {file}: {type(err).__name__}: {err}") from err
    if METADATA_KEY not in header:
        raise ValueError(
            f"{file} has no '{METADATA_KEY}' in its header, so its adapter config is unknown; it was not "
            "written by diffusers' save_lora_adapter"
        )
    try:
        settings = json.loads(header[METADATA_KEY])
    except ValueError as err:
        raise ValueError(
            f"{file}: the adapter config in its header '{METADATA_KEY}' is not valid JSON ({err})"
        ) from None
    try:
        config = PeftConfig.from_peft_type(**settings)
    except KeyError:
        raise ValueError(
            f"{file} holds a {settings.get('peft_type')!r} adapter, a method PEFT does not know in this "
            "process; run `import kradapter` first"
        ) from None
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

    Raises before changing the model if the name is taken or a tensor is not floating point or holds NaN/Inf. If the
    weights do not fit the injected layers (a wrong shape, a tensor for a module the config does not adapt, a layer
    with no tensor), the model is put back exactly as it was (no adapter layer left behind) and the error names the
    file and the tensors.
    """
    from peft import inject_adapter_in_model, set_peft_model_state_dict

    from ._load_checks import (
        AdapterTensorError,
        check_tensors,
        describe,
        file_form,
        guarded_load,
        our_prefixes,
        tensor_problems,
    )

    config, state_dict = read_adapter(path, weight_name, prefix)
    file = _adapter_file(path, weight_name)
    if adapter_name in (getattr(model, "peft_config", None) or {}):
        raise ValueError(f"adapter name {adapter_name!r} is already in use in this model; choose another")
    check_tensors(file, state_dict, adapter_name)

    def load() -> None:
        inject_adapter_in_model(config, model, adapter_name=adapter_name)
        # diffusers' models keep the configs of their adapters here (add_adapter does the same)
        model.peft_config = {**(getattr(model, "peft_config", None) or {}), adapter_name: config}
        problems = tensor_problems(state_dict, model, adapter_name, our_prefixes())
        if not problems:  # checked before any tensor is copied
            result = set_peft_model_state_dict(model, state_dict, adapter_name=adapter_name)
            prefixes = our_prefixes()
            missing = [file_form(k, adapter_name, prefixes) for k in result.missing_keys]
            problems = [f"the file has no tensor '{k}'" for k in missing if k not in result.missing_keys]
            if not any(file_form(k, adapter_name, prefixes) != k for k, _ in model.named_parameters()):
                problems.append("no module of this model matched the adapter's target_modules")
        if problems:
            raise AdapterTensorError(f"adapter weights do not fit this model: {describe(problems)}")

    guarded_load(model, file, adapter_name, load)
