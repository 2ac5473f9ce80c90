"""The fused KRAdapter training path for Linear / Conv1D layers (and its Conv2d counterpart, at the end).

    y = x (W0 + alpha * Delta W)^T + b,    Delta W = (U ⊙ V)[:m]   (transposed when d_out < d_in)

The plain form (base(x) + x (alpha Delta W)^T) costs 5 GEMMs of N x d_out x d_in per training step and keeps
Delta W alive until backward. Here the forward is one GEMM with W0 + alpha * Delta W built on the fly; only x,
W0 (already alive as a parameter), U and V are saved. Backward rebuilds the weight for dX (GEMM 2), forms
G = alpha * dDelta W (GEMM 3, the only d_out x d_in temporary) and reduces G to dU and dV block by block:

    row r = i * k2 + j of (U ⊙ V):   dU[i] = sum_j G[r] * V[j],   dV[j] = sum_i G[r] * U[i]

Precision: W0 + alpha * Delta W is summed in float32 or better, then cast to the GEMM dtype (the autocast dtype
under autocast, else W0's), so the forward equals that of the merged layer; dU and dV are reduced in the
adapter's precision (>= float32 when the adapter is float32) from G in the GEMM dtype, as the plain path does.

`fused_adapter_name` decides when this path applies; everything else takes the plain path (DeltaLayer's). Conv2d layers
use the same conditions for a simpler form (merged_kernel_conv2d): one convolution with the summed kernel under plain
autograd, since a kernel is small next to a convolution's activations.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from ..._compat import Conv1D
from .._geometry import summed_in_float32

_HALF_OR_SINGLE = (torch.float32, torch.float16, torch.bfloat16)


def _khatri_rao_rows(t: torch.Tensor, k2: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split an (m x n) view whose row i*k2 + j pairs U[i] with V[j] into full blocks (q, k2, n) and the rest."""
    m, n = t.shape
    q = m // k2
    return t[: q * k2].view(q, k2, n), t[q * k2 :]


def fused_weight(
    weight: torch.Tensor, U: torch.Tensor, V: torch.Tensor, alpha: float, conv1d: bool, dtype: torch.dtype
) -> torch.Tensor:
    """W0 + alpha * Delta W in `dtype`, returned in nn.Linear layout (d_out x d_in) and stored like W0.

    Delta W is the one of ops.kradapter_delta (the tests hold the two equal); here it is written straight into
    the sum by addcmul, one pass over W0 and no temporary. addcmul computes in the widest input dtype (float32
    for a float32 adapter) and rounds once on writing, so the sum is exact before the cast to `dtype`. Under
    torch.compile, which traces `out=` only into contiguous tensors, the sum is stored contiguous in the Khatri-Rao
    layout (m x n) instead and returned as a view (F.linear reads either layout without a copy).
    """
    w_lin = weight.T if conv1d else weight  # Conv1D stores (d_in, d_out)
    d_out, d_in = w_lin.shape
    w_kr = w_lin if d_out >= d_in else w_lin.T  # Delta W itself, or its transpose when d_out < d_in (m x n)
    k1, k2 = U.shape[0], V.shape[0]
    if k1 * k2 < w_kr.shape[0] or U.shape[1] != w_kr.shape[1] or V.shape[1] != w_kr.shape[1]:
        raise ValueError(f"U {tuple(U.shape)} and V {tuple(V.shape)} cannot build a {d_out} x {d_in} update")
    if torch.compiler.is_compiling():
        out_kr = torch.empty(w_kr.shape, dtype=dtype, device=weight.device)
        out_lin = out_kr if d_out >= d_in else out_kr.T
    else:  # stored like W0, so the GEMM reads it exactly as the base layer reads W0
        out = torch.empty(weight.shape, dtype=dtype, device=weight.device)
        out_lin = out.T if conv1d else out
        out_kr = out_lin if d_out >= d_in else out_lin.T
    (w_blocks, w_tail), (out_blocks, out_tail) = _khatri_rao_rows(w_kr, k2), _khatri_rao_rows(out_kr, k2)
    q, r = w_blocks.shape[0], w_tail.shape[0]
    torch.addcmul(w_blocks, U[:q, None, :], V[None], value=alpha, out=out_blocks)
    if r:  # truncation to m rows: the last rows all use U[q]
        torch.addcmul(w_tail, U[q], V[:r], value=alpha, out=out_tail)
    return out_lin


