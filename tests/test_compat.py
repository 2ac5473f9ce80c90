"""Every non-public PEFT / transformers / bitsandbytes API kradapter uses (src/kradapter/_compat.py), checked against
the installed versions: each test fails with a message naming the internal when a new release changes it.
Also: the tested ranges equal pyproject's, and a version outside them gets one warning at import."""

from __future__ import annotations

import inspect
import re
import types
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


def test_peft_type_to_prefix_mapping():
    from peft.utils.peft_types import PeftType

    check(
        _compat.PEFT_TYPE_TO_PREFIX_MAPPING.get(PeftType.LORA) == "lora_"
        and _compat.PEFT_TYPE_TO_PREFIX_MAPPING.get(PeftType("KRADAPTER")) == "kradapter_",
        "peft.mapping.PEFT_TYPE_TO_PREFIX_MAPPING",
        "PeftType -> parameter-name prefix, filled by register_peft_method",
    )


@pytest.mark.parametrize("owner,member,leading", [p for p in _compat.TUNER_PROTOCOL if p[2] is not None])
def test_peft_tuner_protocol_methods(owner, member, leading):
    from peft.tuners import tuners_utils

    name = f"peft.tuners.tuners_utils.{owner}.{member}"
    method = getattr(getattr(tuners_utils, owner), member, None)
    check(callable(method), name, "a method kradapter's tuners override or call")
    check(params_of(method)[: len(leading)] == leading, name, f"parameters starting ({', '.join(leading)})")


def test_peft_tuner_layer_protocol_attributes():
    from peft import LoraConfig, get_peft_model
    from peft.tuners.tuners_utils import BaseTunerLayer

    attributes = [m for owner, m, leading in _compat.TUNER_PROTOCOL if leading is None]
    assert attributes == ["_active_adapter", "_disable_adapters"]  # the checks below cover exactly these
    model = get_peft_model(nn.Sequential(nn.Linear(4, 4)), LoraConfig(target_modules=["0"]))
    layer = next(m for m in model.modules() if isinstance(m, BaseTunerLayer))
    layer._active_adapter = "other"
    check(
        layer.active_adapter == "other",
        "peft.tuners.tuners_utils.BaseTunerLayer._active_adapter",
        "the attribute behind the active_adapter property",
    )
    layer._disable_adapters = True
    check(
        layer.disable_adapters is True,
        "peft.tuners.tuners_utils.BaseTunerLayer._disable_adapters",
        "the attribute behind the disable_adapters property",
    )


def test_a_missing_internal_raises_one_error_naming_it():
    with pytest.raises(_compat.InternalAPIChanged) as err:
        _compat._internal("peft.tuners.tuners_utils", "no_such_helper")
    message = str(err.value)
    assert "peft.tuners.tuners_utils.no_such_helper" in message
    assert re.search(r"peft \S+; kradapter is tested with peft 0\.22\.0 to 0\.22\.x", message), message


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


def test_transformers_exportable_state_and_saved_callback_state(tmp_path):
    import json

    from transformers import TrainerCallback, TrainerState

    name = "transformers.trainer_callback.ExportableState"
    check(
        callable(getattr(_compat.ExportableState, "state", None))
        and callable(getattr(_compat.ExportableState, "from_state", None)),
        name,
        "a mixin with state() and the classmethod from_state(state)",
    )

    class Probe(TrainerCallback, _compat.ExportableState):
        def __init__(self, seconds=0.0):
            self.seconds = seconds

        def state(self):
            return {"args": {"seconds": self.seconds}, "attributes": {}}

    for callbacks, want in (([Probe(1.5)], 1.5), ([Probe(1.0), Probe(2.5)], 2.5)):
        TrainerState(stateful_callbacks=callbacks).save_to_json(str(tmp_path / "trainer_state.json"))
        saved = json.loads((tmp_path / "trainer_state.json").read_text())
        check(
            _compat.saved_callback_state(saved, "Probe") == {"args": {"seconds": want}, "attributes": {}},
            "transformers.TrainerState.stateful_callbacks",
            "trainer_state.json's stateful_callbacks[class name]: state(), or a list of them (the last one read)",
        )
    check(_compat.saved_callback_state({}, "Probe") == {}, "kradapter._compat.saved_callback_state", "{} if absent")


