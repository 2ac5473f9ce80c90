"""KRAdapter on bitsandbytes 4-bit / 8-bit bases (CPU): dispatch, outputs against a dequantized reference,
QLoRA-style training with gradient checkpointing, adapter-only save/load, and the merge choices and refusals."""

import copy

import pytest
import torch
from peft import PeftModel, get_peft_model, prepare_model_for_kbit_training
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

import kradapter  # noqa: F401  (registers KRAdapter with PEFT)
from kradapter import KRAdapterConfig, quant
from kradapter.methods.kradapter import bnb as kr_bnb
from kradapter.methods.kradapter.quantized import QuantizedLinear

bnb = pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed (pip install 'kradapter[quant]')")

import _bounds as bounds  # noqa: E402
from _bnb_cpu_layout import force_cpu_layout, packed_weight_reference  # noqa: E402  (needs bitsandbytes)

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory):
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
    path = tmp_path_factory.mktemp("tiny_llama")
    LlamaForCausalLM(config).save_pretrained(path)
    return path


@pytest.fixture(autouse=True)
def cpu_layout(request, monkeypatch):
    """kind "4bit-packed": bitsandbytes behaves as on an AVX512-BF16 CPU, so the 4-bit weights get repacked at the
    first inference forward and that layout's kernel runs; every other test: as on a CPU without, so the standard
    layout is tested on AVX512-BF16 CPUs too (tests/_bnb_cpu_layout.py)."""
    callspec = getattr(request.node, "callspec", None)
    force_cpu_layout(callspec is not None and callspec.params.get("kind") == "4bit-packed", monkeypatch.setattr)


def load_quantized(path, kind):
    config = quant.bnb_config(kind.removesuffix("-packed"))
    return LlamaForCausalLM.from_pretrained(path, quantization_config=config, device_map="cpu")


def run_inference_once(model, kind):
    """One eval forward without grad: bitsandbytes repacks 4-bit weights here on an AVX512-BF16 CPU."""
    with torch.no_grad():
        model.eval()(torch.zeros(1, 4, dtype=torch.long))
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert all(kr_bnb.is_cpu_packed(m.weight) == (kind == "4bit-packed") for m in layers)


def adapted(path, kind, seed=0, alpha=0.5):
    """A quantized tiny Llama with a random (init_weights=False) adapter, so the update is not zero."""
    torch.manual_seed(seed)
    config = KRAdapterConfig(target_modules=TARGETS, alpha=alpha, init_weights=False)
    return get_peft_model(load_quantized(path, kind), config).eval()


def dequantize(layer):
    """bitsandbytes' own dequantization of a bnb linear (independent of kradapter's code)."""
    w = layer.weight
    if isinstance(layer, bnb.nn.Linear4bit) and kr_bnb.is_cpu_packed(w):
        return packed_weight_reference(w.data, w.quant_state).float()
    if isinstance(layer, bnb.nn.Linear4bit):
        return bnb.functional.dequantize_4bit(w.data, w.quant_state).float()
    scb = layer.state.SCB if layer.state.SCB is not None else w.SCB
    return bnb.functional.int8_vectorwise_dequant(w.data, scb).float()


def dequantized_reference(path, peft_model):
    """A float Llama holding the quantized model's dequantized weights and the same adapter weights."""
    reference = LlamaForCausalLM.from_pretrained(path)
    quantized = peft_model.get_base_model()
    for name, module in quantized.named_modules():
        if isinstance(module, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)):
            name = name.removesuffix(".base_layer")
            reference.get_submodule(name).weight.data = dequantize(module)
    config = copy.deepcopy(peft_model.peft_config["default"])
    reference = get_peft_model(reference, config)
    adapter = {k: v for k, v in peft_model.state_dict().items() if "kradapter_" in k}
    missing, unexpected = reference.load_state_dict(adapter, strict=False)
    assert not unexpected and not [k for k in missing if "kradapter_" in k]
    return reference.eval()


def logits_tol(model, x, stage_bound, adapted_bound=None, rowmax=False):
    """A derived bound on a logit difference (tests/_bounds.py): `stage_bound(in_features)` for each bitsandbytes
    linear, `adapted_bound(in_features)` for each adapted one, compounded, times the operand magnitude of lm_head
    (`rowmax`: the int8 form) on input `x`."""
    quantized = [m for m in model.modules() if isinstance(m, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt))]
    stages = [stage_bound(m.in_features) for m in quantized] if stage_bound else []
    if adapted_bound:
        stages += [adapted_bound(m.in_features) for m in quant.quantized_layers(model).values()]
    with torch.no_grad(), bounds.LastLinearInput(model.get_base_model().lm_head) as last:
        model(x)
    return bounds.compose(stages) * last.magnitude(rowmax=rowmax)


