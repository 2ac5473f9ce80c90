"""Quiet by default: the third-party messages users cannot act on are dropped, narrowly; others still show."""

from __future__ import annotations

import logging
import subprocess
import sys
import warnings

import torch

import kradapter  # noqa: F401  (installs the bitsandbytes filter)
from kradapter._quiet import BNB_CPU_LOGGER, BNB_KERNEL_MESSAGE, KERNELS_HUB_LOGGER, KERNELS_TRUST_MESSAGE


def test_bitsandbytes_kernel_message_is_dropped_and_nothing_else(caplog):
    logger = logging.getLogger(BNB_CPU_LOGGER)
    with caplog.at_level(logging.WARNING):
        logger.warning(BNB_KERNEL_MESSAGE + ": %s. Please make sure you already `pip install kernels`", "offline")
        logger.warning("something else bitsandbytes says")
    assert [r.getMessage() for r in caplog.records] == ["something else bitsandbytes says"]


def test_kernels_trust_message_is_dropped_for_that_repository_only(caplog):
    logger = logging.getLogger(KERNELS_HUB_LOGGER)
    other = "Skipping publisher trust check for 'someone/else' because Hugging Face Hub is in offline mode."
    with caplog.at_level(logging.WARNING):
        logger.warning(KERNELS_TRUST_MESSAGE + " because Hugging Face Hub is in offline mode.")
        logger.warning(other)
    assert [r.getMessage() for r in caplog.records] == [other]


def test_first_lora_layer_raises_no_deprecation_warning():
    """PEFT >= 0.22 imports bitsandbytes at the first LoRA layer; torch's script_method deprecations stay quiet, in a
    fresh process (where nothing was imported before)."""
    code = (
        "import warnings; warnings.simplefilter('always')\n"  # shown, not raised: an error would stop the import
        "import kradapter, torch\n"
        "from peft import LoraConfig, get_peft_model\n"
        "get_peft_model(torch.nn.Sequential(torch.nn.Linear(4, 4)), LoraConfig(target_modules=['0']))\n"
        "import importlib.util, sys\n"
        "assert importlib.util.find_spec('bitsandbytes') is None or 'bitsandbytes' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stderr == "", done.stderr[-2000:]


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
