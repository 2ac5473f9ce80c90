"""The behaviours PEFT checks for each of its own methods on small custom models, checked for KRAdapter.

Written for this project after reading PEFT's tests/test_custom_models.py and tests/testing_common.py (which run
the same checks for LoKr, LoHa, LoRA, ...). Every case below runs on a plain nn.Module: Linear, Conv2d (with stride,
padding, dilation, groups) and transformers' Conv1D, with and without modules_to_save.
"""

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from peft import PeftModel, get_base_model_state_dict, get_peft_model, get_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from transformers.pytorch_utils import Conv1D

import _bounds as bounds
from _kradapter_models import MLP, ConvNet
from kradapter import KRAdapterConfig
from kradapter.methods.kradapter.layer import KRAdapterLayer


class TokensConv1D(nn.Module):
    """Embedding -> transformers Conv1D (GPT-2 layout) -> Linear head."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 8)
        self.proj = Conv1D(12, 8)
        self.head = nn.Linear(12, 3)

    def forward(self, x):
        return self.head(torch.relu(self.proj(self.emb(x))).mean(1))


CASES = {
    "linear-one": (MLP, {"target_modules": ["lin0"]}),
    "linear-all": (MLP, {"target_modules": ["lin0", "lin1", "head"], "k1": "cbrt"}),
    "linear-regex-save-head": (MLP, {"target_modules": r".*lin\d", "modules_to_save": ["head"]}),
    "linear-dropouts": (MLP, {"target_modules": ["lin0", "lin1"], "dropout": 0.2, "module_dropout": 0.2, "alpha": 2.0}),
    "conv2d": (ConvNet, {"target_modules": ["conv0", "conv1"]}),
    "conv2d-and-linear": (ConvNet, {"target_modules": ["conv1", "head"], "k1": 2}),
    "conv1d-gpt2": (TokensConv1D, {"target_modules": ["proj"]}),
    "conv1d-gpt2-save-head": (TokensConv1D, {"target_modules": ["proj"], "modules_to_save": ["head"]}),
}
case_ids = pytest.mark.parametrize("case", list(CASES))


def inputs(model_cls, seed=0):
    g = torch.Generator().manual_seed(seed)
    if model_cls is MLP:
        return torch.randn(6, 12, generator=g)
    if model_cls is ConvNet:
        return torch.randn(2, 3, 8, 8, generator=g)
    return torch.randint(0, 50, (4, 5), generator=g)


def make(case, adapter_name="default", seed=0, adapter_seed=None, **overrides):
    model_cls, kwargs = CASES[case]
    torch.manual_seed(seed)
    base = model_cls()
    if adapter_seed is not None:  # same base model, another draw of the adapter
        torch.manual_seed(adapter_seed)
    config = KRAdapterConfig(**{"init_weights": False, **kwargs, **overrides})
    return get_peft_model(base, config, adapter_name=adapter_name), inputs(model_cls)


def fresh_base(case, seed=0):
    torch.manual_seed(seed)
    return CASES[case][0]()


# ConvNet's average pool (16 positions) and TokensConv1D's mean (5 tokens): one more reduction after the layers.
POOL = bounds.float_linear(16)


def merge_tol(model, x):
    """Merged against unmerged in float32: each layer's two evaluations (tests/_bounds.py)."""
    return bounds.network_tol(model, x, extra=[POOL])


def tuner_layers(model):
    return [m for m in model.modules() if isinstance(m, BaseTunerLayer)]


def clone_state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@case_ids
def test_model_exposes_peft_api_and_layers_expose_shapes(case):
    model, x = make(case)
    for name in ("save_pretrained", "merge_and_unload", "get_base_model", "print_trainable_parameters"):
        assert callable(getattr(model, name))
    layers = tuner_layers(model)
    assert layers and all(isinstance(layer, KRAdapterLayer) for layer in layers)
    for layer in layers:
        base = layer.get_base_layer()
        w = base.weight
        d_out = w.shape[1] if isinstance(base, Conv1D) else w.shape[0]
        assert layer.out_features == d_out and layer.in_features * d_out == w.numel()
    assert torch.isfinite(model(x)).all()