# Each kind's CPU forward against float32 on the dequantized weights; "4bit-packed" is the AVX512-BF16 kernel.
KIND_BOUND = {"4bit": bounds.bnb_4bit_cpu_float32, "4bit-packed": bounds.bnb_4bit_cpu, "8bit": bounds.bnb_8bit_cpu}


def packed_bytes(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.dtype in (torch.uint8, torch.int8)}


@pytest.mark.parametrize(
    "kind,layer_cls", [("4bit", kr_bnb.Linear4bit), ("4bit-packed", kr_bnb.Linear4bit), ("8bit", kr_bnb.Linear8bitLt)]
)
def test_dispatch_and_outputs_match_dequantized_reference(tiny_llama_dir, kind, layer_cls):
    model = adapted(tiny_llama_dir, kind)
    k_proj = model.get_base_model().model.layers[0].self_attn.k_proj
    assert type(k_proj) is layer_cls and (k_proj.d_out, k_proj.d_in) == (32, 64)
    assert all("kradapter_" in n for n, p in model.named_parameters() if p.requires_grad)

    x = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(1))
    reference = dequantized_reference(tiny_llama_dir, model)
    with torch.no_grad():
        got, want = model(x).logits, reference(x).logits
    assert kr_bnb.is_cpu_packed(k_proj.get_base_layer().weight) == (kind == "4bit-packed")
    with torch.no_grad():
        # The adapter's own term is exact on any base: layer output minus base output is alpha * Delta W x.
        h = torch.randn(3, 64)
        term = k_proj(h) - k_proj.get_base_layer()(h)
        torch.testing.assert_close(term, h @ k_proj.delta_matrix("default").T, rtol=1e-5, atol=1e-6)
    # 4-bit computes in float32 on dequantized weights; 8-bit also quantizes activations (LLM.int8()).
    # Both compute the adapter alike; they differ by the quantized linears' kernels (tests/_bounds.py).
    assert (got - want).abs().max().item() <= logits_tol(model, x, KIND_BOUND[kind], rowmax=kind == "8bit")


@pytest.mark.parametrize("kind", ["4bit", "4bit-packed", "8bit"])
def test_qlora_training_with_gradient_checkpointing_and_adapter_only_save_load(tiny_llama_dir, tmp_path, kind):
    torch.manual_seed(0)
    # PEFT's default (reentrant checkpointing) for 4-bit, the non-reentrant variant torch recommends for 8-bit.
    checkpointing = {} if kind.startswith("4bit") else {"gradient_checkpointing_kwargs": {"use_reentrant": False}}
    base = prepare_model_for_kbit_training(
        load_quantized(tiny_llama_dir, kind), use_gradient_checkpointing=True, **checkpointing
    )
    model = get_peft_model(base, KRAdapterConfig(target_modules=["k_proj", "v_proj"], alpha=1.0))
    # what transformers' is_activation_checkpointing (is_gradient_checkpointing before 5.23) reports
    assert any(getattr(m, "gradient_checkpointing", False) for m in model.get_base_model().modules())
    run_inference_once(model, kind)  # training after inference: on AVX512-BF16 CPUs the 4-bit weights are repacked
    x = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(2))

    # Checkpointing recomputes the forward in backward: the gradients must equal those of a plain backward.
    model.train()
    model(input_ids=x, labels=x).loss.backward()
    grads_gc = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    base = model.get_base_model()
    # transformers 5.23 renamed gradient_checkpointing_enable/disable (the old names kept as deprecated aliases)
    disable = getattr(base, "activation_checkpointing_disable", None) or base.gradient_checkpointing_disable
    enable = getattr(base, "activation_checkpointing_enable", None) or base.gradient_checkpointing_enable
    disable()
    model(input_ids=x, labels=x).loss.backward()
    for n, p in model.named_parameters():
        if p.requires_grad:
            torch.testing.assert_close(p.grad, grads_gc[n])
    assert any(g.abs().sum() > 0 for n, g in grads_gc.items() if "kradapter_U" in n)
    model.zero_grad()
    enable(checkpointing.get("gradient_checkpointing_kwargs"))
    # training went back to the standard layout on every 4-bit layer, adapted or not (a packed one passes no gradient)
    assert not any(kr_bnb.is_cpu_packed(m.weight) for m in model.modules() if isinstance(m, bnb.nn.Linear4bit))
    before = packed_bytes(model)

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(6):
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05, losses
    after = packed_bytes(model)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)  # base frozen

    model.save_pretrained(tmp_path)
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "adapter_model.safetensors")
    assert saved and all("kradapter_" in k for k in saved)
    model.eval()
    reloaded = PeftModel.from_pretrained(load_quantized(tiny_llama_dir, kind), tmp_path).eval()
    expected = kr_bnb.Linear4bit if kind.startswith("4bit") else kr_bnb.Linear8bitLt
    assert type(reloaded.get_base_model().model.layers[1].self_attn.v_proj) is expected
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x).logits, model(x).logits, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["4bit", "4bit-packed", "8bit"])
def test_merge_needs_a_choice_and_changes_nothing_without_one(tiny_llama_dir, kind):
    model = adapted(tiny_llama_dir, kind)
    run_inference_once(model, kind)
    before = packed_bytes(model)
    for merge in (model.merge_adapter, model.merge_and_unload, lambda: model.merge_and_unload(safe_merge=True)):
        with pytest.raises(
            ValueError,
            match=rf"'model\.layers\.0\.self_attn\.q_proj'.*bnb {kind.removesuffix('-packed')}.*merge_requantized.*merge_to_full_precision",
        ):
            merge()
    assert all(torch.equal(before[k], v) for k, v in packed_bytes(model).items())
    assert not any(m.merged for m in quant.quantized_layers(model).values())


