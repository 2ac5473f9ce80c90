"""KRAdapter on a torchao int8 weight-only base (transformers' TorchAoConfig), through PEFT's generic torchao backend.

torchao is an optional extra (`pip install 'kradapter[torchao]'`): it is not in the test extras because importing it
logs library-load warnings in every process that imports transformers, so this file skips when it is absent.
"""

import pytest
import torch
from peft import get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM, TorchAoConfig

import kradapter  # noqa: F401
from kradapter import KRAdapterConfig, quant
from kradapter.methods.kradapter.quantized import QuantizedLinear

torchao = pytest.importorskip("torchao", reason="torchao is not installed (pip install 'kradapter[torchao]')")


def test_torchao_int8_weight_only_trains_merges_and_restores(tmp_path):
    from torchao.quantization import Int8WeightOnlyConfig

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    float_model = LlamaForCausalLM(config)
    float_model.save_pretrained(tmp_path)
    quantized = LlamaForCausalLM.from_pretrained(
        tmp_path, quantization_config=TorchAoConfig(quant_type=Int8WeightOnlyConfig()), device_map="cpu"
    )
    model = get_peft_model(quantized, KRAdapterConfig(target_modules=["k_proj", "v_proj"], alpha=0.5))
    layers = quant.quantized_layers(model)
    assert len(layers) == 4 and all(type(m) is QuantizedLinear for m in layers.values())
    assert {m.quantization_backend.backend_name for m in layers.values()} == {"torchao"}

    x = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(1))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(4):
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    model.eval()
    with torch.no_grad():
        unmerged = model(x).logits

    with pytest.raises(ValueError, match=r"torchao base requantizes.*merge_requantized.*merge_to_full_precision"):
        model.merge_adapter()
    errors = quant.merge_requantized(model)
    assert errors.keys() == layers.keys() and all(0 < e.relative < 0.02 for e in errors.values())
    with torch.no_grad():
        assert 0 < (model(x).logits - unmerged).abs().max().item() < 0.05
    model.unmerge_adapter()
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, unmerged, rtol=0, atol=0)

    full = quant.merge_to_full_precision(model)
    assert not full.is_quantized and all(type(p) is torch.nn.Parameter for p in full.parameters())
    with torch.no_grad():
        torch.testing.assert_close(full(x).logits, unmerged, rtol=1e-5, atol=1e-5)
