"""Every path that loads one of our adapters refuses the same bad tensors, names the file and the tensor, and leaves
the model as it was: PeftModel.from_pretrained / load_adapter, transformers' model.load_adapter and
AutoModelForCausalLM.from_pretrained(adapter_dir), and kradapter.diffusers_io.load_adapter. PEFT's own methods load
exactly as they do without `import kradapter`."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from peft import PeftModel
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file, save_file

import kradapter
from _kradapter_models import tiny_llama
from kradapter._peft_guards import AdapterLoadError

IDS = torch.arange(12).reshape(1, 12) % 64
Q = "base_model.model.model.layers.0.self_attn.q_proj.kradapter_U"  # a tensor every edit below touches


def _logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS).logits


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A tiny Llama base and a KRAdapter saved by transformers (q_proj, v_proj), base named in its config."""
    root = tmp_path_factory.mktemp("guards")
    tiny_llama(seed=0).save_pretrained(root / "base")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(root / "base")
    torch.manual_seed(1)
    model.add_adapter(kradapter.KRAdapterConfig(target_modules=["q_proj", "v_proj"], init_weights=False))
    model.save_pretrained(root / "adapter")
    return root


def _edited(saved, tmp_path, edit):
    import shutil

    directory = tmp_path / "edited"
    shutil.copytree(saved / "adapter", directory)
    weights = directory / "adapter_model.safetensors"
    tensors = load_file(weights)
    assert Q in tensors
    edit(tensors)
    save_file(tensors, weights)
    return directory, weights


def _set(key, value):
    return lambda tensors: tensors.__setitem__(key, value(tensors))


EDITS = {  # edit -> what the error says about Q (or the added tensor)
    "nan": (lambda t: t[Q].view(-1).__setitem__(0, float("nan")), f"tensor '{Q}' holds NaN or Inf values"),
    "int64": (_set(Q, lambda t: t[Q].round().long()), f"tensor '{Q}' is int64, not floating point"),
    "shape": (_set(Q, lambda t: torch.zeros(3, 3)), rf"tensor '{Q}' has shape \(3, 3\) in the checkpoint but"),
    "unadapted module": (
        _set(Q.replace("q_proj", "o_proj"), lambda t: t[Q].clone()),
        f"tensor '{Q.replace('q_proj', 'o_proj')}' is for module 'model.layers.0.self_attn.o_proj', which holds "
        "no adapter '(default|other)'",
    ),
}


def _base(saved):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(saved / "base").eval()


def _peft_from_pretrained(saved, directory):
    model = _base(saved)
    return model, lambda: PeftModel.from_pretrained(model, str(directory))


def _peft_load_adapter(saved, directory):
    model = PeftModel.from_pretrained(_base(saved), str(saved / "adapter"))
    return model, lambda: model.load_adapter(str(directory), adapter_name="other")


def _transformers_load_adapter(saved, directory):
    model = _base(saved)
    return model, lambda: model.load_adapter(str(directory))


def _transformers_second_adapter(saved, directory):
    model = _base(saved)
    model.load_adapter(str(saved / "adapter"), adapter_name="first")
    return model, lambda: model.load_adapter(str(directory), adapter_name="other")


PATHS = {
    "PeftModel.from_pretrained": _peft_from_pretrained,
    "PeftModel.load_adapter": _peft_load_adapter,
    "transformers load_adapter": _transformers_load_adapter,
    "transformers second adapter": _transformers_second_adapter,
}


def _tree(model):
    return [(n, type(m).__name__) for n, m in model.named_modules()], sorted(
        (n, p.requires_grad) for n, p in model.named_parameters()
    )


@pytest.mark.parametrize("edit", EDITS)
@pytest.mark.parametrize("path", PATHS)
def test_bad_tensors_are_refused_on_every_path_naming_file_and_tensor(saved, tmp_path, path, edit):
    directory, weights = _edited(saved, tmp_path, EDITS[edit][0])
    model, load = PATHS[path](saved, directory)
    before, tree = _logits(model), _tree(model)
    configs = dict(getattr(model, "peft_config", {}))
    with pytest.raises(AdapterLoadError, match=rf"cannot load adapter {weights}: .*{EDITS[edit][1]}"):
        load()
    assert _tree(model) == tree  # no wrapper layer added or left behind
    assert dict(getattr(model, "peft_config", {})) == configs
    torch.testing.assert_close(_logits(model), before, rtol=0, atol=0)


