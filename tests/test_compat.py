"""Every non-public PEFT / transformers / bitsandbytes API kradapter uses (src/kradapter/_compat.py), checked against
the installed versions: each test fails with a message naming the internal when a new release changes it.
Also: the tested ranges equal pyproject's, and a version outside them gets one warning at import."""

from __future__ import annotations

import inspect
import re
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from kradapter import _compat

ROOT = Path(__file__).resolve().parents[1]


def check(ok: bool, internal: str, expectation: str) -> None:
    assert ok, f"{internal} changed: kradapter expects {expectation} (see src/kradapter/_compat.py)"


def params_of(fn) -> list[str]:
    return list(inspect.signature(fn).parameters)


# --- PEFT ---------------------------------------------------------------------------------------------------------
def test_peft_check_adapters_to_merge():
    name = "peft.tuners.tuners_utils.check_adapters_to_merge"
    check(
        params_of(_compat.check_adapters_to_merge)[:2] == ["module", "adapter_names"],
        name,
        "(module, adapter_names=None)",
    )


def test_peft_check_target_module_exists():
    from peft import LoraConfig

    name = "peft.tuners.tuners_utils.check_target_module_exists"
    config = LoraConfig(target_modules=["q_proj"])
    check(
        bool(_compat.check_target_module_exists(config, "model.layers.0.q_proj"))
        and not _compat.check_target_module_exists(config, "model.layers.0.k_proj"),
        name,
        "(config, key) -> truthy exactly for keys matching target_modules",
    )


def test_peft_maybe_include_all_linear_layers():
    from peft import LoraConfig

    name = "peft.tuners.tuners_utils._maybe_include_all_linear_layers"
    from _kradapter_models import tiny_llama

    config = _compat._maybe_include_all_linear_layers(LoraConfig(target_modules="all-linear"), tiny_llama())
    linear = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}  # not lm_head
    check(
        {t.rsplit(".", 1)[-1] for t in config.target_modules} == linear,
        name,
        "(peft_config, model) -> the config, 'all-linear' expanded to the linear layers but the output head",
    )


def test_peft_get_submodules():
    name = "peft.utils.other._get_submodules"
    model = nn.Sequential(nn.Sequential(nn.Linear(2, 2)))
    got = _compat._get_submodules(model, "0.0")
    check(got == (model[0], model[0][0], "0"), name, "(model, key) -> (parent, target, target_name)")


def test_peft_get_pattern_key():
    name = "peft.utils.other.get_pattern_key"
    check(
        _compat.get_pattern_key(["q_proj", "v_proj"], "model.layers.0.v_proj") == "v_proj",
        name,
        "(pattern_keys, key_to_match) -> the matching pattern key",
    )


def test_peft_auxiliary_training_wrapper():
    name = "peft.utils.other.AuxiliaryTrainingWrapper"
    check(
        inspect.isclass(_compat.AuxiliaryTrainingWrapper) and issubclass(_compat.AuxiliaryTrainingWrapper, nn.Module),
        name,
        "an nn.Module class",
    )


def test_peft_constants():
    check(isinstance(_compat.DUMMY_TARGET_MODULES, str), "peft.utils.constants.DUMMY_TARGET_MODULES", "a str")
    llama = _compat.TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get("llama")
    check(
        llama is not None and {"q_proj", "v_proj"} <= set(llama),
        "peft.utils.constants.TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING",
        "model_type -> module names",
    )


def test_peft_quantization_backends():
    name = "peft.utils.quantization_utils"
    check(
        isinstance(_compat.get_quantization_kwargs(nn.Linear(2, 2)), dict),
        f"{name}.get_quantization_kwargs",
        "(model) -> dict",
    )
    check(
        _compat.resolve_quantization_backend(nn.Linear(2, 2)) is None,
        f"{name}.resolve_quantization_backend",
        "(layer, **kwargs) -> None for a plain float nn.Linear",
    )
    backend = _compat.ForwardOnlyQuantizationBackend("probe")
    check(
        backend.supports_merge is False and callable(backend.get_base_weight),
        f"{name}.ForwardOnlyQuantizationBackend",
        "(backend_name) with supports_merge=False, get_base_weight",
    )


def test_peft_lokr_factorization():
    a, b = _compat.factorization(96, -1)
    check(
        a * b == 96 and a <= b,
        "peft.tuners.lokr.layer.factorization",
        "(dimension, factor=-1) -> (m, n), m <= n, m * n = dimension",
    )


def test_peft_type_enum_extension():
    from peft.utils.peft_types import PeftType

    name = "peft.utils.peft_types.PeftType (enum member tables)"
    member = _compat.add_peft_type("KRADAPTER")
    check(
        PeftType("KRADAPTER") is member
        and PeftType["KRADAPTER"] is member
        and PeftType.KRADAPTER is member
        and member in list(PeftType)
        and member == "KRADAPTER",
        name,
        "an added member to resolve by value, by name, as an attribute, and in iteration",
    )


def test_peft_model_card_hook_is_installed():
    from peft import PeftModel

    from kradapter import model_card

    name = "peft.PeftModel.create_or_update_model_card"
    hook = getattr(PeftModel.create_or_update_model_card, "_kradapter_hook", None)
    check(hook is model_card.update_card, name, "a method kradapter wraps at import")
    check(params_of(PeftModel.create_or_update_model_card) == ["self", "output_dir"], name, "(self, output_dir)")


def test_a_missing_internal_raises_one_error_naming_it():
    with pytest.raises(_compat.InternalAPIChanged) as err:
        _compat._internal("peft.tuners.tuners_utils", "no_such_helper")
    message = str(err.value)
    assert "peft.tuners.tuners_utils.no_such_helper" in message
    assert re.search(r"peft \S+; kradapter is tested with peft>=0\.21\.0,<0\.22", message), message


