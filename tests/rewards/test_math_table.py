"""Table-driven tests of the math grader (archer.rewards.math): one row per case
``(completion, gold, expected reason)``, graded end to end (extraction, normaliser, sympy,
Math-Verify, worker time limits), plus the AIME/AMC answer formats of the offline eval sets
graded against themselves and against their neighbours."""

from __future__ import annotations

import json
import time

import pytest
from proc_helpers import offline_data_dir

from archer.rewards.math import MathGrader, MathGraderConfig

# Answers that make the table's extra checker misbehave (see _table_checker).
SENTINELS = ("hang", "raise", "base_exception")

TABLE: list[tuple[str, str | None, str]] = [
    # ---- equivalent: the string normaliser --------------------------------------------------
    (r"\boxed{025}", "25", "correct"),  # AIME zero padding
    (r"\boxed{007}", "7", "correct"),
    (r"\boxed{27}", "27.0", "correct"),  # AMC golds are floats
    (r"\boxed{27.0}", "27", "correct"),
    (r"\boxed{\dfrac{1}{2}}", "0.5", "correct"),
    (r"\boxed{\frac12}", r"\frac{1}{2}", "correct"),
    (r"\boxed{1/2}", r"\tfrac{1}{2}", "correct"),
    (r"\boxed{\dfrac{3}{4}}", "0.75", "correct"),
    (r"\boxed{1.5}", r"\frac{3}{2}", "correct"),
    (r"\boxed{50\%}", "50", "correct"),
    (r"\boxed{30^\circ}", "30", "correct"),
    (r"\boxed{45^{\circ}}", r"45^\circ", "correct"),
    (r"\boxed{12\text{ cm}}", "12", "correct"),
    (r"\boxed{5 \text{ dollars}}", "5", "correct"),
    (r"\boxed{\$1,000}", "1000", "correct"),
    (r"\boxed{11,\!111}", "11111", "correct"),
    (r"\boxed{-3}", "\u22123", "correct"),  # unicode minus
    (r"\boxed{\text{(B)}}", "B", "correct"),
    (r"\boxed{\text{Monday}}", "monday", "correct"),
    (r"\boxed{x = 5}", "5", "correct"),
    (r"\boxed{[1, 3)}", r"\left[1,3\right)", "correct"),  # intervals
    (r"\boxed{(-\infty, 2]}", r"(-\infty,2]", "correct"),
    (r"\boxed{\{1, 2, 3\}}", r"\{3, 2, 1\}", "correct"),  # sets are unordered
    (r"\boxed{(3, \frac{\pi}{2})}", r"\left( 3, \dfrac{\pi}{2} \right)", "correct"),
    (r"\boxed{(0.5, 025)}", r"(\frac12, 25)", "correct"),  # tuples elementwise
    (r"\fbox{42}", "42", "correct"),
    (r"so it is $\boxed 7$.", "7", "correct"),
    # ---- equivalent: sympy / Math-Verify ----------------------------------------------------
    (r"\boxed{\sqrt{8}}", r"2\sqrt{2}", "correct"),
    (r"\boxed{\frac{\sqrt{3}}{3}}", r"\frac{1}{\sqrt{3}}", "correct"),
    (r"\boxed{\frac{1}{\sqrt{2}}}", r"\frac{\sqrt2}{2}", "correct"),  # nested braces
    (r"\boxed{x^2+2x+1}", "(x+1)^2", "correct"),
    (r"\boxed{\pi/2}", r"\frac{\pi}{2}", "correct"),
    (r"\boxed{0.3333333}", r"\frac13", "correct"),  # within the relative tolerance
    (r"\boxed{10^{3}}", "1000", "correct"),
    (r"\boxed{\frac{-1}{2}}", r"-\frac{1}{2}", "correct"),
    (r"\boxed{2\sqrt{2}, 1}", r"\sqrt{8}, 1", "correct"),
    # ---- extraction: last box, after </think> ----------------------------------------------
    (r"<think>maybe \boxed{3}</think> so \boxed{7}", "7", "correct"),
    (r"first \boxed{1}, then \boxed{2}", "2", "correct"),
    (r"first \boxed{1}, then \boxed{2}", "1", "wrong"),
    (r"<think>\boxed{7}</think> the answer is \boxed{8}", "7", "wrong"),
    # ---- not equivalent -----------------------------------------------------------------------
    (r"\boxed{24}", "25", "wrong"),
    (r"\boxed{26}", "27.0", "wrong"),
    (r"\boxed{250}", "25", "wrong"),
    (r"\boxed{-2}", "2", "wrong"),
    (r"\boxed{1000000001}", "1000000000", "wrong"),  # exact integers, no tolerance
    (r"\boxed{1/3}", "0.5", "wrong"),
    (r"\boxed{0.33}", r"\frac13", "wrong"),
    (r"\boxed{(2,1)}", "(1,2)", "wrong"),  # tuples are ordered
    (r"\boxed{(1,2)}", "[1,2)", "wrong"),
    (r"\boxed{\{1,2\}}", r"\{1,2,3\}", "wrong"),
    (r"\boxed{(1,2)}", r"\{1,2\}", "correct"),  # Math-Verify lets a tuple answer a set
    (r"\boxed{(1,2,3)}", "(1,2)", "wrong"),
    (r"\boxed{3}", "(3, 4)", "wrong"),  # a number vs a tuple
    (r"\boxed{1,2,3}", "2", "wrong"),
    (r"\boxed{x+1}", "x+2", "wrong"),
    (r"\boxed{2x}", "2y", "wrong"),
    (r"\boxed{3\sqrt{2}}", r"\sqrt{8}", "wrong"),
    (r"\boxed{\frac{\pi}{3}}", r"\frac{\pi}{2}", "wrong"),
    (r"\boxed{\infty}", "5", "wrong"),
    (r"\boxed{A}", "B", "wrong"),
    (r"\boxed{\text{east}}", r"\text{seat}", "wrong"),  # words are not products of symbols
    (r"\boxed{__import__('os')}", "0", "wrong"),  # never evaluated as Python
    (r"\boxed{12\text{ cm}}", "13", "wrong"),
    # ---- malformed / no answer ---------------------------------------------------------------
    ("The answer is 5.", "5", "no_answer"),
    ("Answer: 5", "5", "no_answer"),  # fallbacks are off by default
    (r"<think>the answer is \boxed{5}", "5", "no_answer"),  # unclosed <think>
    (r"<think>\boxed{5}</think> so it is 5", "5", "no_answer"),  # box only inside think
    (r"\boxed{}", "5", "no_answer"),
    (r"\boxed{\frac{1}{2}", "0.5", "no_answer"),  # truncated: unbalanced braces
    ("", "1", "no_answer"),
    # ---- errors ------------------------------------------------------------------------------
    (r"\boxed{5}", None, "error"),  # missing gold
    (r"\boxed{5}", "   ", "error"),
    (r"\boxed{raise}", "7", "error"),  # a checker raised
    (r"\boxed{base_exception}", "7", "error"),  # ... a BaseException (Math-Verify's timeout)
    # ---- time limits: a checker that hangs is cut off ---------------------------------------
    (r"\boxed{hang}", "7", "timeout"),
    (r"<think>x</think> \boxed{hang}", "8", "timeout"),
    (r"\boxed{hang}", r"\frac{1}{2}", "timeout"),
]

