"""torch.compile with fullgraph=True on KRAdapter layers: no graph breaks (torch._dynamo.explain), and compiled
outputs and gradients equal to eager, for the fused and plain paths in every orientation (d_out > d_in, d_out < d_in,
square, truncated), transformers' Conv1D and Conv2d, in training and inference; and a tiny Llama with q/k/v/o adapted.
The cheap "aot_eager" backend traces forward and backward as inductor would (inductor compiles C++ and takes over a
minute on 2 cores: benchmarks/compile_step.py runs it and checks it against eager)."""

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers.pytorch_utils import Conv1D

import _bounds as bounds
from kradapter import KRAdapterConfig
from kradapter.methods.kradapter.layer import Conv2d, Linear

FUSED_NODE = "KRAdapterLinearFunctionBackward"


def make_layer(kind: str, d_in: int, d_out: int, fused: bool, seed: int = 0, **kwargs) -> nn.Module:
    torch.manual_seed(seed)
    if kind == "conv2d":
        base = nn.Conv2d(d_in, d_out, kernel_size=3, padding=1)
        layer_cls = Conv2d
    else:
        base = Conv1D(d_out, d_in) if kind == "conv1d" else nn.Linear(d_in, d_out)
        layer_cls = Linear
    return layer_cls(
        base.requires_grad_(False),
        "default",
        k1=kwargs.pop("k1", "sqrt"),
        alpha=0.7,
        init_weights=False,
        fused=fused,
        **kwargs,
    )


def make_input(kind: str, d_in: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (2, d_in, 5, 6) if kind == "conv2d" else (2, 3, d_in)
    return torch.randn(*shape, generator=g)


def run(fn, layer, x, train: bool):
    """Output and, in training, the gradients of x, U and V for the loss sum(y^2)."""
    params = [layer.kradapter_U["default"], layer.kradapter_V["default"]]
    if not train:
        with torch.no_grad():
            return [fn(x)]
    x = x.clone().requires_grad_()
    for p in params:
        p.grad = None
    y = fn(x)
    y.square().sum().backward()
    return [y.detach(), x.grad, *(p.grad.clone() for p in params)]


def absolute_run(layer, x, train: bool) -> list[torch.Tensor]:
    """`run` on a float64 twin with |parameters| and |x|: componentwise at least the sum of |terms| of each output
    and gradient (every one is a sum of products of x, W0, b, U, V, alpha and 2 y), what their rounding errors are
    relative to (tests/_bounds.py)."""
    twin = copy.deepcopy(layer).double()
    with torch.no_grad():
        for p in twin.parameters():
            p.abs_()
    return run(twin, twin, x.double().abs(), train)


def chain_length(layer, x: torch.Tensor) -> int:
    """Roundings a term of any output or gradient passes through, in any association: the sums over the input
    features (k_in), the output features (k_out, the input gradient's reduction) and the positions (n_pos, the
    factor gradients' reduction), plus at most 8 products and scalings (u v, alpha, the base + adapter sum, 2 y)."""
    k_in = bounds.reduction_length(layer.base_layer)
    kernel = (k_in - 1) // layer.base_layer.weight.shape[1] if isinstance(layer.base_layer, nn.Conv2d) else 1
    d_out = layer.base_layer.weight.shape[0] if not isinstance(layer.base_layer, Conv1D) else layer.base_layer.nf
    n_pos = x.numel() // (x.shape[1] if x.dim() == 4 else x.shape[-1])
    return k_in + d_out * kernel + n_pos + 8


CASES = [
    ("linear", 12, 20, {}),  # d_out > d_in
    ("linear", 20, 12, {}),  # d_out < d_in (k_proj / v_proj under grouped-query attention)
    ("linear", 16, 16, {}),  # square
    ("linear", 30, 7, {"k1": 5}),  # truncated and transposed
    ("conv1d", 24, 40, {"k1": 6}),
    ("conv1d", 40, 24, {"k1": 6}),
    ("conv2d", 6, 10, {}),
    ("conv2d", 12, 4, {}),  # flattened kernel 4 x 108: transposed
]


@pytest.mark.parametrize("train", [True, False], ids=["train", "infer"])
@pytest.mark.parametrize("fused", [True, False], ids=["fused", "plain"])
@pytest.mark.parametrize("kind, d_in, d_out, kwargs", CASES)
def test_layer_compiles_without_graph_breaks_and_matches_eager(kind, d_in, d_out, kwargs, fused, train):
    layer = make_layer(kind, d_in, d_out, fused, **kwargs).train(train)
    x = make_input(kind, d_in)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(layer)(x)
    assert explained.graph_break_count == 0, [r.reason for r in explained.break_reasons]
    if kind != "conv2d" and train:  # the path under test is the one taken
        y = layer(x.clone().requires_grad_())
        assert (type(y.grad_fn).__name__ == FUSED_NODE) == fused
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    # Compiled and eager may sum in different orders (the fused path does): each within gamma_L of the exact value.
    rel = 2 * bounds.gamma(chain_length(layer, x))
    for got, want, mag in zip(
        run(compiled, layer, x, train), run(layer, layer, x, train), absolute_run(layer, x, train)
    ):
        assert torch.all((got - want).abs().double() <= rel * mag)


def test_module_dropout_compiles_without_graph_breaks_and_skips_the_adapter():
    layer = make_layer("linear", 20, 12, fused=True, module_dropout=0.5).train()
    x = make_input("linear", 20)
    torch._dynamo.reset()
    assert torch._dynamo.explain(layer)(x).graph_break_count == 0
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    with torch.no_grad():
        base, full = layer.base_layer(x), layer.eval()(x)
        mag = absolute_run(layer, x, train=False)[0]
        layer.train()
        torch.manual_seed(0)
        outs = [compiled(x) for _ in range(40)]
    skipped = sum(torch.equal(y, base) for y in outs)
    rel = 2 * bounds.gamma(chain_length(layer, x))  # compiled train path against eager eval path, as above
    assert all(torch.equal(y, base) or torch.all((y - full).abs().double() <= rel * mag) for y in outs)
    assert 5 < skipped < 35  # p = 0.5 over 40 draws


def test_adapter_dropout_and_merged_layers_compile_without_graph_breaks():
    layer = make_layer("linear", 20, 12, fused=True, dropout=0.2).train()  # dropout: the plain path
    x = make_input("linear", 20)
    torch._dynamo.reset()
    assert torch._dynamo.explain(layer)(x).graph_break_count == 0
    layer.eval().merge()
    torch._dynamo.reset()
    assert torch._dynamo.explain(layer)(x).graph_break_count == 0
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(layer, backend="aot_eager", fullgraph=True)(x), layer(x))


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
    )  # k_proj, v_proj: 32 -> 16 (d_out < d_in)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg)


