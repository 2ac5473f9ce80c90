"""Every use of PEFT, transformers and bitsandbytes internals that are not public API, in one place.

kradapter builds on PEFT's tuner machinery, which exposes only part of what a tuner needs; the rest lives in PEFT
modules without a stability promise. Everything of that kind is reached through this module, so a new release that
moves or changes one breaks here, with an error naming the internal, and tests/test_compat.py checks each one
against the installed versions.

Also here: the tested version ranges (the same as pyproject's) and the import-time check against them.
"""

from __future__ import annotations

import functools
import importlib
import sys
import warnings
from importlib.metadata import PackageNotFoundError, version

# Kept equal to pyproject.toml's dependency ranges (tests/test_compat.py compares them): (lowest, first untested).
TESTED_RANGES = {
    "peft": ("0.21.0", "0.22"),
    "transformers": ("5.0.0", "5.24"),
}


class InternalAPIChanged(ImportError):
    """A non-public PEFT / transformers / bitsandbytes API that kradapter uses is missing or changed."""


def _describe(package: str) -> str:
    try:
        installed = version(package)
    except PackageNotFoundError:
        installed = "(not installed)"
    low, high = TESTED_RANGES.get(package, (None, None))
    tested = f"; kradapter is tested with {package}>={low},<{high}" if low else ""
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

# --- transformers ----------------------------------------------------------------------------------------------
# GPT-2 style transposed linear; documented only among transformers' internal helpers.
Conv1D = _internal("transformers.pytorch_utils", "Conv1D")
get_last_checkpoint = _internal("transformers.trainer_utils", "get_last_checkpoint")


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


# --- bitsandbytes: layer state that PEFT's bnb backends also read -------------------------------------------------
def bnb_4bit_repacked_for_cpu(weight) -> bool:
    """Whether bitsandbytes repacked this Params4bit for AVX512-BF16 CPU inference (``quant_state``'s
    ``packing_format_for_cpu``, set in place at the first inference forward on such CPUs)."""
    return bool(getattr(getattr(weight, "quant_state", None), "packing_format_for_cpu", False))


def bnb_unpack_4bit_for_cpu(weight):
    """``(data, quant_state)`` of a Params4bit that bitsandbytes repacked for AVX512-BF16, back in its standard
    layout (the one dequantize_4bit reads), through bitsandbytes' private inverse of the repacking."""
    unpack = _internal("bitsandbytes.functional", "_convert_weight_packed_for_cpu_inverse")
    return unpack(weight.data, weight.quant_state)


def bnb_int8_state(layer):
    """A Linear8bitLt's MatmulLtState: ``has_fp16_weights``, and ``CB`` / ``SCB`` (the int8 matrix and row scales,
    moved there from the parameter at the first forward)."""
    state = getattr(layer, "state", None)
    if state is None or not all(hasattr(state, a) for a in ("has_fp16_weights", "CB", "SCB")):
        raise internal_changed("bitsandbytes.nn.Linear8bitLt.state", "it lacks has_fp16_weights / CB / SCB")
    return state


# --- import-time version check ------------------------------------------------------------------------------------
def untested_versions() -> list[str]:
    """'package version (tested: >=low,<high)' for each installed package outside its tested range."""
    from packaging.version import Version

    found = []
    for package, (low, high) in TESTED_RANGES.items():
        try:
            installed = version(package)
        except PackageNotFoundError:
            continue
        if not Version(low) <= Version(Version(installed).base_version) < Version(high):
            found.append(f"{package} {installed} (tested: >={low},<{high})")
    return found


def warn_if_untested() -> None:
    """One warning naming every package outside its tested range; not an error, since newer releases often work."""
    found = untested_versions()
    if found:
        warnings.warn(
            "kradapter has not been tested with "
            + ", ".join(found)
            + "; if something fails, install a tested version, e.g. pip install 'kradapter[test]' in a fresh venv",
            UserWarning,
            stacklevel=2,
        )


__all__ = [name for name in dir(sys.modules[__name__]) if not name.startswith("__")]
