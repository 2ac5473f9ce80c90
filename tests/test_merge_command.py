"""`kradapter merge`: a plain transformers directory equal to the adapted model, refusals, quantized bases."""

import json
import os
import subprocess
import sys

import pytest
import torch
from peft import get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

import kradapter  # noqa: F401
from kradapter import KRAdapterConfig
from kradapter.cli import main
from kradapter.merge import merge_to_dir

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


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
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    return root, ids, expected


def test_merge_writes_a_plain_sharded_model_equal_to_the_adapted_one(dirs, capsys):
    root, ids, expected = dirs
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
    assert diff < 1e-4
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
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    assert not [p for p in root.iterdir() if p.name.startswith(".merged")]  # no temp dir left behind


def test_merge_dtype_bfloat16(dirs, tmp_path):
    root, ids, expected = dirs
    result = merge_to_dir(str(root / "base"), str(root / "adapter"), tmp_path / "bf16", dtype="bfloat16")
    model = LlamaForCausalLM.from_pretrained(result.out_dir)
    assert model.dtype == torch.bfloat16 and result.dtype == torch.bfloat16
    assert 0 < result.max_logit_diff < 0.2  # bfloat16 rounding of the merged weights, measured against float32


def test_merge_refuses_a_non_empty_out_dir(dirs, tmp_path):
    root, _, _ = dirs
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
    root, _, _ = dirs
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
    root, _, _ = dirs
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        merge_to_dir(str(root / "base"), str(tmp_path), tmp_path / "out")


def test_merge_of_a_4bit_trained_adapter_dequantizes_the_base(tmp_path):
    pytest.importorskip("bitsandbytes")
    from kradapter import quant

    llama().save_pretrained(tmp_path / "base")
    base4 = LlamaForCausalLM.from_pretrained(
        tmp_path / "base", quantization_config=quant.bnb_config("4bit"), device_map="cpu"
    )
    torch.manual_seed(2)
    model = get_peft_model(base4, KRAdapterConfig(target_modules=TARGETS, alpha=0.5, init_weights=False)).eval()
    model.save_pretrained(tmp_path / "adapter")
    ids = torch.randint(0, 128, (2, 7))
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    result = merge_to_dir(str(tmp_path / "base"), str(tmp_path / "adapter"), tmp_path / "out", quantize="4bit")
    assert result.dequantized and result.max_logit_diff < 1e-4
    merged = LlamaForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert "quantization_config" not in merged.config.to_dict()
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, expected, atol=1e-4, rtol=1e-4)


def test_merge_works_for_the_other_methods_too(dirs, tmp_path):
    from kradapter.methods.kronlora.config import KronLoRAConfig

    root, ids, _ = dirs
    torch.manual_seed(4)
    model = get_peft_model(
        LlamaForCausalLM.from_pretrained(root / "base").eval(),
        KronLoRAConfig(target_modules=["q_proj", "v_proj"], init_weights=False, r=2),
    ).eval()
    model.save_pretrained(tmp_path / "kron")
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    result = merge_to_dir(str(root / "base"), str(tmp_path / "kron"), tmp_path / "out")
    assert result.max_logit_diff < 1e-4
    with torch.no_grad():
        merged = LlamaForCausalLM.from_pretrained(result.out_dir).eval()
        torch.testing.assert_close(merged(input_ids=ids).logits, expected, atol=1e-5, rtol=1e-5)


def test_merge_output_gets_the_permissions_of_the_umask(dirs, tmp_path):
    root, _, _ = dirs
    old = os.umask(0o022)
    try:
        merge_to_dir(str(root / "base"), str(root / "adapter"), tmp_path / "merged")
    finally:
        os.umask(old)
    assert (tmp_path / "merged").stat().st_mode & 0o777 == 0o755  # mkdtemp alone gives 0700
    assert {p.stat().st_mode & 0o777 for p in (tmp_path / "merged").iterdir()} == {0o644}  # safetensors: 0600


def test_a_second_merge_into_the_same_out_is_refused_with_one_line(dirs, tmp_path, capsys):
    from kradapter.outdir import OutputLock

    root, _, _ = dirs
    out = tmp_path / "merged"
    argv = ["merge", "--base", str(root / "base"), "--adapter", str(root / "adapter"), "--out", str(out)]
    with OutputLock(out, beside=True, option="--out"):  # a merge or convert into `out` is running
        assert main(argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("kradapter")]
    assert len(err) == 1 and f"output dir {out} is in use" in err[0] and "--out" in err[0], err
    assert not out.exists() and not list(tmp_path.iterdir())
    assert main(argv) == 0 and not list(tmp_path.glob(".*"))  # released: the next one runs and leaves no lock