@case_ids
@pytest.mark.parametrize("safe_serialization", [True, False])
def test_save_and_load_restores_adapter_state_and_outputs(case, safe_serialization, tmp_path):
    model, x = make(case)
    model.eval()
    out = model(x)
    model.save_pretrained(tmp_path, safe_serialization=safe_serialization)
    weights_file = "adapter_model.safetensors" if safe_serialization else "adapter_model.bin"
    assert (tmp_path / weights_file).is_file() and (tmp_path / "adapter_config.json").is_file()
    saved = get_peft_model_state_dict(model)
    assert saved and not any(".default" in k for k in saved)  # the adapter name is not part of the file's keys

    loaded = PeftModel.from_pretrained(fresh_base(case), tmp_path).eval()
    reloaded = get_peft_model_state_dict(loaded)
    assert reloaded.keys() == saved.keys()
    for key in saved:
        assert torch.equal(reloaded[key], saved[key]), key
    torch.testing.assert_close(loaded(x), out)
    ignore = {"inference_mode", "auto_mapping"}  # set by loading / by saving, not by the user
    assert {k: v for k, v in loaded.peft_config["default"].to_dict().items() if k not in ignore} == {
        k: v for k, v in model.peft_config["default"].to_dict().items() if k not in ignore
    }


@case_ids
def test_config_object_instead_of_directory(case, tmp_path):
    model, x = make(case)
    model.save_pretrained(tmp_path)
    config = KRAdapterConfig.from_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(fresh_base(case), tmp_path, config=config)
    torch.testing.assert_close(loaded.eval()(x), model.eval()(x))


@case_ids
def test_parameters_after_training_and_reloading(case, tmp_path):
    model, x = make(case, init_weights=True)  # the paper's init: U = 0
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    before = clone_state(model)
    for _ in range(3):
        opt.zero_grad()
        model(x).float().pow(2).mean().backward()
        opt.step()
    after = clone_state(model)
    for key, value in before.items():
        moved = not torch.equal(after[key], value)
        trainable = "kradapter_" in key or "modules_to_save" in key
        assert moved == trainable, key
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(fresh_base(case), tmp_path)
    trained = {k: v for k, v in clone_state(model).items()}
    for key, value in clone_state(loaded).items():
        torch.testing.assert_close(value, trained[key], rtol=0, atol=0)


def test_training_lowers_the_loss():
    torch.manual_seed(0)
    model = get_peft_model(MLP(), KRAdapterConfig(target_modules=["lin0", "lin1"], alpha=1.0))
    x, y = torch.randn(32, 12), torch.randint(0, 3, (32,))
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


@case_ids
def test_custom_adapter_name_is_used_everywhere_and_changes_nothing_else(case, tmp_path):
    named, x = make(case, adapter_name="mine")
    default, _ = make(case)
    params = [n for n, _ in named.named_parameters() if "kradapter_" in n]
    assert params and all(n.endswith(".mine") for n in params)
    torch.testing.assert_close(named.eval()(x), default.eval()(x))
    named.save_pretrained(tmp_path)
    assert (tmp_path / "mine" / "adapter_config.json").is_file()  # non-default names go to a subfolder, as in PEFT
    loaded = PeftModel.from_pretrained(fresh_base(case), tmp_path / "mine", adapter_name="mine")
    torch.testing.assert_close(loaded(x), named(x))


def test_adapter_name_that_is_a_substring_of_module_names(tmp_path):
    torch.manual_seed(0)
    model = get_peft_model(MLP(), KRAdapterConfig(target_modules=["lin0"], init_weights=False), adapter_name="lin")
    model.save_pretrained(tmp_path)
    loaded = PeftModel.from_pretrained(fresh_base("linear-one"), tmp_path / "lin", adapter_name="lin")
    x = inputs(MLP)
    torch.testing.assert_close(loaded(x), model(x))


def test_selected_adapters_are_saved_alone(tmp_path):
    model, x = make("linear-all")
    model.add_adapter("other", KRAdapterConfig(target_modules=["lin1"], init_weights=False))
    model.save_pretrained(tmp_path, selected_adapters=["other"])
    assert (tmp_path / "other" / "adapter_config.json").is_file()
    assert not (tmp_path / "adapter_config.json").exists()
    model.save_pretrained(tmp_path / "both")
    assert (tmp_path / "both" / "adapter_config.json").is_file() and (tmp_path / "both" / "other").is_dir()


