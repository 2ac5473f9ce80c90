"""`kradapter merge`: a plain transformers directory equal to the adapted model, refusals, quantized bases."""

import json
import os
import subprocess
import sys

import pytest
import torch
from peft import get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

import _bounds as bounds
import kradapter  # noqa: F401
from kradapter import KRAdapterConfig
from kradapter.cli import main
from kradapter.merge import merge_to_dir, probe_inputs

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]
# A float32 merge against the unmerged model: in each adapted linear (TARGETS in 2 layers, in_features 64),
# W + Delta W against W x + Delta W x (tests/_bounds.py); times the logits' operand magnitude in the tests.
FLOAT32_MERGE = bounds.compose([bounds.float_linear(64)] * 8)


def llama(hidden=64, seed=0):
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=128,
        hidden_size=hidden,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(cfg).eval()


def tiny_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, **{f"w{i}": i + 1 for i in range(20)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("merge")
    base = llama()
    base.save_pretrained(root / "base")
    tiny_tokenizer().save_pretrained(root / "base")
    torch.manual_seed(1)
    model = get_peft_model(base, KRAdapterConfig(target_modules=TARGETS, alpha=0.5, init_weights=False))
    model.save_pretrained(root / "adapter")
    ids = torch.randint(0, 128, (2, 7))
    with torch.no_grad(), bounds.LastLinearInput(model.get_base_model().lm_head) as last:
        expected = model(input_ids=ids).logits
        model(**probe_inputs(model.config))  # the inputs merge_to_dir compares on
    return root, ids, expected, last.magnitude()


def test_merge_writes_a_plain_sharded_model_equal_to_the_adapted_one(dirs, capsys):
    root, ids, expected, magnitude = dirs
    tol = FLOAT32_MERGE * magnitude
    out = root / "merged"
    assert (
        main(
            [
                "merge",
                "--base",
                str(root / "base"),
                "--adapter",
                str(root / "adapter"),
                "--out",
                str(out),
                "--max-shard-size",
                "100KB",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "largest logit difference" in printed
    diff = float(printed.rsplit(":", 1)[1])
    assert diff <= tol
    assert (out / "model.safetensors.index.json").is_file() and len(list(out.glob("*.safetensors"))) > 1
    assert (out / "tokenizer.json").is_file()
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    # plain transformers, with kradapter and peft made unimportable
    code = (
        "import sys; sys.modules['kradapter'] = None; sys.modules['peft'] = None\n"
        "import torch; from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(out)!r}).eval()\n"
        f"AutoTokenizer.from_pretrained({str(out)!r})\n"
        f"ids = torch.tensor({ids.tolist()})\n"
        "with torch.no_grad(): print(m(input_ids=ids).logits.flatten().tolist())\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    logits = torch.tensor(json.loads(run.stdout.strip().splitlines()[-1])).reshape(expected.shape)
    assert (logits - expected).abs().max().item() <= tol  # printed as decimal by Python's repr: exact round trip
    assert not [p for p in root.iterdir() if p.name.startswith(".merged")]  # no temp dir left behind


def test_merge_dtype_bfloat16(dirs, tmp_path):
    root, _, _, magnitude = dirs
    result = merge_to_dir(str(root / "base"), str(root / "adapter"), tmp_path / "bf16", dtype="bfloat16")
    model = LlamaForCausalLM.from_pretrained(result.out_dir)
    assert model.dtype == torch.bfloat16 and result.dtype == torch.bfloat16
    # The bfloat16 copy is the float32 merge rounded once: exactly, weight by weight.
    full = merge_to_dir(str(root / "base"), str(root / "adapter"), tmp_path / "fp32", dtype="float32")
    want = LlamaForCausalLM.from_pretrained(full.out_dir).to(torch.bfloat16).state_dict()
    assert all(torch.equal(v, want[k]) for k, v in model.state_dict().items())
    # Its logits: every op of a bfloat16 forward rounds its output (u = 2**-8; float32 accumulation). Along the
    # longest path of a Llama layer: attention 20 roundings (RMSNorm 2, q 2 and k 2 (weight, output), rotary 3 on
    # each, scores 1, softmax 1, v 2, probs @ v 1, o 2, residual 1), MLP 11 (RMSNorm 2, gate 2, up 2, SiLU 1,
    # product 1, down 2, residual 1); plus embedding 1, final norm 2, lm_head 2. Relative to the logits' magnitude.
    u = bounds.unit_roundoff(torch.bfloat16)
    roundings = 31 * model.config.num_hidden_layers + 5
    rel = bounds.compose([u] * roundings) + FLOAT32_MERGE  # + the float32 reference's own merge rounding
    assert 0 < result.max_logit_diff <= rel * magnitude


def test_merge_refuses_a_non_empty_out_dir(dirs, tmp_path):
    root, _, _, _ = dirs
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="not empty"):
        merge_to_dir(str(root / "base"), str(root / "adapter"), out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert merge_to_dir(str(root / "base"), str(root / "adapter"), empty).out_dir == empty


def test_merge_names_the_tensor_when_base_and_adapter_do_not_match(dirs, tmp_path, capsys):
    root, _, _, _ = dirs
    llama(hidden=32).save_pretrained(tmp_path / "other_base")
    code = main(
        [
            "merge",
            "--base",
            str(tmp_path / "other_base"),
            "--adapter",
            str(root / "adapter"),
            "--out",
            str(tmp_path / "out"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "kradapter_U" in err and "shape" in err and "(" in err
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["other_base"]


def test_merge_rejects_a_directory_without_adapter_config(dirs, tmp_path):
    root, _, _, _ = dirs
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        merge_to_dir(str(root / "base"), str(tmp_path), tmp_path / "out")


@pytest.mark.parametrize("layout", ["float32", "bf16-packed", "cpu-default"])
def test_merge_of_a_4bit_trained_adapter_dequantizes_the_base(tmp_path, monkeypatch, layout):
    """The merged float32 model reproduces the 4-bit adapted one within the error of bitsandbytes' CPU forward:
    "float32" forces its standard float32 path, "bf16-packed" its AVX512-BF16 kernel (a bfloat16 stand-in built from
    bitsandbytes' pieces where the CPU lacks it, tests/_bnb_cpu_layout.py), "cpu-default" takes what this CPU picks,
    so it is held to the worst documented precision."""
    pytest.importorskip("bitsandbytes")
    from bitsandbytes.nn import Linear4bit

    from _bnb_cpu_layout import force_cpu_layout
    from kradapter import quant
    from kradapter.merge import probe_inputs

    if layout != "cpu-default":
        force_cpu_layout(layout == "bf16-packed", monkeypatch.setattr)  # before Linear4bit is built: it reads the flag
    llama().save_pretrained(tmp_path / "base")
    base4 = LlamaForCausalLM.from_pretrained(
        tmp_path / "base", quantization_config=quant.bnb_config("4bit"), device_map="cpu"
    )
    torch.manual_seed(2)
    model = get_peft_model(base4, KRAdapterConfig(target_modules=TARGETS, alpha=0.5, init_weights=False)).eval()
    model.save_pretrained(tmp_path / "adapter")
    ids = torch.randint(0, 128, (2, 7))
    with torch.no_grad(), bounds.LastLinearInput(model.get_base_model().lm_head) as last:
        expected = model(input_ids=ids).logits
        model(**probe_inputs(model.config))  # the inputs merge_to_dir compares on
    result = merge_to_dir(str(tmp_path / "base"), str(tmp_path / "adapter"), tmp_path / "out", quantize="4bit")
    # Each 4-bit linear errs by its path's bound (its reduction length = in_features), each adapted one also by the
    # float32 reordering of base + adapter against the merged weight; all relative to the logits' operand magnitude.
    per_layer = bounds.bnb_4bit_cpu_float32 if layout == "float32" else bounds.bnb_4bit_cpu
    stages = [per_layer(m.in_features) for m in model.modules() if isinstance(m, Linear4bit)]
    stages += [bounds.float_linear(m.in_features) for m in model.modules() if hasattr(m, "kradapter_U")]
    tol = bounds.compose(stages) * last.magnitude()
    assert len(stages) == 14 + 8 and result.dequantized and result.max_logit_diff <= tol
    merged = LlamaForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert "quantization_config" not in merged.config.to_dict()
    with torch.no_grad():
        assert (merged(input_ids=ids).logits - expected).abs().max().item() <= tol
    # Whatever the kernel: each merged weight is bitsandbytes' own dequantization plus the update, up to the
    # float32 rounding of that sum (u (|W| + |Delta W|) per element).
    weights = dict(merged.named_parameters())
    for name, layer in model.get_base_model().named_modules():
        if hasattr(layer, "kradapter_U"):
            w, delta = bnb_dequantized(layer.get_base_layer()), layer.get_delta_weight("default")
            err = (weights[name + ".weight"] - (w + delta)).abs()
            assert (err <= bounds.unit_roundoff(torch.float32) * (w.abs() + delta.abs())).all(), name


def bnb_dequantized(layer):
    """bitsandbytes' own dequantization of a Linear4bit's weight, in either CPU layout (independent of kradapter)."""
    import bitsandbytes as bnb

    from _bnb_cpu_layout import packed_weight_reference

    w = layer.weight
    if getattr(w.quant_state, "packing_format_for_cpu", False):
        return packed_weight_reference(w.data, w.quant_state).float()
    return bnb.functional.dequantize_4bit(w.data, w.quant_state).float()


def test_merge_works_for_the_other_methods_too(dirs, tmp_path):
    from kradapter.methods.kronlora.config import KronLoRAConfig

    root, ids, _, _ = dirs
    torch.manual_seed(4)
    model = get_peft_model(
        LlamaForCausalLM.from_pretrained(root / "base").eval(),
        KronLoRAConfig(target_modules=["q_proj", "v_proj"], init_weights=False, r=2),
    ).eval()
    model.save_pretrained(tmp_path / "kron")
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    result = merge_to_dir(str(root / "base"), str(tmp_path / "kron"), tmp_path / "out")
    # Kron-LoRA merged in float32 on q_proj, v_proj of 2 layers (4 stages); magnitude: the logits' operands.
    with torch.no_grad(), bounds.LastLinearInput(model.get_base_model().lm_head) as last:
        model(input_ids=ids)
        model(**probe_inputs(model.config))
    tol = bounds.compose([bounds.float_linear(64)] * 4) * last.magnitude()
    assert result.max_logit_diff <= tol
    with torch.no_grad():
        merged = LlamaForCausalLM.from_pretrained(result.out_dir).eval()
        assert (merged(input_ids=ids).logits - expected).abs().max().item() <= tol


def test_merge_output_gets_the_permissions_of_the_umask(dirs, tmp_path):
    root, *_ = dirs
    old = os.umask(0o022)
    try:
        merge_to_dir(str(root / "base"), str(root / "adapter"), tmp_path / "merged")
    finally:
        os.umask(old)
    assert (tmp_path / "merged").stat().st_mode & 0o777 == 0o755  # mkdtemp alone gives 0700
    assert {p.stat().st_mode & 0o777 for p in (tmp_path / "merged").iterdir()} == {0o644}  # safetensors: 0600


def test_a_second_merge_into_the_same_out_is_refused_with_one_line(dirs, tmp_path, capsys):
    from kradapter.outdir import OutputLock

    root, *_ = dirs
    out = tmp_path / "merged"
    argv = ["merge", "--base", str(root / "base"), "--adapter", str(root / "adapter"), "--out", str(out)]
    with OutputLock(out, beside=True, option="--out"):  # a merge or convert into `out` is running
        assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("kradapter")]
    assert len(err) == 1 and f"output dir {out} is in use" in err[0] and "--out" in err[0], err
    assert not out.exists() and not list(tmp_path.iterdir())
    assert main(argv) == 0 and not list(tmp_path.glob(".*"))  # released: the next one runs and leaves no lock


def test_a_killed_merges_half_written_directory_is_removed_by_the_next_merge(dirs, tmp_path):
    root, *_ = dirs
    out = tmp_path / "merged"
    left = tmp_path / ".merged.merging-abc123"  # what a SIGKILL during a merge leaves beside --out
    left.mkdir()
    (left / "model-00001-of-00002.safetensors").write_bytes(b"half")
    merge_to_dir(str(root / "base"), str(root / "adapter"), out)
    assert not left.exists() and out.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["merged"]


@pytest.mark.parametrize(
    "option, value, message",
    [
        ("--max-shard-size", "0", "argument --max-shard-size: '0' is not a positive size"),
        ("--max-shard-size", "2XB", "argument --max-shard-size: '2XB' is not a positive size"),
        ("--base", "/nonexistent/base", "argument --base: /nonexistent/base: no such model directory"),
    ],
)
def test_merge_options_are_checked_before_anything_loads(dirs, tmp_path, capsys, option, value, message):
    root, *_ = dirs
    argv = ["merge", "--base", str(root / "base"), "--adapter", str(root / "adapter"), "--out", str(tmp_path / "m")]
    if option in argv:
        argv[argv.index(option) + 1] = value
    else:
        argv += [option, value]
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "m").exists()
