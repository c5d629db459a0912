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
