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

import math
from collections import Counter
from dataclasses import fields
from typing import Any, Iterable, Optional

from torch import nn

from ._compat import Conv1D
from .ops import kronlora_shapes, resolve_k

METHODS = ("kradapter", "lora", "dora", "randlora", "krona", "sinlora", "kronlora", "full")

# The hyperparameters each count depends on, with the defaults used when one is not given.
HPARAMS: dict[str, dict[str, Any]] = {
    "kradapter": {"k1": "sqrt"},
    "lora": {"r": 8},
    "dora": {"r": 8},
    "randlora": {"r": 32},
    "krona": {"decompose_factor": -1, "r": None, "decompose_both": False},  # r None: both factors full
    "sinlora": {"r": 8},
    "kronlora": {"kron_shape": 4, "r": 8},
    "full": {},
}


def check_method(method: str) -> None:
    """Refuse a method name the budget matcher does not know.

    Args:
        method: One of ``METHODS``.

    Raises:
        ValueError: If ``method`` is unknown; the message lists the valid ones.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(METHODS)}")


def _check_shape(d_out: int, d_in: int) -> None:
    for name, d in (("d_out", d_out), ("d_in", d_in)):
        if isinstance(d, bool) or not isinstance(d, int) or d < 1:
            raise ValueError(f"{name} must be an int >= 1, got {d!r}")


def _hparams(method: str, given: dict[str, Any]) -> dict[str, Any]:
    unknown = set(given) - set(HPARAMS[method])
    if unknown:
        raise ValueError(
            f"{method} has no hyperparameter(s) {sorted(unknown)}; its count depends on {sorted(HPARAMS[method])}"
        )
    return {**HPARAMS[method], **given}


def _positive_int(value, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{where} must be an int >= 1, got {value!r}")
    return value


def krona_factors(d_out: int, d_in: int, decompose_factor: int = -1) -> tuple[tuple[int, int], tuple[int, int]]:
    """Shapes ``(w1, w2)`` PEFT's LoKr builds for a Linear: ``w1 (out_l x in_m) ⊗ w2 (out_k x in_n)``.

    Args:
        d_out: The layer's output size.
        d_in: The layer's input size.
        decompose_factor: LoKr's ``decompose_factor`` (-1: the most balanced split).

    Returns:
        ``((out_l, in_m), (out_k, in_n))``.
    """
    from ._compat import factorization

    out_l, out_k = factorization(d_out, decompose_factor)
    in_m, in_n = factorization(d_in, decompose_factor)
    return (out_l, in_m), (out_k, in_n)


def trainable_count(method: str, d_out: int, d_in: int, **hparams: Any) -> int:
    """Trainable parameters ``method`` adds to one ``d_out x d_in`` layer.

    Args:
        method: One of ``METHODS``.
        d_out: The layer's output size.
        d_in: The layer's input size.
        **hparams: The method's size hyperparameters (``HPARAMS[method]``); missing ones take its defaults.

    Returns:
        The count, as PEFT creates it (tests check it on real layers).

    Raises:
        ValueError: If the method, the shape or a hyperparameter is invalid, or a hyperparameter is unknown.
    """
    check_method(method)
    _check_shape(d_out, d_in)
    h = _hparams(method, hparams)
    n = min(d_out, d_in)
    if method == "kradapter":
        k1, k2 = resolve_k(d_out, d_in, h["k1"])
        return n * (k1 + k2)
    if method in ("lora", "sinlora"):
        return _positive_int(h["r"], "r") * (d_out + d_in)
    if method == "dora":  # LoRA plus DoRA's magnitude vector, one entry per output feature
        return _positive_int(h["r"], "r") * (d_out + d_in) + d_out
    if method == "randlora":  # lambda (r x bases) and gamma (bases x n); the random bases are frozen
        r = _positive_int(h["r"], "r")
        bases = math.ceil(n / r)
        return bases * (r + n)
    if method == "krona":
        (w1_out, w1_in), (w2_out, w2_in) = krona_factors(d_out, d_in, h["decompose_factor"])
        r = h["r"]
        if r is None:  # large enough that LoKr keeps both factors as full matrices
            r = max(w1_out, w1_in, w2_out, w2_in)
        r = _positive_int(r, "r")
        # LoKr's own rule: a factor is stored full unless r < half its larger side (w1 only when decompose_both)
        w1_full = not (h["decompose_both"] and r < max(w1_out, w1_in) / 2)
        w2_full = not (r < max(w2_out, w2_in) / 2)
        w1 = w1_out * w1_in if w1_full else r * (w1_out + w1_in)
        w2 = w2_out * w2_in if w2_full else r * (w2_out + w2_in)
        return w1 + w2
    if method == "kronlora":
        (a_out, a_in), (b_out, r), (_, b_in) = kronlora_shapes(d_out, d_in, h["kron_shape"], h["r"])
        return a_out * a_in + r * (b_out + b_in)
    return d_out * d_in  # full: the target's weight matrix (its bias stays frozen)


# --- search spaces ------------------------------------------------------------------------------------------------


# The hyperparameter that sets each method's size; fixing it means there is nothing left to match.
KNOB = {"kradapter": "k1", "lora": "r", "dora": "r", "sinlora": "r", "randlora": "r", "krona": "decompose_factor",
        "kronlora": "r"}


def _krona_full_r(shapes: list[tuple[int, int]], decompose_factor: int) -> int:
    """One LoKr r for every layer, large enough that w2 stays a full matrix on each (KronA: no low-rank factors)."""
    return max(max(w1 + w2) for w1, w2 in (krona_factors(o, i, decompose_factor) for o, i in shapes))


def _candidates(method: str, shapes: list[tuple[int, int]], fixed: dict[str, Any]) -> Iterable[dict[str, Any]]:
    """Settings of the method's size knob to try (the other hyperparameters are in ``fixed``)."""
    shapes = sorted(set(shapes))
    if method == "kradapter":
        yield from ({"k1": k1} for k1 in range(1, min(max(s) for s in shapes) + 1))
    elif method in ("lora", "sinlora", "dora"):
        yield from ({"r": r} for r in range(1, max(max(s) for s in shapes) + 1))
    elif method == "randlora":
        yield from ({"r": r} for r in range(1, max(min(s) for s in shapes) + 1))
    elif method == "krona":
        for f in [-1, *range(1, max(max(s) for s in shapes) + 1)]:
            yield {"decompose_factor": f, "r": fixed.get("r") or _krona_full_r(shapes, f)}
    elif method == "kronlora":  # _match fixes kron_shape first
        try:  # r can go up to the smaller side of B on every layer
            r_max = min(min(o // a_out, i // a_in) for o, i in shapes
                        for (a_out, a_in), _, _ in [kronlora_shapes(o, i, fixed["kron_shape"], 1)])
        except ValueError:
            return
        yield from ({"r": r} for r in range(1, r_max + 1))


def _total(method: str, shapes: list[tuple[int, int]], hparams: dict[str, Any]) -> int:
    # many layers share a shape: count each shape once, times how often it occurs
    return sum(n * trainable_count(method, o, i, **hparams) for (o, i), n in Counter(shapes).items())


def _match(method: str, shapes: list[tuple[int, int]], budget: Optional[int], fixed: dict[str, Any]) -> dict:
    check_method(method)
    _hparams(method, fixed)  # reject unknown names early
    default_budget = sum(trainable_count("kradapter", o, i) for o, i in shapes)
    if budget is None:
        budget = default_budget
    elif isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ValueError(f"budget must be an int >= 1 (trainable parameters), got {budget!r}")
    if method == "full":
        return {"hparams": {}, "trainable": _total(method, shapes, {}), "budget": budget}
    fixed = dict(fixed)
    if method == "kradapter" and budget == default_budget and not fixed:
        return {"hparams": {"k1": "sqrt"}, "trainable": budget, "budget": budget}
    if method == "kronlora" and "kron_shape" not in fixed and "r" not in fixed:
        # keep the default A shape when it can reach the budget; smaller A (bigger B) only when it cannot
        for kron_shape in (HPARAMS["kronlora"]["kron_shape"], 2, 1):
            try:
                return _match(method, shapes, budget, {**fixed, "kron_shape": kron_shape})
            except ValueError as err:
                last = err
        raise last
    if KNOB[method] in fixed:  # the size is fixed: nothing to match, report what it costs
        if method == "krona" and fixed.get("r") is None:
            fixed["r"] = _krona_full_r(shapes, fixed["decompose_factor"])
        return {"hparams": fixed, "trainable": _total(method, shapes, fixed), "budget": budget}
    best = None
    largest = 0
    for cand in _candidates(method, shapes, fixed):
        h = {**fixed, **cand}
        try:
            total = _total(method, shapes, h)
        except ValueError:
            continue
        largest = max(largest, total)
        if total >= budget and (best is None or total < best[0]):
            best = (total, h)
        # monotone families: the first r that reaches the budget is the answer
        if best is not None and method in ("lora", "sinlora", "dora"):
            break
    if best is None:
        raise ValueError(
            f"{method} cannot reach a budget of {budget:,} trainable parameters on "
            f"{_describe(shapes)}{' with ' + str(fixed) if fixed else ''}: its largest count is {largest:,}"
        )
    return {"hparams": best[1], "trainable": best[0], "budget": budget}


def _describe(shapes: list[tuple[int, int]]) -> str:
    if len(shapes) == 1:
        return f"a {shapes[0][0]} x {shapes[0][1]} layer"
    return f"{len(shapes)} layers"


def match_layer(method: str, d_out: int, d_in: int, budget: Optional[int] = None, **fixed: Any) -> dict:
    """The method's hyperparameters with the smallest trainable count ``>= budget`` on one ``d_out x d_in`` layer.

    Search spaces: kradapter ``k1``; lora / dora / sinlora / randlora ``r``; krona LoKr's ``decompose_factor``
    (with r large enough that both Kronecker factors are full matrices); kronlora ``r`` at ``kron_shape`` 4 (then
    2, 1 if the budget is out of reach). "full" is never matched: it reports ``d_out * d_in``.

    Args:
        method: One of ``METHODS``.
        d_out: The layer's output size.
        d_in: The layer's input size.
        budget: The count to reach; default KRAdapter's count at ``k1="sqrt"``.
        **fixed: Hyperparameters held fixed (e.g. ``kron_shape=[2, 2]`` for kronlora); the rest are searched.

    Returns:
        ``{"hparams", "trainable", "budget"}``.

    Raises:
        ValueError: If the method, shape or a fixed hyperparameter is invalid, or no setting reaches the budget.
    """
    _check_shape(d_out, d_in)
    return _match(method, [(d_out, d_in)], budget, fixed)


def match_all(d_out: int, d_in: int, budget: Optional[int] = None, methods: Iterable[str] = METHODS) -> dict[str, dict]:
    """[`match_layer`][kradapter.budget.match_layer] for each method, in order.

    Args:
        d_out: The layer's output size.
        d_in: The layer's input size.
        budget: As in ``match_layer``.
        methods: The methods to match (default: all of ``METHODS``).

    Returns:
        Method -> ``match_layer``'s result.

    Raises:
        ValueError: If a method or the shape is invalid.
    """
    methods = list(methods)
    for method in methods:
        check_method(method)
    _check_shape(d_out, d_in)
    return {method: match_layer(method, d_out, d_in, budget) for method in methods}


# --- whole models ---------------------------------------------------------------------------------------------------


def target_layers(model: nn.Module, target_modules, task_type=None) -> dict[str, tuple[int, int]]:
    """The modules PEFT would adapt for ``target_modules``, with the shapes their update acts on.

    Args:
        model: The model to inspect.
        target_modules: Module names, a regex, or ``"all-linear"`` (which, like PEFT, leaves out the output head,
            and for ``task_type="SEQ_CLS"`` the classifier).
        task_type: PEFT's task type, when it changes the targets.

    Returns:
        Module name -> ``(d_out, d_in)``. Conv1d/2d/3d kernels count flattened, Embedding as its matrix, and
        MultiheadAttention as its in_proj under its name and its out_proj under name + ``OUT_PROJ``.

    Raises:
        ValueError: If ``target_modules`` is empty, matches nothing, or matches a module of a type KRAdapter
            does not adapt.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    from ._compat import _maybe_include_all_linear_layers, check_target_module_exists

    from .methods.kradapter.config import KRAdapterConfig
    from .methods.kradapter.layer import weight_geometry
    from .methods.kradapter.model import SUPPORTED_BASE_TYPES

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
        if not isinstance(module, SUPPORTED_BASE_TYPES):  # counted on the matrix the update acts on
            raise ValueError(
                f"target module '{key}' is a {type(module).__name__}; the budget matcher handles torch.nn.Linear, "
                "transformers Conv1D, torch.nn.Conv1d / Conv2d / Conv3d (kernel flattened) and torch.nn.Embedding"
            )
        found[key] = weight_geometry(module)
        if isinstance(module, nn.MultiheadAttention):  # adapted as two matrices: packed in_proj and out_proj
            out_proj = module.out_proj.get_base_layer() if isinstance(module.out_proj, BaseTunerLayer) else module.out_proj
            found[key + OUT_PROJ] = weight_geometry(out_proj)
    if not found:
        raise ValueError(f"no module of the model matches target_modules={target_modules!r}")
    return found


def match_model(
    method: str, model: nn.Module, target_modules, budget: Optional[int] = None, task_type=None, **fixed: Any
) -> dict:
    """Like [`match_layer`][kradapter.budget.match_layer] over every targeted layer, one setting for all of them.

    Finds the smallest TOTAL count ``>= budget`` (default: KRAdapter's total on the same targets).

    Args:
        method: One of ``METHODS``.
        model: The model whose layers are targeted.
        target_modules: As in [`target_layers`][kradapter.budget.target_layers].
        budget: The total count to reach.
        task_type: PEFT's task type, when it changes the targets.
        **fixed: Hyperparameters held fixed.

    Returns:
        ``match_layer``'s result plus ``"layers"`` (module name -> shape).

    Raises:
        ValueError: As ``target_layers`` and ``match_layer`` do.
    """
    check_method(method)
    layers = target_layers(model, target_modules, task_type)
    _check_types_for(method, model, layers)
    result = _match(method, list(layers.values()), budget, fixed)
    result["layers"] = layers
    return result


OUT_PROJ = ":out_proj"  # target_layers' key for the out_proj of an nn.MultiheadAttention target (not a module name)

# Methods whose count on a conv / embedding target is the formula on its flattened matrix (LoRA's conv factors are
# in*k and out wide, as the flattened d_in and d_out, when groups == 1); the others adapt Linear and Conv1D only.
_FLATTENED_OK = {"kradapter": True, "full": True, "lora": False, "dora": False}


def _check_types_for(method: str, model: nn.Module, layers: dict) -> None:
    from peft.tuners.tuners_utils import BaseTunerLayer

    for key, module in model.named_modules():
        if isinstance(module, BaseTunerLayer):
            module = module.get_base_layer()
        if key not in layers or isinstance(module, (nn.Linear, Conv1D)):
            continue
        grouped = getattr(module, "groups", 1) > 1
        if isinstance(module, nn.MultiheadAttention):  # KRAdapter and LoRA adapt in_proj and out_proj
            if method not in ("kradapter", "lora"):
                raise ValueError(f"target module '{key}' is a MultiheadAttention; {method} is not matched on it")
        elif method not in _FLATTENED_OK or (grouped and not _FLATTENED_OK[method]):
            raise ValueError(
                f"target module '{key}' is a {type(module).__name__}{' with groups > 1' if grouped else ''}; "
                f"{method} is matched on torch.nn.Linear and transformers Conv1D targets only"
            )


def _config_fields(cls) -> set[str]:
    return {f.name for f in fields(cls)}


def peft_config_for(method: str, model: nn.Module, target_modules, budget: Optional[int] = None, **overrides: Any):
    """A PEFT config for ``method`` on ``target_modules`` of ``model`` at KRAdapter's trainable budget.

    The total trainable count over those layers is the smallest ``>=`` KRAdapter's total on the same targets (or
    ``budget``). Methods want different learning rates: tune it per method.

    Args:
        method: One of ``METHODS``.
        model: The model to adapt.
        target_modules: As in [`target_layers`][kradapter.budget.target_layers].
        budget: The total count to reach, instead of KRAdapter's.
        **overrides: Config fields passed through (alpha / lora_alpha, dropout, freq, ...); an override of a matched
            hyperparameter (r, k1, kron_shape, decompose_factor) is held fixed and the rest matched around it.

    Returns:
        The config, or None for "full" (the caller unfreezes the targets' weights, e.g. with
        [`full_finetune_`][kradapter.budget.full_finetune_]).

    Raises:
        ValueError: If the method is unknown, an override names no field of the config, the targets are invalid, or
            krona is asked to adapt transformers ``Conv1D`` modules (PEFT's LoKr cannot).
    """
    from peft import LoKrConfig, LoraConfig, RandLoraConfig

    from .methods.kradapter.config import KRAdapterConfig
    from .methods.kronlora.config import KronLoRAConfig
    from .methods.sinlora.config import SinLoRAConfig

    check_method(method)
    config_cls = {
        "kradapter": KRAdapterConfig, "lora": LoraConfig, "dora": LoraConfig, "randlora": RandLoraConfig,
        "krona": LoKrConfig, "sinlora": SinLoRAConfig, "kronlora": KronLoRAConfig,
    }.get(method)
    if config_cls is not None:
        valid = _config_fields(config_cls) - {"target_modules", "peft_type", "use_dora"}
        bad = sorted(set(overrides) - valid)
        if bad:
            raise ValueError(f"{config_cls.__name__} has no field(s) {bad} to override; valid: {sorted(valid)}")
    fixed = {k: v for k, v in overrides.items() if k in HPARAMS[method]}
    if method == "krona" and "decompose_both" in fixed:
        fixed.pop("decompose_both")
    matched = match_model(method, model, target_modules, budget, overrides.get("task_type"), **fixed)
    if method == "full":
        return None
    targets = [k for k in matched["layers"] if not k.endswith(OUT_PROJ)]
    conv1d = [k for k, m in model.named_modules() if k in matched["layers"] and isinstance(m, Conv1D)]
    h = {**matched["hparams"], **overrides}
    if method == "kradapter":
        return KRAdapterConfig(target_modules=targets, **h)
    if method in ("lora", "dora"):
        h.setdefault("fan_in_fan_out", bool(conv1d))
        return LoraConfig(target_modules=targets, use_dora=(method == "dora"), **h)
    if method == "randlora":
        h.setdefault("fan_in_fan_out", bool(conv1d))
        return RandLoraConfig(target_modules=targets, **h)
    if method == "krona":
        if conv1d:
            raise ValueError(f"PEFT's LoKr (krona) cannot adapt transformers Conv1D modules: {conv1d}")
        h.setdefault("alpha", h["r"])  # LoKr scales by alpha / r: keep the Kronecker product unscaled
        h.setdefault("decompose_both", False)
        return LoKrConfig(target_modules=targets, **h)
    if method == "sinlora":
        return SinLoRAConfig(target_modules=targets, **h)
    return KronLoRAConfig(target_modules=targets, **h)


def full_finetune_(model: nn.Module, target_modules, task_type=None) -> int:
    """The "full" comparator: freeze every parameter of ``model`` except the weights of the targeted layers.

    Their biases stay frozen, as no adapter trains them either.

    Args:
        model: The model, changed in place.
        target_modules: As in [`target_layers`][kradapter.budget.target_layers].
        task_type: PEFT's task type, when it changes the targets.

    Returns:
        The trainable count (``match_model("full", ...)``'s).

    Raises:
        ValueError: As ``target_layers`` does.
    """
    layers = target_layers(model, target_modules, task_type)
    for p in model.parameters():
        p.requires_grad_(False)
    modules = dict(model.named_modules())
    for key in layers:
        modules[key].weight.requires_grad_(True)
    return sum(d_out * d_in for d_out, d_in in layers.values())
