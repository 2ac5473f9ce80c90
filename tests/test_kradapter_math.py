"""The paper's math (sections 3.2-3.4): Delta W against a plain reference, k1/k2, parameter counts, init, rank."""

import math

import pytest
import torch
from torch import nn

from kradapter import KRAdapterConfig
from kradapter.methods.kradapter.layer import Linear, init_kradapter_
from kradapter.ops import integer_root, khatri_rao, kradapter_delta, kradapter_shapes, resolve_k


def reference_delta(U, V, d_out, d_in):
    """Definition 3.1 written with einsum, independently of kradapter.ops: row i*k2+j of U⊙V is U[i]*V[j]."""
    k1, n = U.shape
    k2 = V.shape[0]
    kr = torch.einsum("in,jn->ijn", U, V).reshape(k1 * k2, n)
    m = max(d_out, d_in)
    return kr[:m] if d_out >= d_in else kr[:m].T


def test_khatri_rao_rows_follow_definition_3_1():
    torch.manual_seed(0)
    U, V = torch.randn(3, 5), torch.randn(4, 5)
    kr = khatri_rao(U, V)
    assert kr.shape == (12, 5)
    for i in range(3):
        for j in range(4):
            assert torch.equal(kr[i * 4 + j], U[i] * V[j])


@pytest.mark.parametrize(
    "d_out,d_in",
    [(16, 16), (36, 12), (12, 36), (13, 7), (7, 13), (31, 31), (30, 11), (11, 30), (1, 5), (5, 1)],
    ids=lambda v: str(v),
)
@pytest.mark.parametrize("k1", ["sqrt", "cbrt", "qdrt", 2])
def test_delta_matches_einsum_reference(d_out, d_in, k1):
    torch.manual_seed(d_out * 100 + d_in)
    (k1_, n), (k2_, n2) = kradapter_shapes(d_out, d_in, k1)
    assert n == n2 == min(d_out, d_in)
    assert k1_ * k2_ >= max(d_out, d_in)  # the product covers m rows; extra rows are truncated
    U, V = torch.randn(k1_, n, dtype=torch.float64), torch.randn(k2_, n, dtype=torch.float64)
    delta = kradapter_delta(U, V, d_out, d_in)
    assert delta.shape == (d_out, d_in)
    torch.testing.assert_close(delta, reference_delta(U, V, d_out, d_in), rtol=0, atol=0)


def test_truncation_keeps_the_first_m_rows():
    # m = 30 with k1 = 5, k2 = 6 -> exactly 30; m = 31 with k1 = 5 -> k2 = 7 and 35 rows truncated to 31.
    assert resolve_k(31, 4, "sqrt") == (5, 7)
    U, V = torch.randn(5, 4), torch.randn(7, 4)
    delta = kradapter_delta(U, V, 31, 4)
    torch.testing.assert_close(delta, khatri_rao(U, V)[:31])
    assert not torch.equal(khatri_rao(U, V)[31:], torch.zeros(4, 4))  # the cut rows were real, not padding


@pytest.mark.parametrize(
    "m,word,k1,k2",
    [
        (1000, "cbrt", 10, 100),
        (999, "cbrt", 9, 111),
        (1024, "sqrt", 32, 32),
        (1023, "sqrt", 31, 33),
        (4096, "qdrt", 8, 512),
        (4095, "qdrt", 7, 585),
        (768, "sqrt", 27, 29),
        (2, "qdrt", 1, 2),
    ],
)
def test_budget_words_are_exact_integer_roots(m, word, k1, k2):
    assert resolve_k(m, 1, word) == (k1, k2)
    assert resolve_k(1, m, word) == (k1, k2)  # m is the larger side, whichever it is


def test_integer_root_is_exact_where_floats_round_wrong():
    assert 1000 ** (1 / 3) < 10  # float cube root of 1000 is 9.999..., floor would give 9
    assert integer_root(1000, 3) == 10
    for p in (2, 3, 4):
        for m in range(1, 3000):
            k = integer_root(m, p)
            assert k**p <= m < (k + 1) ** p


def test_int_k1_gives_k2_ceiling():
    assert resolve_k(20, 10, 3) == (3, 7)
    assert resolve_k(20, 10, 20) == (20, 1)
    assert resolve_k(20, 10, 1) == (1, 20)


