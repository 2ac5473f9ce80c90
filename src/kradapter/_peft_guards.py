"""Loads and saves of kradapter's adapters made whole-or-nothing on PEFT's and transformers' paths (installed once
by ``import kradapter``). Adapters of PEFT's own methods (LoRA, ...) are left to PEFT: each wrapper first asks
whether the adapter is ours (its adapter_config.json's ``peft_type``, or the model's configs) and otherwise calls
the original with the same arguments.

Why wrappers at all: PEFT and transformers inject an adapter's layers into the user's model before they read the
weights file, and our tuner is not on the call path when that read fails (a missing, empty or truncated file), nor
at all on transformers' path, which loads tensors without ``load_state_dict``. So the wrappers read the file first
(refusing what cannot load: unreadable, non-float, NaN/Inf tensors) before the model is touched, snapshot the
module tree, and on any later failure (the tuner's own check of shapes and modules before any tensor is copied,
DeltaTuner._load_from_state_dict; transformers' report) put it back and raise one error that names the file.
save_pretrained refuses meta-device weights before it writes anything. A PeftModel whose only adapter of ours was
deleted says what to do, not KeyError, when next used.
"""

from __future__ import annotations

import contextvars
import functools
import json
from pathlib import Path

from ._load_checks import (
    WEIGHTS_NAMES,
    AdapterLoadError,
    check_tensors,
    guarded_load,
    is_ours,
    read_checked,
    weights_file,
)

__all__ = ["WEIGHTS_NAMES", "AdapterLoadError", "install", "weights_file"]
_inside_load = contextvars.ContextVar("kradapter_inside_load", default=False)


def saved_type_is_ours(model_id, subfolder: str | None = None) -> bool:
    """Whether the adapter_config.json at `model_id` (a local directory) names one of our methods. An unreadable
    config counts as ours when its text names one of them, so our load reports it."""
    from . import _registry

    file = Path(str(model_id), subfolder or "", "adapter_config.json")
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, ValueError):
        return False  # a Hub id or a missing directory: PEFT's own handling
    try:
        return is_ours(json.loads(text).get("peft_type"))
    except (ValueError, AttributeError):
        return any(f'"{name.upper()}"' in text for name in _registry.REGISTERED)


def _holds_ours(model) -> bool:
    configs = getattr(model, "peft_config", None)
    return isinstance(configs, dict) and any(is_ours(getattr(c, "peft_type", None)) for c in configs.values())


def _load_from(model, model_id, subfolder, adapter_name: str, load, *, check_after: bool):
    """guarded_load with the file PEFT / transformers will read: read and checked first when it is a local file.
    A load inside a guarded one (PeftModel.from_pretrained calls load_adapter) is the outer one's to guard."""
    if _inside_load.get():
        return load()
    path, known = weights_file(model_id, subfolder)
    tensors = read_checked(path, adapter_name) if known is None else None
    token = _inside_load.set(True)
    try:
        return guarded_load(model, path, adapter_name, load, tensors=tensors, known=known, check_after=check_after)
    finally:
        _inside_load.reset(token)


def install() -> None:
    """Wrap PeftModel's and transformers' adapter loads and PeftModel.save_pretrained for our methods
    (idempotent)."""
    _install_peft()
    _install_transformers()


