"""What the models of DeltaLayer methods share: create and replace layers, check merges model-wide first.

Injection, saving, loading and several named adapters are PEFT's (BaseTuner). A subclass sets ``prefix``,
``tuner_layer_cls``, ``layer_cls`` (the concrete nn.Module layer) and ``layer_kwargs(config, key)``; one that adapts
more module types than nn.Linear / Conv1D overrides ``new_layer``, one with more reasons to refuse a merge extends
``check_merge``.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any

import torch
from peft.config import PeftConfig
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from torch import nn

from .. import _load_checks
from .._compat import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING, Conv1D, get_pattern_key
from ._delta_layer import DeltaLayer
from ._geometry import weight_geometry
from ._mixed_batch import mixed_batch_hooks
from ._weighted import Combination, add_weighted_adapter


def pattern_value(pattern: dict | None, key: str, default: Any) -> Any:
    """The value of the first entry of a config's ``*_pattern`` that matches module `key` (PEFT's matching rule),
    else `default`; a pattern of None has no entries."""
    pattern = pattern or {}
    return pattern.get(get_pattern_key(pattern.keys(), key), default)


def _holds(key: str, adapter_name: str, prefix: str) -> bool:
    """Whether a loaded key is a tensor of `adapter_name` (`...<prefix>X.<adapter_name>...` or a modules_to_save
    copy `...modules_to_save.<adapter_name>...`)."""
    parts = key.split(".")
    return any(
        (part.startswith(prefix) or part == "modules_to_save") and parts[i + 1] == adapter_name
        for i, part in enumerate(parts[:-1])
    )


_SIZE_SETTINGS = ("r", "k1", "kron_shape")


def _gib(size: int) -> str:
    return f"{size / 2**30:,.1f} GiB"


def memory_of(device: torch.device) -> int | None:
    """Total memory of `device` in bytes (the machine's RAM for the CPU), or None where it cannot be told."""
    import os

    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    if device.type == "cpu":
        try:
            return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return None
    return None  # meta (nothing is allocated), mps, xpu, ...


# Heads PEFT's task models add to modules_to_save themselves, all candidates at once (a model has one of them);
# PEFT 0.22's sequence classifier adds "pre_classifier" too (peft_model.CLASSIFIER_MODULE_NAMES).
_TASK_HEADS = {"classifier", "score", "pre_classifier", "qa_outputs"}


def check_modules_to_save(model: nn.Module, config: PeftConfig) -> None:
    """Refuse, before injection, a modules_to_save name that matches no module (PEFT accepts it silently, and the
    module the user meant is then neither trained nor saved)."""
    from peft.utils.other import _is_valid_match

    names = list(getattr(config, "modules_to_save", None) or [])
    keys = [key for key, _ in model.named_modules(remove_duplicate=False)]
    for name in names:
        if getattr(config, "task_type", None) and name in _TASK_HEADS:
            continue
        if not any(_is_valid_match(key, name) for key in keys):
            raise ValueError(
                f"modules_to_save: {name!r} matches no module of the model (a name or the end of a dotted name, "
                f"e.g. 'classifier' or 'model.score'); nothing was adapted"
            )


def _names(key: str, prefix: str) -> bool:
    """Whether a loaded key is an adapter tensor: a segment starts with the method's prefix, or is modules_to_save."""
    return any(part.startswith(prefix) or part == "modules_to_save" for part in key.split("."))


def unwrapped_name(name: str) -> str:
    """A module name without the segments FSDP1 and activation-checkpoint wrappers insert."""
    return name.replace("_fsdp_wrapped_module.", "").replace("_checkpoint_wrapped_module.", "")


class DeltaTuner(BaseTuner):
    # LoRA-family methods: by default adapt what PEFT's LoRA adapts for a known architecture.
    target_module_mapping = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING
    tuner_layer_cls = DeltaLayer
    layer_cls: type = nn.Module
    # combination_type -> (combine, config changes): the exact ones (the method's combine.py)
    combinations: dict[str, Combination] = {}

    def layer_kwargs(self, config, current_key: str) -> dict[str, Any]:
        raise NotImplementedError

    def new_layer(self, target: nn.Module, adapter_name: str, current_key: str, **kwargs) -> nn.Module:
        """A new adapter layer wrapping ``target`` (nn.Linear or transformers' Conv1D here)."""
        base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        if not isinstance(base, (nn.Linear, Conv1D)):
            raise TypeError(
                f"{self.tuner_layer_cls.method_name} cannot adapt module '{current_key}' of type "
                f"{type(base).__module__}.{type(base).__name__}; supported: torch.nn.Linear, transformers Conv1D"
            )
        return self.layer_cls(target, adapter_name, **kwargs)

    def _create_and_replace(
        self,
        config: PeftConfig,
        adapter_name: str,
        target: nn.Module,
        target_name: str,
        parent: nn.Module,
        current_key: str,
        parameter_name: str | None = None,
    ) -> None:
        if current_key is None:
            raise ValueError("current_key must not be None")
        if parameter_name is not None:  # PEFT passes it only for config.target_parameters, which no config of ours has
            raise ValueError(
                f"{self.tuner_layer_cls.method_name} adapts modules, not parameters (got parameter '{parameter_name}')"
            )
        kwargs = self.layer_kwargs(config, current_key)
        self._check_adapter_fits(config, target, current_key, kwargs)
        try:
            if isinstance(target, self.tuner_layer_cls):
                target.update_layer(adapter_name, inference_mode=config.inference_mode, **kwargs)
                return
            new_module = self.new_layer(target, adapter_name, current_key, **kwargs)
        except ValueError as err:  # shape errors name the layer they happened on
            if f"'{current_key}'" in str(err):
                raise
            raise ValueError(f"{self.tuner_layer_cls.method_name} on module '{current_key}': {err}") from None
        if adapter_name not in self.active_adapters:
            new_module.requires_grad_(False)  # an added, inactive adapter stays frozen until set_adapter
        self._replace_module(parent, target_name, new_module, target)

    def _pre_injection_hook(self, model: nn.Module, config: PeftConfig, adapter_name: str) -> None:
        self._adapter_bytes = 0  # what this injection has allocated so far (_check_adapter_fits)
        check_modules_to_save(model, config)

    def _check_adapter_fits(self, config, target: nn.Module, key: str, settings: dict) -> None:
        """Refuse, before allocating, an adapter whose parameters could not fit in memory (SinLoRA with r=10**9):
        one error naming the module, the settings and the size, not an allocator error of many GB."""
        numel_of = getattr(config, "adapter_numel", None)
        base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        if numel_of is None or not hasattr(base, "weight"):
            return
        try:
            d_out, d_in = weight_geometry(base)
            numel = numel_of(d_out, d_in, settings)
        except (TypeError, ValueError):  # a layer the method cannot adapt: its own check names the problem
            return
        if numel is None:
            return
        size = numel * 4  # adapter parameters are kept in float32 (autocast_adapter_dtype)
        self._adapter_bytes = getattr(self, "_adapter_bytes", 0) + size
        weight = base.weight
        available = memory_of(weight.device) if isinstance(weight, torch.Tensor) else None
        if available is not None and self._adapter_bytes > available:
            shown = ", ".join(f"{k}={v!r}" for k, v in settings.items() if k in _SIZE_SETTINGS)
            total = f"; {_gib(self._adapter_bytes)} with the modules before it" if self._adapter_bytes > size else ""
            raise ValueError(
                f"{self.tuner_layer_cls.method_name} on module '{key}' ({d_out} x {d_in}) with {shown}: its adapter "
                f"has {numel:,} parameters ({_gib(size)} in float32){total}, more than the {_gib(available)} of "
                f"memory on {base.weight.device}; use a smaller value (rank_pattern / k1_pattern set it per module)"
            )

    # --- saving under FSDP1: every method of ours, not only KRAdapter ------------------------------------------------
    @classmethod
    def _get_adapter_state_dict(cls, model, config, adapter_name, state_dict, unwanted_adapter_names):
        """PEFT selects adapter entries by the names of the modules holding them. FSDP1 wraps decoder layers in place,
        so those names gain '_fsdp_wrapped_module.' segments that a full state dict's keys do not have, and PEFT
        would select nothing (an empty adapter file, silently). Match on names without wrapper segments."""
        selected = super()._get_adapter_state_dict(model, config, adapter_name, state_dict, unwanted_adapter_names)
        prefixes = tuple(
            f"{unwrapped_name(name)}.{attr}."
            for name, module in model.named_modules()
            if isinstance(module, cls.tuner_layer_cls) and unwrapped_name(name) != name
            for attr in module.adapter_layer_names
        )
        if prefixes:
            selected.update({k: v for k, v in state_dict.items() if k.startswith(prefixes)})
        return selected

    # --- merges: every layer is checked before any is touched, so a refused merge leaves the model unchanged --------
    def check_merge(self, adapter_names: list[str] | None, safe_merge: bool) -> None:
        """Raise if merging must not start: a layer's weight is tied to another module's; with safe_merge, also if
        any layer would get NaN/Inf weights."""
        self._check_merge_untied(adapter_names)
        if safe_merge:
            self._check_merge_finite(adapter_names)

    def _check_merge_untied(self, adapter_names: list[str] | None) -> None:
        # A tied weight (GPT-2's wte and lm_head) is one tensor used twice: merging the update into it changes
        # the other use too, which the adapter never changed, so the merged model would compute something else.
        owners: dict[int, list[str]] = {}
        for name, param in self.model.named_parameters(remove_duplicate=False):
            owners.setdefault(id(param), []).append(name)
        for key, module in self.model.named_modules():
            if not isinstance(module, self.tuner_layer_cls):
                continue
            names = module.active_adapters if adapter_names is None else adapter_names
            if not any(module.has_adapter(n) and n not in module.merged_adapters for n in names):
                continue
            weight = getattr(module.get_base_layer(), "weight", None)
            inside = key + "."
            others = [n for n in owners.get(id(weight), []) if not n.startswith(inside)]
            if others:
                raise ValueError(
                    f"cannot merge into '{key}': its weight is tied to '{others[0].removesuffix('.weight')}' (the same "
                    "tensor), which the adapter does not change, so a merge would change both uses; keep the "
                    "adapter unmerged, or untie the weights first (give the other module a copy of the weight); "
                    "nothing was merged"
                )

    def _check_merge_finite(self, adapter_names: list[str] | None) -> None:
        for key, module in self.model.named_modules():
            if not isinstance(module, self.tuner_layer_cls):
                continue
            names = module.active_adapters if adapter_names is None else adapter_names
            weight = module.get_base_weight()  # dequantized for quantized bases
            for name in names:
                if module.has_adapter(name) and name not in module.merged_adapters:
                    weight = module.merged_weight(name, weight)
                    if not torch.isfinite(weight).all():
                        raise ValueError(
                            f"merging adapter '{name}' into '{key}' gives NaN/Inf weights; nothing was merged"
                        )

    def merge_adapter(self, adapter_names: list[str] | None = None, safe_merge: bool = False, **kwargs) -> None:
        """PeftModel.merge_adapter passes its **kwargs here (PEFT >= 0.22); they go on to PEFT's BaseTuner where it
        takes them, and are refused by name where it does not (rather than a TypeError from deep inside)."""
        self.check_merge(adapter_names, safe_merge)
        if kwargs and not _takes_var_keyword(super().merge_adapter):
            raise TypeError(
                f"merge_adapter got options {sorted(kwargs)} that this PEFT's merge does not take; "
                "it takes adapter_names and safe_merge"
            )
        super().merge_adapter(adapter_names=adapter_names, safe_merge=safe_merge, **kwargs)

    def _unload_and_optionally_merge(self, merge=True, progressbar=False, safe_merge=False, adapter_names=None):
        if merge:
            self.check_merge(adapter_names, safe_merge)
        return super()._unload_and_optionally_merge(
            merge=merge, progressbar=progressbar, safe_merge=safe_merge, adapter_names=adapter_names
        )

    def add_weighted_adapter(
        self, adapters: list[str], weights: list[float], adapter_name: str, combination_type: str = "linear"
    ) -> None:
        """Add adapter `adapter_name` whose Delta W is exactly sum_i weights[i] * Delta W of adapters[i] (see
        _weighted.py; the exact combination types are the method's combine.py)."""
        add_weighted_adapter(
            self, adapters, weights, adapter_name, combination_type, self.combinations, self.tuner_layer_cls.method_name
        )

    # --- loading: PEFT's load_state_dict reaches the tuner with the whole checkpoint before any layer copies a tensor
    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        """Refuse the adapters' tensors before any is copied: non-float, NaN/Inf, wrong shapes, or tensors for
        modules that hold no such adapter (PEFT would cast, load, fail halfway, or drop them with a warning). The
        error names each tensor as the file names it; PeftModel's load (_peft_guards) adds the file and puts the
        model back as it was."""
        ours = {k[len(prefix) :]: t for k, t in state_dict.items() if k.startswith(prefix) and _names(k, self.prefix)}
        present = [name for name in self.peft_config if any(_holds(k, name, self.prefix) for k in ours)]
        # PEFT inserts the adapter name only into keys of modules holding the adapter: a key without one is a
        # tensor for a module the adapter does not adapt, checked as part of every adapter being loaded
        stray = {k: t for k, t in ours.items() if not any(_holds(k, name, self.prefix) for name in self.peft_config)}
        problems: list[str] = []
        for adapter_name in present or list(self.peft_config)[-1:]:
            tensors = {
                "base_model." + _load_checks.file_form(key, adapter_name, (self.prefix,)): tensor
                for key, tensor in ours.items()
                if key in stray or _holds(key, adapter_name, self.prefix)
            }
            problems += [
                p
                for p in _load_checks.tensor_problems(tensors, self.model, adapter_name, (self.prefix,))
                if p not in problems
            ]
        if problems:
            raise _load_checks.AdapterTensorError(f"adapter weights do not fit: {_load_checks.describe(problems)}")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @contextmanager
    def _enable_peft_forward_hooks(self, *args, **kwargs):
        # PeftModel.forward / generate enter this with their keyword arguments: mixed-adapter batches.
        with mixed_batch_hooks(self, kwargs.get("adapter_names"), kwargs.get("num_beams")):
            yield


def _takes_var_keyword(function) -> bool:
    import inspect

    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(function).parameters.values())
