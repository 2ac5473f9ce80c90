"""Every use of PEFT, transformers and bitsandbytes internals that are not public API, in one place.

kradapter builds on PEFT's tuner machinery, which exposes only part of what a tuner needs; the rest lives in PEFT
modules without a stability promise. Everything of that kind is reached through this module, so a new release that
moves or changes one breaks here, with an error naming the internal, and tests/test_compat.py checks each one
against the installed versions (one test per internal, failing with a message that names it).

The rule, i.e. what other modules may use directly:

- public: a name importable from the package's top level (``from peft import PeftModel``,
  ``from transformers import TrainerCallback``, ``bitsandbytes.nn.Linear4bit``) or from a documented sub-module
  without a leading underscore (``peft.config.PeftConfig``, ``peft.utils.get_peft_model_state_dict`` and
  ``register_peft_method``, ``transformers.utils.logging``, ``bitsandbytes.functional.quantize_4bit`` /
  ``dequantize_4bit``), and the base classes PEFT documents for custom tuners,
  ``peft.tuners.tuners_utils.BaseTuner`` and ``BaseTunerLayer``;
- everything else comes from here: names in private modules, names and attributes with a leading underscore,
  undocumented object state (bitsandbytes' ``QuantState`` flags, ``MatmulLtState``), data layouts (bitsandbytes'
  CPU-packed 4-bit weights, the ``stateful_callbacks`` entry of transformers' trainer_state.json).
- One kind stays in place: the BaseTuner / BaseTunerLayer subclass protocol, the underscore methods and attributes
  that PEFT's own tuners override and call (``_create_and_replace``, ``_active_adapter``, ...). Writing a tuner
  means using them as methods of ``self``; ``TUNER_PROTOCOL`` below lists every one kradapter uses, and
  tests/test_compat.py checks each against the installed PEFT.
- One more stays where it must run: the name of bitsandbytes' CPU-kernel logger (``_quiet.BNB_CPU_LOGGER``) is set
  before PEFT imports bitsandbytes, i.e. before this module can be imported; tests/test_compat.py checks it too.

torch is not covered: kradapter uses only its public API and nn.Module's documented extension points.

Also here: the tested version ranges (the same as pyproject's) and the import-time check against them.
"""

from __future__ import annotations

import functools
import importlib
import sys
import warnings
from importlib.metadata import PackageNotFoundError, version

import torch

# (lowest, newest release line tested). The lowest equals pyproject.toml's floor and .ci/lowest.txt
# (tests/test_compat.py compares them); pyproject has no upper cap, so the newest is what CI's first leg resolved
# when this was last raised: a later release line gets a warning at import, not a refusal.
TESTED_RANGES = {
    "peft": ("0.22.0", "0.22"),
    "transformers": ("5.6.0", "5.25"),
}
# Known to break, whatever else is installed: transformers >= 5.24 refuses peft < 0.22 in its PEFT integration.
BROKEN_PAIRS = [(("peft", "<", "0.22"), ("transformers", ">=", "5.24"))]


class InternalAPIChanged(ImportError):
    """A non-public PEFT / transformers / bitsandbytes API that kradapter uses is missing or changed."""


def _describe(package: str) -> str:
    try:
        installed = version(package)
    except PackageNotFoundError:
        installed = "(not installed)"
    low, newest = TESTED_RANGES.get(package, (None, None))
    tested = f"; kradapter is tested with {package} {low} to {newest}.x" if low else ""
    return f"{package} {installed}{tested}"


def internal_changed(what: str, problem: str) -> InternalAPIChanged:
    """The one error for a changed internal: which one, what is wrong, and the installed vs tested version."""
    package = what.split(".", 1)[0]
    return InternalAPIChanged(
        f"kradapter relies on {what}, a non-public {package} API: {problem} in {_describe(package)}"
    )


def _internal(module: str, name: str):
    """``module.name``, imported now; a missing one raises InternalAPIChanged naming it."""
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise internal_changed(f"{module}.{name}", f"it cannot be imported ({err})") from err


