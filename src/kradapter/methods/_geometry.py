"""How an update matrix sits in a base layer's weight: the shapes every adapter method of ours shares.

A method computes its update as a (d_out x d_in) matrix; nn.Linear stores its weight that way, transformers' Conv1D
(GPT-2 style) stores the transpose, and a Conv2d kernel (out, in/groups, kh, kw) is that matrix reshaped. Budget,
train and the layers all read shapes from here.
"""

from __future__ import annotations

import math
from typing import cast

import torch
from torch import nn

from .._compat import Conv1D

# Convolutions whose kernel (out, in/groups, *k) flattens to an out x (in/groups * prod(k)) matrix.
CONV_TYPES = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def base_weight(layer: nn.Module) -> torch.Tensor:
    """``layer.weight``, typed: nn.Module's attribute lookup says ``Tensor | Module``, and every layer type we adapt
    (Linear, Conv1D, Conv, Embedding, a quantized linear's parameter subclass) holds a tensor there."""
    return cast(torch.Tensor, layer.weight)


def weight_geometry(base_layer: nn.Module) -> tuple[int, int]:
    """(d_out, d_in) of the matrix the update acts on; a Conv1d/2d/3d kernel is flattened to out x (in/groups * prod
    kernel), an nn.Embedding's is its weight (num_embeddings x embedding_dim), an nn.MultiheadAttention's is its
    packed in_proj_weight (3 embed_dim x embed_dim; its out_proj is a Linear of its own)."""
    if isinstance(base_layer, nn.MultiheadAttention):
        d_out, d_in = base_layer.in_proj_weight.shape
        return d_out, d_in
    w = base_weight(base_layer)
    if isinstance(base_layer, Conv1D):  # GPT-2 style: weight stored as (d_in, d_out)
        return w.shape[1], w.shape[0]
    if isinstance(base_layer, CONV_TYPES):
        return w.shape[0], math.prod(w.shape[1:])
    if isinstance(base_layer, nn.Embedding):
        return w.shape[0], w.shape[1]
    if isinstance(base_layer, nn.Linear):
        return base_layer.out_features, base_layer.in_features
    raise TypeError(f"no KRAdapter geometry for {type(base_layer).__name__}")


def to_weight_layout(base_layer: nn.Module, delta: torch.Tensor) -> torch.Tensor:
    """A (d_out x d_in) update laid out like ``base_layer.weight``: transposed for Conv1D, a kernel for Conv2d."""
    if isinstance(base_layer, Conv1D):
        return delta.T
    if isinstance(base_layer, CONV_TYPES):
        return delta.reshape(base_weight(base_layer).shape)
    return delta


def to_matrix_layout(base_layer: nn.Module, weight_like: torch.Tensor) -> torch.Tensor:
    """The inverse of ``to_weight_layout``: a tensor laid out like ``base_layer.weight`` as its (d_out x d_in)
    matrix (Conv1D transposed back, a convolution kernel flattened to out x (in/groups * prod(k)))."""
    if isinstance(base_layer, Conv1D):
        return weight_like.T
    if isinstance(base_layer, CONV_TYPES):
        return weight_like.reshape(weight_like.shape[0], -1)
    return weight_like


# Base layers whose additive delta PEFT's convert_to_lora turns into correct LoRA factors: it takes the SVD of the
# delta as one matrix and names the factors lora_A.weight / lora_B.weight, which is LoRA's layout for these (a
# Conv1D's transpose included; nn.MultiheadAttention's in_proj as LoRA's MHA layer holds it). A convolution kernel
# (4-D) and an embedding (LoRA names its factors lora_embedding_A/B) need `kradapter convert`.
PEFT_CONVERTIBLE_TYPES = (nn.Linear, Conv1D, nn.MultiheadAttention)


def summed_in_float32(weight: torch.Tensor, delta: torch.Tensor, sign: float = 1.0, cast: bool = True) -> torch.Tensor:
    """W +/- Delta summed in float32 or better (so a low-precision update never rounds W), in W's dtype when cast.

    The one accumulation every merge, unmerge and summed-kernel forward uses; differentiable in delta.
    """
    compute = torch.promote_types(torch.promote_types(weight.dtype, delta.dtype), torch.float32)
    total = torch.add(weight.to(compute), delta.to(device=weight.device, dtype=compute), alpha=sign)
    return total.to(weight.dtype) if cast else total