@pytest.mark.parametrize("kind", ["4bit", "4bit-packed", "8bit"])
def test_merge_requantized_reports_the_measured_error_and_unmerge_restores_exactly(tiny_llama_dir, kind):
    model = adapted(tiny_llama_dir, kind)
    layers = quant.quantized_layers(model)
    x = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        unmerged = model(x).logits
    before = packed_bytes(model)
    exact = {n: dequantize(m.get_base_layer()) + m.delta_matrix("default").detach() for n, m in layers.items()}

    errors = quant.merge_requantized(model)
    assert errors.keys() == layers.keys()
    for name, layer in layers.items():
        merged = dequantize(layer.get_base_layer())
        err = merged - exact[name]
        update = layer.delta_matrix("default").detach()
        assert errors[name].max_abs == pytest.approx(err.abs().max().item(), rel=1e-4)
        assert errors[name].of_update == pytest.approx((err.norm() / update.norm()).item(), rel=1e-4)
        # Requantizing loses something, and 4-bit far more than 8-bit; neither writes garbage.
        assert 0 < errors[name].relative < (0.2 if kind.startswith("4bit") else 0.02)
    with torch.no_grad():
        merged_out = model(x).logits
    assert 0 < (merged_out - unmerged).abs().max().item() < (0.2 if kind.startswith("4bit") else 0.05)

    model.unmerge_adapter()
    assert all(torch.equal(before[k], v) for k, v in packed_bytes(model).items())
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, unmerged, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["4bit", "4bit-packed", "8bit"])
def test_merge_to_full_precision_copy(tiny_llama_dir, kind):
    model = adapted(tiny_llama_dir, kind)
    run_inference_once(model, kind)
    before = packed_bytes(model)
    x = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(4))
    full = quant.merge_to_full_precision(model)
    assert not any(isinstance(m, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt, QuantizedLinear)) for m in full.modules())
    assert all(p.dtype == torch.float32 for p in full.parameters()) and not full.is_quantized
    assert "quantization_config" not in full.config.to_dict()
    # The quantized model is untouched and still adapted.
    assert all(torch.equal(before[k], v) for k, v in packed_bytes(model).items())
    assert not any(m.merged for m in quant.quantized_layers(model).values())
    with torch.no_grad():
        want = dequantized_reference(tiny_llama_dir, model)(x).logits
        # Same float32 weights; the merged W + Delta W against W x + Delta W x in each adapted layer.
        tol = logits_tol(model, x, None, bounds.float_linear)
        assert (full(x).logits - want).abs().max().item() <= tol