# --- PEFT: tuner helpers every PEFT tuner uses, not exported as public API --------------------------------------
check_adapters_to_merge = _internal("peft.tuners.tuners_utils", "check_adapters_to_merge")
check_target_module_exists = _internal("peft.tuners.tuners_utils", "check_target_module_exists")
_maybe_include_all_linear_layers = _internal("peft.tuners.tuners_utils", "_maybe_include_all_linear_layers")
_get_submodules = _internal("peft.utils.other", "_get_submodules")
get_pattern_key = _internal("peft.utils.other", "get_pattern_key")
AuxiliaryTrainingWrapper = _internal("peft.utils.other", "AuxiliaryTrainingWrapper")
DUMMY_TARGET_MODULES = _internal("peft.utils.constants", "DUMMY_TARGET_MODULES")
TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING = _internal(
    "peft.utils.constants", "TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING"
)
# PEFT's quantization backends (0.21+): dequantize / requantize any quantized base layer PEFT recognises.
get_quantization_kwargs = _internal("peft.utils.quantization_utils", "get_quantization_kwargs")
resolve_quantization_backend = _internal("peft.utils.quantization_utils", "resolve_quantization_backend")
ForwardOnlyQuantizationBackend = _internal("peft.utils.quantization_utils", "ForwardOnlyQuantizationBackend")
# LoKr's factorisation of a dimension, so a budget-matched LoKr config uses the shapes LoKr will build.
factorization = _internal("peft.tuners.lokr.layer", "factorization")
# Each registered method's parameter-name prefix ("lora_", "kradapter_"), keyed by PeftType.
PEFT_TYPE_TO_PREFIX_MAPPING = _internal("peft.mapping", "PEFT_TYPE_TO_PREFIX_MAPPING")

# The subclass protocol of PEFT's tuner base classes that kradapter's tuners use (see the module docstring):
# (class, member, the leading parameters PEFT calls it with, or None for an attribute of an instance).
TUNER_PROTOCOL = (
    ("BaseTuner", "_create_and_replace", ["self", "peft_config", "adapter_name", "target", "target_name", "parent"]),
    ("BaseTuner", "_prepare_adapter_config", ["self", "peft_config", "model_config"]),
    ("BaseTuner", "_check_target_module_exists", ["peft_config", "key"]),
    ("BaseTuner", "_pre_injection_hook", ["self", "model", "config", "adapter_name"]),
    ("BaseTuner", "_replace_module", ["self", "parent", "child_name", "new_module", "child"]),
    ("BaseTuner", "_unload_and_optionally_merge", ["self", "merge", "progressbar", "safe_merge", "adapter_names"]),
    ("BaseTuner", "_get_adapter_state_dict", ["model", "config", "adapter_name", "state_dict"]),
    ("BaseTunerLayer", "_move_adapter_to_device_of_base_layer", ["self", "adapter_name"]),
    ("BaseTunerLayer", "_active_adapter", None),
    ("BaseTunerLayer", "_disable_adapters", None),
)

# --- transformers ----------------------------------------------------------------------------------------------
# GPT-2 style transposed linear; documented only among transformers' internal helpers.
Conv1D = _internal("transformers.pytorch_utils", "Conv1D")
get_last_checkpoint = _internal("transformers.trainer_utils", "get_last_checkpoint")
# The mixin that makes a TrainerCallback's state part of each checkpoint (not exported at the top level).
ExportableState = _internal("transformers.trainer_callback", "ExportableState")


def saved_callback_state(trainer_state: dict, callback_name: str) -> dict:
    """What an ExportableState callback's ``state()`` returned when this checkpoint was saved (``{"args": ...,
    "attributes": ...}``), read from a parsed trainer_state.json; {} when it holds none. transformers stores it under
    ``stateful_callbacks[class name]``, as a dict, or a list of dicts when several callbacks share the class."""
    saved = (trainer_state.get("stateful_callbacks") or {}).get(callback_name) or {}
    if isinstance(saved, list):
        saved = saved[-1] if saved else {}
    if not isinstance(saved, dict):
        raise internal_changed(
            "transformers.TrainerState.stateful_callbacks", f"{callback_name}'s entry is a {type(saved).__name__}"
        )
    return saved


def trainer_load_from_checkpoint(trainer, checkpoint: str) -> None:
    """Load a checkpoint's weights into ``trainer.model`` without training (``Trainer._load_from_checkpoint``, the
    step ``train(resume_from_checkpoint=...)`` starts with; public API has no weights-only resume)."""
    load = getattr(trainer, "_load_from_checkpoint", None)
    if load is None:
        raise internal_changed("transformers.Trainer._load_from_checkpoint", "the method is missing")
    load(checkpoint)


def drop_quantization_config(model) -> None:
    """Mark a transformers model whose quantized layers were all replaced by float ones as not quantized: its
    quantizer (``model.hf_quantizer``, set by from_pretrained) removes ``config.quantization_config`` and the
    model's quantization flags. Nothing for a model loaded without quantization."""
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is None:
        return
    remove = getattr(quantizer, "remove_quantization_config", None)
    if remove is None:
        raise internal_changed(
            f"transformers.{type(quantizer).__name__}.remove_quantization_config", "the quantizer lacks it"
        )
    remove(model)


def no_split_modules(module) -> tuple[str, ...]:
    """The class names a transformers model declares as its repeated blocks (``PreTrainedModel._no_split_modules``,
    what device_map="auto" never splits): FSDP's wrapping units. () for a module without them."""
    return tuple(getattr(module, "_no_split_modules", None) or ())