@pytest.mark.parametrize("edit", EDITS)
def test_auto_from_pretrained_of_an_adapter_directory_refuses_bad_tensors(saved, tmp_path, edit):
    from transformers import AutoModelForCausalLM

    directory, weights = _edited(saved, tmp_path, EDITS[edit][0])
    with pytest.raises(AdapterLoadError, match=rf"cannot load adapter {weights}: .*{EDITS[edit][1]}"):
        AutoModelForCausalLM.from_pretrained(directory)


def test_a_good_adapter_loads_the_same_on_every_path(saved):
    from transformers import AutoModelForCausalLM

    expected = _logits(AutoModelForCausalLM.from_pretrained(saved / "adapter").eval())
    peft_model = PeftModel.from_pretrained(_base(saved), str(saved / "adapter"))
    torch.testing.assert_close(_logits(peft_model), expected, rtol=0, atol=0)
    model = _base(saved)
    model.load_adapter(str(saved / "adapter"))
    torch.testing.assert_close(_logits(model), expected, rtol=0, atol=0)
    assert any(isinstance(m, BaseTunerLayer) for m in model.modules())


# --- PEFT's own methods: the same behaviour with and without `import kradapter` -----------------------------------
LORA_SCRIPT = textwrap.dedent(
    """
    import json, sys, warnings
    import torch
    if sys.argv[1] == "with":
        import kradapter
    from peft import LoraConfig, PeftModel, get_peft_model
    from peft.tuners.tuners_utils import BaseTunerLayer
    from safetensors.torch import load_file, save_file

    def base():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(), torch.nn.Linear(5, 4))

    root = sys.argv[2]
    torch.manual_seed(1)
    config = LoraConfig(target_modules=["0", "2"], r=2, init_lora_weights=False)
    get_peft_model(base(), config).save_pretrained(root + "/good")
    tensors = load_file(root + "/good/adapter_model.safetensors")
    edits = {
        "nan": lambda t: {k: v.fill_(float("nan")) for k, v in t.items()},
        "int64": lambda t: {k: v.round().long() for k, v in t.items()},
        "missing tensor": lambda t: dict(list(t.items())[1:]),
        "extra tensor": lambda t: {**t, "base_model.model.1.lora_A.weight": torch.zeros(2, 5)},
    }
    import shutil
    for name, edit in edits.items():
        shutil.copytree(root + "/good", root + "/" + name)
        save_file(edit(dict(tensors)), root + "/" + name + "/adapter_model.safetensors")
    shutil.copytree(root + "/good", root + "/truncated")
    with open(root + "/truncated/adapter_model.safetensors", "r+b") as f:
        f.truncate(40)

    x = torch.linspace(-1, 1, 12).reshape(2, 6)
    report = {}
    for name in ["good", *edits, "truncated"]:
        for how in ("from_pretrained", "load_adapter"):
            model = base()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    if how == "from_pretrained":
                        model = PeftModel.from_pretrained(model, root + "/" + name)
                    else:
                        model = PeftModel.from_pretrained(model, root + "/good")
                        model.load_adapter(root + "/" + name, adapter_name="other")
                        model.set_adapter("other")
                    outcome = repr(model(x).detach().tolist())
                except Exception as err:
                    outcome = type(err).__name__ + ": " + str(err)
            report[name + " " + how] = {
                "outcome": outcome,
                "warnings": sorted(str(w.message) for w in caught if "kradapter" not in str(w.message)),
                "layers": sorted(n for n, m in model.named_modules() if isinstance(m, BaseTunerLayer)),
            }
    model = get_peft_model(base(), config)
    model.delete_adapter("default")
    try:
        model(x)
        report["deleted"] = "ran"
    except Exception as err:
        report["deleted"] = type(err).__name__ + ": " + str(err)
    print(json.dumps(report))
    """
)


