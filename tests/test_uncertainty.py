"""compare's statistics (train/uncertainty.py): exact on hand-computable cases, seeded, the needed-n formula."""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest

from kradapter.train.uncertainty import (
    bootstrap_scores,
    needed_pairs,
    paired_difference,
    parse_interval,
    parse_samples,
    score_interval,
    unit_score,
)


def test_identical_methods_differ_by_exactly_zero_and_are_not_separated():
    rng = np.random.default_rng(1)
    c = [rng.integers(0, 2, size=(3, 40)), rng.integers(0, 2, size=(3, 25))]
    iv = paired_difference(c, [m.copy() for m in c], samples=500, seed=3)
    assert (iv.estimate, iv.low, iv.high) == (0.0, 0.0, 0.0)
    assert not iv.separated and iv.p_value == 1.0  # every draw is 0: both tails hold all of them
    assert iv.needed_n is None and iv.n_now == 3 * 65


def test_always_right_against_always_wrong_is_separated_with_the_smallest_p():
    right, wrong = [np.ones((2, 30))], [np.zeros((2, 30))]
    iv = paired_difference(right, wrong, samples=400)
    assert (iv.estimate, iv.low, iv.high) == (1.0, 1.0, 1.0) and iv.separated
    assert iv.p_value == 0.0  # no draw at or below 0
    assert iv.needed_n == 1  # sd 0: any n gives 0 < 1
    reverse = paired_difference(wrong, right, samples=400)
    assert (reverse.low, reverse.high) == (-1.0, -1.0) and reverse.separated


def test_a_constant_method_has_a_point_interval_and_its_mean():
    iv = score_interval([np.full((3, 10), 1.0), np.zeros((3, 20))], samples=300)
    assert (iv.estimate, iv.low, iv.high) == (0.5, 0.5, 0.5)  # group score: the mean of the two sets' scores


def test_draws_are_seeded_and_use_one_seed_draw_per_unit():
    rng = np.random.default_rng(0)
    c = [rng.integers(0, 2, size=(4, 50)).astype(float)]
    a, b = bootstrap_scores(c, 300, seed=7), bootstrap_scores(c, 300, seed=7)
    assert np.array_equal(a, b) and not np.array_equal(a, bootstrap_scores(c, 300, seed=8))
    # the difference's draws are the two methods' draws subtracted (linearity; the same indices for both)
    d = [rng.integers(0, 2, size=(4, 50)).astype(float)]
    diff = bootstrap_scores([c[0] - d[0]], 300, seed=7)
    assert np.allclose(diff, a - bootstrap_scores(d, 300, seed=7), rtol=0, atol=50 * np.finfo(float).eps)


def test_a_draw_is_the_count_weighted_mean_over_drawn_seeds_and_examples(monkeypatch):
    """Reproduce the draws by hand: the same generator calls (seed counts, then example counts chunk by chunk,
    here chunks of 3 and 1), then an explicit double loop."""
    import kradapter.train.uncertainty as unc

    monkeypatch.setattr(unc, "_CHUNK", 3)
    rng = np.random.default_rng(5)
    m = rng.integers(0, 2, size=(3, 7)).astype(float)
    draws = bootstrap_scores([m], 4, seed=11)
    gen = np.random.default_rng(11)
    w = gen.multinomial(3, [1 / 3] * 3, size=4)
    v = np.concatenate([gen.multinomial(7, [1 / 7] * 7, size=3), gen.multinomial(7, [1 / 7] * 7, size=1)])
    for b in range(4):
        by_hand = sum(w[b, s] * v[b, i] * m[s, i] for s in range(3) for i in range(7)) / 21
        assert draws[b] == pytest.approx(by_hand, abs=21 * np.finfo(float).eps)


def test_interval_covers_the_spread_of_a_mixed_method():
    rng = np.random.default_rng(2)
    c = [(rng.random((3, 400)) < 0.7).astype(float)]
    iv = score_interval(c, samples=1000)
    assert iv.low < unit_score(c) < iv.high
    # examples alone give a standard error of about sqrt(0.7 * 0.3 / 1200) = 0.013: a 95% half-width of at least
    # 1.96 x that less sampling noise; seeds drawn with replacement only add to it
    assert iv.high - iv.low > 2 * 1.5 * math.sqrt(0.21 / 1200)


