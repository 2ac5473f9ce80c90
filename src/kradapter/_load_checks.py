"""What every path that loads one of our adapters checks, and how it puts the model back when a check fails.

The paths are PEFT's (``PeftModel.from_pretrained`` / ``load_adapter``), transformers' (``model.load_adapter``,
``AutoModel*.from_pretrained(adapter_dir)``) and ``kradapter.diffusers_io.load_adapter``. Each injects the adapter's
layers before it reads the weights, so a check that fails must take them out again: ``Snapshot`` records the module
tree before the load and restores it. The tensor checks (``tensor_problems``) read the tensors under the names the
file gives them, so an error names what a user finds in the file.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

WEIGHTS_NAMES = ("adapter_model.safetensors", "adapter_model.bin")
_TREE = ("_modules", "_parameters", "_buffers", "_forward_hooks", "_forward_pre_hooks")
_LAYER_STATE = ("_active_adapter", "merged_adapters", "_disable_adapters")
_WRAPPER_SEGMENTS = ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "_orig_mod.")
_SHOWN = 5  # problems named in one message; the rest are counted


class AdapterLoadError(ValueError):
    """An adapter could not be loaded; the model it was loaded into is as it was before."""


class AdapterTensorError(ValueError):
    """An adapter's tensors do not fit the model they are loaded into (named, as the file names them)."""


class Snapshot:
    """The module tree of `model` (children, parameters, buffers, hooks of every module), trainability and the
    model's own attributes: what an adapter's injection changes."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.modules = [(m, {k: dict(getattr(m, k)) for k in _TREE}) for m in model.modules()]
        # which adapters each tuner layer runs and has merged: plain attributes an injection may switch
        self.layer_state = [
            (m, {k: copy.copy(vars(m)[k]) for k in _LAYER_STATE if k in vars(m)}) for m in model.modules()
        ]
        self.requires_grad = [(p, p.requires_grad) for p in model.parameters()]
        self.attributes = dict(vars(model))
        self.peft_config = dict(getattr(model, "peft_config", None) or {})

    def restore(self) -> None:
        for module, tree in self.modules:
            for name, saved in tree.items():
                current = getattr(module, name)
                current.clear()
                current.update(saved)
        for module, state in self.layer_state:
            vars(module).update(state)
        for param, requires_grad in self.requires_grad:
            param.requires_grad_(requires_grad)
        for name in set(vars(self.model)) - set(self.attributes):  # e.g. the peft_config PEFT sets on the base model
            delattr(self.model, name)
        for name in ("_hf_peft_config_loaded", "_active_adapter"):  # flags transformers' integration sets
            if name in self.attributes:
                setattr(self.model, name, self.attributes[name])
        config = getattr(self.model, "peft_config", None)
        if isinstance(config, dict) and config is not self.peft_config:
            config.clear()
            config.update(self.peft_config)


def forget_adapter(model: nn.Module, adapter_name: str) -> None:
    """Drop the per-adapter entries a failed load added to layers that existed before it (their plain attributes,
    such as alpha, which the module tree does not hold)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in model.modules():
        if isinstance(module, BaseTunerLayer):
            for attr in module.adapter_layer_names + module.other_param_names:
                table = getattr(module, attr, None)
                if isinstance(table, (dict, nn.ModuleDict, nn.ParameterDict)) and adapter_name in table:
                    del table[adapter_name]


def weights_file(model_id, subfolder: str | None = None) -> tuple[str, str | None]:
    """(the file a load reads, or would read; why it cannot, when that is known before reading it)."""
    directory = Path(model_id, subfolder or "")
    if not directory.is_dir():
        return str(directory), "no such directory (and not an adapter on the Hugging Face Hub)"
    if not (directory / "adapter_config.json").is_file():
        return str(directory / "adapter_config.json"), "missing"
    for name in WEIGHTS_NAMES:
        if (directory / name).is_file():
            return str(directory / name), None
    return str(directory / WEIGHTS_NAMES[0]), f"missing (nor is there {WEIGHTS_NAMES[1]})"


