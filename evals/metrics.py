"""Evaluation metrics over per-sample correctness (docs/method.md, section 5).

Pure functions only: no I/O, no global RNG state, no MLflow import.

Conventions used throughout
---------------------------
``correct``
    Per-sample correctness, one row per problem and one entry per sample. Either a 2-D
    array-like of shape ``(P, n)`` or a list of ``P`` lists whose lengths ``n_i`` may differ
    (for example when some generations failed). Entries are 0/1 or booleans. Every problem
    must have at least one sample.
``answers``
    Same (possibly ragged) shape as ``correct``: the normalised extracted answer of every
    sample (any hashable, usually ``str``), or ``None`` when nothing could be extracted.
per-problem scores
    1-D array-like of shape ``(P,)`` of finite floats, one per problem (e.g. per-problem
    accuracy). All confidence intervals and tests here resample *problems*, never samples,
    and know nothing of training seeds: for results of several seeds use
    :mod:`evals.statistics` (hierarchical bootstrap, sign-flip test over seeds).

All returned metric values are fractions in ``[0, 1]`` (not percentages), as Python floats.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any, Literal

import numpy as np

from archer.validation import check_int

__all__ = [
    "avg_at_k",
    "bootstrap_ci",
    "breakdown",
    "maj_at_k",
    "maj_at_k_avg",
    "paired_comparison",
    "pass_at_k",
    "pass_at_k_all",
    "per_problem_accuracy",
    "per_problem_pass_at_k",
    "summarize",
]

# Upper bound on the number of elements of the temporary matrices built by the vectorised
# bootstrap / permutation code, so memory stays bounded (~32 MiB of float64) for any input.
_CHUNK_ELEMS = 1 << 22
# Sign-flip tests enumerate all 2**m sign vectors exactly when m (non-zero differences) <= this.
_EXACT_PERM_MAX = 16
_METRIC_PREFIX_RE = re.compile(r"^[A-Za-z0-9_\-./ ]*$")


# --------------------------------------------------------------------------------------------
# input handling
# --------------------------------------------------------------------------------------------


def _rows(correct: Any, *, name: str = "correct", binary: bool = True) -> list[np.ndarray]:
    """Convert ``(P, n)`` or ragged per-sample correctness into a list of 1-D float arrays."""
    if isinstance(correct, np.ndarray):
        if correct.ndim != 2:
            raise ValueError(f"{name} must be 2-D (problems, samples), got shape {correct.shape}")
        raw: Iterable[Any] = list(correct)
    elif isinstance(correct, (str, bytes)) or not isinstance(correct, Iterable):
        raise TypeError(f"{name} must be a 2-D array or a list of per-problem lists")
    else:
        raw = list(correct)
    rows: list[np.ndarray] = []
    for i, r in enumerate(raw):
        arr = np.asarray(r, dtype=float)
        if arr.ndim != 1:
            raise ValueError(f"{name}[{i}] must be a 1-D sequence of per-sample values")
        if arr.size == 0:
            raise ValueError(f"{name}[{i}] has no samples")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name}[{i}] contains non-finite values")
        if binary and not np.all((arr == 0.0) | (arr == 1.0)):
            raise ValueError(f"{name}[{i}] must contain only 0/1 (or bool) values")
        if not binary and (arr.min() < 0.0 or arr.max() > 1.0):
            raise ValueError(f"{name}[{i}] values must lie in [0, 1]")
        rows.append(arr)
    if not rows:
        raise ValueError(f"{name} has no problems")
    return rows


def _scores(x: Any, *, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one score per problem), got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains non-finite values")
    return arr


def _int(value: Any) -> Any:
    """A numpy integer as a Python int (for :func:`archer.validation.check_int`)."""
    return int(value) if isinstance(value, np.integer) else value


# --------------------------------------------------------------------------------------------
# avg@k / pass@k
# --------------------------------------------------------------------------------------------


def per_problem_accuracy(correct: Any, k: int | None = None) -> np.ndarray:
    """Per-problem mean correctness.

    Args:
        correct: ``(P, n)`` array or ragged list of per-sample correctness. Values in [0, 1]
            are accepted (partial credit), usually 0/1.
        k: if given, only the first ``k`` samples of each problem are used; every problem needs
            at least ``k`` samples.

    Returns:
        float array of shape ``(P,)``.
    """
    rows = _rows(correct, binary=False)
    if k is not None:
        k = check_int("k", _int(k), 1)
        short = [i for i, r in enumerate(rows) if r.size < k]
        if short:
            raise ValueError(
                f"k={k} exceeds the number of samples n of problems {short[:20]} "
                f"(n={rows[short[0]].size} for problem {short[0]})"
            )
        rows = [r[:k] for r in rows]
    return np.array([r.mean() for r in rows], dtype=float)


def avg_at_k(correct: Any, k: int | None = None) -> float:
    """avg@K: mean over problems of the per-problem mean over samples (pass@1 estimated from n).

    Each problem gets equal weight regardless of how many samples it has.

    Args:
        correct: ``(P, n)`` array or ragged list of per-sample 0/1 correctness.
        k: optionally use only the first ``k`` samples per problem.

    Returns:
        avg@K as a float in [0, 1].
    """
    return float(per_problem_accuracy(correct, k).mean())


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k estimator for one problem: ``1 - C(n-c, k) / C(n, k)``.

    Computed in the numerically stable product form of Chen et al. (2021, Codex paper):
    ``1 - prod_{i=n-c+1}^{n} (1 - k / i)``, which never forms the huge binomials.

    Args:
        n: number of samples drawn for the problem (>= 1).
        c: number of correct samples, ``0 <= c <= n``.
        k: budget, ``1 <= k <= n``.

    Returns:
        Probability that at least one of ``k`` samples drawn without replacement from the
        ``n`` is correct. 0 when ``c == 0``; 1 when ``n - c < k``.

    Raises:
        ValueError: ``k > n`` (the estimator is undefined), or arguments out of range.
    """
    n = check_int("n", _int(n), 1)
    c = check_int("c", _int(c), 0, n)
    k = check_int("k", _int(k), 1)
    if k > n:
        raise ValueError(f"pass@k is undefined for k > n: got k={k}, n={n}")
    if n - c < k:
        return 1.0
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1, dtype=float)))