def test_transformers_trainer_load_from_checkpoint(tmp_path):
    from transformers import Trainer, TrainingArguments

    from _kradapter_models import tiny_llama

    name = "transformers.Trainer._load_from_checkpoint"
    check(params_of(Trainer._load_from_checkpoint)[:2] == ["self", "resume_from_checkpoint"], name, "(self, path)")
    saved = tiny_llama()
    saved.save_pretrained(tmp_path / "checkpoint-1")
    model = tiny_llama()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    args = TrainingArguments(str(tmp_path / "out"), use_cpu=True, report_to=[])
    _compat.trainer_load_from_checkpoint(Trainer(model=model, args=args), str(tmp_path / "checkpoint-1"))
    want = saved.state_dict()
    check(
        all(torch.equal(t, want[k]) for k, t in model.state_dict().items()),
        name,
        "(path) loads the checkpoint's weights into trainer.model",
    )


def test_transformers_drop_quantization_config(tmp_path):
    pytest.importorskip("bitsandbytes")
    from transformers import LlamaForCausalLM

    from _kradapter_models import tiny_llama
    from kradapter import quant

    tiny_llama().save_pretrained(tmp_path)
    model = LlamaForCausalLM.from_pretrained(tmp_path, quantization_config=quant.bnb_config("8bit"), device_map="cpu")
    name = "transformers.PreTrainedModel.hf_quantizer.remove_quantization_config"
    check(model.is_quantized and getattr(model, "hf_quantizer", None) is not None, name, "set by from_pretrained")
    _compat.drop_quantization_config(model)
    check(
        not model.is_quantized and "quantization_config" not in model.config.to_dict(),
        name,
        "(model) clears is_quantized and config.quantization_config",
    )
    _compat.drop_quantization_config(tiny_llama())  # a model loaded without quantization: nothing to do


def test_transformers_no_split_modules():
    from _kradapter_models import tiny_llama

    name = "transformers.PreTrainedModel._no_split_modules"
    check("LlamaDecoderLayer" in _compat.no_split_modules(tiny_llama()), name, "the decoder block class names")
    check(_compat.no_split_modules(nn.Linear(2, 2)) == (), name, "() on a module without it")


# --- bitsandbytes -----------------------------------------------------------------------------------------------
def bnb_linear4bit(bnb, n=32, k=128, compress_statistics=True):
    """A quantized CPU Linear4bit (NF4) holding a seeded random weight."""
    torch.manual_seed(0)
    layer = bnb.nn.Linear4bit(k, n, bias=False, compute_dtype=torch.float32, quant_type="nf4")
    layer.weight = bnb.nn.Params4bit(
        torch.randn(n, k),
        requires_grad=False,
        quant_type="nf4",
        compress_statistics=compress_statistics,
        module=layer,  # as transformers builds it: the layer holds the QuantState too
    )
    return layer.to("cpu")  # quantizes


def repack_by_inference_forward(bnb, monkeypatch, layer):
    """What bitsandbytes does on an AVX512-BF16 CPU, on any CPU: the repack switch on, one inference forward.
    The packed kernel is replaced by zeros: only the repack is under test here."""
    monkeypatch.setattr(
        bnb.functional,
        "gemv_4bit",
        lambda A, B, out=None, state=None, **kw: A @ torch.zeros(A.shape[-1], state.shape[0]),
    )
    layer.support_avx512bf16_for_cpu = True
    with torch.no_grad():
        layer.eval()(torch.randn(2, layer.in_features))