# --- transformers ---------------------------------------------------------------------------------------------
def test_transformers_conv1d():
    layer = _compat.Conv1D(6, 4)  # nf (out), nx (in); weight stored in x out
    x = torch.randn(3, 4)
    check(
        layer.weight.shape == (4, 6) and torch.allclose(layer(x), x @ layer.weight + layer.bias),
        "transformers.pytorch_utils.Conv1D",
        "Conv1D(nf, nx), weight (nx, nf), y = x W + b",
    )


def test_transformers_get_last_checkpoint(tmp_path):
    name = "transformers.trainer_utils.get_last_checkpoint"
    check(_compat.get_last_checkpoint(str(tmp_path)) is None, name, "(folder) -> None without checkpoints")
    (tmp_path / "checkpoint-2").mkdir()
    (tmp_path / "checkpoint-10").mkdir()
    check(
        Path(_compat.get_last_checkpoint(str(tmp_path))).name == "checkpoint-10",
        name,
        "(folder) -> the highest checkpoint-N",
    )


# --- bitsandbytes -----------------------------------------------------------------------------------------------
def test_bnb_4bit_quant_state_and_cpu_repacking():
    bnb = pytest.importorskip("bitsandbytes")
    from bitsandbytes.functional import dequantize_4bit

    torch.manual_seed(0)
    layer = bnb.nn.Linear4bit(64, 32, bias=False, compute_dtype=torch.float32, quant_type="nf4")
    layer.weight = bnb.nn.Params4bit(torch.randn(32, 64), requires_grad=False, quant_type="nf4")
    layer = layer.to("cpu")  # quantizes
    weight = layer.weight
    name = "bitsandbytes Params4bit.quant_state.packing_format_for_cpu"
    check(
        weight.quant_state is not None and not _compat.bnb_4bit_repacked_for_cpu(weight),
        name,
        "a quantized weight with a quant_state, not repacked before any inference forward",
    )
    reference = dequantize_4bit(weight.data, weight.quant_state)
    layer.eval()
    with torch.no_grad():
        layer(torch.randn(2, 64))  # bitsandbytes repacks here on AVX512-BF16 CPUs only
    if _compat.bnb_4bit_repacked_for_cpu(weight):
        data, state = _compat.bnb_unpack_4bit_for_cpu(weight)
        check(
            torch.allclose(dequantize_4bit(data, state), reference, atol=1e-2),
            "bitsandbytes.functional._convert_weight_packed_for_cpu_inverse",
            "(data, quant_state) -> the standard 4-bit layout again",
        )
    else:
        check(
            callable(
                getattr(
                    __import__("bitsandbytes.functional").functional, "_convert_weight_packed_for_cpu_inverse", None
                )
            ),
            "bitsandbytes.functional._convert_weight_packed_for_cpu_inverse",
            "a function",
        )


def test_bnb_int8_state():
    bnb = pytest.importorskip("bitsandbytes")

    torch.manual_seed(0)
    layer = bnb.nn.Linear8bitLt(16, 8, bias=False, has_fp16_weights=False)
    layer.weight = bnb.nn.Int8Params(torch.randn(8, 16), requires_grad=False, has_fp16_weights=False)
    layer = layer.to("cpu")
    with torch.no_grad():
        layer(torch.randn(2, 16))
    state = _compat.bnb_int8_state(layer)
    check(state.has_fp16_weights is False, "bitsandbytes Linear8bitLt.state.has_fp16_weights", "False as built")
    scb = state.SCB if state.SCB is not None else getattr(layer.weight, "SCB", None)
    check(
        scb is not None and scb.shape == (8,),
        "bitsandbytes Linear8bitLt.state.SCB / Int8Params.SCB",
        "one absmax scale per output row",
    )


# --- tested ranges and the import-time warning ----------------------------------------------------------------
def declared_ranges() -> dict[str, tuple[str, str]]:
    tomllib = pytest.importorskip("tomllib")
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    found = {}
    for dep in deps:
        m = re.fullmatch(r"(peft|transformers)>=([\d.]+),<([\d.]+)", dep.replace(" ", ""))
        if m:
            found[m[1]] = (m[2], m[3])
    return found


def test_tested_ranges_equal_pyproject_and_the_ci_constraints():
    assert declared_ranges() == _compat.TESTED_RANGES
    pins = dict(re.findall(r"^([\w-]+)==(\S+)$", (ROOT / ".ci" / "lowest.txt").read_text(), flags=re.M))
    assert pins == {pkg: low for pkg, (low, _) in _compat.TESTED_RANGES.items()}


def test_installed_versions_are_tested_ones():
    """CI installs in-range versions, so importing kradapter there warns of nothing."""
    assert _compat.untested_versions() == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _compat.warn_if_untested()


@pytest.mark.parametrize(
    "fake, expected",
    [
        ({"peft": "0.22.1"}, ["peft 0.22.1 (tested: >=0.21.0,<0.22)"]),
        ({"transformers": "4.50.0"}, ["transformers 4.50.0 (tested: >=5.0.0,<5.24)"]),
        (
            {"peft": "0.20.0", "transformers": "5.24.0"},
            ["peft 0.20.0 (tested: >=0.21.0,<0.22)", "transformers 5.24.0 (tested: >=5.0.0,<5.24)"],
        ),
    ],
)
def test_an_untested_version_gets_one_warning_naming_it(monkeypatch, fake, expected):
    real = _compat.version
    monkeypatch.setattr(_compat, "version", lambda pkg: fake.get(pkg) or real(pkg))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _compat.warn_if_untested()
    assert len(caught) == 1 and caught[0].category is UserWarning
    message = str(caught[0].message)
    assert all(part in message for part in expected), message
