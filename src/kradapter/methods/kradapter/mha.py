"""KRAdapter around nn.MultiheadAttention (open_clip's CLIP and torch's Transformer layers use it), as PEFT's LoRA:
both its packed input projection and its output projection are adapted.

    in_proj_weight (3E x E) + alpha * Delta W_in,   out_proj.weight (E x E) + alpha * Delta W_out

nn.MultiheadAttention never calls its projections as modules: it hands in_proj_weight and out_proj.weight to
F.multi_head_attention_forward. So the update cannot be added to a projection's output. This layer keeps the
in-projection update itself (kradapter_U / kradapter_V, shaped for 3E x E) and wraps out_proj in a KRAdapter Linear
that holds the output-projection update (PEFT saves, loads, switches and deletes both as usual). The forward runs the
base module with both weights replaced by W0 + alpha * Delta W through torch.func.functional_call: nothing of the base
is mutated, gradients reach U and V, and every argument (masks, need_weights, batch_first, ...) is the base's own.

Code that reads the attention's weights itself instead of calling it (nn.TransformerEncoderLayer's inference fast
path) is steered off that path while an unmerged update is live. Adapter input dropout does not apply here (the
update acts through the weights, as in a merged layer); module dropout
does. Mixed-adapter batches are refused. Only packed projections (kdim == vdim == embed_dim) are supported.
"""

from __future__ import annotations

import warnings
from typing import Any, cast

import torch
from torch import nn
from torch.func import functional_call

from ..._compat import check_adapters_to_merge
from .._geometry import base_weight, summed_in_float32
from .layer import KRAdapterLayer, Linear


class OutProjection(Linear):
    """The out_proj of an adapted nn.MultiheadAttention. Merged and unmerged only by that layer, which merges both
    projections together; PEFT's own calls (it visits every adapter layer) are no-ops here."""

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """A no-op: the attention layer merges both projections together (``MultiheadAttention.merge``)."""

    def unmerge(self) -> None:
        """A no-op: the attention layer unmerges both projections together (``MultiheadAttention.unmerge``)."""


def mha_blocker(base: nn.Module) -> str | None:
    """Why this nn.MultiheadAttention cannot take a KRAdapter, or None."""
    if not base._qkv_same_embed_dim:
        return (
            "an nn.MultiheadAttention with kdim/vdim != embed_dim has separate q/k/v weights; "
            "only packed in_proj is supported"
        )
    return None


def out_proj_owner(modules: dict[str, nn.Module], key: str) -> str | None:
    """The name of the nn.MultiheadAttention whose out_proj the module ``key`` is, or None.

    Args:
        modules: The model's ``dict(named_modules())``.
        key: A module name.
    """
    owner, _, child = key.rpartition(".")
    return owner if child == "out_proj" and isinstance(modules.get(owner), nn.MultiheadAttention) else None


def out_proj_target_error(key: str, owner: str) -> ValueError:
    """The one error for a target that is an attention's out_proj: nn.MultiheadAttention hands out_proj.weight to
    F.multi_head_attention_forward and never calls out_proj, so an adapter wrapped around it would train and never
    act (PEFT's LoRA creates such dead adapters silently)."""
    return ValueError(
        f"module '{key}' is the out_proj of the nn.MultiheadAttention '{owner}', which reads out_proj.weight itself "
        f"and never calls out_proj: an adapter there would never act. Target the attention module '{owner}' instead "
        "(KRAdapter adapts its in_proj and out_proj), with a target list or regex that leaves its out_proj out "
        "(for 'all-linear': name the targets, e.g. the attention modules and the MLP linears)"
    )


def _of_base(name: str) -> property:
    def read(self: MultiheadAttention) -> Any:
        return getattr(self.get_base_layer(), name)

    read.__doc__ = f"The wrapped nn.MultiheadAttention's ``{name}``."
    return property(read)