@case_ids
def test_load_several_adapters_into_one_model(case, tmp_path):
    a, x = make(case, adapter_seed=1)
    b, _ = make(case, adapter_seed=2)
    a.save_pretrained(tmp_path / "a")
    b.save_pretrained(tmp_path / "b")
    model = PeftModel.from_pretrained(fresh_base(case), tmp_path / "a", adapter_name="a")
    model.load_adapter(tmp_path / "b", adapter_name="b")
    torch.manual_seed(0)
    a_out, b_out = a.eval()(x), b.eval()(x)
    model.eval()
    model.set_adapter("a")
    torch.testing.assert_close(model(x), a_out)
    model.set_adapter("b")
    torch.testing.assert_close(model(x), b_out)


@case_ids
def test_merge_changes_nothing_and_merging_twice_warns(case):
    model, x = make(case)
    model.eval()
    out = model(x)
    tol = merge_tol(model, x)
    model.merge_adapter()
    merged_out = model(x)
    assert (merged_out - out).abs().max().item() <= tol
    with pytest.warns(UserWarning, match="All adapters are already merged"):
        model.merge_adapter()
    assert torch.equal(model(x), merged_out)  # nothing was merged twice: the same weights, the same arithmetic
    unloaded = model.merge_and_unload()
    assert not tuner_layers(unloaded)
    assert (unloaded(x) - out).abs().max().item() <= tol


@case_ids
def test_merge_in_half_precision(case):
    model, x = make(case)
    model = model.to(torch.float16).eval()
    x = x.to(torch.float16) if x.is_floating_point() else x
    out = model(x)
    # Both paths sum W0 + alpha Delta W in float32 and round it to float16 once per layer (low_precision_linear),
    # and round the pooled mean once (float32 accumulation); each path's own errors, compounded, relative to the
    # head's operand magnitude (the convention of tests/_bounds.py.compose; the |W| |x| chain would hide the update).
    u16 = bounds.unit_roundoff(torch.float16)
    pool = 2 * (u16 + bounds.gamma(16))
    stages = [2 * bounds.low_precision_linear(k, torch.float16) for k in bounds.weighted_stages(model)]
    head = model.get_base_model().head
    weight = head.modules_to_save["default"].weight if hasattr(head, "modules_to_save") else head.weight
    recorded = []
    hook = head.register_forward_hook(lambda m, a, y: recorded.append(a[0]))
    model(x)
    hook.remove()
    extra = [layer.delta_matrix("default").abs() for layer in tuner_layers(model) if layer is head]
    magnitude = bounds.operand_magnitude(recorded[0], weight.abs() + (extra[0] if extra else 0))
    tol = bounds.compose(stages + [pool]) * magnitude
    model.merge_adapter()
    assert (model(x) - out).abs().max().item() <= tol
    for layer in tuner_layers(model):
        assert layer.get_base_layer().weight.dtype == torch.float16


@case_ids
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("autocast_adapter_dtype", [True, False])
def test_forward_on_half_precision_base(case, dtype, autocast_adapter_dtype):
    model_cls, kwargs = CASES[case]
    torch.manual_seed(0)
    base = model_cls().to(dtype)
    model = get_peft_model(
        base, KRAdapterConfig(init_weights=False, **kwargs), autocast_adapter_dtype=autocast_adapter_dtype
    ).eval()
    expected = torch.float32 if autocast_adapter_dtype else dtype
    assert all(p.dtype == expected for n, p in model.named_parameters() if "kradapter_" in n)
    x = inputs(model_cls)
    out = model(x.to(dtype) if x.is_floating_point() else x)
    assert out.dtype == dtype and torch.isfinite(out).all()


@case_ids
def test_disable_adapter_gives_base_output_with_and_without_merge(case):
    model, x = make(case)
    model.eval()
    base_out = fresh_base(case).eval()(x)
    out = model(x)
    assert not torch.allclose(out, base_out)
    with model.disable_adapter():
        torch.testing.assert_close(model(x), base_out)
    torch.testing.assert_close(model(x), out)
    tol = merge_tol(model, x)  # unmerged while disabled: W0 + D - D, within 2u of W0 (test_kradapter_merge)
    model.merge_adapter()
    with model.disable_adapter():
        assert (model(x) - base_out).abs().max().item() <= tol


