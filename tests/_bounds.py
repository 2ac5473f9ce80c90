"""Tolerances for the tests' numeric comparisons, derived from the arithmetic instead of fitted to one machine.

A tolerance is a relative bound (from the dtype's unit roundoff, the length of the reductions and the number of
stages) times a magnitude computed in the test from the operands (e.g. ``operand_magnitude(h, lm_head.weight)``).
The standard results used are from Higham, *Accuracy and Stability of Numerical Algorithms* (2nd ed., 2002):
u = eps / 2 for round-to-nearest (§2.1); a dot product of length n computed in floating point in any order has
|fl(x.y) - x.y| <= gamma_n |x|.|y| with gamma_n = n u / (1 - n u) (§3.1, eq. 3.5); for a chain of stages the
first-order error is the sum of the stages' relative errors times the product of the absolute values (§3.5).

bitsandbytes (0.50) on CPU has two 4-bit forwards, picked by a CPU flag (``has_avx512bf16``, read when a
``Linear4bit`` is built): the standard one dequantizes the weight to the compute dtype (float32 here) and calls
``F.linear``; on AVX512-BF16 CPUs, inference (eval, no grad) repacks the weight and runs a kernel that rounds the
input, the NF4 code (a bfloat16 table), the block absmax, their product (the dequantized weight) and the output to
bfloat16, accumulating in float32 (kernels-community quantization-bitsandbytes, ``unpack_B`` + brgemm; the
``tinygemm`` variant applies the absmax in float32 after the block sums, one rounding fewer). Its 8-bit forward in
eval (LLM.int8(), ``MatMul8bitLt``) casts the input to float16, quantizes each row to int8 with the row's absmax
(``round(x * 127 / absmax)``), multiplies in int32 (exact) and rescales with the constant ``6.200124e-05``
(backends/default/ops.py), which is 1/127**2 * (1 + 1.8e-5).
"""

from __future__ import annotations

import torch

# bitsandbytes' int8 rescale constant against the exact 1 / 127**2 it stands for: a relative scale error.
BNB_INT8_SCALE_ERROR = abs(6.200124e-05 * 127**2 - 1.0)


def unit_roundoff(dtype: torch.dtype) -> float:
    """u: the largest relative error of rounding one real number to `dtype` (round to nearest)."""
    return torch.finfo(dtype).eps / 2


def gamma(n: int, dtype: torch.dtype = torch.float32) -> float:
    """gamma_n = n u / (1 - n u): the relative error (against sum |a_i b_i|) of a length-n dot product in `dtype`."""
    nu = n * unit_roundoff(dtype)
    if nu >= 1:
        raise ValueError(f"a reduction of length {n} in {dtype} has no error bound (n u = {nu:.3g} >= 1)")
    return nu / (1 - nu)


def float_linear(k: int, dtype: torch.dtype = torch.float32) -> float:
    """Two float computations of the same length-k product that may differ in order (a merged weight against
    base + adapter, a compiled against an eager kernel): each is within gamma_k of the exact value, plus one rounding
    for the merged weight W + Delta and one for the sum base + adapter."""
    return 2 * gamma(k, dtype) + 2 * unit_roundoff(dtype)


def bnb_4bit_cpu_float32(k: int) -> float:
    """bitsandbytes' standard CPU 4-bit forward (float32 compute) against a float32 product with the weight
    dequantized independently: one rounding of code * absmax apart, and both length-k float32 reductions."""
    return unit_roundoff(torch.float32) + 2 * gamma(k, torch.float32)


def bnb_4bit_cpu(k: int) -> float:
    """The worst of bitsandbytes' CPU 4-bit forwards against a float32 product with the dequantized weight: the
    AVX512-BF16 kernel's five bfloat16 roundings (input, NF4 code, absmax, dequantized weight, output), each a
    relative error u_bf16 of one factor of every term, compounded exactly, plus both float32 reductions."""
    u = unit_roundoff(torch.bfloat16)
    bf16_path = (1 + u) ** 5 - 1 + 2 * gamma(k, torch.float32)
    return max(bf16_path, bnb_4bit_cpu_float32(k))


def bnb_8bit_cpu(k: int) -> float:
    """bitsandbytes' CPU 8-bit inference forward against a float32 product with the dequantized weight, relative to
    ``rowmax_magnitude`` (max |x| * sum |w|): rounding x to int8 steps of absmax/127 moves each element by at most
    half a step (1/254 of the row's absmax, which outliers >= the threshold only lower), the float16 cast by u_fp16
    |x|; then the rescale constant's error, and both float32 reductions plus the rescale's three roundings."""
    u32 = unit_roundoff(torch.float32)
    return 1 / 254 + unit_roundoff(torch.float16) + BNB_INT8_SCALE_ERROR + 2 * gamma(k, torch.float32) + 3 * u32