def test_bnb_cpu_repack_switch(monkeypatch):
    bnb = pytest.importorskip("bitsandbytes")

    name = "bitsandbytes.nn.Linear4bit.support_avx512bf16_for_cpu"
    layer = bnb_linear4bit(bnb)
    check(isinstance(getattr(layer, "support_avx512bf16_for_cpu", None), (bool, int)), name, "a flag set in __init__")
    check(
        layer.weight.quant_state is not None and not _compat.bnb_4bit_repacked_for_cpu(layer.weight),
        "bitsandbytes Params4bit.quant_state.packing_format_for_cpu",
        "a quantized weight with a quant_state, not repacked before any inference forward",
    )
    repack_by_inference_forward(bnb, monkeypatch, layer)
    check(
        _compat.bnb_4bit_repacked_for_cpu(layer.weight),
        "bitsandbytes Params4bit.quant_state.packing_format_for_cpu",
        "True after an inference forward with the repack switch on",
    )
    off = bnb_linear4bit(bnb)
    off.support_avx512bf16_for_cpu = True  # as on an AVX512-BF16 CPU
    _compat.bnb_disable_cpu_repack(off)
    with torch.no_grad():
        off.eval()(torch.randn(2, off.in_features))
    check(not _compat.bnb_4bit_repacked_for_cpu(off.weight), name, "False to keep the layer in the standard layout")


def test_bnb_cpu_repack_tile_rows():
    functional = pytest.importorskip("bitsandbytes.functional")

    name = "bitsandbytes.functional._convert_weight_packed_for_cpu"
    repack = getattr(functional, "_convert_weight_packed_for_cpu", None)
    check(callable(repack), name, "the function bitsandbytes repacks 4-bit weights for AVX512-BF16 with")
    check(
        inspect.signature(repack).parameters["block_n"].default == _compat.BNB_CPU_PACK_BLOCK_N,
        name,
        f"tiles of block_n={_compat.BNB_CPU_PACK_BLOCK_N} rows",
    )


@pytest.mark.parametrize("compress_statistics", [False, True])
def test_bnb_cpu_packed_layout_is_read_exactly_and_stored_back(monkeypatch, compress_statistics):
    bnb = pytest.importorskip("bitsandbytes")
    from bitsandbytes.functional import dequantize_4bit

    layer = bnb_linear4bit(bnb, n=64, k=128, compress_statistics=compress_statistics)
    weight = layer.weight
    check(_compat.bnb_cpu_repack_fits(weight), "bitsandbytes Params4bit.quant_state.shape", "(N, K) of W")
    check(
        not _compat.bnb_cpu_repack_fits(bnb_linear4bit(bnb, n=32, k=32).weight),
        "bitsandbytes Params4bit.quant_state.blocksize",
        "64 for NF4 by default (so K=32 fills no block)",
    )
    standard = dequantize_4bit(weight.data.clone(), weight.quant_state)
    repack_by_inference_forward(bnb, monkeypatch, layer)
    got = _compat.bnb_dequantize_cpu_packed(weight)
    # The packed layout keeps the same codes with the block scales rounded to bfloat16 (2^-9 relative).
    check(
        got.shape == standard.shape and torch.allclose(got, standard, rtol=2**-8, atol=0),
        "bitsandbytes' CPU-packed 4-bit layout (_convert_weight_packed_for_cpu)",
        "tiles of 32 rows, nibbles (row, column pair) in 32-byte groups, scales a bfloat16 (K / blocksize) x N matrix",
    )
    _compat.bnb_store_4bit_standard_(layer, got)
    check(
        not _compat.bnb_4bit_repacked_for_cpu(weight) and layer.quant_state is weight.quant_state,
        "bitsandbytes Linear4bit.quant_state / Params4bit.quant_state",
        "both replaced by a standard-layout QuantState",
    )
    check(
        torch.equal(dequantize_4bit(weight.data, weight.quant_state), got),
        "bitsandbytes.functional.quantize_4bit(compress_statistics=False)",
        "the packed weight stored again without rounding (its scales are already bfloat16)",
    )
    x = torch.randn(3, 128, requires_grad=True)
    layer.train()(x).sum().backward()
    check(
        torch.allclose(x.grad, got.sum(0).expand(3, -1), atol=1e-5),
        "bitsandbytes Linear4bit backward in the standard layout",
        "dL/dx = dL/dy W",
    )