def per_problem_pass_at_k(correct: Any, k: int) -> np.ndarray:
    """Per-problem unbiased pass@k, shape ``(P,)``; ``k`` must be <= every problem's n."""
    rows = _rows(correct)
    cache: dict[tuple[int, int], float] = {}
    out = np.empty(len(rows), dtype=float)
    for i, r in enumerate(rows):
        key = (int(r.size), int(r.sum()))
        if key not in cache:
            try:
                cache[key] = pass_at_k(key[0], key[1], k)
            except ValueError as e:
                raise ValueError(f"problem {i}: {e}") from None
        out[i] = cache[key]
    return out


def _default_ks(n: int, mode: Literal["all", "pow2"]) -> list[int]:
    if mode == "all":
        return list(range(1, n + 1))
    if mode == "pow2":
        ks = [1 << j for j in range(n.bit_length()) if (1 << j) <= n]
        return sorted(set(ks) | {n})
    raise ValueError(f"ks must be 'all', 'pow2' or a list of ints, got {mode!r}")


def pass_at_k_all(
    correct: Any, ks: Literal["all", "pow2"] | Iterable[int] = "all"
) -> dict[int, float]:
    """Dataset pass@k (mean over problems of the unbiased per-problem estimate) for many k.

    Args:
        correct: ``(P, n)`` array or ragged list of per-sample 0/1 correctness.
        ks: ``"all"`` -> every ``k`` in ``1..n``; ``"pow2"`` -> powers of two ``<= n`` plus
            ``n`` itself; or an explicit iterable of ints. With ragged input ``n`` is the
            smallest per-problem sample count.

    Returns:
        ``{k: pass@k}`` ordered by increasing ``k``. ``pass@1`` equals :func:`avg_at_k`.

    Raises:
        ValueError: an explicit ``k`` exceeds some problem's ``n``.
    """
    rows = _rows(correct)
    n_min = min(r.size for r in rows)
    if isinstance(ks, str):
        k_list = _default_ks(n_min, ks)  # type: ignore[arg-type]
    else:
        k_list = sorted({check_int("k", _int(k), 1) for k in ks})
    return {k: float(per_problem_pass_at_k(rows, k).mean()) for k in k_list}