def compose(stage_bounds) -> float:
    """The relative error of a network from its stages' relative errors e_i: prod(1 + e_i) - 1 (to first order
    their sum; the product also covers the higher-order terms, which matter once the sum nears 0.1).

    Used with the magnitude of the network's last stage, this assumes the stages in between carry a relative error
    on with gain at most 1: exact for a chain of linear maps measured componentwise (Higham §3.5), and what
    RMSNorm (error and signal divided by the same rms), softmax (a convex combination) and residual sums (errors
    add) do to first order. No safety factor: the componentwise bound already assumes every rounding error of a
    reduction has the same sign, whereas they are independent and mostly cancel."""
    total = 1.0
    for e in stage_bounds:
        total *= 1 + e
    total -= 1
    if total >= 0.5:
        raise ValueError(f"stage errors compound to {total:.3g}: too coarse for a first-order error model")
    return total


def operand_magnitude(x: torch.Tensor, w: torch.Tensor) -> float:
    """max over outputs of (|x| @ |w|^T): what the relative bounds of ``x @ w.T`` are relative to."""
    return (x.detach().double().abs() @ w.detach().double().abs().T).max().item()


def rowmax_magnitude(x: torch.Tensor, w: torch.Tensor) -> float:
    """max over rows of x and of w of max|x_row| * sum|w_row|: the magnitude of row-wise int8-quantized inputs."""
    x = x.detach().double().reshape(-1, x.shape[-1]).abs()
    return (x.max(dim=-1).values.max() * w.detach().double().abs().sum(dim=-1).max()).item()


class LastLinearInput:
    """Records the input of a linear stage (e.g. ``lm_head``) during forwards, so a test can take the magnitude of
    the network's last stage: ``with LastLinearInput(model.lm_head) as rec: model(x)``, then ``rec.magnitude()``."""

    def __init__(self, linear: torch.nn.Module):
        self.linear, self.inputs = linear, []

    def __enter__(self):
        self.handle = self.linear.register_forward_hook(lambda m, args, out: self.inputs.append(args[0].detach()))
        return self

    def __exit__(self, *exc):
        self.handle.remove()

    def magnitude(self, rowmax: bool = False) -> float:
        """The largest operand magnitude of the recorded forwards (``rowmax``: the int8 form)."""
        measure = rowmax_magnitude if rowmax else operand_magnitude
        return max(measure(x, self.linear.weight) for x in self.inputs)


def low_precision_linear(k: int, dtype: torch.dtype) -> float:
    """One float16 / bfloat16 linear stage of torch on CPU against the exact product of its float32 weight: the
    weight rounded to `dtype` once (a merged or summed weight W0 + alpha Delta W), the float32 accumulation of torch's
    reduced-precision CPU matmul (opmath), and the output rounded to `dtype` once."""
    u = unit_roundoff(dtype)
    return (1 + u) ** 2 - 1 + gamma(k, torch.float32)


def reduction_length(layer: torch.nn.Module) -> int:
    """The length of the dot products a Linear / transformers Conv1D / Conv2d computes, plus one for its bias."""
    w = layer.weight
    if isinstance(layer, torch.nn.Conv2d):
        k = w.shape[1] * w.shape[2] * w.shape[3]
    elif type(layer).__name__ == "Conv1D":  # transformers' (d_in, d_out) layout
        k = w.shape[0]
    else:
        k = w.shape[1]
    return k + (getattr(layer, "bias", None) is not None)


def weighted_stages(model: torch.nn.Module) -> list[int]:
    """`reduction_length` of every Linear / Conv1D / Conv2d in `model` (a PEFT wrapper's base layer counted once;
    the adapter's own term is a second, equally long reduction inside the same stage)."""
    kinds = (torch.nn.Linear, torch.nn.Conv2d)
    return [reduction_length(m) for m in model.modules() if isinstance(m, kinds) or type(m).__name__ == "Conv1D"]


def absolute_output(model: torch.nn.Module, *args, **kwargs) -> float:
    """The largest output of a copy of `model` whose parameters and floating inputs are replaced by their absolute
    values. For a network of linear maps (with W0 + alpha * Delta W, alpha >= 0, and Delta W a sum of products of
    the factors, as KRAdapter's U ⊙ V and Kron-LoRA's A ⊗ B1 B2 are), ReLU, mean and average pooling, this is
    componentwise at least |W_L| ... |W_1| |x|, the magnitude that a chain's rounding errors are relative to
    (Higham §3.5): |relu(a)| <= |a|, and every other step is a sum of products."""
    import copy

    twin = copy.deepcopy(model).double()  # float64: the magnitude itself is not rounded to a coarser dtype
    with torch.no_grad():
        for p in twin.parameters():
            p.abs_()
        args = [a.double().abs() if torch.is_tensor(a) and a.is_floating_point() else a for a in args]
        out = twin(*args, **kwargs)
    out = getattr(out, "logits", out)
    return out.detach().double().abs().max().item()


def network_tol(model: torch.nn.Module, x: torch.Tensor, stage=None, extra=()) -> float:
    """A bound on the difference of two evaluations of a ReLU / pooling network of linear stages (e.g. merged
    against unmerged): `stage(k)` (default ``float_linear``: both evaluations' own roundings) for each weighted
    layer of reduction length k, plus `extra` stage errors (a mean's reduction), compounded, times
    ``absolute_output``."""
    stage = stage or float_linear
    return compose([stage(k) for k in weighted_stages(model)] + list(extra)) * absolute_output(model, x)