def test_bnb_cpu_logger_name():
    pytest.importorskip("bitsandbytes")
    import importlib

    from kradapter import _quiet

    module, attribute = "bitsandbytes.backends.cpu.ops", "logger"
    ops = importlib.import_module(module)
    check(
        getattr(getattr(ops, attribute, None), "name", None) == _quiet.BNB_CPU_LOGGER,
        f"{module}.{attribute}",
        f"the logger named {_quiet.BNB_CPU_LOGGER!r} that _quiet filters",
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


@pytest.mark.parametrize(
    "call, internal",
    [
        (
            lambda: _compat.bnb_disable_cpu_repack(nn.Linear(2, 2)),
            "bitsandbytes.nn.Linear4bit.support_avx512bf16_for_cpu",
        ),
        (lambda: _compat.bnb_int8_state(nn.Linear(2, 2)), "bitsandbytes.nn.Linear8bitLt.state"),
        (lambda: _compat.trainer_load_from_checkpoint(object(), "ckpt"), "transformers.Trainer._load_from_checkpoint"),
        (
            lambda: _compat.saved_callback_state({"stateful_callbacks": {"Probe": 3}}, "Probe"),
            "transformers.TrainerState.stateful_callbacks",
        ),
        (
            lambda: _compat.drop_quantization_config(types.SimpleNamespace(hf_quantizer=object())),
            "transformers.object.remove_quantization_config",
        ),
    ],
)
def test_a_changed_internal_is_one_error_naming_it(call, internal):
    with pytest.raises(_compat.InternalAPIChanged, match=re.escape(internal)):
        call()


# --- tested ranges and the import-time warning ----------------------------------------------------------------
def declared_floors() -> dict[str, str]:
    tomllib = pytest.importorskip("tomllib")
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    found = {}
    for dep in deps:
        m = re.fullmatch(r"(peft|transformers)(.*)", dep.replace(" ", ""))
        if m:
            assert "<" not in m[2], f"pyproject caps {dep!r}: cap only below a release known to break, with the reason"
            found[m[1]] = re.fullmatch(r">=([\d.]+)", m[2])[1]
    return found


def test_tested_floors_equal_pyproject_and_the_ci_constraints():
    assert declared_floors() == {pkg: low for pkg, (low, _) in _compat.TESTED_RANGES.items()}
    pins = dict(re.findall(r"^([\w-]+)==(\S+)$", (ROOT / ".ci" / "lowest.txt").read_text(), flags=re.M))
    assert pins == {pkg: low for pkg, (low, _) in _compat.TESTED_RANGES.items()}


def test_installed_versions_are_tested_ones():
    """CI installs in-range versions, so importing kradapter there warns of nothing. When this fails in CI's
    newest leg, a new release line came out: run the suite on it and raise TESTED_RANGES' newest."""
    assert _compat.untested_versions() == [] and _compat.broken_pairs() == []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _compat.warn_if_untested()


@pytest.mark.parametrize(
    "fake, expected",
    [
        ({"peft": "0.21.2"}, ["peft 0.21.2 (tested: 0.22.0 to 0.22.x)"]),
        ({"peft": "0.22.7"}, []),
        ({"peft": "0.23.0"}, ["peft 0.23.0 (tested: 0.22.0 to 0.22.x)"]),
        ({"transformers": "4.50.0"}, ["transformers 4.50.0 (tested: 5.6.0 to 5.25.x)"]),
        ({"transformers": "5.25.3"}, []),
        (
            {"peft": "0.21.0", "transformers": "5.24.0"},
            [
                "peft 0.21.0 (tested: 0.22.0 to 0.22.x)",
                "peft 0.21.0 with transformers 5.24.0 (known not to work: peft<0.22 with transformers>=5.24)",
            ],
        ),
    ],
)
def test_an_untested_version_gets_one_warning_naming_it(monkeypatch, fake, expected):
    real = _compat.version
    monkeypatch.setattr(_compat, "version", lambda pkg: fake.get(pkg) or real(pkg))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _compat.warn_if_untested()
    if not expected:
        assert caught == []
        return
    assert len(caught) == 1 and caught[0].category is _compat.UntestedVersionWarning
    message = str(caught[0].message)
    assert all(part in message for part in expected), message
