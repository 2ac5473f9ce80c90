"""`kradapter report` analyses only weights it loaded: the model class comes from what the saved tensors need, and
an adapter whose tensors do not all land in the model is refused with their names."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from transformers import AutoModelForSequenceClassification

from kradapter import KRAdapterConfig
from kradapter.train.deltas import adapter_deltas, short_name
from kradapter.train.report import spectral_report
from recipe_fixtures import tiny_bert


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return tiny_bert(tmp_path_factory.mktemp("report"))


def _saved_from_classifier(bert, directory, config):
    """An adapter trained on a sequence classifier, saved with no task_type in its config."""
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForSequenceClassification.from_pretrained(bert, num_labels=3), config)
    model.save_pretrained(directory)
    return {short_name(k): torch.linalg.matrix_norm(v).item() for k, v in adapter_deltas(model).items()}


@pytest.mark.parametrize("method", ["kradapter", "lora"])
def test_adapter_of_a_classifier_without_task_type_reports_its_own_weights(bert, tmp_path, method):
    config = (
        KRAdapterConfig(target_modules=["key", "value"], k1=2, init_weights=False)
        if method == "kradapter"
        else LoraConfig(r=2, target_modules=["query"], init_lora_weights=False)
    )
    norms = _saved_from_classifier(bert, tmp_path / "a", config)
    report = spectral_report(tmp_path / "a")
    got = {k: row["frobenius_norm"] for k, row in report["spectral"].items()}
    assert set(got) == set(norms)
    for name, norm in norms.items():
        assert norm > 0 and got[name] == pytest.approx(norm, rel=1e-4)


def test_saved_tensors_that_fit_no_model_are_refused_with_their_names(bert, tmp_path):
    _saved_from_classifier(bert, tmp_path / "a", KRAdapterConfig(target_modules=["key"], k1=2, init_weights=False))
    weights = tmp_path / "a" / "adapter_model.safetensors"
    state = load_file(weights)
    key = sorted(state)[0]
    moved = key.replace("encoder.layer.0", "encoder.layer.7")  # a layer the model does not have
    state[moved] = state.pop(key)
    save_file(state, weights)
    with pytest.raises(ValueError, match=f"fit no model class.*{moved.replace('.', '[.]')}"):
        spectral_report(tmp_path / "a")