class MultiheadAttention(nn.Module, KRAdapterLayer):
    """KRAdapter around nn.MultiheadAttention: its packed in_proj_weight (3E x E) gets this layer's update and its
    out_proj (E x E) becomes an [`OutProjection`][kradapter.methods.kradapter.mha.OutProjection] holding its own;
    the forward runs the base module with both weights replaced by W0 + alpha * Delta W.

    Args:
        base_layer: The nn.MultiheadAttention (packed projections: kdim == vdim == embed_dim).
        adapter_name: The first adapter's name.
        **kwargs: Its settings (``update_layer``'s), used for both projections.

    Raises:
        ValueError: If the attention has separate q/k/v weights.
    """

    def __init__(self, base_layer: nn.Module, adapter_name: str, **kwargs) -> None:
        super().__init__()
        KRAdapterLayer.__init__(self, base_layer)
        mha = self._attention
        if (reason := mha_blocker(mha)) is not None:
            raise ValueError(reason)
        # add_module: the same replacement as attribute assignment; out_proj's annotation is a plain Linear
        mha.add_module("out_proj", OutProjection(mha.out_proj, adapter_name, **kwargs))
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, **kwargs)

    @property
    def _attention(self) -> nn.MultiheadAttention:
        """The wrapped nn.MultiheadAttention (the model builds this layer only around one)."""
        return cast(nn.MultiheadAttention, self.get_base_layer())

    @property
    def out_proj_layer(self) -> OutProjection:
        """The KRAdapter Linear this layer put in place of the attention's out_proj."""
        return cast(OutProjection, self._attention.out_proj)

    # Code around an attention module reads its attributes (nn.TransformerEncoderLayer: batch_first, in_proj_weight,
    # out_proj.weight, ... for its fast-path checks): those of the base module.
    embed_dim = _of_base("embed_dim")
    kdim = _of_base("kdim")
    vdim = _of_base("vdim")
    num_heads = _of_base("num_heads")
    dropout = _of_base("dropout")
    batch_first = _of_base("batch_first")
    head_dim = _of_base("head_dim")
    in_proj_weight = _of_base("in_proj_weight")
    in_proj_bias = _of_base("in_proj_bias")
    bias_k = _of_base("bias_k")
    bias_v = _of_base("bias_v")
    add_zero_attn = _of_base("add_zero_attn")

    @property
    def _qkv_same_embed_dim(self) -> bool:
        # nn.TransformerEncoderLayer's inference fast path reads in_proj_weight itself and never calls this module, so
        # it would drop an unmerged update; it checks this flag first, so while an update is live, say False.
        applies = not (self.disable_adapters or self.merged) and any(self.has_adapter(n) for n in self.active_adapters)
        return False if applies else self._attention._qkv_same_embed_dim

    @property
    def out_proj(self) -> nn.Module:
        """The attention's original output projection (the base layer of ``out_proj_layer``)."""
        return self.out_proj_layer.get_base_layer()

    def merge_masks(self, *args, **kwargs):
        """The wrapped attention's ``merge_masks`` (nn.TransformerEncoderLayer calls it)."""
        return self._attention.merge_masks(*args, **kwargs)

    def update_layer(self, adapter_name: str, *args: Any, **kwargs: Any) -> None:
        """Add adapter `adapter_name` to both projections, with the same settings (``KRAdapterLayer.update_layer``)."""
        super().update_layer(adapter_name, *args, **kwargs)
        if not self.out_proj_layer.has_adapter(adapter_name):
            self.out_proj_layer.update_layer(adapter_name, *args, **kwargs)

    # The base "weight" of this layer is the packed input projection.
    def get_base_weight(self) -> torch.Tensor:
        """The packed input projection's weight (3E x E), the weight this layer's own update acts on."""
        return self._attention.in_proj_weight.data

    # --- merge / unmerge: both projections -------------------------------------------------------------------------
    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        """Merge the adapters into both projections' weights, summed in float32.

        Args:
            safe_merge: Check both merged weights for NaN/Inf before either changes.
            adapter_names: The adapters to merge (default: the active ones).

        Raises:
            ValueError: With safe_merge, if a merged weight is not finite; nothing is merged then.
        """
        adapter_names = [n for n in check_adapters_to_merge(self, adapter_names) if self.has_adapter(n)]
        if not adapter_names:
            return
        mha = self._attention
        new_weight = mha.in_proj_weight.data
        for name in adapter_names:
            new_weight = self.merged_weight(name, new_weight)
            if safe_merge and not torch.isfinite(new_weight).all():
                raise ValueError(f"merging adapter '{name}' gives NaN/Inf weights; nothing was merged")
        if safe_merge:  # the output projection too, before either weight changes
            out_weight = base_weight(self.out_proj_layer.get_base_layer()).data
            for name in adapter_names:
                out_weight = self.out_proj_layer.merged_weight(name, out_weight)
                if not torch.isfinite(out_weight).all():
                    raise ValueError(f"merging adapter '{name}' gives NaN/Inf weights; nothing was merged")
        mha.in_proj_weight.data = new_weight
        Linear.merge(self.out_proj_layer, adapter_names=adapter_names)
        self.merged_adapters.extend(adapter_names)

    def unmerge(self) -> None:
        """Subtract the merged adapters from both projections' weights again."""
        if not self.merged:
            warnings.warn("Already unmerged. Nothing to do.", stacklevel=2)
            return
        mha = self._attention
        while self.merged_adapters:
            name = self.merged_adapters.pop()
            if self.has_adapter(name):
                mha.in_proj_weight.data = self.merged_weight(name, mha.in_proj_weight.data, sign=-1.0)
        if self.out_proj_layer.merged:
            Linear.unmerge(self.out_proj_layer)

    def unload_and_optionally_merge_module(self, merge: bool, safe_merge: bool, adapter_names) -> nn.Module:
        """PEFT's unload hook: merge if asked, then give back the plain nn.MultiheadAttention (out_proj unwrapped)."""
        if merge:
            self.merge(safe_merge=safe_merge, adapter_names=adapter_names)
        mha = self._attention
        mha.add_module("out_proj", self.out_proj_layer.get_base_layer())
        return mha

    # --- forward ---------------------------------------------------------------------------------------------------
    # An attention module's call: nn.MultiheadAttention's (query, key, value, ...) -> (output, weights), not a layer's
    # (x) -> tensor.
    def forward(self, query: torch.Tensor, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        """nn.MultiheadAttention's forward with both projections' weights W0 + alpha * Delta W.

        Args:
            query: The query (then key, value and every other argument, as nn.MultiheadAttention takes them).
            *args: Passed to the base attention.
            **kwargs: Passed to the base attention.

        Returns:
            What the base attention returns (output, and the attention weights when asked).

        Raises:
            ValueError: If ``adapter_names=`` asks for a mixed-adapter batch.
        """
        if kwargs.pop("adapter_names", None) is not None:
            raise ValueError(
                "KRAdapter on nn.MultiheadAttention does not support mixed-adapter batches (adapter_names=)"
            )
        mha = self._attention
        if self.disable_adapters:
            if self.merged:
                self.unmerge()
            return mha(query, *args, **kwargs)
        if self.merged:
            return mha(query, *args, **kwargs)
        names = [n for n in self.active_adapters if self.has_adapter(n) and not self._adapter_skipped(n)]
        if not names:
            return mha(query, *args, **kwargs)
        out_base = self.out_proj_layer.get_base_layer()
        w_in: torch.Tensor = mha.in_proj_weight
        w_out = base_weight(out_base)
        for name in names:  # summed in float32 or better, kept differentiable in U and V
            w_in = summed_in_float32(w_in, self.delta_matrix(name))
            w_out = summed_in_float32(w_out, self.out_proj_layer.delta_matrix(name))
        params: dict[str, torch.Tensor] = {"in_proj_weight": w_in, "out_proj.base_layer.weight": w_out}
        return functional_call(mha, params, (query, *args), kwargs, strict=False)