# --- PEFT: adding members to the PeftType enum --------------------------------------------------------------------
def add_peft_type(name: str):
    """``PeftType[name]``, adding the member if PEFT does not define it.

    PEFT keys every method by a PeftType member and ``register_peft_method`` refuses names the enum lacks; PEFT
    offers no public way to add one, so this edits the enum's member tables (Python's Enum internals).
    """
    from peft.utils.peft_types import PeftType

    if name in PeftType.__members__:
        return PeftType[name]
    for table in ("_member_map_", "_value2member_map_", "_member_names_"):
        if not hasattr(PeftType, table):
            raise internal_changed("peft.utils.peft_types.PeftType", f"the enum has no {table} table")
    member = str.__new__(PeftType, name)
    member._name_ = name
    member._value_ = name
    member._sort_order_ = len(PeftType._member_names_)
    PeftType._member_map_[name] = member
    PeftType._value2member_map_[name] = member
    PeftType._member_names_.append(name)
    # EnumType.__setattr__ forbids assigning members; type.__setattr__ makes `PeftType.NAME` resolve.
    type.__setattr__(PeftType, name, member)
    return member


# --- PEFT: the model card PeftModel.save_pretrained writes --------------------------------------------------------
def add_model_card_hook(update_card) -> None:
    """After PEFT writes README.md in ``PeftModel.save_pretrained``, call ``update_card(peft_model, output_dir)``.

    PEFT has no hook for the card's content: this wraps ``PeftModel.create_or_update_model_card`` (once).
    """
    from peft import PeftModel

    original = getattr(PeftModel, "create_or_update_model_card", None)
    if original is None:
        raise internal_changed("peft.PeftModel.create_or_update_model_card", "the method is missing")
    if getattr(original, "_kradapter_hook", None) is update_card:
        return

    @functools.wraps(original)
    def create_or_update_model_card(self, output_dir: str):
        original(self, output_dir)
        update_card(self, output_dir)

    create_or_update_model_card._kradapter_hook = update_card
    PeftModel.create_or_update_model_card = create_or_update_model_card


# --- bitsandbytes: layer state and the AVX512-BF16 CPU layout -------------------------------------------------
# On a CPU with AVX512-BF16, bnb.nn.Linear4bit repacks its weight in place at the first inference forward (eval mode,
# input without grad; bitsandbytes.functional._convert_weight_packed_for_cpu): the 4-bit codes of W (N x K) are
# regrouped in tiles of 32 rows for its kernel and the per-block scales become a bfloat16 (K / blocksize) x N matrix,
# un-nested (quant_state.packing_format_for_cpu = True). bitsandbytes' dequantize_4bit and its autograd backward read
# only the standard layout, and its own inverse (_convert_weight_packed_for_cpu_inverse) mis-orders the scales of
# un-nested states, so kradapter reads the packed layout itself (bnb_dequantize_cpu_packed).
BNB_CPU_PACK_BLOCK_N = 32  # rows of W per packed tile (_convert_weight_packed_for_cpu's block_n)


def bnb_4bit_repacked_for_cpu(weight) -> bool:
    """Whether bitsandbytes repacked this Params4bit for AVX512-BF16 CPU inference (``quant_state``'s
    ``packing_format_for_cpu``, set in place at the first inference forward on such CPUs)."""
    return bool(getattr(getattr(weight, "quant_state", None), "packing_format_for_cpu", False))


def bnb_cpu_repack_fits(weight) -> bool:
    """Whether bitsandbytes' CPU repack can handle this 4-bit weight: whole tiles of 32 rows and whole blocks per row.
    Its repack crashes otherwise ("shape '[32, 0]' is invalid ..." for in_features < blocksize)."""
    state = getattr(weight, "quant_state", None)
    if state is None:
        return True
    n, k = state.shape
    return n % BNB_CPU_PACK_BLOCK_N == 0 and k % state.blocksize == 0


def bnb_disable_cpu_repack(layer) -> None:
    """Keep bitsandbytes from repacking this Linear4bit for AVX512-BF16 (its switch ``support_avx512bf16_for_cpu``,
    set from the CPU's features in ``Linear4bit.__init__``)."""
    if not hasattr(layer, "support_avx512bf16_for_cpu"):
        raise internal_changed("bitsandbytes.nn.Linear4bit.support_avx512bf16_for_cpu", "the attribute is missing")
    layer.support_avx512bf16_for_cpu = False


