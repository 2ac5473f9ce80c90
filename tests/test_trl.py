"""trl: SFTTrainer(peft_config=KRAdapterConfig(...)) trains a KRAdapter on a tiny offline Llama, and saves it.

The tokenizer is a word-level one built with `tokenizers` here (nothing is downloaded)."""

from __future__ import annotations

import json
import math

import pytest
import torch

import kradapter
from _kradapter_models import tiny_llama

trl = pytest.importorskip("trl", reason="trl is in the test extra: pip install '.[test]'")

WORDS = "the cat sat on a mat dog ran far away big small red blue".split()


def word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "<eos>", "<unk>", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


def test_sft_trainer_trains_a_kradapter_and_saves_it_with_its_card(tmp_path):
    from datasets import Dataset
    from peft import PeftModel

    model = tiny_llama(seed=0)
    model.config.pad_token_id, model.config.eos_token_id = 0, 1
    base_before = {n: p.detach().clone() for n, p in model.named_parameters()}
    data = Dataset.from_dict({"text": [" ".join(WORDS[i : i + 5]) for i in range(8)]})
    args = trl.SFTConfig(
        output_dir=str(tmp_path / "run"),
        max_steps=2,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        max_length=16,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
    )
    trainer = trl.SFTTrainer(
        model=model,
        args=args,
        train_dataset=data,
        processing_class=word_tokenizer(),
        peft_config=kradapter.KRAdapterConfig(target_modules=["q_proj", "v_proj"]),
    )
    peft_model = trainer.model
    assert isinstance(peft_model, PeftModel)
    assert isinstance(peft_model.peft_config["default"], kradapter.KRAdapterConfig)
    adapter = {n: p.detach().clone() for n, p in peft_model.named_parameters() if p.requires_grad}
    assert adapter and all(".kradapter_" in n for n in adapter)  # only KRAdapter factors train

    trainer.train()

    assert trainer.state.global_step == 2
    assert all(math.isfinite(e["loss"]) for e in trainer.state.log_history if "loss" in e)
    now = dict(peft_model.named_parameters())
    # init_weights=True starts U at 0: the first step moves U, the second also V (its gradient needs U != 0).
    assert all(not torch.equal(now[n], before) for n, before in adapter.items()), "an adapter factor did not train"
    base = peft_model.get_base_model()
    for name, before in base_before.items():  # the base weights are where they started
        matches = [p for n, p in base.named_parameters() if n.replace(".base_layer", "") == name]
        assert len(matches) == 1 and torch.equal(matches[0], before), name

    trainer.save_model(str(tmp_path / "adapter"))
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["peft_type"] == "KRADAPTER"
    card = (tmp_path / "adapter" / "README.md").read_text()
    assert "import kradapter" in card and "arxiv.org/abs/2508.00230" in card