TIMEOUT_S = 2.0
HANG_S = 60.0


def _table_checker(pred: str, gold: str) -> bool:
    """The table's extra checker (loaded by name in the workers): hangs, raises or raises a
    BaseException on the sentinel answers, else rejects (it never accepts anything)."""
    if pred == "hang":
        time.sleep(HANG_S)  # far beyond TIMEOUT_S
    if pred == "raise":
        raise ValueError("checker failed")
    if pred == "base_exception":
        from math_verify.errors import TimeoutException  # derives from BaseException

        raise TimeoutException("Operation timed out!")
    return False


TABLE_CHECKER = f"{__name__}:_table_checker"


def _uses_table_checker(completion: str) -> bool:
    return any("\\boxed{" + s + "}" in completion for s in SENTINELS)


def _grade_rows(rows: list[int], checkers: tuple[str, ...], num_workers: int = 2):
    """Grade the given table rows in one batch; returns ({row: verdict}, seconds)."""
    cfg = MathGraderConfig(checkers=checkers, timeout_s=TIMEOUT_S, num_workers=num_workers)
    with MathGrader(cfg) as g:
        g.grade(r"\boxed{1}", "x")  # start the workers outside the timed call
        t0 = time.monotonic()
        verdicts = g.grade_batch([TABLE[i][0] for i in rows], [TABLE[i][1] for i in rows])
        elapsed = time.monotonic() - t0
    return dict(zip(rows, verdicts)), elapsed


WITH_TABLE_CHECKER = ("string", "sympy", "math_verify", TABLE_CHECKER)
TIMEOUT_ROWS = [i for i, row in enumerate(TABLE) if row[2] == "timeout"]


@pytest.fixture(scope="module")
def graded():
    """Every row but the time-outs, in one batch, by the builtin checkers plus the table's
    checker, and (rows that do not need the table's checker) by the builtin checkers alone,
    which settle plain numbers without the workers."""
    rows = [i for i in range(len(TABLE)) if i not in TIMEOUT_ROWS]
    with_checker, _ = _grade_rows(rows, WITH_TABLE_CHECKER)
    plain = [i for i in rows if not _uses_table_checker(TABLE[i][0])]
    builtin, _ = _grade_rows(plain, ("string", "sympy", "math_verify"), num_workers=1)
    return with_checker, builtin


@pytest.fixture(scope="module")
def graded_timeouts():
    """The rows whose answer hangs the table's checker, in one batch (slow: every time-out
    costs TIMEOUT_S plus a fresh worker)."""
    return _grade_rows(TIMEOUT_ROWS, WITH_TABLE_CHECKER)


def test_table_is_big_enough():
    reasons = [r for _, _, r in TABLE]
    assert len(TABLE) >= 60
    assert set(reasons) == {"correct", "wrong", "no_answer", "timeout", "error"}