def read_weights(file: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of an adapter file (safetensors, or a torch .bin read without unpickling objects)."""
    if str(file).endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(str(file))
    return torch.load(str(file), map_location="cpu", weights_only=True)


def our_prefixes() -> tuple[str, ...]:
    """The parameter-name prefixes of the registered kradapter methods ('kradapter_', 'sinlora_', 'kronlora_')."""
    from . import _registry

    return tuple(model_cls.prefix for _, model_cls in _registry.REGISTERED.values())


def is_ours(peft_type) -> bool:
    """Whether a config's ``peft_type`` (enum member or its string) is one of the methods kradapter registered."""
    from . import _registry

    name = getattr(peft_type, "value", peft_type)
    return isinstance(name, str) and name.lower() in _registry.REGISTERED


def plain_name(name: str) -> str:
    """A module name as the adapter file writes it: without PeftModel's 'base_model.model.' and without the
    segments FSDP1, activation checkpointing and torch.compile insert."""
    for segment in _WRAPPER_SEGMENTS:
        name = name.replace(segment, "")
    return name.removeprefix("base_model.model.")


def file_form(key: str, adapter_name: str, prefixes: tuple[str, ...]) -> str:
    """A loaded key ('fc1.kradapter_U.default') as the file names it ('fc1.kradapter_U')."""
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        if (part.startswith(prefixes) or part == "modules_to_save") and parts[i + 1] == adapter_name:
            return ".".join(parts[: i + 1] + parts[i + 2 :])
    return key


def adapted_modules(model: nn.Module, adapter_name: str) -> dict[str, nn.Module]:
    """{plain module name: tuner layer or modules_to_save wrapper} for every one in `model` holding `adapter_name`."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    names = {}
    for name, module in model.named_modules():
        if isinstance(module, BaseTunerLayer):
            attrs = module.adapter_layer_names
        else:
            attrs = ("modules_to_save",) if isinstance(getattr(module, "modules_to_save", None), nn.ModuleDict) else ()
        if any(adapter_name in (getattr(module, attr, None) or {}) for attr in attrs):
            names[plain_name(name)] = module
    return names


def tensor_problems(
    tensors: Mapping[str, torch.Tensor], model: nn.Module | None, adapter_name: str, prefixes: tuple[str, ...]
) -> list[str]:
    """What is wrong with an adapter's tensors (keys as in its file) for `model` holding layers for `adapter_name`.

    Every tensor must be floating point (an int64 tensor would be cast silently) and finite. With `model` given,
    every adapter tensor (a key with a segment starting with one of `prefixes`, or a modules_to_save copy) must
    belong to a module that holds the adapter, with that parameter's shape. Returns one line per problem, each
    naming the tensor.
    """
    problems = []
    modules = adapted_modules(model, adapter_name) if model is not None else {}
    for key, tensor in tensors.items():
        if getattr(tensor, "is_meta", False):
            continue
        if not tensor.is_floating_point():
            problems.append(f"tensor '{key}' is {str(tensor.dtype).removeprefix('torch.')}, not floating point")
            continue
        if not torch.isfinite(tensor).all():
            problems.append(f"tensor '{key}' holds NaN or Inf values")
        if model is None:
            continue
        parts = key.split(".")
        at = next((i for i, p in enumerate(parts) if p.startswith(prefixes) or p == "modules_to_save"), None)
        if at is None:
            continue  # not an adapter parameter (e.g. a trainable-token delta): PEFT's own key matching applies
        module_name = plain_name(".".join(parts[:at]))
        module = modules.get(module_name)
        if module is None:
            problems.append(f"tensor '{key}' is for module '{module_name}', which holds no adapter '{adapter_name}'")
            continue
        expected = _parameter(module, parts[at:], adapter_name)
        if expected is None:
            problems.append(f"tensor '{key}': module '{module_name}' has no such adapter parameter")
        elif tuple(expected.shape) != tuple(tensor.shape):
            problems.append(
                f"tensor '{key}' has shape {tuple(tensor.shape)} in the checkpoint but {tuple(expected.shape)} in "
                "the model (trained on another model, or with other settings such as k1 or r?)"
            )
    return problems


def _parameter(module: nn.Module, parts: list[str], adapter_name: str) -> torch.Tensor | None:
    table = getattr(module, parts[0], None)
    if not isinstance(table, (nn.ModuleDict, nn.ParameterDict, dict)) or adapter_name not in table:
        return None
    target = table[adapter_name]
    for part in parts[1:]:
        target = getattr(target, part, None)
    return target if isinstance(target, torch.Tensor) else None


def describe(problems: list[str]) -> str:
    """Problems joined for one message: the first few, then how many more."""
    shown = "; ".join(problems[:_SHOWN])
    return shown + (f"; and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else "")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else ""


def load_error(path, adapter_name: str, reason: str) -> AdapterLoadError:
    """The one error of a refused load: the file, why, and that the model was left as it was."""
    return AdapterLoadError(
        f"cannot load adapter {path}: {reason}; adapter '{adapter_name}' was not loaded and the model is as it was "
        "before"
    )


def check_tensors(path, tensors: Mapping[str, torch.Tensor], adapter_name: str) -> None:
    """Refuse non-float and NaN/Inf tensors before anything is injected."""
    if problems := tensor_problems(tensors, None, adapter_name, our_prefixes()):
        raise load_error(path, adapter_name, describe(problems))


def read_checked(path, adapter_name: str) -> dict[str, torch.Tensor]:
    """The tensors of the adapter file at `path`, refused (naming the file) when unreadable, non-float or not finite."""
    try:
        tensors = read_weights(path)
    except Exception as err:
        raise load_error(path, adapter_name, f"{type(err).__name__}: {_first_line(err)}") from err
    check_tensors(path, tensors, adapter_name)
    return tensors


def guarded_load(model: nn.Module, path, adapter_name: str, load, *, tensors=None, known=None, check_after=False):
    """Run `load()`, which injects `adapter_name` into `model` and loads its weights from `path`, so that any failure
    leaves `model` as it was and raises one AdapterLoadError naming `path`.

    `tensors` are the file's tensors, already read and checked alone (read_checked); with `check_after` they are
    also checked against the loaded model (shapes, modules holding the adapter), for paths that do not pass through
    the tuner's own check before copying (transformers'). `known` is why the file cannot be read, when that is
    known before trying (it then explains whatever `load()` raises).
    """
    configs = getattr(model, "peft_config", None)
    existed = isinstance(configs, dict) and adapter_name in configs
    snapshot = Snapshot(model)
    try:
        result = load()
        if check_after and tensors is not None:
            if problems := tensor_problems(tensors, model, adapter_name, our_prefixes()):
                raise AdapterTensorError(f"adapter weights do not fit: {describe(problems)}")
        return result
    except BaseException as err:
        reason = None
        if check_after and tensors is not None and not isinstance(err, AdapterTensorError):
            try:  # e.g. transformers' own size-mismatch error, which names no tensor: name them
                if problems := tensor_problems(tensors, model, adapter_name, our_prefixes()):
                    reason = f"adapter weights do not fit: {describe(problems)}"
            except Exception:
                pass
        if not existed:
            forget_adapter(model, adapter_name)
        snapshot.restore()
        if not isinstance(err, Exception):
            raise
        if reason is None and isinstance(err, (AdapterTensorError, AdapterLoadError)):
            reason = str(err)
        if reason is None and isinstance(err, json.JSONDecodeError):
            # the config, not the weights, is what could not be read: name the file that is broken
            path = Path(str(path)).with_name("adapter_config.json")
            reason = f"not valid JSON ({_first_line(err)})"
        raise load_error(path, adapter_name, reason or known or f"{type(err).__name__}: {_first_line(err)}") from err
