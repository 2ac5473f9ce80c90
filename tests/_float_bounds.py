"""How far two float32 trainings of the same model on the same global batches may end apart when they differ only in
the order of their sums (one process against several, DeepSpeed's reduce-scatter, another GEMM blocking, another
CPU's kernels): a bound from the arithmetic, for tests comparing such runs.

Derivation. Every gradient entry is a sum; computed in another order, a sum of n terms moves by at most
n * eps * sum(|terms|) (eps = float32 machine epsilon, 2^-23; the standard bound, Higham 2002, sec. 3.1). Along
the backward pass these relative errors add, one per reduction the gradient passes through: the tokens of the
global batch, the softmax over the vocabulary and the head's product, and in every decoder layer the hidden,
intermediate, head and sequence dimensions (`llama_reduction_length`). A gradient entry cancels: we assume it is
no smaller than 1/CANCELLATION of the sum of its terms' magnitudes, so its relative error is at most
rho = eps * n_total * CANCELLATION. AdamW's step lr * m / (sqrt(v) + eps_adam) is a ratio of the gradients and
their squares: a relative error rho in every gradient moves m by rho and sqrt(v) by rho, the ratio by at most
2 * rho, and the ratio itself is at most 1 in magnitude in the first steps (at step 1 it is g / |g|). So one step
moves a weight by at most 2 * rho * lr from where the other run moves it, and after the steps with learning rates
lr_1..lr_T the weights differ by at most 2 * rho * sum(lr_t) (the weights' own difference feeds back into the next
gradients only at second order: lr * rho).
"""

from __future__ import annotations

import torch

F32_EPS = torch.finfo(torch.float32).eps
# The cancellation a gradient entry may show (see above). A bug that trains another model (an unsynchronised rank, a
# wrong data split) moves weights by whole learning-rate steps, orders of magnitude above the bound either way.
CANCELLATION = 10


def llama_reduction_length(config, tokens: int, seq_len: int) -> int:
    """The summed length of the reductions a gradient of a Llama passes through (see the module's text).

    Args:
        config: The LlamaConfig.
        tokens: Tokens per global batch (the sum that forms a weight's gradient).
        seq_len: The longest sequence (attention's softmax and its product with V).
    """
    head_dim = config.hidden_size // config.num_attention_heads
    per_layer = 4 * config.hidden_size + 2 * config.intermediate_size + seq_len + head_dim
    return tokens + 2 * config.vocab_size + config.num_hidden_layers * per_layer


def relative_error(reduction_length: int) -> float:
    """rho: the relative difference a gradient entry (or a loss) may show between the two runs (see above)."""
    return F32_EPS * reduction_length * CANCELLATION


def adamw_weight_bound(learning_rates: list[float], reduction_length: int) -> float:
    """The largest difference two runs' weights may show after AdamW steps at `learning_rates` (see above)."""
    return 2 * relative_error(reduction_length) * sum(learning_rates)
