"""PEFT's load and save, made whole-or-nothing for every method (installed once by ``import kradapter``).

Also: a PeftModel whose only adapter was deleted says what to do, not KeyError, when next used.

PEFT injects an adapter's layers into the user's model before it reads the weights file, so a missing, empty or
truncated file raises (a SafetensorError, or a Hub repo-id error that names no file) with the layers left in. The
wrappers here snapshot the model's module tree first and, on any failure, put it back and raise one error that
names the file. A loaded adapter holding NaN/Inf values is refused the same way. Tensors missing from the file keep
their initial values: PEFT warns about them in from_pretrained, and load_adapter (which only returns them) now
warns too, naming each. save_pretrained refuses meta-device weights before it writes anything.
"""

from __future__ import annotations

import contextvars
import functools
import warnings
from pathlib import Path

import torch
from torch import nn

WEIGHTS_NAMES = ("adapter_model.safetensors", "adapter_model.bin")
_inside_from_pretrained = contextvars.ContextVar("kradapter_inside_from_pretrained", default=False)


class AdapterLoadError(ValueError):
    """An adapter could not be loaded; the model it was loaded into is as it was before."""


class _Snapshot:
    """The module tree of `model` (children, parameters, buffers, hooks of every module), trainability and the
    model's own attributes: what PEFT's injection changes."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.modules = [(m, {k: dict(getattr(m, k)) for k in _TREE}) for m in model.modules()]
        self.requires_grad = [(p, p.requires_grad) for p in model.parameters()]
        self.attributes = set(vars(model))

    def restore(self) -> None:
        for module, tree in self.modules:
            for name, saved in tree.items():
                current = getattr(module, name)
                current.clear()
                current.update(saved)
        for param, requires_grad in self.requires_grad:
            param.requires_grad_(requires_grad)
        for name in set(vars(self.model)) - self.attributes:  # e.g. the peft_config PEFT sets on the base model
            delattr(self.model, name)


_TREE = ("_modules", "_parameters", "_buffers", "_forward_hooks", "_forward_pre_hooks")


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


def _load_error(model_id, subfolder, err: BaseException) -> AdapterLoadError:
    path, known = weights_file(model_id, subfolder)
    reason = known or f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
    return AdapterLoadError(f"cannot load adapter {path}: {reason}; the model is as it was before")


def _non_finite(peft_model, adapter_name: str) -> list[str]:
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(peft_model, adapter_name=adapter_name)
    return [
        name for name, t in state.items() if t.is_floating_point() and not t.is_meta and not torch.isfinite(t).all()
    ]


def _check_loaded(peft_model, model_id, subfolder, adapter_name: str, load_result) -> None:
    bad = _non_finite(peft_model, adapter_name)
    path, _ = weights_file(model_id, subfolder)
    if bad:
        raise AdapterLoadError(
            f"cannot load adapter {path}: tensors hold NaN or Inf values: {', '.join(bad)}; "
            "the model is as it was before"
        )
    missing = list(getattr(load_result, "missing_keys", []) or [])
    if missing and not _inside_from_pretrained.get():  # from_pretrained warns about them itself
        warnings.warn(
            f"adapter {path} lacks these tensors, which keep their initial values: {', '.join(missing)}", stacklevel=3
        )


def install() -> None:
    """Wrap PeftModel.from_pretrained, load_adapter and save_pretrained (idempotent)."""
    from peft import PeftModel

    if getattr(PeftModel, "_kradapter_guarded", False):
        return
    from_pretrained = PeftModel.from_pretrained.__func__
    load_adapter = PeftModel.load_adapter
    save_pretrained = PeftModel.save_pretrained

    @functools.wraps(from_pretrained)
    def guarded_from_pretrained(cls, model, model_id, *args, **kwargs):
        snapshot = _Snapshot(model)
        token = _inside_from_pretrained.set(True)
        try:
            return from_pretrained(cls, model, model_id, *args, **kwargs)
        except BaseException as err:
            snapshot.restore()
            if isinstance(err, AdapterLoadError) or not isinstance(err, Exception):
                raise
            raise _load_error(model_id, kwargs.get("subfolder"), err) from err
        finally:
            _inside_from_pretrained.reset(token)

    @functools.wraps(load_adapter)
    def guarded_load_adapter(self, model_id, adapter_name, *args, **kwargs):
        existed = adapter_name in self.peft_config
        snapshot = _Snapshot(self)
        try:
            result = load_adapter(self, model_id, adapter_name, *args, **kwargs)
            _check_loaded(self, model_id, kwargs.get("subfolder"), adapter_name, result)
            return result
        except BaseException as err:
            if not existed:
                _forget_adapter(self, adapter_name)
            snapshot.restore()
            if isinstance(err, AdapterLoadError) or not isinstance(err, Exception):
                raise
            raise _load_error(model_id, kwargs.get("subfolder"), err) from err

    @functools.wraps(save_pretrained)
    def guarded_save_pretrained(self, save_directory, *args, **kwargs):
        _refuse_meta(self, kwargs.get("selected_adapters"), save_directory, kwargs.get("state_dict"))
        return save_pretrained(self, save_directory, *args, **kwargs)

    active_config = PeftModel.active_peft_config.fget

    @functools.wraps(active_config)
    def guarded_active_config(self):
        if not self.peft_config:
            _no_adapter_left(self, ())
        return active_config(self)

    delete_adapter, add_adapter = PeftModel.delete_adapter, PeftModel.add_adapter

    @functools.wraps(delete_adapter)
    def guarded_delete_adapter(self, adapter_name):
        delete_adapter(self, adapter_name)
        if not self.peft_config and getattr(self, "_kradapter_empty_hook", None) is None:
            self._kradapter_empty_hook = self.register_forward_pre_hook(_no_adapter_left)

    @functools.wraps(add_adapter)
    def guarded_add_adapter(self, *args, **kwargs):
        result = add_adapter(self, *args, **kwargs)
        hook = getattr(self, "_kradapter_empty_hook", None)
        if hook is not None and self.peft_config:
            hook.remove()
            self._kradapter_empty_hook = None
        return result

    PeftModel.active_peft_config = property(guarded_active_config)
    PeftModel.delete_adapter = guarded_delete_adapter
    PeftModel.add_adapter = guarded_add_adapter
    PeftModel.from_pretrained = classmethod(guarded_from_pretrained)
    PeftModel.load_adapter = guarded_load_adapter
    PeftModel.save_pretrained = guarded_save_pretrained
    PeftModel._kradapter_guarded = True


def _no_adapter_left(module, args) -> None:
    raise ValueError(
        "this PeftModel has no adapter left (its only adapter was deleted): add one with "
        "add_adapter() or load_adapter(), or take the base model back with unload()"
    )


def _forget_adapter(peft_model, adapter_name: str) -> None:
    """Drop the per-adapter entries a failed load added to existing layers and to the config table."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in peft_model.modules():
        if isinstance(module, BaseTunerLayer):
            for attr in module.adapter_layer_names + module.other_param_names:
                table = getattr(module, attr, None)
                if isinstance(table, (dict, nn.ModuleDict, nn.ParameterDict)) and adapter_name in table:
                    del table[adapter_name]
    peft_model.peft_config.pop(adapter_name, None)


def _refuse_meta(peft_model, selected, save_directory, state_dict=None) -> None:
    # Read the parameters themselves, never state_dict(): under FSDP1 state_dict() is a collective, and
    # save_pretrained runs on rank 0 alone (kradapter.dist.save_adapter), so calling it here deadlocks.
    if state_dict is not None:
        tensors = {"": state_dict}
    else:
        tensors = {name: {} for name in (selected or list(peft_model.peft_config)) if name in peft_model.peft_config}
        for key, t in [*peft_model.named_parameters(), *peft_model.named_buffers()]:
            for name in tensors:
                if f".{name}" in key or key.endswith(name):
                    tensors[name][key] = t
    for name, named in tensors.items():
        meta = [k for k, t in named.items() if getattr(t, "is_meta", False)]
        if meta:
            raise ValueError(
                f"cannot save adapter '{name}' to {save_directory}: tensors are on the meta device "
                f"(no values): {', '.join(meta[:5])}{' ...' if len(meta) > 5 else ''}; load or "
                "initialise the model's weights first; nothing was written"
            )