def test_requantized_merge_then_unload_gives_a_merged_quantized_model(tiny_llama_dir):
    model = adapted(tiny_llama_dir, "8bit")
    x = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        unmerged = model(x).logits
    stages = logits_tol  # the stages' relative errors, relative to lm_head's int8-form magnitude (rowmax)
    layers = quant.quantized_layers(model)
    exact = {
        n: dequantize(m.get_base_layer()) + m.get_delta_weight("default").detach().float() for n, m in layers.items()
    }
    errors = quant.merge_requantized(model)
    for name, layer in layers.items():  # exactly bitsandbytes' own quantization of the float32 merge
        want = bnb.nn.Int8Params(exact[name].clone(), requires_grad=False, has_fp16_weights=False).to("cpu")
        got = layer.get_base_layer()
        assert torch.equal(got.weight.data, want.data) and torch.equal(got.weight.SCB, want.SCB), name
    # Each adapted layer: the int8 forward on W_deq and on the requantized W' (bnb_8bit_cpu each), the adapter's
    # float32 term (float_linear), and W' - (W_deq + alpha Delta W): bitsandbytes rounds the merged weight to
    # float16 (u16 |T| <= u16 (1 + 2 u16) SCB', SCB' the float16 row absmax), then to int8 steps of SCB'/127 (half a
    # step), so sum|x| SCB' s <= max|x| k SCB' s against the rowmax magnitude max|x| sum|W'_row| (tests/_bounds.py).
    u16 = bounds.unit_roundoff(torch.float16)
    step = 1 / 254 + u16 * (1 + 2 * u16)
    requant = {}
    for name, layer in quant.quantized_layers(model).items():
        w = dequantize(layer.get_base_layer()).double()
        scb = w.abs().max(dim=1).values
        requant[name] = (layer.in_features * scb * step / w.abs().sum(dim=1)).max().item()
        assert errors[name].max_abs <= (scb * step).max().item()  # the measured merge error obeys it too
    per_layer = iter(requant.values())

    def adapted_bound(k):
        return 2 * bounds.bnb_8bit_cpu(k) + bounds.float_linear(k) + next(per_layer)

    tol = stages(model, x, None, adapted_bound, rowmax=True)
    merged = model.unload()
    assert isinstance(merged.model.layers[0].self_attn.k_proj, bnb.nn.Linear8bitLt)
    assert not any(isinstance(m, QuantizedLinear) for m in merged.modules())
    with torch.no_grad():
        assert (merged(x).logits - unmerged).abs().max().item() <= tol


def test_kradapter_reads_the_cpu_packed_layout_exactly_and_restores_it_losslessly(tiny_llama_dir):
    model = adapted(tiny_llama_dir, "4bit")
    layer = model.get_base_model().model.layers[1].self_attn.k_proj
    base = layer.get_base_layer()
    weight = base.weight
    # What bitsandbytes does at the first eval forward on AVX512-BF16 CPUs (done by hand: works on any CPU).
    weight.data, weight.quant_state = bnb.functional._convert_weight_packed_for_cpu(weight.data, weight.quant_state)
    packed = packed_weight_reference(weight.data, weight.quant_state)
    torch.testing.assert_close(layer.get_base_weight(), packed, rtol=0, atol=0)
    kr_bnb.restore_standard_layout_(base)
    assert not kr_bnb.is_cpu_packed(weight)
    torch.testing.assert_close(bnb.functional.dequantize_4bit(weight.data, weight.quant_state), packed, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["4bit-packed"])
def test_saving_after_a_repack_keeps_the_base_weights(tiny_llama_dir, tmp_path, kind):
    """Training stores the 4-bit weights in the standard layout with un-nested scales; the next inference forward
    repacks them; saving (state_dict) then unpacks them, and bitsandbytes' own unpacking mis-orders un-nested scales,
    in place (an error near 1 in weights of size ~0.1). kradapter unpacks them itself first (bnb.watch_cpu_layout)."""
    model = adapted(tiny_llama_dir, kind)
    x = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(6))
    model.train()
    model(input_ids=x, labels=x).loss.backward()
    model.eval()
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    with torch.no_grad():
        logits = model(x).logits
    assert all(kr_bnb.is_cpu_packed(m.weight) for m in layers)
    weights = [dequantize(m) for m in layers]
    model.save_pretrained(tmp_path)
    model.state_dict()
    for layer, weight in zip(layers, weights):
        torch.testing.assert_close(dequantize(layer), weight, rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, logits, rtol=0, atol=0)


