"""`kradapter spectrum`: Khatri-Rao vs Kronecker at equal parameters, and Theorem 3.1's rank (small sizes)."""

import json

import pytest

from kradapter.approx.spectrum import compare_shape, default_ns, kronecker_shapes, run_spectrum, theorem_ranks
from kradapter.cli import main


def test_kronecker_shapes_reach_the_budget_with_full_rank_possible():
    assert kronecker_shapes(768, 1024, 49_152) == ((4, 4), (192, 256))  # 49,168: PEFT LoKr's split too
    (a1, a2), (b1, b2) = kronecker_shapes(1024, 4096, 131_072)
    assert a1 * b1 == 1024 and a2 * b2 == 4096 and a1 * a2 + b1 * b2 >= 131_072
    assert min(a1, a2) * min(b1, b2) >= 1024  # LoKr's own split here, 32 x 4096 (x) 32 x 1, caps the rank at 32


def test_compare_shape_is_deterministic_and_equal_budget():
    row = compare_shape(48, 64, seed=0)
    assert row == compare_shape(48, 64, seed=0)
    kr, kn = row["khatri_rao"], row["kronecker"]
    assert len(kr["spectrum"]) == len(kn["spectrum"]) == 48
    assert abs(kr["params"] - kn["params"]) / kr["params"] < 0.25
    assert 0 < kn["effective_rank"] <= 48 and 0 < kr["effective_rank"] <= 48


def test_theorem_3_1_rank_is_min_n_k_squared():
    k = 4
    ns = default_ns(k)
    assert ns[0] == k and k * k in ns and max(ns) > k * k
    for p in theorem_ranks(k, ns, seed=0):
        assert p["rank_khatri_rao"] == min(p["n"], k * k)
        assert p["rank_lora"] == min(p["n"], k)


def test_spectrum_command_writes_json_and_png(tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["spectrum", "--out", str(out), "--shapes", "24x32,32x32", "--k", "3"]) == 0
    doc = json.loads((out / "spectrum.json").read_text())
    assert [r["shape"] for r in doc["shapes"]] == [[24, 32], [32, 32]]
    assert doc["theorem"]["k"] == 3
    assert (out / "figure4.png").read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr().out
    assert "eff.rank KR" in printed and "rank KR" in printed


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--shapes", "24x"], "shape '24x' is not D_OUTxD_IN"),
        (["--shapes", "0x8"], "shape '0x8' is not D_OUTxD_IN"),
        (["--k", "0"], "--k must be >= 1"),
    ],
)
def test_spectrum_bad_input(tmp_path, capsys, argv, message):
    assert main(["spectrum", "--out", str(tmp_path / "s")] + argv) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "s" / "spectrum.json").exists()


def test_run_spectrum_rejects_bad_shapes():
    with pytest.raises(ValueError, match="two positive integers"):
        run_spectrum([(8, 0)], 3, None, 0)