# --------------------------------------------------------------------------------------------
# maj@k
# --------------------------------------------------------------------------------------------


def _encode_answers(answers: Any, correct: Any) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per problem: (int codes with -1 for None, 0/1 correctness), shapes checked."""
    rows = _rows(correct)
    ans = list(answers)
    if len(ans) != len(rows):
        raise ValueError(f"answers has {len(ans)} problems but correct has {len(rows)}")
    out = []
    for i, (a_row, c_row) in enumerate(zip(ans, rows)):
        a_row = list(a_row)
        if len(a_row) != c_row.size:
            raise ValueError(
                f"problem {i}: answers has {len(a_row)} samples but correct has {c_row.size}"
            )
        table: dict[Hashable, int] = {}
        codes = np.array(
            [-1 if a is None else table.setdefault(a, len(table)) for a in a_row], dtype=np.int64
        )
        out.append((codes, c_row))
    return out


def _majority_correct(codes: np.ndarray, corr: np.ndarray) -> np.ndarray:
    """Majority vote per row of ``codes`` (m, k) with -1 = no vote; ties -> first occurrence.

    ``corr`` (m, k) is the per-sample correctness aligned with ``codes``. The verdict of a row
    is the correctness of the first sample (in row order) that carries the winning answer.
    Rows where nobody votes count as incorrect. Returns a bool array (m,).
    """
    m, k = codes.shape
    n_ans = int(codes.max()) + 1 if codes.size else 0
    if n_ans <= 0:
        return np.zeros(m, dtype=bool)
    out = np.empty(m, dtype=bool)
    step = max(1, _CHUNK_ELEMS // (k * n_ans))
    labels = np.arange(n_ans)
    for s in range(0, m, step):
        cc, rr = codes[s : s + step], corr[s : s + step]
        eq = cc[:, :, None] == labels[None, None, :]  # (b, k, U)
        counts = eq.sum(axis=1)  # (b, U)
        present = counts > 0
        first = np.where(present, eq.argmax(axis=1), k)  # first position of each answer
        # more votes wins; among equal counts the smaller first position wins.
        # Absent answers score -k, present ones score >= 2, so they never win.
        score = counts * (k + 1) - first
        win = score.argmax(axis=1)
        rows_ix = np.arange(cc.shape[0])
        win_pos = first[rows_ix, win]
        voted = present.any(axis=1)
        verdict = rr[rows_ix, np.minimum(win_pos, k - 1)] == 1.0
        out[s : s + step] = voted & verdict
    return out


def maj_at_k(answers: Any, correct: Any, k: int) -> float:
    """maj@k over the first ``k`` samples of each problem.

    For each problem the first ``k`` samples vote with their normalised answer; ``None``
    answers (nothing extracted) never vote. The answer with most votes wins; ties go to the
    answer that occurs first among those ``k`` samples. The problem counts as solved when the
    winning answer is correct (read from its first occurrence; equal normalised answers are
    assumed to be graded identically). A problem where no sample voted counts as unsolved.

    Args:
        answers: list of P lists of normalised answers (``str``/hashable or ``None``).
        correct: same shape, per-sample 0/1 correctness.
        k: number of leading samples that vote, ``1 <= k <= n_i`` for every problem.

    Returns:
        Fraction of problems whose majority answer is correct.
    """
    k = check_int("k", _int(k), 1)
    probs = _encode_answers(answers, correct)
    solved = []
    for i, (codes, corr) in enumerate(probs):
        if k > codes.size:
            raise ValueError(f"maj@k needs k <= n: problem {i} has k={k}, n={codes.size}")
        solved.append(_majority_correct(codes[None, :k], corr[None, :k])[0])
    return float(np.mean(solved))


def maj_at_k_avg(answers: Any, correct: Any, k: int, n_subsets: int = 1000, seed: int = 0) -> float:
    """maj@k averaged over size-``k`` subsets of each problem's ``n`` samples.

    Lower-variance than :func:`maj_at_k` when ``n > k``: for each problem the majority-vote
    verdict (same rules as :func:`maj_at_k`, subsets keep the original sample order for tie
    breaking) is averaged over all ``C(n, k)`` subsets when ``C(n, k) <= n_subsets`` (exact),
    otherwise over ``n_subsets`` subsets drawn uniformly without replacement (Monte Carlo,
    deterministic under ``seed``). With ``k == n`` it equals :func:`maj_at_k`.

    Returns:
        Mean over problems of the expected per-problem majority-vote accuracy.
    """
    k = check_int("k", _int(k), 1)
    n_subsets = check_int("n_subsets", _int(n_subsets), 1)
    probs = _encode_answers(answers, correct)
    rng = np.random.default_rng(seed)
    per_problem = []
    for i, (codes, corr) in enumerate(probs):
        n = codes.size
        if k > n:
            raise ValueError(f"maj@k needs k <= n: problem {i} has k={k}, n={n}")
        if math.comb(n, k) <= n_subsets:
            idx = np.array(list(itertools.combinations(range(n), k)), dtype=np.int64)
        else:
            idx = np.sort(np.argsort(rng.random((n_subsets, n)), axis=1)[:, :k], axis=1)
        per_problem.append(_majority_correct(codes[idx], corr[idx]).mean())
    return float(np.mean(per_problem))


# --------------------------------------------------------------------------------------------
# bootstrap / paired tests
# --------------------------------------------------------------------------------------------


def _bootstrap_means(x: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    p = x.size
    means = np.empty(n_boot, dtype=float)
    step = max(1, _CHUNK_ELEMS // p)
    for s in range(0, n_boot, step):
        b = min(step, n_boot - s)
        means[s : s + b] = x[rng.integers(0, p, size=(b, p))].mean(axis=1)
    return means


def bootstrap_ci(
    per_problem_scores: Any, n_boot: int = 10000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap CI for the mean of per-problem scores.

    Problems are resampled with replacement (not samples within a problem), ``n_boot`` times;
    the interval is the ``alpha/2`` and ``1 - alpha/2`` quantiles of the resampled means.
    Vectorised numpy, memory bounded by chunking; deterministic under ``seed``.

    Args:
        per_problem_scores: shape ``(P,)``, e.g. :func:`per_problem_accuracy` output.
        n_boot: number of bootstrap resamples (>= 1).
        alpha: 1 - confidence level, in (0, 1).
        seed: anything ``numpy.random.default_rng`` accepts (int or ``SeedSequence``).

    Returns:
        ``(low, high)``; zero width when all scores are equal.
    """
    x = _scores(per_problem_scores, name="per_problem_scores")
    n_boot = check_int("n_boot", _int(n_boot), 1)
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    means = _bootstrap_means(x, n_boot, np.random.default_rng(seed))
    low, high = np.quantile(means, [alpha / 2.0, 1.0 - alpha / 2.0])
    return float(low), float(high)


