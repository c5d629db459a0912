"""The estimators behind every reported number: pass@k against brute force over subsets,
and the bootstrap CI's coverage in simulation."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from evals import metrics as M


def brute_force_pass_at_k(row: list[int], k: int) -> float:
    """Expectation over every size-k subset of the n samples of 'some sample is correct'."""
    subsets = list(itertools.combinations(range(len(row)), k))
    return sum(any(row[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_pass_at_k_equals_expectation_over_subsets(n):
    rng = np.random.default_rng(n)
    for _ in range(6):
        row = rng.integers(0, 2, n).tolist()
        for k in range(1, n + 1):
            assert M.pass_at_k(n, sum(row), k) == pytest.approx(
                brute_force_pass_at_k(row, k), abs=1e-12)


def test_pass_at_k_hand_values():
    # n=4, c=2, k=2: subsets of 2 from 4 = 6; those with no correct sample: C(2,2)=1 -> 5/6
    assert M.pass_at_k(4, 2, 2) == pytest.approx(5 / 6)
    # n=3, c=1, k=2: 1 - C(2,2)/C(3,2) = 1 - 1/3
    assert M.pass_at_k(3, 1, 2) == pytest.approx(2 / 3)
    # dataset: problems [1,0,0,0] and [1,1,0,0] at k=2 -> (1 - 3/6 + 5/6) / 2 = 2/3
    assert M.pass_at_k_all([[1, 0, 0, 0], [1, 1, 0, 0]], ks=[2])[2] == pytest.approx(2 / 3)


def test_unbiased_pass_at_k_is_unbiased_and_max_is_not():
    """Simulated: the mean of the estimator over many draws equals the true pass@k; the
    'max over k samples drawn at pass@1 = p' reference equals it only because it is exactly
    that quantity, while the biased 'any of n correct' over-estimates pass@k for k < n."""
    rng = np.random.default_rng(0)
    p, n, k, reps = 0.2, 8, 2, 20000
    draws = rng.random((reps, n)) < p
    est = np.mean([M.pass_at_k(n, int(c), k) for c in draws.sum(axis=1)])
    true = 1 - (1 - p) ** k  # 0.36
    assert est == pytest.approx(true, abs=0.01)
    biased = draws.any(axis=1).mean()  # 1 - 0.8**8 = 0.832
    assert biased > true + 0.4


def test_bootstrap_ci_covers_the_true_value_about_95_percent():
    """Per-problem accuracies of P problems drawn from a known population: the 95% CI of
    their mean must contain the population mean in roughly 95% of repetitions."""
    rng = np.random.default_rng(1)
    true_rates = rng.beta(0.6, 1.4, size=5000)  # a skewed population of problem difficulties
    truth = true_rates.mean()
    hits, reps, P, k = 0, 300, 60, 4
    for r in range(reps):
        rates = rng.choice(true_rates, size=P)
        acc = rng.binomial(k, rates) / k  # avg@k of each sampled problem
        low, high = M.bootstrap_ci(acc, n_boot=1000, seed=r)
        hits += low <= truth <= high
    coverage = hits / reps
    # binomial sd at 95% over 300 reps = 1.3%; percentile bootstrap runs a little narrow
    assert 0.89 <= coverage <= 0.99, coverage


def test_paired_comparison_detects_a_real_difference_and_not_a_null_one():
    rng = np.random.default_rng(2)
    base = rng.random(200)
    better = np.clip(base + 0.1, 0, 1)
    res = M.paired_comparison(better, base, seed=0)
    assert res["diff"] > 0.05 and res["ci_low"] > 0 and res["p_value"] < 0.001
    null = M.paired_comparison(base, rng.permutation(base), seed=0)
    assert null["ci_low"] < null["diff"] < null["ci_high"]


# --------------------------------------------------------------------------------------------
# seed-aware statistics (evals/statistics.py)
# --------------------------------------------------------------------------------------------

from evals import statistics as S  # noqa: E402


def _seeded_diffs(seed_means, n=200, noise=0.05, rng_seed=0):
    """Per-seed per-problem scores of two arms whose per-seed mean difference is exactly
    ``seed_means[s]`` (noise of zero mean added per problem, then re-centred)."""
    rng = np.random.default_rng(rng_seed)
    a, b = {}, {}
    for s, m in enumerate(seed_means):
        base = rng.random(n)
        e = rng.normal(0, noise, n)
        e -= e.mean()
        b[s] = {f"p{i}": float(v) for i, v in enumerate(base)}
        a[s] = {f"p{i}": float(v + m + x) for i, (v, x) in enumerate(zip(base, e))}
    return a, b


def test_one_seed_reduces_to_the_problem_bootstrap():
    rng = np.random.default_rng(3)
    x = rng.random(40)
    y = rng.random(40)
    ci = S.hierarchical_bootstrap_ci({0: x}, n_boot=2000, seed=5)
    assert (ci["ci_low"], ci["ci_high"]) == M.bootstrap_ci(x, n_boot=2000, seed=5)
    assert ci["mean"] == pytest.approx(x.mean()) and ci["n_seeds"] == 1
    res = S.seed_paired_comparison({7: x}, {7: y}, n_boot=2000, seed=5)
    ref = M.paired_comparison(x, y, n_boot=2000, seed=5)
    assert (res["diff"], res["ci_low"], res["ci_high"], res["p_value"]) == pytest.approx(
        (ref["diff"], ref["ci_low"], ref["ci_high"], ref["p_value"]), abs=1e-12)
    assert "1 seed" in res["p_value_method"] and res["per_seed"] == {7: pytest.approx(ref["diff"])}


def test_seeds_that_disagree_are_not_significant_while_pooled_problems_are():
    """Per-seed differences +10, -2, +1 (points) on identical problem sets: the seed-aware
    CI covers 0 and p is large; pooling the problems of all seeds says 'significant'."""
    a, b = _seeded_diffs([10.0, -2.0, 1.0], noise=0.5)
    res = S.seed_paired_comparison(a, b, n_boot=4000, seed=0)
    assert res["diff"] == pytest.approx(3.0)
    assert [res["per_seed"][s] for s in range(3)] == pytest.approx([10.0, -2.0, 1.0])
    assert res["ci_low"] < 0 < res["ci_high"]
    # signs of (10, -2, 1): |sum| >= 9 for (+,+,+) (+,-,+) (+,+,-) and their negations -> 6/8
    assert res["p_value"] == pytest.approx(6 / 8)
    assert res["p_min"] == pytest.approx(0.25) and "smallest attainable p = 0.25" in res[
        "p_value_method"]
    pooled_a = [v for s in range(3) for v in a[s].values()]
    pooled_b = [v for s in range(3) for v in b[s].values()]
    naive = M.paired_comparison(pooled_a, pooled_b, n_boot=2000, seed=0)
    assert naive["p_value"] < 0.001 and naive["ci_low"] > 0


def test_the_issues_example_is_not_significant():
    """Per-seed diffs +2.7, -1.2, 0.0: pooled over problems 'p = 0.001'-style significance;
    the seed-level sign-flip test (the 0.0 seed carries no sign) gives p = 1."""
    a, b = _seeded_diffs([2.7, -1.2, 0.0], noise=0.3, rng_seed=1)
    res = S.seed_paired_comparison(a, b, n_boot=4000, seed=0)
    assert res["diff"] == pytest.approx(1.5 / 3)
    assert res["p_value"] == pytest.approx(1.0) and res["p_min"] == pytest.approx(0.5)
    assert res["ci_low"] < 0 < res["ci_high"]
    pooled_a = [v for s in range(3) for v in a[s].values()]
    pooled_b = [v for s in range(3) for v in b[s].values()]
    assert M.paired_comparison(pooled_a, pooled_b, n_boot=1000, seed=0)["p_value"] < 0.01


def test_invariants_point_in_ci_and_swapping_arms():
    a, b = _seeded_diffs([0.3, 0.1, 0.2, -0.05], n=30, noise=0.2, rng_seed=2)
    ab = S.seed_paired_comparison(a, b, n_boot=3000, seed=1)
    ba = S.seed_paired_comparison(b, a, n_boot=3000, seed=1)
    assert ab["ci_low"] <= ab["diff"] <= ab["ci_high"]
    assert ba["diff"] == pytest.approx(-ab["diff"])
    assert ba["p_value"] == pytest.approx(ab["p_value"])
    assert (ba["ci_low"], ba["ci_high"]) == pytest.approx((-ab["ci_high"], -ab["ci_low"]))
    ci = S.hierarchical_bootstrap_ci(a, n_boot=3000, seed=0)
    assert ci["ci_low"] <= ci["mean"] <= ci["ci_high"]
    # seed variance widens the interval: the hierarchical CI is wider than the problem one
    pooled = [v for s in a for v in a[s].values()]
    lo, hi = M.bootstrap_ci(pooled, n_boot=3000, seed=0)
    assert ci["ci_high"] - ci["ci_low"] > hi - lo


def test_pairs_are_seed_and_problem_both_arms_have():
    a = {0: {"p0": 1.0, "p1": 0.0, "p2": 1.0}, 1: {"p0": 1.0, "p1": 1.0}, 2: {"p0": 0.0}}
    b = {0: {"p0": 0.0, "p1": 0.0}, 1: {"p0": 0.0, "p1": 0.0}}
    res = S.seed_paired_comparison(a, b, n_boot=500)
    # seed 0: p0, p1 -> [1, 0] mean .5; seed 1: [1, 1] mean 1; seed 2 only in a
    assert res["per_seed"] == {0: 0.5, 1: 1.0} and res["unpaired_seeds"] == [2]
    assert res["diff"] == pytest.approx(0.75) and res["n_problems"] == 4
    assert res["p_value"] == pytest.approx(0.5)  # 2 seeds, both positive: 2 / 4
    with pytest.raises(ValueError, match="share no seed"):
        S.seed_paired_comparison({0: [1.0]}, {1: [1.0]})
    with pytest.raises(ValueError, match="non-empty dict"):
        S.hierarchical_bootstrap_ci({})
    assert S.seed_sign_flip_p([0.0, 0.0]) == (1.0, 1.0)
