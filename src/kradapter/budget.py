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
from collections.abc import Iterable
from typing import Any

from torch import nn

from ._compat import Conv1D
from .specs import OutOfReach, get_spec, method_names

# The built-in methods, in the order tables list them; method_names() adds any a user registered.
METHODS = ("kradapter", "lora", "dora", "randlora", "krona", "sinlora", "kronlora", "full")


def check_method(method: str) -> None:
    """Refuse a method name no spec is registered for.

    Args:
        method: A registered method (``kradapter.specs.method_names()``).

    Raises:
        ValueError: If ``method`` is unknown; the message lists the valid ones.
    """
    get_spec(method)


def _check_shape(d_out: int, d_in: int) -> None:
    for name, d in (("d_out", d_out), ("d_in", d_in)):
        if isinstance(d, bool) or not isinstance(d, int) or d < 1:
            raise ValueError(f"{name} must be an int >= 1, got {d!r}")


def trainable_count(method: str, d_out: int, d_in: int, **hparams: Any) -> int:
    """Trainable parameters ``method`` adds to one ``d_out x d_in`` layer.

    Args:
        method: A registered method.
        d_out: The layer's output size.
        d_in: The layer's input size.
        **hparams: The method's size hyperparameters (its spec's ``hparams``); missing ones take its defaults.

    Returns:
        The count, as PEFT creates it (tests check it on real layers).

    Raises:
        ValueError: If the method, the shape or a hyperparameter is invalid, or a hyperparameter is unknown.
    """
    spec = get_spec(method)
    _check_shape(d_out, d_in)
    return spec.count(d_out, d_in, **spec.complete(hparams))


def _total(method: str, shapes: list[tuple[int, int]], hparams: dict[str, Any]) -> int:
    # many layers share a shape: count each shape once, times how often it occurs
    spec = get_spec(method)
    return spec.total(Counter(shapes), spec.complete(hparams))


def _match(method: str, shapes: list[tuple[int, int]], budget: int | None, fixed: dict[str, Any]) -> dict:
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


def match_layer(method: str, d_out: int, d_in: int, budget: int | None = None, **fixed: Any) -> dict:
    """The method's hyperparameters with the smallest trainable count ``>= budget`` on one ``d_out x d_in`` layer.

    Search spaces: kradapter ``k1``; lora / dora / sinlora / randlora ``r``; krona LoKr's ``decompose_factor``
    (with r large enough that both Kronecker factors are full matrices); kronlora ``r`` at ``kron_shape`` 4 (then
    2, 1 if the budget is out of reach). "full" is never matched: it reports ``d_out * d_in``. Every search is
    closed-form or bounded by the square root of a side (``kradapter.specs.search``).

    Args:
        method: A registered method.
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


def match_all(
    d_out: int, d_in: int, budget: int | None = None, methods: Iterable[str] | None = None
) -> dict[str, dict]:
    """[`match_layer`][kradapter.budget.match_layer] for each method, in order.

    Args:
        d_out: The layer's output size.
        d_in: The layer's input size.
        budget: As in ``match_layer``.
        methods: The methods to match (default: every registered method).

    Returns:
        Method -> ``match_layer``'s result.

    Raises:
        ValueError: If a method or the shape is invalid.
    """
    methods = list(method_names() if methods is None else methods)
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
            does not adapt or the out_proj of an nn.MultiheadAttention (target the attention module).
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    from ._compat import _maybe_include_all_linear_layers, check_target_module_exists
    from .methods._geometry import weight_geometry
    from .methods.kradapter.config import KRAdapterConfig
    from .methods.kradapter.mha import out_proj_owner, out_proj_target_error
    from .methods.kradapter.model import SUPPORTED_BASE_TYPES

    if not target_modules:
        raise ValueError("target_modules must name at least one module (a list of names, a regex, or 'all-linear')")
    config = KRAdapterConfig(target_modules=target_modules, task_type=task_type)
    if target_modules == "all-linear":
        config = _maybe_include_all_linear_layers(config, model)
    found = {}
    modules = dict(model.named_modules())
    for key, module in modules.items():
        if not key or not check_target_module_exists(config, key):
            continue
        if (owner := out_proj_owner(modules, key)) is not None:
            raise out_proj_target_error(key, owner)
        if isinstance(module, BaseTunerLayer):  # already adapted: count on the layer underneath
            module = module.get_base_layer()
        if not isinstance(module, SUPPORTED_BASE_TYPES):  # counted on the matrix the update acts on
            raise ValueError(
                f"target module '{key}' is a {type(module).__name__}; the budget matcher handles torch.nn.Linear, "
                "transformers Conv1D, torch.nn.Conv1d / Conv2d / Conv3d (kernel flattened) and torch.nn.Embedding"
            )
        found[key] = weight_geometry(module)
        if isinstance(module, nn.MultiheadAttention):  # adapted as two matrices: packed in_proj and out_proj
            out_proj = (
                module.out_proj.get_base_layer() if isinstance(module.out_proj, BaseTunerLayer) else module.out_proj
            )
            found[key + OUT_PROJ] = weight_geometry(out_proj)
    if not found:
        raise ValueError(f"no module of the model matches target_modules={target_modules!r}")
    return found


OUT_PROJ = ":out_proj"  # target_layers' key for the out_proj of an nn.MultiheadAttention target (not a module name)


def _check_types_for(method: str, model: nn.Module, layers: dict) -> None:
    """Refuse targets whose count the method's spec does not define: conv / embedding targets (counted on their
    flattened matrix) need ``spec.flattened`` (and ``spec.grouped`` for grouped convs), MultiheadAttention needs
    ``spec.multihead_attention``."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    spec = get_spec(method)
    for key, module in model.named_modules():
        if isinstance(module, BaseTunerLayer):
            module = module.get_base_layer()
        if key not in layers or isinstance(module, (nn.Linear, Conv1D)):
            continue
        grouped = getattr(module, "groups", 1) > 1
        if isinstance(module, nn.MultiheadAttention):
            if not spec.multihead_attention:
                able = [m for m in method_names() if get_spec(m).multihead_attention]
                raise ValueError(
                    f"target module '{key}' is a MultiheadAttention; {method} is not matched on it "
                    f"(methods that are: {', '.join(able)})"
                )
        elif not spec.flattened or (grouped and not spec.grouped):
            able = [m for m in method_names() if get_spec(m).flattened and (get_spec(m).grouped or not grouped)]
            raise ValueError(
                f"target module '{key}' is a {type(module).__name__}{' with groups > 1' if grouped else ''}; "
                f"{method} is matched on torch.nn.Linear and transformers Conv1D targets"
                f"{'' if not spec.flattened else ' and ungrouped conv / embedding targets'} only; for this "
                f"target use one of {', '.join(able)}"
            )


