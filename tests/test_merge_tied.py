"""An adapter on a tied weight (GPT-2's wte, the same tensor as lm_head) cannot be merged: the adapted model uses
the updated embedding for its inputs and the plain one for its outputs, which one merged tensor cannot hold. The
merge is refused, naming both modules, with the model unchanged; once untied, the merge gives the adapted outputs."""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model

from _kradapter_models import tiny_gpt2
from kradapter import KRAdapterConfig

IDS = torch.arange(12).reshape(1, 12) % 64


def _logits(model):
    with torch.no_grad():
        return model(input_ids=IDS).logits


def _adapted():
    model = tiny_gpt2(seed=0)
    assert model.lm_head.weight is model.transformer.wte.weight
    torch.manual_seed(1)
    return get_peft_model(model, KRAdapterConfig(target_modules=["wte", "c_attn"], init_weights=False, alpha=0.5))


@pytest.mark.parametrize("how", ["merge_and_unload", "merge_adapter", "safe merge_and_unload"])
def test_merging_into_a_tied_embedding_is_refused_and_changes_nothing(how):
    peft_model = _adapted()
    expected = _logits(peft_model)
    weights = {n: p.detach().clone() for n, p in peft_model.named_parameters()}
    with pytest.raises(
        ValueError, match=r"cannot merge into 'transformer\.wte'.*tied to 'lm_head'.*nothing was merged"
    ):
        if how == "merge_adapter":
            peft_model.merge_adapter()
        else:
            peft_model.merge_and_unload(safe_merge=how.startswith("safe"))
    assert all(torch.equal(p, weights[n]) for n, p in peft_model.named_parameters())
    torch.testing.assert_close(_logits(peft_model), expected, rtol=0, atol=0)


def test_once_untied_the_merge_gives_the_adapted_outputs():
    peft_model = _adapted()
    gpt2 = peft_model.base_model.model
    gpt2.lm_head.weight = torch.nn.Parameter(gpt2.transformer.wte.get_base_layer().weight.detach().clone())
    expected = _logits(peft_model)
    merged = peft_model.merge_and_unload()
    # Merged: one float32 rounding of W0 + alpha * Delta W per weight instead of in the sum of the two products.
    # Worst case per logit: reduction length 32 (n_embd) x eps 1.2e-7 x |logit| <= 0.5 x ~5 such steps (2 blocks,
    # lm_head) ~ 1e-5
    torch.testing.assert_close(_logits(merged), expected, rtol=0, atol=1e-5)