@case_ids
def test_disable_context_restores_the_previous_layer_state(case):
    model, _ = make(case)
    layers = tuner_layers(model)
    with model.disable_adapter():
        assert all(layer.disable_adapters for layer in layers)
    assert not any(layer.disable_adapters for layer in layers)
    model.disable_adapter_layers()
    with model.disable_adapter():
        pass
    assert all(layer.disable_adapters for layer in layers)
    model.enable_adapter_layers()
    assert not any(layer.disable_adapters for layer in layers)


@case_ids
def test_only_adapter_and_saved_modules_train(case):
    model, x = make(case, init_weights=True)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {
        n for n, _ in model.named_parameters() if "kradapter_" in n or ".modules_to_save.default." in n
    }


@case_ids
def test_base_model_state_dict_is_the_original_one(case):
    base = fresh_base(case)
    original = clone_state(base)
    model = get_peft_model(base, KRAdapterConfig(init_weights=False, **CASES[case][1]))
    extracted = get_base_model_state_dict(model)
    assert extracted.keys() == original.keys()
    for key, value in original.items():
        assert torch.equal(extracted[key], value), key


@case_ids
def test_deepcopy_gives_an_independent_model(case):
    model, x = make(case)
    model.eval()
    twin = copy.deepcopy(model)
    torch.testing.assert_close(twin(x), model(x))
    with torch.no_grad():
        for layer in tuner_layers(twin):
            layer.kradapter_U["default"].add_(1.0)
    assert not torch.allclose(twin(x), model(x))


@case_ids
def test_delete_adapter_cleans_up(case):
    model, x = make(case)
    model.add_adapter("other", KRAdapterConfig(init_weights=False, **CASES[case][1]))
    model.set_adapter("other")
    with pytest.raises(ValueError, match="does not exist"):
        model.delete_adapter("nope")
    model.delete_adapter("other")
    assert model.active_adapters == ["default"]
    for layer in tuner_layers(model):
        for attr in (*layer.adapter_layer_names, *layer.other_param_names):
            assert "other" not in getattr(layer, attr), attr
    assert not any(".other" in n for n, _ in model.named_parameters())
    model.delete_adapter("default")
    assert not model.peft_config
    assert not any("kradapter_" in n for n, _ in model.named_parameters())


@case_ids
def test_merged_adapter_cannot_be_deleted_and_nothing_changes(case):
    model, _ = make(case)
    model.merge_adapter()
    layers = tuner_layers(model)
    merged = [list(layer.merged_adapters) for layer in layers]
    with pytest.raises(ValueError, match=r"Cannot delete adapter\(s\) \['default'\] while they are merged"):
        model.delete_adapter("default")
    assert "default" in model.peft_config and [list(layer.merged_adapters) for layer in layers] == merged
    model.unmerge_adapter()
    model.delete_adapter("default")


def test_inactive_adapter_can_be_deleted():
    model, x = make("linear-all")
    out = model(x)
    model.add_adapter("other", KRAdapterConfig(target_modules=["lin0"], init_weights=False))
    model.delete_adapter("other")
    assert model.active_adapters == ["default"] and set(model.peft_config) == {"default"}
    torch.testing.assert_close(model(x), out)


@pytest.mark.parametrize("second_targets", [["lin0"], ["lin1"]], ids=["same", "different"])
def test_two_active_adapters(second_targets):
    model, x = make("linear-one")
    model.add_adapter("other", KRAdapterConfig(target_modules=second_targets, init_weights=False))
    model.eval()
    model.base_model.set_adapter("default")
    out_a = model(x)
    model.base_model.set_adapter("other")
    out_b = model(x)
    model.base_model.set_adapter(["default", "other"])
    assert model.active_adapters == ["default", "other"]
    both = model(x)
    assert not torch.allclose(both, out_a) and not torch.allclose(both, out_b)
    # float32 merge per layer (float_linear), plus the second adapter's extra rounding in the merged weight
    # (W0 + D1) + D2 and its extra sum in the unmerged output (tests/_bounds.py).
    u = bounds.unit_roundoff(torch.float32)
    tol = bounds.network_tol(model, x, lambda k: bounds.float_linear(k) + 2 * u)
    model.merge_adapter()
    assert (model(x) - both).abs().max().item() <= tol
    model.unmerge_adapter()
    assert (model(x) - both).abs().max().item() <= tol  # W0 back within 2u per adapter
    merged = model.merge_and_unload(adapter_names=["default", "other"])
    assert (merged(x) - both).abs().max().item() <= tol