def match_model(
    method: str, model: nn.Module, target_modules, budget: int | None = None, task_type=None, **fixed: Any
) -> dict:
    """Like [`match_layer`][kradapter.budget.match_layer] over every targeted layer, one setting for all of them.

    Finds the smallest TOTAL count ``>= budget`` (default: KRAdapter's total on the same targets).

    Args:
        method: A registered method.
        model: The model whose layers are targeted.
        target_modules: As in [`target_layers`][kradapter.budget.target_layers].
        budget: The total count to reach.
        task_type: PEFT's task type, when it changes the targets.
        **fixed: Hyperparameters held fixed.

    Returns:
        ``match_layer``'s result plus ``"layers"`` (module name -> shape).

    Raises:
        ValueError: As ``target_layers`` and ``match_layer`` do, or if the method's spec does not count a target's type.
    """
    check_method(method)
    layers = target_layers(model, target_modules, task_type)
    _check_types_for(method, model, layers)
    result = _match(method, list(layers.values()), budget, fixed)
    result["layers"] = layers
    return result


def peft_config_for(method: str, model: nn.Module, target_modules, budget: int | None = None, **overrides: Any):
    """A PEFT config for ``method`` on ``target_modules`` of ``model`` at KRAdapter's trainable budget.

    The total trainable count over those layers is the smallest ``>=`` KRAdapter's total on the same targets (or
    ``budget``); the config comes from the method's spec. Methods want different learning rates: tune it per
    method.

    Args:
        method: A registered method.
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
            the method cannot adapt transformers ``Conv1D`` modules (krona: PEFT's LoKr cannot).
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
    matched = match_model(method, model, target_modules, budget, overrides.get("task_type"), **fixed)
    conv1d = [k for k, m in model.named_modules() if k in matched["layers"] and isinstance(m, Conv1D)]
    if conv1d and not spec.conv1d:
        what = spec.summary.split(":")[0]
        raise ValueError(f"method {method!r} ({what}) cannot adapt transformers Conv1D modules: {conv1d}")
    targets = [k for k in matched["layers"] if not k.endswith(OUT_PROJ)]
    return spec.config(targets, {**matched["hparams"], **overrides}, conv1d)


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
        ValueError: As ``target_layers`` does, or for a target the "full" spec does not count (an attention module).
    """
    layers = target_layers(model, target_modules, task_type)
    _check_types_for("full", model, layers)  # an attention module has no .weight: refused by name, not AttributeError
    for p in model.parameters():
        p.requires_grad_(False)
    modules = dict(model.named_modules())
    for key in layers:
        modules[key].weight.requires_grad_(True)
    return sum(d_out * d_in for d_out, d_in in layers.values())
