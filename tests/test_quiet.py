"""Quiet by default: the two third-party messages users cannot act on are dropped, narrowly; others still show."""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings

import pytest
import torch

import kradapter  # noqa: F401  (installs the bitsandbytes filter)
from kradapter._quiet import BNB_CPU_LOGGER, BNB_KERNEL_MESSAGE, peft_deprecations_silenced


def test_bitsandbytes_kernel_message_is_dropped_and_nothing_else(caplog):
    logger = logging.getLogger(BNB_CPU_LOGGER)
    with caplog.at_level(logging.WARNING):
        logger.warning(BNB_KERNEL_MESSAGE + ": %s. Please make sure you already `pip install kernels`", "offline")
        logger.warning("something else bitsandbytes says")
    assert [r.getMessage() for r in caplog.records] == ["something else bitsandbytes says"]


def test_import_prints_nothing():
    # default warning filters: what a user sees
    done = subprocess.run([sys.executable, "-c", "import kradapter, peft"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout == "" and done.stderr == ""


def _tiny_bert():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, num_labels=3
    )
    return BertForSequenceClassification(config)


def test_our_get_peft_model_calls_raise_no_third_party_warning():
    from kradapter.train.methods import apply_method

    targets = ["bert.encoder.layer.0.attention.self.key", "bert.encoder.layer.0.attention.self.value"]
    for method in ("kradapter", "lora"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            apply_method(_tiny_bert(), method, targets, head=["classifier"])
        assert [str(w.message) for w in caught] == [], method


def test_the_filter_is_narrow():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with peft_deprecations_silenced():
            warnings.warn("`is_gradient_checkpointing` is deprecated and will be removed", FutureWarning)
            warnings.warn("a FutureWarning about the user's own input", FutureWarning)
            warnings.warn("`is_gradient_checkpointing` is deprecated, as a UserWarning", UserWarning)
    assert [str(w.message) for w in caught] == [
        "a FutureWarning about the user's own input",
        "`is_gradient_checkpointing` is deprecated, as a UserWarning",
    ]


def test_plain_peft_call_still_warns_where_transformers_deprecates_the_attribute():
    """The silencing is ours only: a user's own direct PEFT call sees what transformers says (when it says it)."""
    from peft import LoraConfig, get_peft_model

    model = _tiny_bert()
    if not hasattr(type(model), "is_activation_checkpointing"):
        pytest.skip("this transformers has no is_activation_checkpointing: nothing deprecated")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        get_peft_model(model, LoraConfig(target_modules=["key"]))
    assert any("is_gradient_checkpointing" in str(w.message) for w in caught)
