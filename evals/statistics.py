"""Seed-aware statistics: confidence intervals and tests that count training seeds as the
unit of replication, not only the problems (docs/method.md, the evaluation section).

:func:`evals.metrics.bootstrap_ci` and :func:`evals.metrics.paired_comparison` resample
problems only. Pooling several seeds' problems into one such test treats seed-to-seed
variation (the training noise) as if it did not exist: three seeds whose differences are
+2.7, -1.2 and 0.0 points come out "significant" at p = 0.001. The functions here use

- a **hierarchical bootstrap**: each resample draws the seeds with replacement, then the
  problems of every drawn seed with replacement (a seed drawn twice gets two independent
  problem resamples); the statistic is the mean over the drawn seeds of their resampled
  means (every seed weighs the same, whatever its number of problems);
- a **sign-flip permutation test over seeds** for a design paired by seed: H0 "the per-seed
  mean differences are symmetric around 0", statistic ``|mean_s d_s|``, all ``2**m`` sign
  vectors enumerated (``m`` = seeds whose difference is not 0). With ``m`` seeds the smallest
  attainable p is ``2 / 2**m`` (returned as ``p_min``): with 3 seeds no result can reach
  p < 0.05, and the output says so rather than hiding it.

With one seed both reduce exactly to the problem-level functions (same ``seed`` argument,
same numbers); the seed variance is then unmeasured, which ``p_value_method`` says.

Inputs: ``per_seed`` maps a seed (any hashable) to that seed's per-problem scores, either a
sequence (problems aligned by position across seeds and arms) or a dict ``problem_id ->
score``. Pure functions, no I/O, deterministic under ``seed``.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

import numpy as np

from archer.validation import check_int
from evals.metrics import (
    _EXACT_PERM_MAX,
    _bootstrap_means,
    _scores,
    bootstrap_ci,
    paired_comparison,
)

__all__ = ["hierarchical_bootstrap_ci", "seed_paired_comparison", "seed_sign_flip_p"]


def _per_seed(per_seed: Mapping[Hashable, Any], name: str) -> dict[Hashable, Any]:
    if not isinstance(per_seed, Mapping) or not per_seed:
        raise ValueError(f"{name} must be a non-empty dict seed -> per-problem scores")
    return dict(per_seed)


def _as_array(scores: Any, name: str) -> np.ndarray:
    if isinstance(scores, Mapping):
        return _scores([scores[k] for k in sorted(scores, key=str)], name=name)
    return _scores(scores, name=name)


def _check_alpha(alpha: float) -> None:
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


def _hierarchical_means(xs: list[np.ndarray], n_boot: int, rng: np.random.Generator
                        ) -> np.ndarray:
    """``n_boot`` hierarchical-bootstrap means (seeds, then problems within each drawn seed)."""
    s = len(xs)
    picks = rng.integers(0, s, size=(n_boot, s))
    slot_means = np.empty((n_boot, s), dtype=float)
    for j in range(s):
        for k in range(s):
            rows = np.flatnonzero(picks[:, j] == k)
            if rows.size:
                slot_means[rows, j] = _bootstrap_means(xs[k], rows.size, rng)
    return slot_means.mean(axis=1)


def hierarchical_bootstrap_ci(per_seed: Mapping[Hashable, Any], n_boot: int = 10000,
                              alpha: float = 0.05, seed: int = 0) -> dict[str, Any]:
    """Percentile hierarchical-bootstrap CI of one arm's mean (see the module docstring).

    Returns:
        ``mean`` (mean over seeds of each seed's mean), ``ci_low``, ``ci_high``,
        ``per_seed`` (``{seed: that seed's mean}``), ``n_seeds``, ``method``. With one seed
        the interval is exactly :func:`evals.metrics.bootstrap_ci` of its scores.
    """
    seeds = _per_seed(per_seed, "per_seed")
    n_boot = check_int("n_boot", int(n_boot), 1)
    _check_alpha(alpha)
    xs = {s: _as_array(v, f"per_seed[{s!r}]") for s, v in seeds.items()}
    per_seed_means = {s: float(x.mean()) for s, x in xs.items()}
    mean = float(np.mean(list(per_seed_means.values())))
    if len(xs) == 1:
        low, high = bootstrap_ci(next(iter(xs.values())), n_boot=n_boot, alpha=alpha, seed=seed)
        method = "bootstrap over problems (1 seed: seed variance not measured)"
    else:
        means = _hierarchical_means(list(xs.values()), n_boot, np.random.default_rng(seed))
        low, high = (float(v) for v in np.quantile(means, [alpha / 2, 1 - alpha / 2]))
        method = f"hierarchical bootstrap ({len(xs)} seeds, then problems)"
    # the percentile interval of a mean contains it except by floating-point rounding
    return {"mean": mean, "ci_low": min(low, mean), "ci_high": max(high, mean),
            "per_seed": per_seed_means, "n_seeds": len(xs), "method": method}


def seed_sign_flip_p(per_seed_diffs: Any) -> tuple[float, float]:
    """Exact two-sided sign-flip p-value of per-seed mean differences, and the smallest p
    this number of seeds can give (``2 / 2**m``, ``m`` = non-zero differences; 1 when none).
    A difference within rounding error of 0 (``1e-12`` relative) counts as 0."""
    d = np.asarray(per_seed_diffs, dtype=float)
    nz = d[np.abs(d) > 1e-12 * (1.0 + np.abs(d).sum())]  # a rounding error carries no sign
    m = nz.size
    if m == 0:
        return 1.0, 1.0
    if m > _EXACT_PERM_MAX:
        raise ValueError(f"{m} seeds: the exact sign-flip test enumerates at most "
                         f"{_EXACT_PERM_MAX}; use evals.metrics.paired_comparison on the "
                         "per-seed differences")
    bits = (np.arange(2**m)[:, None] >> np.arange(m)[None, :]) & 1
    stats = np.abs((1 - 2 * bits) @ nz)
    obs = abs(nz.sum())
    tol = 1e-12 * (1.0 + np.abs(nz).sum())
    return float(np.mean(stats >= obs - tol)), float(2.0 / 2**m)


def _pair_seed(a: Any, b: Any, seed: Hashable) -> np.ndarray:
    """``a - b`` of one seed, paired by problem id (dicts: the shared ids) or position."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        ids = sorted(set(a) & set(b), key=str)
        if not ids:
            raise ValueError(f"seed {seed!r}: the two arms share no problem ids")
        return np.array([float(a[i]) - float(b[i]) for i in ids])
    if isinstance(a, Mapping) != isinstance(b, Mapping):
        raise TypeError(f"seed {seed!r}: a and b must both be dicts or both sequences")
    xa, xb = _scores(a, name=f"a[{seed!r}]"), _scores(b, name=f"b[{seed!r}]")
    if xa.size != xb.size:
        raise ValueError(f"seed {seed!r}: a has {xa.size} problems but b has {xb.size}")
    return xa - xb


def seed_paired_comparison(a: Mapping[Hashable, Any], b: Mapping[Hashable, Any],
                           n_boot: int = 10000, seed: int = 0, alpha: float = 0.05,
                           n_perm: int = 10000) -> dict[str, Any]:
    """Paired comparison of two arms over seeds and problems: ``a`` and ``b`` map seed ->
    per-problem scores; pairs are (seed, problem) present in both.

    Returns:
        ``diff`` (mean over shared seeds of the per-seed mean difference a - b),
        ``ci_low``/``ci_high`` (hierarchical bootstrap of the differences), ``p_value``
        (sign-flip over seeds; with one shared seed the problem-level sign-flip test of
        :func:`evals.metrics.paired_comparison`, same numbers), ``p_min`` (the smallest p
        attainable with these seeds; 0 for the problem-level test), ``p_value_method``,
        ``per_seed`` (``{seed: diff}``), ``n_seeds``, ``n_problems`` (pairs in all),
        ``unpaired_seeds`` (seeds only one arm has, left out).
    """
    sa, sb = _per_seed(a, "a"), _per_seed(b, "b")
    shared = [s for s in sa if s in sb]
    unpaired = sorted((set(sa) ^ set(sb)), key=str)
    if not shared:
        raise ValueError(f"the arms share no seed (a: {sorted(sa, key=str)}, b: "
                         f"{sorted(sb, key=str)}): a paired comparison needs common seeds")
    shared.sort(key=str)
    diffs = {s: _pair_seed(sa[s], sb[s], s) for s in shared}
    ci = hierarchical_bootstrap_ci(diffs, n_boot=n_boot, alpha=alpha, seed=seed)
    out: dict[str, Any] = {"diff": ci["mean"], "ci_low": ci["ci_low"], "ci_high": ci["ci_high"]}
    if len(shared) == 1:
        (s,) = shared
        x = diffs[s]
        problem = paired_comparison(x, np.zeros_like(x), n_boot=n_boot, n_perm=n_perm,
                                    seed=seed, alpha=alpha)
        out |= {"ci_low": problem["ci_low"], "ci_high": problem["ci_high"],
                "p_value": problem["p_value"], "p_min": 0.0,
                "p_value_method": f"sign-flip over problems ({problem['p_value_method']}; "
                                  "1 seed: seed variance not measured)"}
    else:
        p, p_min = seed_sign_flip_p(list(ci["per_seed"].values()))
        out |= {"p_value": p, "p_min": p_min,
                "p_value_method": f"exact sign-flip over {len(shared)} seeds (smallest "
                                  f"attainable p = {p_min:.3g})"}
    out |= {"per_seed": ci["per_seed"], "n_seeds": len(shared),
            "n_problems": int(sum(d.size for d in diffs.values())),
            "unpaired_seeds": unpaired, "ci_method": ci["method"]}
    return out