def _align(a: Any, b: Any) -> tuple[np.ndarray, np.ndarray]:
    a_map, b_map = isinstance(a, Mapping), isinstance(b, Mapping)
    if a_map != b_map:
        raise TypeError("a and b must both be dicts (problem id -> score) or both sequences")
    if not a_map:
        xa, xb = _scores(a, name="a"), _scores(b, name="b")
        if xa.size != xb.size:
            raise ValueError(f"a has {xa.size} problems but b has {xb.size}")
        return xa, xb
    only_a = sorted(set(a) - set(b), key=str)
    only_b = sorted(set(b) - set(a), key=str)
    if only_a or only_b:

        def show(ids: list) -> str:
            more = f" ... and {len(ids) - 20} more" if len(ids) > 20 else ""
            return "[" + ", ".join(repr(i) for i in ids[:20]) + "]" + more

        raise ValueError(
            "a and b cover different problem sets: "
            f"missing from b: {show(only_a)}; missing from a: {show(only_b)}"
        )
    keys = list(a)
    return _scores([a[key] for key in keys], name="a"), _scores([b[key] for key in keys], name="b")


def paired_comparison(
    a: Mapping[Hashable, float] | Sequence[float] | np.ndarray,
    b: Mapping[Hashable, float] | Sequence[float] | np.ndarray,
    n_boot: int = 10000,
    n_perm: int = 10000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """Paired comparison of two systems' per-problem scores on the same problems.

    Args:
        a, b: per-problem scores (e.g. per-problem accuracy), either both dicts
            ``problem_id -> score`` (aligned by id; the id sets must match) or both
            sequences already aligned by position.
        n_boot: paired bootstrap resamples (problems resampled jointly in a and b).
        n_perm: Monte Carlo sign flips, used only when more than 16 differences are non-zero.
        seed: RNG seed (bootstrap and permutation draws); results are deterministic.
        alpha: 1 - confidence level of the bootstrap interval.

    Returns:
        dict with ``diff`` = mean(a - b); ``ci_low``/``ci_high`` = percentile paired bootstrap
        CI of ``diff``; ``p_value`` = two-sided paired sign-flip permutation test of
        H0 "a - b is symmetric around 0" with statistic ``|mean(s * (a - b))|``;
        ``p_value_method`` = ``"exact"`` (all ``2**m`` sign vectors enumerated, ``m`` = number
        of non-zero differences <= 16, which covers every ``n_problems <= 16``; zero
        differences cannot change the statistic) or ``"monte_carlo"``
        (``(count + 1) / (n_perm + 1)``, random flips counted with the observed one);
        ``n_problems``.

    Raises:
        ValueError: the dicts cover different problem ids (message lists the missing ids
            on each side), lengths differ, or inputs are empty/non-finite.
    """
    xa, xb = _align(a, b)
    n_perm = check_int("n_perm", _int(n_perm), 1)
    d = xa - xb
    ss = np.random.SeedSequence(seed)
    boot_seed, perm_seed = ss.spawn(2)
    ci_low, ci_high = bootstrap_ci(d, n_boot=n_boot, alpha=alpha, seed=boot_seed)

    nz = d[d != 0.0]
    m = nz.size
    obs = abs(nz.sum())
    tol = 1e-12 * (1.0 + np.abs(nz).sum())  # sums equal in exact arithmetic must count as >=
    if m == 0:
        p_value, method = 1.0, "exact"
    elif m <= _EXACT_PERM_MAX:
        # all 2**m sign vectors as rows: bit j of row i gives the sign of difference j
        bits = (np.arange(2**m)[:, None] >> np.arange(m)[None, :]) & 1
        stats = np.abs((1 - 2 * bits) @ nz)
        p_value, method = float(np.mean(stats >= obs - tol)), "exact"
    else:
        rng = np.random.default_rng(perm_seed)
        count = 0
        step = max(1, _CHUNK_ELEMS // m)
        for s in range(0, n_perm, step):
            bsz = min(step, n_perm - s)
            signs = 1 - 2 * rng.integers(0, 2, size=(bsz, m))
            count += int(np.count_nonzero(np.abs(signs @ nz) >= obs - tol))
        p_value, method = (count + 1) / (n_perm + 1), "monte_carlo"
    return {
        "diff": float(d.mean()),
        "ci_low": ci_low,
        "ci_high": ci_high,
        "p_value": float(p_value),
        "p_value_method": method,
        "n_problems": int(d.size),
    }


# --------------------------------------------------------------------------------------------
# summaries
# --------------------------------------------------------------------------------------------


def summarize(
    correct: Any,
    k_list: Iterable[int] | None = None,
    answers: Any = None,
    seed: int = 0,
    *,
    n_boot: int = 10000,
    alpha: float = 0.05,
    prefix: str = "",
) -> dict[str, float | int]:
    """One benchmark's metrics as a flat, MLflow-safe dict.

    Keys (``prefix`` prepended to each; no ``@`` or parentheses anywhere):

    - ``n_problems``: P; ``n_samples``: total graded samples (sum of n_i);
      ``n_samples_min`` / ``n_samples_max``: smallest / largest per-problem n.
    - ``avg_at_{N}`` with ``N = n_samples_max`` (the nominal K; equal to n for rectangular
      input), plus ``avg_at_{N}_ci_low`` / ``avg_at_{N}_ci_high``: percentile bootstrap over
      problems of per-problem accuracy (:func:`bootstrap_ci`, ``n_boot``, ``alpha``, ``seed``).
    - ``pass_at_{k}`` for each k in ``k_list`` (default: powers of two <= n_samples_min plus
      n_samples_min), unbiased estimator.
    - ``maj_at_{k}`` for the same ks, only when ``answers`` is given (first-k majority vote,
      :func:`maj_at_k`).

    Args:
        correct: ``(P, n)`` array or ragged list of per-sample 0/1 correctness.
        k_list: ks for pass@k / maj@k; each must be <= every problem's n.
        answers: optional normalised answers, same shape as ``correct``.
        seed: bootstrap seed.
        prefix: namespace such as ``"aime24/"``; letters, digits, ``_ - . /`` and space only.

    Returns:
        ``{name: value}``: rates are floats in [0, 1], counts are ints.
    """
    if not _METRIC_PREFIX_RE.match(prefix):
        raise ValueError(f"prefix {prefix!r} has characters MLflow metric names do not allow")
    rows = _rows(correct)
    sizes = [r.size for r in rows]
    n_min, n_max = min(sizes), max(sizes)
    ks = (
        _default_ks(n_min, "pow2")
        if k_list is None
        else sorted({check_int("k", _int(k), 1) for k in k_list})
    )
    acc = per_problem_accuracy(rows)
    low, high = bootstrap_ci(acc, n_boot=n_boot, alpha=alpha, seed=seed)
    out: dict[str, float | int] = {
        "n_problems": len(rows),
        "n_samples": int(sum(sizes)),
        "n_samples_min": int(n_min),
        "n_samples_max": int(n_max),
        f"avg_at_{n_max}": float(acc.mean()),
        f"avg_at_{n_max}_ci_low": low,
        f"avg_at_{n_max}_ci_high": high,
    }
    for k in ks:
        out[f"pass_at_{k}"] = float(per_problem_pass_at_k(rows, k).mean())
    if answers is not None:
        for k in ks:
            out[f"maj_at_{k}"] = maj_at_k(answers, rows, k)
    return {f"{prefix}{name}": value for name, value in out.items()}


def breakdown(
    df: Any,
    by: str,
    *,
    problem_col: str = "problem_id",
    correct_col: str = "correct",
    n_boot: int = 2000,
    alpha: float = 0.05,
    seed: int = 0,
) -> Any:
    """Per-group (difficulty, platform, ...) avg accuracy with bootstrap CI.

    Args:
        df: pandas DataFrame in long format, one row per sample, with columns
            ``problem_col``, ``by`` and ``correct_col`` (0/1 or bool). Each problem must belong
            to exactly one group; rows whose group is NaN form their own group.
        by: name of the grouping column.
        n_boot, alpha, seed: as in :func:`bootstrap_ci` (same seed for every group).

    Returns:
        DataFrame indexed by group value (index name ``by``, sorted) with columns
        ``n_problems`` (int), ``n_samples`` (int), ``avg`` (mean over the group's problems of
        per-problem accuracy), ``ci_low``, ``ci_high``.
    """
    import pandas as pd

    missing = [c for c in (problem_col, by, correct_col) if c not in df.columns]
    if missing:
        raise ValueError(f"df lacks columns {missing}; has {list(df.columns)}")
    if len(df) == 0:
        raise ValueError("df is empty")
    vals = df[correct_col].astype(float).to_numpy()
    if not np.all((vals == 0.0) | (vals == 1.0)):
        raise ValueError(f"column {correct_col!r} must contain only 0/1 (or bool) values")
    n_groups = df.groupby(problem_col, dropna=False)[by].nunique(dropna=False)
    multi = n_groups[n_groups > 1]
    if len(multi):
        raise ValueError(f"problems appear in several {by!r} groups: {list(multi.index)[:20]}")
    data = pd.DataFrame({"g": df[by], "p": df[problem_col], "c": vals})
    per_problem = data.groupby(["g", "p"], dropna=False, sort=True)["c"].agg(["mean", "size"])
    records = []
    for g, sub in per_problem.groupby(level="g", dropna=False, sort=True):
        acc = sub["mean"].to_numpy()
        low, high = bootstrap_ci(acc, n_boot=n_boot, alpha=alpha, seed=seed)
        records.append(
            {
                by: g,
                "n_problems": int(acc.size),
                "n_samples": int(sub["size"].sum()),
                "avg": float(acc.mean()),
                "ci_low": low,
                "ci_high": high,
            }
        )
    return pd.DataFrame.from_records(records).set_index(by)