def test_set_requires_grad_per_adapter():
    model, _ = make("linear-one", adapter_name="a0")
    model.add_adapter("a1", KRAdapterConfig(target_modules=["lin0", "lin1"], modules_to_save=["head"]))
    lin0, lin1 = model.base_model.model.lin0, model.base_model.model.lin1

    def grads(layer, name):
        return {layer.kradapter_U[name].requires_grad, layer.kradapter_V[name].requires_grad}

    assert grads(lin0, "a0") == {True} and grads(lin0, "a1") == {False} and grads(lin1, "a1") == {False}
    model.set_requires_grad("a1")
    assert grads(lin0, "a0") == {True} and grads(lin0, "a1") == {True} and grads(lin1, "a1") == {True}
    model.set_requires_grad(["a0", "a1"], requires_grad=False)
    assert grads(lin0, "a0") == {False} and grads(lin0, "a1") == {False}


def test_adapters_with_and_without_modules_to_save():
    model, x = make("linear-one")
    model.add_adapter("saver", KRAdapterConfig(target_modules=["lin1"], modules_to_save=["head"], init_weights=False))
    head = model.base_model.model.head
    with torch.no_grad():
        head.modules_to_save["saver"].weight.add_(1.0)
    model.eval()
    out_default = model(x)
    model.set_adapter("saver")
    out_head = model(x)
    assert not torch.allclose(out_default, out_head)
    model.set_adapter("default")
    torch.testing.assert_close(model(x), out_default)  # the original head is back for the adapter without a copy


def test_active_adapter_and_two_adapters_in_a_list_with_the_same_saved_module_raise():
    model, _ = make("linear-regex-save-head")
    model.add_adapter("other", KRAdapterConfig(target_modules=["lin0"], modules_to_save=["head"]))
    assert model.active_adapter == "default"
    with pytest.raises(ValueError):
        model.base_model.set_adapter(["default", "other"])


def test_unload_without_merge_restores_base_outputs_with_no_warnings():
    model, x = make("conv2d-and-linear")
    base_out = fresh_base("conv2d-and-linear")(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plain = model.unload()
    assert not tuner_layers(plain) and not hasattr(plain, "peft_config")
    torch.testing.assert_close(plain(x), base_out)


def test_low_level_api_inject_and_state_dict():
    from peft import inject_adapter_in_model, set_peft_model_state_dict

    torch.manual_seed(0)
    model = inject_adapter_in_model(KRAdapterConfig(target_modules=["lin0", "lin1"], init_weights=False), MLP())
    assert isinstance(model.lin0, KRAdapterLayer) and isinstance(model.lin1, KRAdapterLayer)
    state = get_peft_model_state_dict(model)
    assert set(state) == {f"{m}.kradapter_{p}" for m in ("lin0", "lin1") for p in "UV"}
    torch.manual_seed(1)
    other = inject_adapter_in_model(
        KRAdapterConfig(target_modules=["lin0", "lin1"], init_weights=False), fresh_base("linear-one")
    )
    set_peft_model_state_dict(other, state)
    x = inputs(MLP)
    torch.testing.assert_close(other(x), model(x))


def test_config_round_trips_and_dispatches_by_peft_type(tmp_path):
    import pickle

    from peft import PeftConfig
    from peft.utils.peft_types import PeftType

    config = KRAdapterConfig(
        target_modules=["lin0"],
        k1="qdrt",
        alpha=0.25,
        alpha_pattern={"lin0": 0.5},
        k1_pattern={"lin1": 3},
        layers_to_transform=[0],
        layers_pattern="layers",
    )
    assert config.peft_type == PeftType.KRADAPTER == "KRADAPTER"
    config.save_pretrained(tmp_path)
    for loaded in (
        KRAdapterConfig.from_pretrained(tmp_path),
        PeftConfig.from_pretrained(tmp_path),
        pickle.loads(pickle.dumps(config)),
        copy.deepcopy(config),
    ):
        assert type(loaded) is KRAdapterConfig
        assert loaded.to_dict() == config.to_dict()
    with pytest.raises(TypeError):
        KRAdapterConfig(target_modules=["lin0"], r=8)  # a LoRA field is not silently accepted