def khatri_rao_grad(G: torch.Tensor, U: torch.Tensor, V: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """dU, dV for a loss whose gradient w.r.t. (U ⊙ V)[:m] is G (m x n), in U's and V's dtypes. G is consumed.

    Works through G in two blocks of rows of U, so no temporary is more than half of G, with few kernels (each
    costs a launch on a GPU and a thread barrier on a CPU); a block is cast to the adapter's dtype first (G may be
    bfloat16 under autocast).
    """
    n = G.shape[1]
    k1, k2 = U.shape[0], V.shape[0]
    dtype = torch.promote_types(U.dtype, V.dtype)
    Uc, Vc = U.to(dtype), V.to(dtype)
    blocks, tail = _khatri_rao_rows(G, k2)
    q, r = blocks.shape[0], tail.shape[0]
    dU = torch.empty(k1, n, dtype=dtype, device=G.device)
    dU[q + (1 if r else 0) :] = 0  # rows of U that never reach Delta W
    dV = None
    step = max(1, -(-q // 2))
    for s in range(0, q, step):
        e = min(s + step, q)
        block = blocks[s:e].to(dtype)  # (e - s, k2, n); a view of G (ours to overwrite) unless cast
        part = torch.sum(block * Uc[s:e, None, :], dim=0)
        dV = part if dV is None else dV.add_(part)
        torch.sum(block.mul_(Vc), dim=1, out=dU[s:e])
    if dV is None:
        dV = torch.zeros(k2, n, dtype=dtype, device=G.device)
    if r:
        tail = tail.to(dtype)  # (r, n), all in row q of U
        dV[:r].addcmul_(tail, Uc[q])
        torch.sum(tail.mul_(Vc[:r]), dim=0, out=dU[q])
    return dU.to(U.dtype), dV.to(V.dtype)


class KRAdapterLinearFunction(torch.autograd.Function):
    """y = x (W0 + alpha * Delta W)^T + b with W0 frozen; gradients for x, b, U and V."""

    @staticmethod
    def forward(ctx, x, weight, bias, U, V, alpha: float, conv1d: bool, dtype: torch.dtype):
        """One GEMM with ``W0 + alpha * Delta W`` built on the fly; saves only x, W0, U and V.

        Args:
            ctx: Autograd's context.
            x: The input.
            weight: The frozen base weight W0.
            bias: The base bias, or None.
            U: The ``(k1, n)`` factor.
            V: The ``(k2, n)`` factor.
            alpha: The update's scale.
            conv1d: Whether W0 is in transformers' Conv1D layout (in x out).
            dtype: The GEMM's dtype.

        Returns:
            ``x (W0 + alpha * Delta W)^T + b``.
        """
        with torch.autocast(x.device.type, enabled=False):  # dtypes are chosen explicitly (`dtype`)
            W = fused_weight(weight, U, V, alpha, conv1d, dtype)
            y = F.linear(x.to(dtype), W, None if bias is None else bias.to(dtype))
        # x itself (not a cast copy) is saved: it is usually alive anyway, so saving it costs nothing extra.
        ctx.save_for_backward(x, weight, U, V)
        ctx.alpha, ctx.conv1d, ctx.dtype = alpha, conv1d, dtype
        ctx.bias_dtype = None if bias is None else bias.dtype
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y):
        """Gradients for x, the bias, U and V: the weight rebuilt for dX, ``alpha dY^T X`` reduced block by block.

        Args:
            ctx: Autograd's context.
            grad_y: The output's gradient.

        Returns:
            Gradients in ``forward``'s argument order (None for W0 and the non-tensor arguments).

        Raises:
            RuntimeError: If the base weight needs a gradient (the fused path is only for frozen bases).
        """
        x, weight, U, V = ctx.saved_tensors
        need_x, need_w, need_b, need_U, need_V = ctx.needs_input_grad[:5]
        if need_w:
            raise RuntimeError("the fused KRAdapter path needs a frozen base weight; this layer should not use it")
        alpha, conv1d, dtype = ctx.alpha, ctx.conv1d, ctx.dtype
        d_in = x.shape[-1]
        d_out = grad_y.shape[-1]
        grad_x = grad_b = dU = dV = None
        with torch.autocast(x.device.type, enabled=False):
            g = grad_y.reshape(-1, d_out).to(dtype)
            if need_x:
                W = fused_weight(weight, U, V, alpha, conv1d, dtype)
                grad_x = (g @ W).reshape(x.shape).to(x.dtype)
                del W  # before the next d_out x d_in temporary
            if need_U or need_V:
                xf = x.reshape(-1, d_in).to(dtype)
                # G = d loss / d (U ⊙ V)[:m] = alpha * dDelta W, in the Khatri-Rao layout (m x n)
                G = g.T @ xf if d_out >= d_in else xf.T @ g
                dU, dV = khatri_rao_grad(G, U, V)
                del G
                dU, dV = dU.mul_(alpha), dV.mul_(alpha)
            if need_b:
                grad_b = g.sum(0).to(ctx.bias_dtype)
        return grad_x, None, grad_b, dU if need_U else None, dV if need_V else None, None, None, None


def _plain_float(t: torch.Tensor | None) -> bool:
    # Quantized or otherwise wrapped weights are tensor subclasses (bnb Params4bit, torchao tensors, DTensor).
    return t is None or (type(t) in (torch.Tensor, nn.Parameter) and t.is_floating_point() and not t.is_meta)


def gemm_dtype(x: torch.Tensor, weight: torch.Tensor) -> torch.dtype | None:
    """The dtype the base layer's GEMM runs in, or None when the fused path should not guess (mixed dtypes)."""
    device = x.device.type
    if torch.is_autocast_enabled(device):
        if x.dtype in _HALF_OR_SINGLE and weight.dtype in _HALF_OR_SINGLE:
            return torch.get_autocast_dtype(device)
        return None
    return weight.dtype if x.dtype == weight.dtype else None


def fused_adapter_name(layer, x: torch.Tensor, args: tuple, kwargs: dict) -> str | None:
    """The one adapter the fused path can run on `layer` for input x, or None for the plain path.

    Plain path: fused disabled, extra forward arguments, adapters disabled or merged, not exactly one active
    adapter, adapter dropout active, module dropout under torch.compile, a base layer with its own forward or hooks
    (quantized, offloaded, stacked
    tuners), a base weight that is not a plain float tensor or that is being trained, mixed input dtypes.
    """
    if args or kwargs or layer.disable_adapters or layer.merged:
        return None
    names = [name for name in layer.active_adapters if layer.has_adapter(name)]
    if len(names) != 1:
        return None
    name = names[0]
    if not layer.fused_path.get(name, True):  # this adapter's own `fused` setting
        return None
    if layer.training and layer.module_dropout[name] > 0 and torch.compiler.is_compiling():
        return None  # the plain path draws the skip as a factor, without breaking the graph
    dropout = layer.kradapter_dropout[name]
    if dropout.training and not isinstance(dropout, nn.Identity) and getattr(dropout, "p", 1.0) > 0:
        return None
    base = layer.base_layer
    if (
        type(base).forward
        not in (nn.Linear.forward, Conv1D.forward, nn.Conv1d.forward, nn.Conv2d.forward, nn.Conv3d.forward)
        or base._forward_hooks
        or base._forward_pre_hooks
    ):
        return None
    weight, bias = base.weight, base.bias
    if not (_plain_float(weight) and _plain_float(bias)) or weight.requires_grad or not x.is_floating_point():
        return None
    if gemm_dtype(x, weight) is None:
        return None
    return name


def fused_linear(layer, x: torch.Tensor, name: str) -> torch.Tensor:
    """Run adapter `name` of a Linear/Conv1D KRAdapter layer through the fused Function."""
    base = layer.base_layer
    return KRAdapterLinearFunction.apply(
        x,
        base.weight,
        base.bias,
        layer.kradapter_U[name],
        layer.kradapter_V[name],
        layer.scaled_alpha(name),
        isinstance(base, Conv1D),
        gemm_dtype(x, base.weight),
    )


def merged_kernel_conv2d(layer, x: torch.Tensor, name: str) -> torch.Tensor:
    """Adapter `name` of a Conv2d KRAdapter layer as one convolution with the kernel W0 + alpha * Delta W.

    The plain path runs a second full-size convolution with Delta W (5 convolutions per training step); here plain
    autograd runs one (3 per step: forward, dX, dW), and saves x, the summed kernel (the size of W0: small next to a
    convolution's activations) and U, V. The kernel is summed in float32 or better and cast once to the
    convolution's dtype, as a merge (DeltaLayer.merged_weight) would.
    """
    base = layer.base_layer
    # under autocast the convolution casts for itself
    autocast = torch.is_autocast_enabled(x.device.type)
    weight = summed_in_float32(base.weight, layer.get_delta_weight(name), cast=not autocast)
    return base._conv_forward(x, weight, base.bias)
