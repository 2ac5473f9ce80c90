"""kradapter.gguf: a GGUF checkpoint becomes a plain, trainable checkpoint once, cached; `train --model` uses it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

import transformers  # noqa: E402
from packaging.version import Version  # noqa: E402

from kradapter.gguf import dequantize_gguf, dequantized_dir, find_gguf  # noqa: E402

# transformers 5.0.0 (our declared floor) cannot read this GGUF's BPE tokenizer: its converter fails on the merges
# with "TypeError: argument 'merges': failed to extract enum PyMerges" (.ci/run's lowest leg, 2026-12-01); 5.23.0
# reads it. Seen on the tokenizer only; the weights dequantize on both.
OLD_GGUF_TOKENIZER = pytest.mark.skipif(
    Version(transformers.__version__) < Version("5.23"),
    reason=f"transformers {transformers.__version__} cannot convert a GGUF BPE tokenizer (5.0.0 fails; 5.23 reads it)",
)

V, H, F, L, NH = 64, 16, 32, 2, 2


def write_tiny_llama_gguf(path) -> None:
    """A 2-layer Llama in GGUF (float32 tensors, a byte-level BPE tokenizer), as llama.cpp lays it out."""
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(64)
    w.add_embedding_length(H)
    w.add_block_count(L)
    w.add_feed_forward_length(F)
    w.add_head_count(NH)
    w.add_head_count_kv(NH)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(V)
    w.add_rope_dimension_count(H // NH)
    letters = [chr(ord("a") + i) for i in range(26)] + [chr(ord("A") + i) for i in range(26)]
    w.add_tokenizer_model("gpt2")
    w.add_token_list(letters + ["Ġ", "<s>", "</s>", "ab"] + [f"x{i}" for i in range(V - 56)])
    w.add_token_types([1] * V)
    w.add_token_merges(["a b"])
    w.add_bos_token_id(53)
    w.add_eos_token_id(54)

    def f(*shape):
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    w.add_tensor("token_embd.weight", f(V, H))
    for i in range(L):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(H, np.float32))
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            w.add_tensor(f"blk.{i}.{name}.weight", f(H, H))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(H, np.float32))
        w.add_tensor(f"blk.{i}.ffn_gate.weight", f(F, H))
        w.add_tensor(f"blk.{i}.ffn_up.weight", f(F, H))
        w.add_tensor(f"blk.{i}.ffn_down.weight", f(H, F))
    w.add_tensor("output_norm.weight", np.ones(H, np.float32))
    w.add_tensor("output.weight", f(V, H))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture()
def gguf_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("KRADAPTER_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "model"
    folder.mkdir()
    write_tiny_llama_gguf(folder / "tiny.gguf")
    return folder


def test_find_gguf(gguf_dir, tmp_path):
    assert find_gguf(gguf_dir) == gguf_dir / "tiny.gguf" == find_gguf(gguf_dir / "tiny.gguf")
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "model.safetensors").write_bytes(b"")
    (plain / "extra.gguf").write_bytes(b"")
    assert find_gguf(plain) is None  # an ordinary checkpoint keeps its own weights
    (gguf_dir / "other.gguf").write_bytes(b"")
    with pytest.raises(ValueError, match="holds 2 GGUF files"):
        find_gguf(gguf_dir)


@OLD_GGUF_TOKENIZER
def test_dequantized_once_equals_transformers_reading_and_trains(gguf_dir, monkeypatch):
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import kradapter
    import kradapter.gguf as module

    path = dequantize_gguf(gguf_dir)
    assert path == str(dequantized_dir(gguf_dir / "tiny.gguf"))
    direct = AutoModelForCausalLM.from_pretrained(str(gguf_dir), gguf_file="tiny.gguf", dtype=torch.float32)
    plain = AutoModelForCausalLM.from_pretrained(path)
    assert getattr(plain, "hf_quantizer", None) is None and not hasattr(plain.config, "quantization_config")
    direct_sd, plain_sd = direct.state_dict(), plain.state_dict()
    assert direct_sd.keys() == plain_sd.keys()
    assert all(torch.equal(direct_sd[k], plain_sd[k]) for k in direct_sd)
    tok = AutoTokenizer.from_pretrained(path)
    assert (
        tok("ab a")["input_ids"]
        == AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file="tiny.gguf")("ab a")["input_ids"]
    )

    model = get_peft_model(plain, kradapter.KRAdapterConfig(target_modules=["k_proj", "v_proj"], init_weights=False))
    ids = torch.tensor([tok("ab a")["input_ids"]])
    model(input_ids=ids, labels=ids).loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad)

    monkeypatch.setattr(module, "_convert", lambda *a: pytest.fail("converted twice"))
    assert dequantize_gguf(gguf_dir / "tiny.gguf") == path  # cached


@OLD_GGUF_TOKENIZER
def test_train_model_flag_says_it_dequantizes(gguf_dir, capsys):
    from kradapter.train.commands import _trainable_model_path

    first = _trainable_model_path(str(gguf_dir), speak=True)
    out = capsys.readouterr().out
    assert "tiny.gguf is a GGUF file" in out and "dequantizing it once" in out and first in out
    again = _trainable_model_path(str(gguf_dir), speak=True)
    assert again == first and "using its float32 copy" in capsys.readouterr().out
    assert _trainable_model_path(first, speak=True) == first  # a plain checkpoint passes through
    assert capsys.readouterr().out == ""