def _install_peft() -> None:
    from peft import PeftModel

    if getattr(PeftModel, "_kradapter_guarded", False):
        return
    from_pretrained = PeftModel.from_pretrained.__func__
    load_adapter = PeftModel.load_adapter
    save_pretrained = PeftModel.save_pretrained

    @functools.wraps(from_pretrained)
    def guarded_from_pretrained(cls, model, model_id, *args, **kwargs):
        subfolder = kwargs.get("subfolder")
        if not saved_type_is_ours(model_id, subfolder):
            return from_pretrained(cls, model, model_id, *args, **kwargs)
        adapter_name = kwargs.get("adapter_name", args[0] if args else "default")
        return _load_from(
            model,
            model_id,
            subfolder,
            adapter_name,
            lambda: from_pretrained(cls, model, model_id, *args, **kwargs),
            check_after=False,  # DeltaTuner checks the tensors before it copies any
        )

    @functools.wraps(load_adapter)
    def guarded_load_adapter(self, model_id, adapter_name, *args, **kwargs):
        subfolder = kwargs.get("subfolder")
        if not saved_type_is_ours(model_id, subfolder):
            return load_adapter(self, model_id, adapter_name, *args, **kwargs)
        return _load_from(
            self,
            model_id,
            subfolder,
            adapter_name,
            lambda: load_adapter(self, model_id, adapter_name, *args, **kwargs),
            check_after=False,
        )

    @functools.wraps(save_pretrained)
    def guarded_save_pretrained(self, save_directory, *args, **kwargs):
        if _holds_ours(self):
            _refuse_meta(self, kwargs.get("selected_adapters"), save_directory, kwargs.get("state_dict"))
        return save_pretrained(self, save_directory, *args, **kwargs)

    active_config = PeftModel.active_peft_config.fget

    @functools.wraps(active_config)
    def guarded_active_config(self):
        if not self.peft_config and getattr(self, "_kradapter_empty_hook", None) is not None:
            _no_adapter_left(self, ())
        return active_config(self)

    delete_adapter, add_adapter = PeftModel.delete_adapter, PeftModel.add_adapter

    @functools.wraps(delete_adapter)
    def guarded_delete_adapter(self, adapter_name):
        was_ours = adapter_name in self.peft_config and is_ours(self.peft_config[adapter_name].peft_type)
        delete_adapter(self, adapter_name)
        if was_ours and not self.peft_config and getattr(self, "_kradapter_empty_hook", None) is None:
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


def _install_transformers() -> None:
    """transformers' PeftAdapterMixin.load_adapter: model.load_adapter(dir), and AutoModel*.from_pretrained(dir)
    of an adapter directory, which calls it."""
    try:
        from transformers.integrations.peft import PeftAdapterMixin
    except ImportError:  # transformers without its PEFT integration: nothing to guard
        return
    if getattr(PeftAdapterMixin, "_kradapter_guarded", False):
        return
    load_adapter = PeftAdapterMixin.load_adapter

    @functools.wraps(load_adapter)
    def guarded_load_adapter(self, peft_model_id=None, adapter_name=None, peft_config=None, *args, **kwargs):
        adapter_kwargs = kwargs.get("adapter_kwargs") or {}
        subfolder = kwargs.get("subfolder", adapter_kwargs.get("subfolder"))
        state_dict = kwargs.get("adapter_state_dict", args[0] if args else None)
        if peft_config is not None:
            ours = is_ours(peft_config.get("peft_type") if isinstance(peft_config, dict) else peft_config.peft_type)
        else:
            ours = peft_model_id is not None and saved_type_is_ours(peft_model_id, subfolder)
        if not ours:
            return load_adapter(self, peft_model_id, adapter_name, peft_config, *args, **kwargs)
        load = functools.partial(load_adapter, self, peft_model_id, adapter_name, peft_config, *args, **kwargs)
        if state_dict is None:
            return _load_from(self, peft_model_id, subfolder, adapter_name or "default", load, check_after=True)
        path = "the adapter_state_dict given"
        check_tensors(path, state_dict, adapter_name or "default")
        return guarded_load(self, path, adapter_name or "default", load, tensors=state_dict, check_after=True)

    PeftAdapterMixin.load_adapter = guarded_load_adapter
    PeftAdapterMixin._kradapter_guarded = True


def _no_adapter_left(module, args) -> None:
    raise ValueError(
        "this PeftModel has no adapter left (its only adapter was deleted): add one with "
        "add_adapter() or load_adapter(), or take the base model back with unload()"
    )


def _refuse_meta(peft_model, selected, save_directory, state_dict=None) -> None:
    # Read the parameters themselves, never state_dict(): under FSDP1 state_dict() is a collective, and
    # save_pretrained runs on rank 0 alone (kradapter.dist.save_adapter), so calling it here deadlocks.
    if state_dict is not None:
        tensors = {"": state_dict}
    else:
        tensors = {name: {} for name in (selected or list(peft_model.peft_config)) if name in peft_model.peft_config}
        for key, t in [*peft_model.named_parameters(), *peft_model.named_buffers()]:
            segments = key.split(".")
            for name in tensors:
                if name in segments:  # the adapter's own segment: adapter 'b' is not the b of 'base_model'
                    tensors[name][key] = t
    for name, named in tensors.items():
        meta = [k for k, t in named.items() if getattr(t, "is_meta", False)]
        if meta:
            raise ValueError(
                f"cannot save adapter '{name}' to {save_directory}: tensors are on the meta device "
                f"(no values): {', '.join(meta[:5])}{' ...' if len(meta) > 5 else ''}; load or "
                "initialise the model's weights first; nothing was written"
            )