@pytest.mark.parametrize(
    ("idx", "completion", "gold", "expected"),
    [
        pytest.param(
            i, *row, id=f"{i}-{row[2]}", marks=[pytest.mark.slow] if row[2] == "timeout" else []
        )
        for i, row in enumerate(TABLE)
    ],
)
def test_table(request, idx, completion, gold, expected):
    if expected == "timeout":
        verdicts, builtin = request.getfixturevalue("graded_timeouts")[0], {}
    else:
        verdicts, builtin = request.getfixturevalue("graded")
    v = verdicts[idx]
    assert v.reason == expected, v
    assert v.correct == (expected == "correct")
    assert v.detail
    if idx in builtin:  # the builtin checkers alone (plain-number fast path included) agree
        b = builtin[idx]
        assert (b.reason, b.correct) == (v.reason, v.correct), b


@pytest.mark.slow
def test_hung_checkers_do_not_hang_the_batch(graded_timeouts):
    verdicts, elapsed = graded_timeouts
    # each answer would hang for HANG_S; each is cut off after TIMEOUT_S (plus a restart)
    assert len(verdicts) == 3 and all(v.reason == "timeout" for v in verdicts.values())
    assert elapsed < 3 * TIMEOUT_S + 20 < HANG_S, elapsed
    assert all(f"{TIMEOUT_S:g}s" in v.detail for v in verdicts.values())


def test_a_single_hung_answer_returns_in_bounded_time():
    cfg = MathGraderConfig(checkers=(TABLE_CHECKER,), timeout_s=1.0, num_workers=1)
    with MathGrader(cfg) as g:
        g.grade(r"\boxed{1}", "1")  # start-up is not charged to the limit
        t0 = time.monotonic()
        v = g.grade(r"\boxed{hang}", "3")
        assert v.reason == "timeout" and "1s" in v.detail
        assert time.monotonic() - t0 < 1.0 + 5.0


# ------------------------------------------------------------------------ AIME / AMC formats

DATA_DIR = offline_data_dir()
EVAL_SETS = ("aime2024.jsonl", "aime2025.jsonl", "amc23.jsonl")


def _golds(name: str) -> list[str]:
    path = DATA_DIR / "eval_math" / name
    if not path.exists():
        pytest.skip(f"offline data file eval_math/{name} not found under {DATA_DIR}")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [str(r["answer"]) for r in rows]


@pytest.fixture(scope="module")
def grader():
    with MathGrader(MathGraderConfig(num_workers=2, timeout_s=10.0)) as g:
        yield g


@pytest.mark.parametrize("name", EVAL_SETS)
def test_eval_golds_grade_correct_against_themselves(grader, name):
    golds = _golds(name)
    assert len(golds) in (30, 40)
    verdicts = grader.grade_batch([f"The answer is $\\boxed{{{g}}}$." for g in golds], golds)
    assert [v.reason for v in verdicts] == ["correct"] * len(golds), [
        (g, v) for g, v in zip(golds, verdicts) if not v.correct
    ]


@pytest.mark.parametrize("name", EVAL_SETS)
def test_eval_golds_in_other_formats_are_correct(grader, name):
    """AIME answers zero-padded to three digits, AMC floats written as integers and vice
    versa, in a think-then-answer completion."""
    golds = _golds(name)
    responses = []
    for g in golds:
        value = float(g)
        if name.startswith("aime"):
            assert g.isdigit() and 0 <= int(g) <= 999, g  # AIME: integers 0..999
            responses.append(f"<think>...</think> $\\boxed{{{int(g):03d}}}$")
        elif value.is_integer():
            alt = str(int(value)) if "." in g else f"{value:.1f}"
            responses.append(f"<think>...</think> $\\boxed{{{alt}}}$")
        else:
            responses.append(f"<think>...</think> $\\boxed{{{value!r}}}$")
    verdicts = grader.grade_batch(responses, golds)
    assert all(v.correct for v in verdicts), [
        (r, g, v) for r, g, v in zip(responses, golds, verdicts) if not v.correct
    ]


@pytest.mark.parametrize("name", EVAL_SETS)
def test_eval_golds_reject_their_neighbours(grader, name):
    """Each gold against the next record's answer (when it differs) and against gold +- 1."""
    golds = _golds(name)
    responses, targets = [], []
    for i, g in enumerate(golds):
        nxt = golds[(i + 1) % len(golds)]
        if float(nxt) != float(g):
            responses.append(f"\\boxed{{{nxt}}}")
            targets.append(g)
        value = float(g)
        if value.is_integer():
            for d in (-1, 1):
                responses.append(f"\\boxed{{{int(value) + d}}}")
                targets.append(g)
    assert len(responses) >= 2 * len(golds)
    verdicts = grader.grade_batch(responses, targets)
    assert [v.reason for v in verdicts] == ["wrong"] * len(responses), [
        (r, g, v) for r, g, v in zip(responses, targets, verdicts) if v.reason != "wrong"
    ]