def _bnb_packed_codes(packed, n: int, k: int):
    """The (n x k) 4-bit code indices of a CPU-packed weight. Rows come in tiles of 32; for each tile and column
    pair, 64 entries ordered (row in tile, column of the pair) fill 32 bytes: entry j in the low nibble of byte j,
    entry j + 32 in its high nibble."""
    import torch

    flat = packed.reshape(-1, 32)
    entries = torch.cat([flat & 0xF, flat >> 4], dim=1)  # (tiles * k/2, 64), entry index = row_in_tile * 2 + c
    entries = entries.reshape(n // BNB_CPU_PACK_BLOCK_N, k // 2, BNB_CPU_PACK_BLOCK_N, 2)  # (tile, pair, row, c)
    return entries.transpose(1, 2).reshape(n, k)


def bnb_dequantize_cpu_packed(weight):
    """The (N x K) weight a CPU-packed bnb 4-bit parameter holds, exactly as its kernel reads it, in the dtype it
    was quantized from."""
    state = weight.quant_state
    n, k = state.shape
    codes = _bnb_packed_codes(weight.data.view(torch.uint8), n, k).long()
    values = state.code.to(torch.float32)[codes].reshape(n, k // state.blocksize, state.blocksize)
    scales = state.absmax.to(torch.float32).T.reshape(n, k // state.blocksize, 1)  # stored (K / blocksize) x N
    dtype = getattr(state, "original_dtype", torch.float32)
    return (values * scales).reshape(n, k).to(dtype)


def bnb_store_4bit_standard_(layer, weight) -> None:
    """Quantize the float `weight` into a Linear4bit in bitsandbytes' standard layout, in place, with the layer's
    blocksize and quant type and the scales kept un-nested (a bfloat16-valued weight read from the packed layout is
    stored with the same codes and scales). Sets both places bitsandbytes keeps the QuantState: the parameter and the
    layer (``Linear4bit.quant_state``, which its forward copies back onto the parameter)."""
    import bitsandbytes.functional as bnb_functional

    param = layer.weight
    state = param.quant_state
    data, new_state = bnb_functional.quantize_4bit(
        weight,
        blocksize=state.blocksize,
        quant_type=state.quant_type,
        compress_statistics=False,
        quant_storage=getattr(param, "quant_storage", torch.uint8),
    )
    param.data, param.quant_state = data, new_state
    if getattr(layer, "quant_state", None) is not None:
        layer.quant_state = new_state


def bnb_int8_state(layer):
    """A Linear8bitLt's MatmulLtState: ``has_fp16_weights``, and ``CB`` / ``SCB`` (the int8 matrix and row scales,
    moved there from the parameter at the first forward)."""
    state = getattr(layer, "state", None)
    if state is None or not all(hasattr(state, a) for a in ("has_fp16_weights", "CB", "SCB")):
        raise internal_changed("bitsandbytes.nn.Linear8bitLt.state", "it lacks has_fp16_weights / CB / SCB")
    return state


# --- import-time version check ------------------------------------------------------------------------------------
def _release_line(v) -> tuple[int, int]:
    return (v.release + (0, 0))[:2]


def untested_versions() -> list[str]:
    """'package version (tested: low to newest.x)' for each installed package outside its tested range."""
    from packaging.version import Version

    found = []
    for package, (low, newest) in TESTED_RANGES.items():
        try:
            installed = Version(version(package))
        except PackageNotFoundError:
            continue
        if installed < Version(low) or _release_line(installed) > _release_line(Version(newest)):
            found.append(f"{package} {installed} (tested: {low} to {newest}.x)")
    return found


def broken_pairs() -> list[str]:
    """'peft X with transformers Y' for each installed pair of versions known not to work together."""
    from packaging.specifiers import SpecifierSet

    found = []
    for (pkg_a, op_a, ver_a), (pkg_b, op_b, ver_b) in BROKEN_PAIRS:
        try:
            a, b = version(pkg_a), version(pkg_b)
        except PackageNotFoundError:
            continue
        if SpecifierSet(op_a + ver_a).contains(a, prereleases=True) and SpecifierSet(op_b + ver_b).contains(
            b, prereleases=True
        ):
            found.append(
                f"{pkg_a} {a} with {pkg_b} {b} (known not to work: {pkg_a}{op_a}{ver_a} with {pkg_b}{op_b}{ver_b})"
            )
    return found


class UntestedVersionWarning(UserWarning):
    """A dependency is outside the versions kradapter is tested with (its own class, so it can be filtered)."""


def warn_if_untested() -> None:
    """One warning naming every package outside its tested range, and any pair known to be broken; not an error,
    since newer releases usually work."""
    found = untested_versions()
    broken = broken_pairs()
    if found or broken:
        parts = []
        if found:
            parts.append("kradapter has not been tested with " + ", ".join(found))
        if broken:
            parts.append("this pair does not work: " + "; ".join(broken))
        warnings.warn(
            "; ".join(parts)
            + "; if something fails, install tested versions, e.g. pip install 'kradapter[test]' in a fresh venv",
            UntestedVersionWarning,
            stacklevel=2,
        )


__all__ = [name for name in dir(sys.modules[__name__]) if not name.startswith("__")]
