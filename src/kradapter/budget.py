"""Budget matching: trainable counts per method, and each method's hyperparameters at a matched budget.

One trainable-count formula per method, computed from that method's own shape logic (``ops`` for ours, PEFT's
``factorization`` for LoKr, PEFT's RandLoRA basis count), so a count here is what PEFT creates (tests check it on
real layers). ``match_layer`` picks, for one d_out x d_in layer, the hyperparameters with the smallest trainable
count >= a budget (default: KRAdapter's count for that shape); ``peft_config_for`` does the same over all targeted
layers of a model and returns the PEFT config.

Learning rates are not matched: methods want different learning rates (the KRAdapter paper tunes each method; on a
small run here KRAdapter with alpha 1 matched LoRA only at about 3x LoRA's learning rate). Tune it per method.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Iterable, Optional

from torch import nn
from transformers.pytorch_utils import Conv1D

from .specs import OutOfReach, get_spec, method_names

# The built-in methods, in the order tables list them; method_names() adds any a user registered.
METHODS = ("kradapter", "lora", "dora", "randlora", "krona", "sinlora", "kronlora", "full")


def check_method(method: str) -> None:
    get_spec(method)


def _check_shape(d_out: int, d_in: int) -> None:
    for name, d in (("d_out", d_out), ("d_in", d_in)):
        if isinstance(d, bool) or not isinstance(d, int) or d < 1:
            raise ValueError(f"{name} must be an int >= 1, got {d!r}")


def trainable_count(method: str, d_out: int, d_in: int, **hparams: Any) -> int:
    """Trainable parameters ``method`` adds to one d_out x d_in layer (missing hyperparameters: its defaults)."""
    spec = get_spec(method)
    _check_shape(d_out, d_in)
    return spec.count(d_out, d_in, **spec.complete(hparams))


def _total(method: str, shapes: list[tuple[int, int]], hparams: dict[str, Any]) -> int:
    # many layers share a shape: count each shape once, times how often it occurs
    spec = get_spec(method)
    return spec.total(Counter(shapes), spec.complete(hparams))


def _match(method: str, shapes: list[tuple[int, int]], budget: Optional[int], fixed: dict[str, Any]) -> dict:
    spec = get_spec(method)
    spec.complete(fixed)  # reject unknown names early
    if budget is None:
        budget = _total("kradapter", shapes, {})
    elif isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ValueError(f"budget must be an int >= 1 (trainable parameters), got {budget!r}")
    try:
        hparams, trainable = spec.match(Counter(shapes), budget, dict(fixed))
    except OutOfReach as err:
        raise ValueError(
            f"{method} cannot reach a budget of {budget:,} trainable parameters on "
            f"{_describe(shapes)}{' with ' + str(err.fixed) if err.fixed else ''}: its largest count is "
            f"{err.largest:,}"
        ) from None
    return {"hparams": hparams, "trainable": trainable, "budget": budget}


def _describe(shapes: list[tuple[int, int]]) -> str:
    if len(shapes) == 1:
        return f"a {shapes[0][0]} x {shapes[0][1]} layer"
    return f"{len(shapes)} layers"


def match_layer(method: str, d_out: int, d_in: int, budget: Optional[int] = None, **fixed: Any) -> dict:
    """``{"hparams", "trainable", "budget"}``: the method's hyperparameters with the smallest trainable count >=
    ``budget`` (default: KRAdapter's count at k1 = sqrt) on one d_out x d_in layer. ``fixed`` hyperparameters are
    held (e.g. ``kron_shape=[2, 2]`` for kronlora) and the rest searched. "full" is never matched: it reports
    d_out * d_in. Search spaces: kradapter k1, lora/dora/sinlora/randlora r, krona LoKr's decompose_factor (with r
    large enough that both Kronecker factors are full matrices), kronlora r at kron_shape 4 (then 2, 1 if the budget
    is out of reach). Every search is closed-form or bounded by the square root of a side (specs/search.py)."""
    _check_shape(d_out, d_in)
    return _match(method, [(d_out, d_in)], budget, fixed)


def match_all(d_out: int, d_in: int, budget: Optional[int] = None, methods: Optional[Iterable[str]] = None
              ) -> dict[str, dict]:
    """``match_layer`` for each method, in order (default: every registered method)."""
    methods = list(method_names() if methods is None else methods)
    for method in methods:
        check_method(method)
    _check_shape(d_out, d_in)
    return {method: match_layer(method, d_out, d_in, budget) for method in methods}


# --- whole models ---------------------------------------------------------------------------------------------------


def target_layers(model: nn.Module, target_modules, task_type=None) -> dict[str, tuple[int, int]]:
    """``{module name: (d_out, d_in)}`` of the modules PEFT would adapt for ``target_modules`` (names, a regex, or
    "all-linear", which like PEFT leaves out the output head, and for task_type "SEQ_CLS" the classifier); every one
    must be nn.Linear, transformers' Conv1D or nn.Conv2d (its kernel counted as out x in*kh*kw)."""
    from peft.tuners.tuners_utils import BaseTunerLayer, _maybe_include_all_linear_layers, check_target_module_exists

    from .methods.kradapter.config import KRAdapterConfig
    from .methods._geometry import weight_geometry

    if not target_modules:
        raise ValueError("target_modules must name at least one module (a list of names, a regex, or 'all-linear')")
    config = KRAdapterConfig(target_modules=target_modules, task_type=task_type)
    if target_modules == "all-linear":
        config = _maybe_include_all_linear_layers(config, model)
    found = {}
    for key, module in model.named_modules():
        if not key or not check_target_module_exists(config, key):
            continue
        if isinstance(module, BaseTunerLayer):  # already adapted: count on the layer underneath
            module = module.get_base_layer()
        if not isinstance(module, (nn.Linear, Conv1D, nn.Conv2d)):
            raise ValueError(
                f"target module '{key}' is a {type(module).__name__}; the budget matcher handles torch.nn.Linear, "
                "transformers Conv1D and torch.nn.Conv2d"
            )
        found[key] = weight_geometry(module)
    if not found:
        raise ValueError(f"no module of the model matches target_modules={target_modules!r}")
    return found