def test_needed_pairs_matches_the_formula_by_hand():
    # differences 1, 0, 0, 0: mean 0.25, sd (ddof 1) = sqrt(((0.75)^2 + 3 (0.25)^2) / 3) = 0.5
    d = np.array([1.0, 0.0, 0.0, 0.0])
    # (1.96 x 0.5 / 0.25)^2 = 3.92^2 = 15.37 -> 16 pairs: 1.96 x 0.5 / 4 = 0.245 < 0.25, at 15: 0.253 > 0.25
    assert needed_pairs(d, 0.25) == 16
    assert 1.959963984540054 * 0.5 / math.sqrt(16) < 0.25 < 1.959963984540054 * 0.5 / math.sqrt(15)
    assert needed_pairs(d, 0.0) is None
    iv = paired_difference([np.array([[1.0, 0, 0, 0]])], [np.zeros((1, 4))], samples=200)
    assert iv.estimate == 0.25 and iv.needed_n == 16 and iv.n_now == 4


def test_shapes_and_options_are_checked_with_one_clear_error():
    with pytest.raises(ValueError, match="same seeds x examples"):
        paired_difference([np.ones((2, 3))], [np.ones((2, 4))], samples=100)
    with pytest.raises(ValueError, match="same seeds"):
        bootstrap_scores([np.ones((2, 3)), np.ones((3, 3))], 100)
    with pytest.raises(argparse.ArgumentTypeError, match="unknown interval method 'bca'; accepted: bootstrap"):
        parse_interval("bca")
    with pytest.raises(argparse.ArgumentTypeError, match=">= 100"):
        parse_samples("10")
    assert parse_samples("500") == 500 and parse_interval("bootstrap") == "bootstrap"


def _run(tmp_path, name, seeds, tests):
    """A run directory as compare reads it: metrics (seeds, sizes, groups) and its per_example.json."""
    import json

    d = tmp_path / name
    d.mkdir()
    groups = {"a": "ID", "b": "OOD", "c": "OOD"}
    metrics = {
        "seeds": seeds,
        "sizes": {n: len(rows[0]) for n, rows in tests.items()},
        "tests": {n: {"group": groups[n]} for n in tests},
    }
    (d / "per_example.json").write_text(json.dumps({"seeds": seeds, "tests": tests}))
    return d, metrics


def test_compare_pairs_runs_over_their_common_seeds_and_groups_sets(tmp_path):
    from kradapter.train.interval_tables import NO_RECORD, interval_tables

    # x: seeds 0 and 1, right on every example of seed 1 only; y: seeds 1 and 2, always wrong
    x = {n: [[0] * k, [1] * k] for n, k in (("a", 4), ("b", 3), ("c", 5))}
    y = {n: [[0] * k, [0] * k] for n, k in (("a", 4), ("b", 3), ("c", 5))}
    dx, mx = _run(tmp_path, "x", [0, 1], x)
    dy, my = _run(tmp_path, "y", [1, 2], y)
    dz, mz = _run(tmp_path, "z", [0], {"a": [[1] * 4], "b": [[1] * 3], "c": [[1] * 5]})
    mz["seeds"] = [7]  # another run's record beside it: not read
    dw, mw = _run(tmp_path, "w", [5], {"a": [[1] * 4], "b": [[1] * 3], "c": [[1] * 5]})
    unc = interval_tables({"x": mx, "y": my, "z": mz, "w": mw}, {"x": dx, "y": dy, "z": dz, "w": dw}, samples=200)
    assert unc["table"]["header"] == ["method", "ID", "OOD", "b (OOD)", "c (OOD)"]
    assert unc["per_method"]["x"]["OOD"]["estimate"] == 0.5 and unc["per_method"]["z"] is None
    assert unc["table"]["rows"][2][:2] == ["z", NO_RECORD]
    xy = [p for p in unc["pairwise"] if (p["a"], p["b"]) == ("x", "y")]
    assert [p["set"] for p in xy] == ["ID", "OOD", "b (OOD)", "c (OOD)"]
    for p in xy:  # seed 1 only: x right everywhere, y wrong everywhere
        assert p["seeds"] == [1] and (p["difference"], p["low"], p["high"]) == (1.0, 1.0, 1.0) and p["separated"]
    assert xy[1]["pairs_now"] == 8  # OOD: 1 seed x (3 + 5) examples
    rows = unc["pairwise_table"]["rows"]
    assert rows[0] == ["x - y", "ID", "+100.0", "[100.0, 100.0]", "< 0.005", "separated"]
    assert ["x - w", "ID", "-", "-", "-", "not paired: no common seeds"] in rows
    assert ["x - z", "-", "-", "-", "-", NO_RECORD] in rows and ["y - z", "-", "-", "-", "-", NO_RECORD] in rows
