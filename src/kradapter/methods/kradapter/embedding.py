"""KRAdapter around nn.Embedding: the update acts on the embedding matrix E (num_embeddings x embedding_dim).

    h = E[ids] + alpha * Delta W[ids],   Delta W = (U ⊙ V)[:m]   (transposed when num_embeddings < embedding_dim)

A lookup needs only the rows it reads, and a Khatri-Rao row is cheap to build: row i of U ⊙ V is
U[i // k2] * V[i % k2] (n values). So a forward builds just the looked-up rows, and the whole Delta W only when
the batch looks up at least as many tokens as the vocabulary has (then one matrix and a gather cost less). When
num_embeddings < embedding_dim, row i of Delta W is column i of U ⊙ V: (U[:, i] ⊗ V[:, i])[:m], k1 * k2 values.

No input dropout (the input is token ids, as in PEFT's LoRA embedding); module dropout applies. Merging adds Delta W
to E (DeltaLayer); an embedding with max_norm is refused, since its forward renormalises E in place and merging
and unmerging would stop being inverses.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layer import KRAdapterLayer


def embedding_blocker(base: nn.Module):
    """Why this nn.Embedding cannot take a KRAdapter, or None."""
    if getattr(base, "max_norm", None) is not None:
        return (
            "an nn.Embedding with max_norm renormalises its weight in place on every lookup, so an update could not "
            "be merged and unmerged exactly; KRAdapter needs max_norm=None"
        )
    return None


class Embedding(nn.Module, KRAdapterLayer):
    """KRAdapter around nn.Embedding: the update acts on the embedding matrix (num_embeddings x embedding_dim), and a
    lookup builds only the rows it reads (row i of U ⊙ V is U[i // k2] * V[i % k2]).

    Args:
        base_layer: The nn.Embedding (``max_norm`` embeddings are refused: they rescale rows in place).
        adapter_name: The first adapter's name.
        **kwargs: Its settings (``update_layer``'s).

    Raises:
        ValueError: If the embedding cannot take a KRAdapter (the reason names the setting).
    """

    def __init__(self, base_layer: nn.Module, adapter_name: str, **kwargs) -> None:
        super().__init__()
        KRAdapterLayer.__init__(self, base_layer)
        if (reason := embedding_blocker(self.get_base_layer())) is not None:
            raise ValueError(reason)
        self._active_adapter = adapter_name
        self.update_layer(adapter_name, **kwargs)

    def delta_rows(self, ids: torch.Tensor, adapter_name: str) -> torch.Tensor:
        """alpha * Delta W[ids], shape ids.shape + (embedding_dim,), building only the rows looked up when cheaper."""
        U, V = self.kradapter_U[adapter_name], self.kradapter_V[adapter_name]
        alpha, k2 = self.scaled_alpha(adapter_name), self.k2[adapter_name]
        if ids.numel() >= self.d_out:  # as many lookups as rows: one Delta W and a gather
            return F.embedding(ids, self.delta_matrix(adapter_name))
        if self.d_out >= self.d_in:  # row i of U ⊙ V
            return alpha * (U[ids // k2] * V[ids % k2])
        rows = U.T[ids][..., :, None] * V.T[ids][..., None, :]  # column i of U ⊙ V, as k1 x k2
        return alpha * rows.flatten(-2)[..., : self.d_in]

    def adapter_term(self, x: torch.Tensor, adapter_name: str) -> torch.Tensor:
        """One adapter's update for the token ids x: the looked-up rows of ``alpha * Delta W`` (ids take no dropout).

        Args:
            x: The token ids.
            adapter_name: The adapter.

        Returns:
            The rows, shape ``x.shape + (embedding_dim,)``.
        """
        return self.delta_rows(x, adapter_name)

    forward = KRAdapterLayer.adapted_forward