def _layer_kinds(model: nn.Module, names) -> tuple[list[str], list[str]]:
    """(Conv1D targets, Conv2d targets) among ``names``."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    conv1d, conv2d = [], []
    for key, module in model.named_modules():
        if key in names:
            base = module.get_base_layer() if isinstance(module, BaseTunerLayer) else module
            (conv1d if isinstance(base, Conv1D) else conv2d if isinstance(base, nn.Conv2d) else []).append(key)
    return conv1d, conv2d


def _check_layer_kinds(method: str, conv1d: list[str], conv2d: list[str]) -> None:
    spec = get_spec(method)
    if conv2d and not spec.conv2d:
        able = [m for m in method_names() if get_spec(m).conv2d]
        raise ValueError(f"method {method!r} cannot adapt Conv2d targets here ({', '.join(conv2d[:3])}"
                         f"{', ...' if len(conv2d) > 3 else ''}); for convolutions use one of {', '.join(able)}")
    if conv1d and not spec.conv1d:
        what = spec.summary.split(":")[0]
        raise ValueError(f"method {method!r} ({what}) cannot adapt transformers Conv1D modules: {conv1d}")


def match_model(
    method: str, model: nn.Module, target_modules, budget: Optional[int] = None, task_type=None, **fixed: Any
) -> dict:
    """Like ``match_layer`` over every targeted layer of ``model`` with one hyperparameter setting for all of them:
    the smallest TOTAL count >= ``budget`` (default: KRAdapter's total on the same targets). Adds ``"layers"``."""
    check_method(method)
    layers = target_layers(model, target_modules, task_type)
    result = _match(method, list(layers.values()), budget, fixed)
    result["layers"] = layers
    return result


def peft_config_for(method: str, model: nn.Module, target_modules, budget: Optional[int] = None, **overrides: Any):
    """A PEFT config for ``method`` on ``target_modules`` of ``model``, matched so the total trainable count over
    those layers is the smallest >= KRAdapter's total on the same targets (or ``budget``). ``None`` for "full" (the
    caller unfreezes the targets' weights). ``overrides`` pass through to the config (alpha / lora_alpha, dropout,
    freq, ...); an override of a matched hyperparameter (r, k1, kron_shape, decompose_factor) is held fixed and the
    rest is matched around it. Conv2d targets are matched on their flattened kernels, for methods whose spec says
    its PEFT layer adapts them. Methods want different learning rates: tune it per method.
    """
    spec = get_spec(method)
    cls = spec.config_class()
    if cls is not None:
        valid = spec.override_fields()
        bad = sorted(set(overrides) - valid)
        if bad:
            raise ValueError(f"{cls.__name__} has no field(s) {bad} to override; valid: {sorted(valid)}")
    # overrides of what the count depends on are held fixed (less those the spec leaves to the config alone)
    fixed = {k: v for k, v in overrides.items() if k in spec.hparams and k not in spec.config_only}
    layers = target_layers(model, target_modules, overrides.get("task_type"))
    conv1d, conv2d = _layer_kinds(model, layers)
    _check_layer_kinds(method, conv1d, conv2d)
    matched = _match(method, list(layers.values()), budget, fixed)
    return spec.config(list(layers), {**matched["hparams"], **overrides}, conv1d)


def full_finetune_(model: nn.Module, target_modules, task_type=None) -> int:
    """The "full" comparator: freeze every parameter of ``model`` except the weights of the targeted layers (their
    biases stay frozen, as no adapter trains them either). Returns the trainable count, ``match_model("full", ...)``."""
    layers = target_layers(model, target_modules, task_type)
    for p in model.parameters():
        p.requires_grad_(False)
    modules = dict(model.named_modules())
    for key in layers:
        modules[key].weight.requires_grad_(True)
    return sum(d_out * d_in for d_out, d_in in layers.values())