QKVO = ["q_proj", "k_proj", "v_proj", "o_proj"]


def test_tiny_llama_with_qkvo_adapted_has_no_graph_breaks_in_training_and_inference():
    ids = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(0))
    breaks = {}  # the plain path: the layer-level cases above
    for name, config, modes in (
        ("kradapter", KRAdapterConfig(target_modules=QKVO, init_weights=False), ("train", "infer")),
        ("lora", LoraConfig(target_modules=QKVO, r=2), ("train",)),
    ):
        model = get_peft_model(tiny_llama(), config)
        for mode in modes:
            torch._dynamo.reset()
            if mode == "train":
                explained = torch._dynamo.explain(lambda i: model.train()(input_ids=i, labels=i).loss)(ids)
            else:
                with torch.no_grad():
                    explained = torch._dynamo.explain(lambda i: model.eval()(input_ids=i).logits)(ids)
            breaks[name, mode] = explained.graph_break_count
    assert set(breaks.values()) == {0}, breaks


def test_tiny_llama_compiled_training_step_equals_eager():
    ids = torch.randint(0, 64, (2, 9), generator=torch.Generator().manual_seed(0))
    model = get_peft_model(tiny_llama(), KRAdapterConfig(target_modules=QKVO, init_weights=False)).train()
    params = [p for p in model.parameters() if p.requires_grad]
    results = []
    for fn in (torch.compile(model, backend="aot_eager", fullgraph=True), model):
        for p in params:
            p.grad = None
        loss = fn(input_ids=ids, labels=ids).loss
        loss.backward()
        results.append([loss.detach(), *(p.grad.clone() for p in params)])
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