def test_lora_adapters_load_exactly_as_without_import_kradapter(tmp_path):
    reports = {}
    for mode in ("with", "without"):
        (tmp_path / mode).mkdir()
        done = subprocess.run(
            [sys.executable, "-c", LORA_SCRIPT, mode, str(tmp_path / mode)], capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, done.stderr[-3000:]
        reports[mode] = json.loads(done.stdout.strip().splitlines()[-1].replace(str(tmp_path / mode), "ROOT"))
    assert reports["with"].keys() == reports["without"].keys()
    for case in reports["with"]:
        assert reports["with"][case] == reports["without"][case], case
    assert "Error" in reports["with"]["truncated from_pretrained"]["outcome"]  # the comparison covers failures


# --- diffusers_io ------------------------------------------------------------------------------------------------
diffusers = pytest.importorskip("diffusers")


def _unet_and_bad_file(tmp_path):
    from test_diffusers import TARGETS, adapted, tiny_unet

    adapted(k1=2).save_lora_adapter(tmp_path / "bad")  # k1 = 2, then the header edited to claim k1 = 'sqrt'
    file = tmp_path / "bad" / "pytorch_lora_weights.safetensors"
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as f:
        header, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    settings = json.loads(header["lora_adapter_metadata"])
    settings["k1"] = "sqrt"
    header["lora_adapter_metadata"] = json.dumps(settings)
    save_file(tensors, str(file), metadata=header)
    return tiny_unet, TARGETS, file


def test_diffusers_refused_load_leaves_no_wrapper_and_a_later_save_round_trips(tmp_path):
    """The data-loss case: a refused load used to leave empty wrapper layers behind, and the next save wrote an
    adapter whose reload gave other outputs."""
    from kradapter.diffusers_io import load_adapter
    from test_diffusers import out

    tiny_unet, targets, bad = _unet_and_bad_file(tmp_path)
    unet = tiny_unet()
    torch.manual_seed(3)
    unet.add_adapter(kradapter.KRAdapterConfig(target_modules=["to_k", "to_v"], init_weights=False, alpha=0.5))
    expected, tree = out(unet), _tree(unet)
    with pytest.raises(AdapterLoadError, match=rf"cannot load adapter {bad}: .*has shape .* in the checkpoint but"):
        load_adapter(unet, bad.parent, adapter_name="bad")
    assert _tree(unet) == tree and set(unet.peft_config) == {"default"}
    torch.testing.assert_close(out(unet), expected, rtol=0, atol=0)

    unet.save_lora_adapter(tmp_path / "after")
    reloaded = tiny_unet()
    load_adapter(reloaded, tmp_path / "after")
    torch.testing.assert_close(out(reloaded), expected, rtol=0, atol=0)


@pytest.mark.parametrize("edit", ["nan", "int64", "unadapted module"])
def test_diffusers_load_refuses_bad_tensors_naming_them(tmp_path, edit):
    from kradapter.diffusers_io import load_adapter
    from test_diffusers import adapted, out, tiny_unet

    adapted().save_lora_adapter(tmp_path)
    file = tmp_path / "pytorch_lora_weights.safetensors"
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as f:
        header, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    key = sorted(k for k in tensors if "to_q.kradapter_U" in k)[0]
    if edit == "nan":
        tensors[key].view(-1)[0] = float("inf")
        shown = f"tensor '{key}' holds NaN or Inf values"
    elif edit == "int64":
        tensors[key] = tensors[key].round().long()
        shown = f"tensor '{key}' is int64, not floating point"
    else:
        tensors[key.replace("to_q", "to_qq")] = tensors[key].clone()
        shown = f"tensor '{key.replace('to_q', 'to_qq')}' is for module"
    save_file(tensors, str(file), metadata=header)
    unet = tiny_unet()
    before, tree = out(unet), _tree(unet)
    with pytest.raises(AdapterLoadError, match=rf"cannot load adapter {file}: .*{shown}"):
        load_adapter(unet, tmp_path)
    assert _tree(unet) == tree and not hasattr(unet, "peft_config")
    torch.testing.assert_close(out(unet), before, rtol=0, atol=0)