def test_trainable_count_1024_by_768_is_49152():
    layer = Linear(nn.Linear(768, 1024), "default")
    count = sum(p.numel() for name, p in layer.named_parameters() if "kradapter_" in name)
    assert count == 49_152 == 768 * (32 + 32)
    # the same layer transposed costs the same
    layer_t = Linear(nn.Linear(1024, 768), "default")
    assert sum(p.numel() for name, p in layer_t.named_parameters() if "kradapter_" in name) == 49_152


def test_config_k1_sets_shapes_of_u_and_v():
    layer = Linear(nn.Linear(40, 1000), "default", k1="cbrt")
    assert layer.kradapter_U["default"].shape == (10, 40)
    assert layer.kradapter_V["default"].shape == (100, 40)
    assert (layer.k1["default"], layer.k2["default"]) == (10, 100)


@pytest.mark.parametrize("k", [4, 6, 9])
def test_theorem_3_1_full_column_rank_for_random_factors(k):
    # Theorem 3.1: U, V (k x n) i.i.d. random with k <= n <= k^2 -> U⊙V (k^2 x n) has rank n.
    gen = torch.Generator().manual_seed(k)
    for n in sorted({k, (k + k * k) // 2, k * k}):
        for draw in ("gauss", "uniform"):
            if draw == "gauss":
                U, V = (
                    torch.randn(k, n, generator=gen, dtype=torch.float64),
                    torch.randn(k, n, generator=gen, dtype=torch.float64),
                )
            else:
                U = torch.rand(k, n, generator=gen, dtype=torch.float64) * 2 - 1
                V = torch.rand(k, n, generator=gen, dtype=torch.float64) * 2 - 1
            assert torch.linalg.matrix_rank(khatri_rao(U, V)) == n
            # LoRA with the same factors (V^T U, rank <= k) is rank deficient whenever n > k
            assert torch.linalg.matrix_rank(V.T @ U) == k


def test_init_u_zero_v_kaiming_uniform_with_paper_slope():
    torch.manual_seed(0)
    k1, k2, n = 7, 9, 400
    U, V = torch.empty(k1, n), torch.empty(k2, n)
    init_kradapter_(U, V, k1)
    assert torch.count_nonzero(U) == 0
    # kaiming_uniform with negative slope a: bound = gain * sqrt(3 / fan_in), gain = sqrt(2 / (1 + a^2)), fan_in = n
    a = math.sqrt(1 / k1)
    bound = math.sqrt(2 / (1 + a * a)) * math.sqrt(3 / n)
    assert V.abs().max() <= bound
    assert V.abs().max() > 0.95 * bound  # it fills the range (a smaller slope would give a different bound)
    assert abs(V.mean()) < 0.1 * bound
    other_bound = math.sqrt(2 / (1 + 5)) * math.sqrt(3 / n)  # torch's Linear default a=sqrt(5)
    assert V.abs().max() > other_bound


def test_layer_init_starts_as_identity_and_init_false_does_not():
    torch.manual_seed(0)
    layer = Linear(nn.Linear(10, 20), "default")
    assert torch.count_nonzero(layer.kradapter_U["default"]) == 0
    assert torch.count_nonzero(layer.delta_matrix("default")) == 0
    layer2 = Linear(nn.Linear(10, 20), "default", init_weights=False)
    assert torch.count_nonzero(layer2.delta_matrix("default")) > 0


def test_delta_matrix_is_alpha_times_delta_and_weight_layout():
    torch.manual_seed(0)
    layer = Linear(nn.Linear(10, 20), "default", alpha=0.3, init_weights=False)
    U, V = layer.kradapter_U["default"], layer.kradapter_V["default"]
    torch.testing.assert_close(layer.delta_matrix("default"), 0.3 * reference_delta(U, V, 20, 10))
    assert layer.get_delta_weight("default").shape == layer.base_layer.weight.shape


def test_default_config_values_match_the_paper():
    cfg = KRAdapterConfig(target_modules=["x"])
    assert cfg.k1 == "sqrt" and cfg.alpha == 0.1 and cfg.dropout == 0.0 and cfg.init_weights is True
