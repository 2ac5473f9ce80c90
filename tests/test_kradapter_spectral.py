"""Effective rank (Roy & Vetterli) and the spectral summary, on matrices whose answers are known."""

import math

import torch

from kradapter import effective_rank, spectral_summary
from kradapter.ops import kradapter_delta, kradapter_shapes


def test_effective_rank_of_known_spectra():
    assert math.isclose(effective_rank(torch.eye(7)), 7.0, rel_tol=1e-12)
    assert math.isclose(effective_rank(torch.outer(torch.arange(1.0, 6), torch.ones(4))), 1.0, rel_tol=1e-9)
    assert effective_rank(torch.zeros(3, 5)) == 0.0
    # two equal singular values and one twice as large: p = (1/2, 1/4, 1/4), entropy = 1.5 ln 2
    s = torch.tensor([2.0, 1.0, 1.0])
    assert math.isclose(effective_rank(s, is_spectrum=True), math.exp(1.5 * math.log(2)), rel_tol=1e-12)
    assert math.isclose(effective_rank(torch.diag(s)), 2**1.5, rel_tol=1e-12)


def test_spectral_summary_of_a_diagonal_matrix():
    summary = spectral_summary(torch.diag(torch.tensor([3.0, 4.0, 0.0])))
    assert summary["rank"] == 2
    assert math.isclose(summary["nuclear_norm"], 7.0, rel_tol=1e-12)
    assert math.isclose(summary["frobenius_norm"], 5.0, rel_tol=1e-12)
    assert 1 < summary["effective_rank"] < 2


def test_conv_kernels_are_flattened_to_out_by_rest():
    kernel = torch.randn(8, 2, 3, 3, generator=torch.Generator().manual_seed(0))
    assert spectral_summary(kernel)["rank"] == 8


def test_kradapter_update_is_full_rank_where_lora_of_equal_budget_is_not():
    # Section 3.4 / Table 2: a random KRAdapter update of a 256 x 64 layer is full rank with a high effective rank;
    # a LoRA update with the same number of parameters (rank r = budget / (256 + 64)) has rank r.
    gen = torch.Generator().manual_seed(0)
    d_out, d_in = 256, 64
    (k1, n), (k2, _) = kradapter_shapes(d_out, d_in)
    delta = kradapter_delta(torch.randn(k1, n, generator=gen), torch.randn(k2, n, generator=gen), d_out, d_in)
    budget = n * (k1 + k2)
    r = budget // (d_out + d_in)
    lora = torch.randn(d_out, r, generator=gen) @ torch.randn(r, d_in, generator=gen)
    kr, lo = spectral_summary(delta), spectral_summary(lora)
    assert kr["rank"] == 64 and lo["rank"] == r < 64
    assert kr["effective_rank"] > 2 * lo["effective_rank"]
