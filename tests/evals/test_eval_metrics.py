"""Tests for evals/metrics.py. Expected values are hand-computed; arithmetic in comments."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from evals import metrics as M


def comb_pass_at_k(n: int, c: int, k: int) -> float:
    """Closed form 1 - C(n-c, k) / C(n, k) with exact integers (math.comb(a, b) = 0 if b > a)."""
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


# ----------------------------------------------------------------------------- pass@k


def test_pass_at_k_hand_value():
    # n=5, c=2, k=2: 1 - C(3,2)/C(5,2) = 1 - 3/10 = 0.7
    assert M.pass_at_k(5, 2, 2) == pytest.approx(0.7, abs=1e-12)
    # n=4, c=1, k=1: 1 - C(3,1)/C(4,1) = 1 - 3/4 = 0.25 (= c/n)
    assert M.pass_at_k(4, 1, 1) == pytest.approx(0.25, abs=1e-12)


@pytest.mark.parametrize("n", range(1, 13))
def test_pass_at_k_matches_closed_form(n):
    for c in range(n + 1):
        for k in range(1, n + 1):
            assert M.pass_at_k(n, c, k) == pytest.approx(comb_pass_at_k(n, c, k), abs=1e-12)


def test_pass_at_k_edge_cases():
    assert M.pass_at_k(10, 0, 3) == 0.0  # c=0: nothing can pass
    assert M.pass_at_k(10, 10, 3) == 1.0  # c=n
    assert M.pass_at_k(10, 8, 3) == 1.0  # n-c = 2 < k = 3: every 3-subset holds a correct one
    # large n stays finite and in range (C(1000, 500) would overflow a float)
    v = M.pass_at_k(1000, 1, 500)  # = 500/1000 exactly
    assert v == pytest.approx(0.5, abs=1e-12)


def test_pass_at_k_k_greater_than_n_raises_naming_k_and_n():
    with pytest.raises(ValueError, match=r"k=5.*n=4"):
        M.pass_at_k(4, 1, 5)
    with pytest.raises(ValueError):
        M.pass_at_k(4, 5, 1)  # c > n
    with pytest.raises(ValueError):
        M.pass_at_k(4, 1, 0)  # k < 1


def test_pass_at_1_equals_avg_and_monotone_in_k():
    rng = np.random.default_rng(0)
    correct = (rng.random((30, 16)) < rng.random((30, 1))).astype(int)
    allk = M.pass_at_k_all(correct)
    assert list(allk) == list(range(1, 17))
    assert allk[1] == pytest.approx(M.avg_at_k(correct), abs=1e-12)
    vals = np.array(list(allk.values()))
    assert np.all(np.diff(vals) >= -1e-12)
    # pass@n is the fraction of problems with at least one correct sample
    assert allk[16] == pytest.approx(np.mean(correct.max(axis=1)), abs=1e-12)


def test_pass_at_k_all_pow2_and_hand_value():
    # problem 0: n=4,c=1 -> pass@2 = 1 - C(3,2)/C(4,2) = 1 - 3/6 = 0.5
    # problem 1: n=4,c=0 -> 0 ; problem 2: n=4,c=4 -> 1 ; mean = 1.5/3 = 0.5
    correct = [[0, 1, 0, 0], [0, 0, 0, 0], [1, 1, 1, 1]]
    res = M.pass_at_k_all(correct, ks="pow2")
    assert list(res) == [1, 2, 4]
    assert res[2] == pytest.approx(0.5)
    # pass@1 = (1/4 + 0 + 1)/3 = 1.25/3 ; pass@4 = (1 + 0 + 1)/3 = 2/3
    assert res[1] == pytest.approx(1.25 / 3)
    assert res[4] == pytest.approx(2 / 3)
    # n=6 -> pow2 gives 1,2,4 plus n=6
    assert list(M.pass_at_k_all(np.ones((2, 6)), ks="pow2")) == [1, 2, 4, 6]
    with pytest.raises(ValueError, match="k=5"):
        M.pass_at_k_all(correct, ks=[5])


# ----------------------------------------------------------------------------- avg@k


def test_avg_at_k_hand_example_ragged():
    # per-problem means: [1,0,1,1] -> 3/4 ; [0,0] -> 0 ; [1,1,0] -> 2/3
    # avg = (0.75 + 0 + 0.6667) / 3 = 1.41667/3 = 0.472222...
    # (a flat mean over all 9 samples would be 5/9 = 0.5556: problems must weigh equally)
    correct = [[1, 0, 1, 1], [0, 0], [True, True, False]]
    assert M.avg_at_k(correct) == pytest.approx((0.75 + 0 + 2 / 3) / 3, abs=1e-12)
    # first k=2 samples: [1,0] -> .5, [0,0] -> 0, [1,1] -> 1 -> 1.5/3 = 0.5
    assert M.avg_at_k(correct, k=2) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="k=3"):
        M.avg_at_k(correct, k=3)


def test_avg_at_k_array_and_validation():
    # (2,4) array: row means 0.5 and 0.25 -> 0.375
    assert M.avg_at_k(np.array([[1, 0, 1, 0], [0, 0, 0, 1]])) == pytest.approx(0.375)
    with pytest.raises(ValueError):
        M.avg_at_k([])
    with pytest.raises(ValueError):
        M.avg_at_k([[1, 0], []])
    with pytest.raises(ValueError):
        M.avg_at_k(np.array([1, 0, 1]))  # 1-D: ambiguous shape
    with pytest.raises(ValueError):
        M.pass_at_k_all([[0, 2]])  # not binary


# ----------------------------------------------------------------------------- maj@k


def test_maj_at_k_hand_example_ties_and_none():
    answers = [
        ["a", "b", "b", "a", "b"],  # k=4: a=2, b=2 tie -> first occurrence "a" (correct)
        [None, None, "x", "y", "y"],  # k=4: None ignored; x=1, y=1 tie -> "x" (wrong)
        [None, None, None, None, "z"],  # k=4: nobody votes -> unsolved
        ["q", None, "r", "r", "q"],  # k=4: r=2 > q=1 -> "r" (correct)
    ]
    correct = [
        [1, 0, 0, 1, 0],
        [0, 0, 0, 1, 1],
        [0, 0, 0, 0, 1],
        [0, 0, 1, 1, 0],
    ]
    # k=4: solved = [1, 0, 0, 1] -> 2/4 = 0.5
    assert M.maj_at_k(answers, correct, 4) == pytest.approx(0.5)
    # k=5: p0 b=3 > a=2 -> wrong; p1 y=2 > x=1 -> right; p2 z -> right; p3 q=2, r=2 tie,
    # q first -> wrong. solved = [0, 1, 1, 0] -> 0.5
    assert M.maj_at_k(answers, correct, 5) == pytest.approx(0.5)
    # k=1: p0 "a" right, p1 None -> unsolved, p2 None -> unsolved, p3 "q" wrong -> 1/4
    assert M.maj_at_k(answers, correct, 1) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="k=6"):
        M.maj_at_k(answers, correct, 6)
    with pytest.raises(ValueError):
        M.maj_at_k(answers[:3], correct, 2)  # shape mismatch


def test_maj_at_k_avg_exact_enumeration_hand_value():
    # n=3, k=2, answers [a, b, a], correct [1, 0, 1]; subsets keep sample order:
    # (0,1): a,b tie -> a (right); (0,2): a,a -> right; (1,2): b,a tie -> b (wrong) => 2/3
    answers, correct = [["a", "b", "a"]], [[1, 0, 1]]
    assert M.maj_at_k_avg(answers, correct, 2) == pytest.approx(2 / 3)
    # first-2 maj@2 is just subset (0,1) -> 1.0; the average differs
    assert M.maj_at_k(answers, correct, 2) == 1.0
    # k == n: single subset, equals maj_at_k
    rng = np.random.default_rng(1)
    ans = [[str(v) for v in rng.integers(0, 3, 7)] for _ in range(20)]
    cor = [[int(a == "0") for a in row] for row in ans]
    assert M.maj_at_k_avg(ans, cor, 7) == pytest.approx(M.maj_at_k(ans, cor, 7))


def test_maj_at_k_avg_monte_carlo_close_to_exact():
    rng = np.random.default_rng(2)
    ans = [[str(v) for v in rng.integers(0, 3, 12)] for _ in range(5)]
    cor = [[int(a == "1") for a in row] for row in ans]
    exact = M.maj_at_k_avg(ans, cor, 5, n_subsets=10_000)  # C(12,5)=792 <= 10000 -> exact
    mc = M.maj_at_k_avg(ans, cor, 5, n_subsets=4000, seed=3)  # 792 <= 4000 -> exact too
    assert mc == pytest.approx(exact)
    mc = M.maj_at_k_avg(ans, cor, 5, n_subsets=500, seed=3)  # 792 > 500 -> Monte Carlo
    assert mc == pytest.approx(exact, abs=0.06)
    assert mc == M.maj_at_k_avg(ans, cor, 5, n_subsets=500, seed=3)  # deterministic


# ----------------------------------------------------------------------------- bootstrap


def test_bootstrap_ci_contains_mean_and_is_deterministic():
    x = np.array([0, 1] * 20, dtype=float)  # mean 0.5
    low, high = M.bootstrap_ci(x, n_boot=5000, seed=7)
    assert low < 0.5 < high
    # normal approximation: sd of mean = 0.5/sqrt(40) = 0.079 -> half-width ~ 1.96*0.079 = 0.155
    assert 0.10 < (high - low) / 2 < 0.21
    assert M.bootstrap_ci(x, n_boot=5000, seed=7) == (low, high)
    # 0/1 data puts the quantiles on the k/40 grid, so use continuous scores to see the seed
    y = np.random.default_rng(0).random(40)
    assert M.bootstrap_ci(y, n_boot=2000, seed=7) == M.bootstrap_ci(y, n_boot=2000, seed=7)
    assert M.bootstrap_ci(y, n_boot=2000, seed=7) != M.bootstrap_ci(y, n_boot=2000, seed=8)


def test_bootstrap_ci_width_matches_normal_theory():
    # 1000 problems of 0/1 with mean 0.5: sd of the mean = 0.5/sqrt(1000) = 0.015811.
    # 95% percentile CI half-width ~ 1.95996 * 0.015811 = 0.03099 (a 90% one would be 0.0260)
    x = np.array([0, 1] * 500, dtype=float)
    low, high = M.bootstrap_ci(x, n_boot=10_000, seed=0)
    assert (high - low) / 2 == pytest.approx(0.03099, abs=0.0015)
    # alpha=0.5 -> 50% CI half-width ~ 0.67449 * 0.015811 = 0.01066
    low, high = M.bootstrap_ci(x, n_boot=10_000, alpha=0.5, seed=0)
    assert (high - low) / 2 == pytest.approx(0.01066, abs=0.0015)


def test_bootstrap_ci_shrinks_with_more_problems():
    small = np.array([0, 1] * 10, dtype=float)  # 20 problems
    large = np.array([0, 1] * 1000, dtype=float)  # 2000 problems: width ~ 10x smaller
    ws = np.subtract(*M.bootstrap_ci(small, n_boot=2000, seed=0)[::-1])
    wl = np.subtract(*M.bootstrap_ci(large, n_boot=2000, seed=0)[::-1])
    assert wl < ws / 5


def test_bootstrap_ci_degenerate_zero_width():
    low, high = M.bootstrap_ci([0.3] * 25, n_boot=1000, seed=0)
    assert low == high
    assert low == pytest.approx(0.3)
    with pytest.raises(ValueError):
        M.bootstrap_ci([], n_boot=10)
    with pytest.raises(ValueError):
        M.bootstrap_ci([0.1, 0.2], alpha=1.5)


# ----------------------------------------------------------------------------- paired test


def test_paired_identical_inputs():
    a = {f"p{i}": v for i, v in enumerate([0.1, 0.5, 0.9, 0.3])}
    # same scores, b's dict in reverse insertion order: alignment must be by id, so every
    # difference is 0 (aligned by position d would be [-0.2, 0.2, -0.2, 0.2], CI non-zero)
    res = M.paired_comparison(a, dict(reversed(a.items())), n_boot=500, seed=0)
    assert res["diff"] == 0.0
    assert res["ci_low"] == res["ci_high"] == 0.0
    assert res["p_value"] == 1.0
    assert res["n_problems"] == 4


def test_paired_exact_enumeration_large_effect():
    # 10 problems, a - b = +1 everywhere. Of the 2^10 = 1024 sign flips only all-(+) and
    # all-(-) reach |mean| = 1 -> p = 2/1024 exactly.
    a = [1.0] * 10
    b = [0.0] * 10
    res = M.paired_comparison(a, b, n_boot=500, seed=0)
    assert res["p_value"] == pytest.approx(2 / 1024, abs=1e-15)
    assert res["p_value_method"] == "exact"
    assert res["diff"] == 1.0
    assert res["ci_low"] == res["ci_high"] == 1.0


def test_paired_exact_hand_value_mixed_signs():
    # d = a - b = [1, 1, 1, -1]; observed |sum| = 2. Sign vectors over 4 items: |sum| >= 2
    # unless exactly two signs are flipped (sum 0), which happens C(4,2) = 6 times of 16.
    # p = (16 - 6)/16 = 10/16 = 0.625
    res = M.paired_comparison([1, 1, 1, 0], [0, 0, 0, 1], n_boot=200, seed=0)
    assert res["p_value"] == pytest.approx(10 / 16)
    assert res["diff"] == pytest.approx(0.5)  # (1+1+1-1)/4


def test_paired_monte_carlo_large_effect_and_dict_alignment():
    rng = np.random.default_rng(0)
    ids = [f"q{i}" for i in range(60)]
    b = {i: float(v) for i, v in zip(ids, rng.random(60))}
    a = {i: b[i] + 0.2 + 0.05 * float(rng.standard_normal()) for i in reversed(ids)}
    res = M.paired_comparison(a, b, n_boot=1000, n_perm=2000, seed=1)
    assert res["p_value_method"] == "monte_carlo"
    # no random flip reaches the observed statistic -> minimum (0 + 1)/(2000 + 1)
    assert res["p_value"] == pytest.approx(1 / 2001)
    assert res["ci_low"] < res["diff"] < res["ci_high"]
    # paired sd of d is 0.05 -> half-width ~ 1.96*0.05/sqrt(60) = 0.013 (misaligned: ~0.1)
    assert res["ci_high"] - res["ci_low"] < 0.05
    assert 0.15 < res["diff"] < 0.25  # alignment by id: would be ~0 if order were used
    assert res == M.paired_comparison(a, b, n_boot=1000, n_perm=2000, seed=1)


def test_paired_no_effect_large_p():
    rng = np.random.default_rng(5)
    d = rng.standard_normal(40)
    d -= d.mean()  # observed mean exactly ~0 -> every flip is at least as extreme
    res = M.paired_comparison(d, np.zeros(40), n_boot=500, n_perm=999, seed=0)
    assert res["p_value"] > 0.9


def test_paired_mismatched_problem_sets_lists_ids():
    a = {"p1": 1.0, "p2": 0.0, "p3": 1.0}
    b = {"p1": 1.0, "p2": 0.0, "p4": 0.5}
    with pytest.raises(ValueError, match=r"missing from b: \['p3'\].*missing from a: \['p4'\]"):
        M.paired_comparison(a, b)
    with pytest.raises(ValueError):
        M.paired_comparison([1.0, 0.0], [1.0])
    with pytest.raises(TypeError):
        M.paired_comparison(a, [1.0, 0.0, 1.0])


# ----------------------------------------------------------------------------- summarize


def test_summarize_keys_and_values():
    correct = [[1, 0, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0]]
    answers = [["4", "5", "6", "7"], ["2", "2", "2", "2"], [None, "1", "1", "3"]]
    s = M.summarize(correct, answers=answers, seed=0, n_boot=500, prefix="aime24/")
    expected_keys = {
        "n_problems", "n_samples", "n_samples_min", "n_samples_max",
        "avg_at_4", "avg_at_4_ci_low", "avg_at_4_ci_high",
        "pass_at_1", "pass_at_2", "pass_at_4", "maj_at_1", "maj_at_2", "maj_at_4",
    }  # fmt: skip
    assert set(s) == {"aime24/" + k for k in expected_keys}
    for key in s:
        assert "@" not in key and "(" not in key and ")" not in key
    assert s["aime24/n_problems"] == 3 and s["aime24/n_samples"] == 12
    # avg = (1/4 + 1 + 0)/3 = 1.25/3
    assert s["aime24/avg_at_4"] == pytest.approx(1.25 / 3)
    assert s["aime24/avg_at_4_ci_low"] <= s["aime24/avg_at_4"] <= s["aime24/avg_at_4_ci_high"]
    # pass@2 = (1 - C(3,2)/C(4,2) = 0.5, 1, 0)/3 = 0.5
    assert s["aime24/pass_at_2"] == pytest.approx(0.5)
    # maj@4: p0 4 distinct answers, tie -> "4" (right); p1 "2" right; p2 "1" x2 wrong -> 2/3
    assert s["aime24/maj_at_4"] == pytest.approx(2 / 3)
    assert M.summarize(correct, k_list=[3], n_boot=100)["pass_at_3"] == pytest.approx(
        (1 - math.comb(3, 3) / math.comb(4, 3) + 1 + 0) / 3  # (1 - 1/4 + 1)/3 = 1.75/3
    )
    with pytest.raises(ValueError):
        M.summarize(correct, prefix="bad@name")
    with pytest.raises(ValueError, match="k=8"):
        M.summarize(correct, k_list=[8])


# ----------------------------------------------------------------------------- breakdown


def test_breakdown_groups():
    rows = []
    # easy: e1 [1,1] -> 1, e2 [1,0] -> .5 => avg .75, 2 problems, 4 samples
    # hard: h1 [0,0,0] -> 0 => avg 0, 1 problem, 3 samples
    for pid, grp, cs in [("e1", "easy", [1, 1]), ("e2", "easy", [1, 0]), ("h1", "hard", [0, 0, 0])]:
        rows += [{"problem_id": pid, "difficulty": grp, "correct": c} for c in cs]
    df = pd.DataFrame(rows)
    t = M.breakdown(df, "difficulty", n_boot=500, seed=0)
    assert list(t.index) == ["easy", "hard"]
    assert t.loc["easy", "avg"] == pytest.approx(0.75)
    assert t.loc["easy", "n_problems"] == 2 and t.loc["easy", "n_samples"] == 4
    assert t.loc["hard", "avg"] == 0.0
    assert t.loc["hard", "ci_low"] == t.loc["hard", "ci_high"] == 0.0
    assert t.loc["easy", "ci_low"] <= 0.75 <= t.loc["easy", "ci_high"]
    bad = pd.concat([df, pd.DataFrame([{"problem_id": "e1", "difficulty": "hard", "correct": 1}])])
    with pytest.raises(ValueError, match="e1"):
        M.breakdown(bad, "difficulty")
    with pytest.raises(ValueError, match="platform"):
        M.breakdown(df, "platform")