class Int8Linear(nn.Linear):
    """A quantized linear PEFT does not know: int8 weight, dequantized on the fly."""

    def __init__(self, d_in, d_out):
        super().__init__(d_in, d_out)
        scale = self.weight.detach().abs().max() / 127
        self.register_buffer("scale", scale)
        self.weight = nn.Parameter(torch.round(self.weight.detach() / scale).to(torch.int8), requires_grad=False)

    def forward(self, x):
        return nn.functional.linear(x, self.weight.float() * self.scale, self.bias)


def test_unknown_quantized_base_trains_but_refuses_to_merge():
    torch.manual_seed(0)
    net = nn.Sequential(Int8Linear(16, 8), nn.ReLU(), nn.Linear(8, 2))
    model = get_peft_model(net, KRAdapterConfig(target_modules=["0"], alpha=1.0))
    assert isinstance(model.base_model.model[0], QuantizedLinear)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    x = torch.randn(8, 16)
    model(x).pow(2).sum().backward()
    optimizer.step()
    assert model.base_model.model[0].kradapter_U["default"].abs().sum() > 0
    weight = net[0].weight.detach().clone()
    for merge in (model.merge_adapter, model.merge_and_unload, lambda: quant.merge_requantized(model)):
        with pytest.raises(
            ValueError, match=r"cannot merge KRAdapter into '0'.*unrecognised Int8Linear.*cannot be dequantized"
        ):
            merge()
    with pytest.raises(ValueError, match=r"'0'.*cannot be dequantized"):
        quant.merge_to_full_precision(model)
    assert torch.equal(model.base_model.model[0].get_base_layer().weight, weight)


def test_missing_backend_gives_one_clear_error(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a)
    )
    with pytest.raises(ImportError, match=r"4bit quantization needs the 'bitsandbytes' package.*kradapter\[quant\]"):
        quant.bnb_config("4bit")
    with pytest.raises(ValueError, match=r"quantize='3bit'.*\['4bit', '8bit'\]"):
        quant.bnb_config("3bit")


def test_train_quantize_bad_input_is_one_clear_error(tmp_path, monkeypatch, capsys):
    import importlib.util

    from kradapter.cli import main

    base = ["train", "--output-dir", str(tmp_path / "run"), "--quiet"]
    assert main([*base, "--task", "text", "--quantize", "4bit"]) == 2
    assert capsys.readouterr().err.strip() == (
        "kradapter train: error: --quantize applies to the causal-LM task 'commonsense', not 'text'"
    )
    assert main([*base, "--task", "commonsense", "--method", "full", "--quantize", "8bit"]) == 2
    assert "full fine-tuning cannot train quantized weights" in capsys.readouterr().err
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real(name, *a)
    )
    assert main([*base, "--task", "commonsense", "--quantize", "4bit"]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("kradapter train: error: 4bit quantization needs the 'bitsandbytes' package") and "\n" not in err
    )
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("kind", ["4bit", "4bit-packed"])
def test_kradapter_train_quantize_4bit_in_either_cpu_layout(tmp_path, kind):
    """`kradapter train --quantize 4bit` evaluates the base before training (zero-shot): on AVX512-BF16 CPUs that
    made bitsandbytes repack the tiny model's 4-bit weights, and its repack crashes on layers with fewer inputs than
    a quantization block ("shape '[32, 0]' is invalid for input of size 16", the CI failure). kradapter keeps such
    layers from the repack (bnb.watch_cpu_layout); training after a repack is test_qlora_training_...[4bit-packed]."""
    import json

    from kradapter.cli import main
    from recipe_fixtures import commonsense_data, tiny_llama

    args = [
        "train",
        "--task",
        "commonsense",
        "--model",
        tiny_llama(tmp_path),
        "--output-dir",
        str(tmp_path / "run"),
        "--max-steps",
        "3",
        "--batch-size",
        "4",
        "--logging-steps",
        "1",
        "--eval-batch-size",
        "16",
        "--max-new-tokens",
        "4",
        "--quiet",
        "--quantize",
        "4bit",
    ]
    for d in commonsense_data(tmp_path):
        args += ["--data", d]
    assert main(args) == 0
    result = json.loads((tmp_path / "run" / "seeds" / "seed-0" / "result.json").read_text())
    losses = [h["loss"] for h in result["train_loss_history"]]
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
