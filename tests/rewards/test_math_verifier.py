"""Tests of the math verifier (archer.rewards.math): extraction, equivalence, time limits,
cache, audit, reward contract, and a sanity pass over the offline benchmark answers."""

from __future__ import annotations

import doctest
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from proc_helpers import offline_data_dir

from archer.rewards import get_reward
from archer.rewards.math import (
    MathGrader,
    MathGraderConfig,
    Verdict,
    audit_graders,
    configure_math_reward,
    extract_answer,
    gold_from_gsm8k,
    math_reward,
    math_verify_equivalent,
    string_equivalent,
    sympy_equivalent,
)
from archer.rewards.math.normalize import normalize_answer, split_compound, to_fraction

DATA_DIR = offline_data_dir()


def _data_file(rel: str) -> Path:
    path = DATA_DIR / rel
    if not path.exists():
        pytest.skip(f"offline data file {rel} not found under ARCHER_DATA_DIR={DATA_DIR}")
    return path


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _benchmark_golds() -> list[tuple[str, str]]:
    """(source, gold) for MATH-500, AIME 2024 and AMC 2023."""
    out = [
        ("math500", r["answer"])
        for r in json.loads(_data_file("eval_math/math500.json").read_text())
    ]
    out += [
        ("aime2024", str(r["answer"])) for r in _read_jsonl(_data_file("eval_math/aime2024.jsonl"))
    ]
    out += [("amc23", str(r["answer"])) for r in _read_jsonl(_data_file("eval_math/amc23.jsonl"))]
    return out


def _test_checker(pred: str, gold: str) -> bool:
    """A checker loaded by the workers by name: hangs, raises a BaseException or kills its
    process on request, else compares strings."""
    if pred == "hang":
        time.sleep(30)  # far beyond the 1 s limit, but bounded if the limit is broken
    if pred == "base_exception":
        from math_verify.errors import TimeoutException  # derives from BaseException

        raise TimeoutException("Operation timed out!")
    if pred == "die":
        os._exit(3)
    return pred == gold


TEST_CHECKER = f"{__name__}:_test_checker"


@pytest.fixture(scope="module")
def grader():
    g = MathGrader(MathGraderConfig(num_workers=2, timeout_s=5.0))
    yield g
    g.close()


# ---------------------------------------------------------------------------------- extraction


@pytest.mark.parametrize(
    ("response", "expected"),
    [
        (r"so $\boxed{\frac{1}{\sqrt{2}}}$.", r"\frac{1}{\sqrt{2}}"),
        (r"first \boxed{1}, then \boxed{\{1, 2\}} done", r"\{1, 2\}"),
        (r"\fbox{42}", "42"),
        (r"thus $\boxed 7$.", "7"),
        (r"\boxed{\begin{pmatrix} 1 \\ 2 \end{pmatrix}}", r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}"),
        (r"<think>maybe \boxed{1}</think> final: \boxed{2}", "2"),
        (r"<think>a</think><think>b \boxed{3}</think> \boxed{4}", "4"),
    ],
)
def test_extracts_last_boxed_with_nested_braces(response, expected):
    assert extract_answer(response) == (expected, "boxed")


@pytest.mark.parametrize(
    ("response", "detail_part"),
    [
        (r"<think>the answer is \boxed{5}", "unclosed <think>"),
        (r"<think>\boxed{5}</think> so the answer is 5.", "no \\boxed"),
        (r"\boxed{5} and then \boxed{\frac{1}{2}", "unbalanced"),
        (r"\boxed{}", "empty"),
        ("The answer is 5.", "no \\boxed"),
    ],
)
def test_no_answer_cases(response, detail_part):
    ans, detail = extract_answer(response)
    assert ans is None
    assert detail_part in detail


def test_fallbacks_only_when_configured_and_in_order():
    text = "We get 3 apples and 4 pears.\nAnswer: $12$."
    assert extract_answer(text)[0] is None  # paper default: boxed only
    assert extract_answer(text, ["answer_line"]) == ("12", "fallback:answer_line")
    assert extract_answer(text, ["last_number", "answer_line"]) == ("12", "fallback:last_number")
    assert extract_answer("3 apples and 4 pears", ["answer_line", "last_number"]) == (
        "4",
        "fallback:last_number",
    )
    minerva = "Final Answer: The final answer is $\\frac{1}{2}$. I hope it is correct."
    assert extract_answer(minerva, ["answer_line"])[0] == r"\frac{1}{2}"
    # a box always wins over a fallback
    assert extract_answer(r"\boxed{9} Answer: 8", ["answer_line"]) == ("9", "boxed")


def test_gsm8k_gold():
    assert gold_from_gsm8k("Janet has 3+4=<<3+4=7>>7 eggs.\n#### 1,234") == "1234"
    assert gold_from_gsm8k("#### -5") == "-5"
    with pytest.raises(ValueError, match="####"):
        gold_from_gsm8k("no marker")
    records = _read_jsonl(_data_file("eval_math/gsm8k_test.jsonl"))
    golds = [gold_from_gsm8k(r["answer"]) for r in records]
    assert golds[0] == "18"
    assert all(to_fraction(normalize_answer(g)) is not None for g in golds), "non-numeric gold"


# ------------------------------------------------------------------------------- equivalences


@pytest.mark.parametrize(
    ("pred", "gold"),
    [
        ("025", "25"),  # AIME zero padding
        ("27", "27.0"),  # AMC floats
        (r"\dfrac{1}{2}", "0.5"),
        (r"\frac12", "0.5"),
        (r"\tfrac{1}{2}", r"\frac12"),
        ("1/2", r"\frac{1}{2}"),
        (r"10\%", "10"),
        (r"5^\circ", "5"),
        (r"90^{\circ}", "90 degrees"),
        (r"12\text{ cm}", "12"),
        (r"12 \text{ cm}^2", "12"),
        (r"5.4 \text{ cents}", "5.4"),
        (r"\$1,000", "1000"),
        (r"11,\! 111,\! 111,\! 100", "11111111100"),
        (r"\left( 3, \frac{\pi}{2} \right)", r"(3,\frac{\pi}{2})"),
        ("[1, 3)", r"\left[1,3\right)"),
        ("(0.5, 025)", r"(\frac12, 25)"),  # tuples compared elementwise
        (r"\{1, 2\}", r"\{2, 1\}"),  # sets are unordered
        ("x = 5", "5"),
        (r"\text{(B)}", "B"),
        (r"\text{Monday}", "monday"),
        (r"$\pi$", r"\pi"),
        ("−3", "-3"),
    ],
)
def test_string_normaliser_equivalences(pred, gold):
    assert string_equivalent(pred, gold), (normalize_answer(pred), normalize_answer(gold))


@pytest.mark.parametrize(
    ("pred", "gold"),
    [
        ("1/2", "1/3"),
        (r"\frac{1}{2}", "0.51"),
        ("(1,2)", "(2,1)"),  # tuples are ordered
        ("(1,2)", "[1,2)"),  # interval ends differ
        ("(1,2)", r"\{1,2\}"),
        ("(1,2,3)", "(1,2)"),
        ("25", "250"),
        ("2", "-2"),
        ("1,2,3", "2"),
        (r"\sqrt{8}", r"2\sqrt{2}"),  # equal, but not as strings: sympy's job
        ("", "0"),
    ],
)
def test_string_normaliser_non_equivalences(pred, gold):
    assert not string_equivalent(pred, gold)


def test_split_compound():
    assert split_compound(r"(1,\frac{1}{2}]") == ("(", "]", ["1", r"\frac{1}{2}"])
    assert split_compound("(5)") is None
    assert split_compound("f(1,2)") is None


@pytest.mark.parametrize(
    ("pred", "gold"),
    [
        (r"\sqrt{8}", r"2\sqrt{2}"),
        (r"\frac{\pi}{2}", r"\pi/2"),
        ("x^2+2x+1", "(x+1)^2"),
        ("0.3333333", r"\frac13"),  # numeric closeness, 1e-6 relative
        ("2*sqrt(2)", r"\sqrt{8}"),  # plain (non-LaTeX) expressions
        (r"(2\sqrt{2}, 1)", r"(\sqrt{8}, 1)"),
    ],
)
def test_sympy_equivalences(pred, gold):
    ok, detail = sympy_equivalent(pred, gold)
    assert ok, detail


@pytest.mark.parametrize(
    ("pred", "gold"),
    [
        ("x+1", "x+2"),
        ("0.33", r"\frac13"),
        (r"(\sqrt{8}, 1)", r"(1, \sqrt{8})"),
        (r"\infty", "5"),
        ("__import__('os')", "0"),  # never evaluated as Python
        (r"\text{east}", r"\text{seat}"),  # words are not products of symbols
        ("10^{10^{10}}", "5"),  # overflowing numerics do not compare equal
    ],
)
def test_sympy_non_equivalences(pred, gold):
    assert not sympy_equivalent(pred, gold)[0]


def test_math_verify_checker():
    assert math_verify_equivalent(r"2\sqrt{2}", r"\sqrt{8}")[0]
    assert not math_verify_equivalent("3", "4")[0]


# ------------------------------------------------------------------------------------ grader


def test_grade_batch_reasons_and_checkers(grader):
    responses = [
        r"<think>hmm</think> The answer is $\boxed{025}$.",
        r"\boxed{2\sqrt{2}}",
        r"\boxed{3}",
        "I don't know",
        r"<think>\boxed{4}",
        r"\boxed{3\sqrt{2}}",
    ]
    golds = ["25", r"\sqrt{8}", "4", "4", "4", r"\sqrt{8}"]
    v = grader.grade_batch(responses, golds)
    assert [x.reason for x in v] == [
        "correct", "correct", "wrong", "no_answer", "no_answer", "wrong"
    ]
    assert [x.correct for x in v] == [True, True, False, False, False, False]
    assert v[0].checker == "string" and v[0].extracted == "025"
    assert v[1].checker == "sympy"
    # two different plain numbers are settled without the workers ...
    assert v[2].checker is None and v[2].detail.startswith("plain numbers differ")
    # ... anything else goes through every checker
    assert v[5].checker is None and all(c in v[5].detail for c in ("string", "sympy", "math_verify"))
    assert all(isinstance(x, Verdict) and x.detail for x in v)
    assert grader.grade(r"\boxed{\dfrac{1}{2}}", 0.5).correct  # non-string gold


def test_cache_hits_skip_the_workers(grader):
    responses = [r"\boxed{3\sqrt{3}}"] * 4 + [r"\boxed{7}"]
    golds = [r"\sqrt{27}"] * 4 + ["7"]
    before = grader.cache_info()
    first = grader.grade_batch(responses, golds)
    mid = grader.cache_info()
    assert [v.correct for v in first] == [True] * 5
    # four identical (answer, gold) pairs are checked once; "7" is settled in-process
    assert mid["tasks_run"] - before["tasks_run"] == 1
    assert mid["misses"] - before["misses"] == 5 and mid["hits"] == before["hits"]
    second = grader.grade_batch(responses, golds)
    after = grader.cache_info()
    assert second == first
    assert after["hits"] - mid["hits"] == 5
    assert after["tasks_run"] == mid["tasks_run"]


def test_timeout_kills_the_worker_and_grader_recovers():
    cfg = MathGraderConfig(checkers=(TEST_CHECKER,), timeout_s=1.0, num_workers=2)
    with MathGrader(cfg) as g:
        assert g.grade(r"\boxed{7}", "7").reason == "correct"  # workers started
        pids = set(g.worker_pids())
        t0 = time.monotonic()
        v = g.grade_batch(
            [
                r"\boxed{hang}",
                r"\boxed{7}",
                r"\boxed{8}",
                r"\boxed{base_exception}",
                r"\boxed{die}",
            ],
            ["7"] * 5,
        )
        elapsed = time.monotonic() - t0
        assert [x.reason for x in v] == ["timeout", "correct", "wrong", "error", "error"]
        assert "TimeoutException" in v[3].detail and "died" in v[4].detail
        assert elapsed < 1.0 + 8.0, elapsed
        info = g.cache_info()
        assert info["workers_replaced"] == 2  # the hung one and the dead one
        assert pids - set(g.worker_pids())  # a stuck worker was replaced ...
        for pid in pids - set(g.worker_pids()):
            with pytest.raises(ProcessLookupError):  # ... and really killed
                os.kill(pid, 0)
        # the grader still works, and a timeout is cached rather than retried
        t0 = time.monotonic()
        v2 = g.grade_batch([r"\boxed{9}", r"\boxed{hang}"], ["9", "7"])
        assert [x.reason for x in v2] == ["correct", "timeout"]
        assert time.monotonic() - t0 < 1.0 + 8.0


def test_expensive_math_verify_call_is_cut_off():
    """A real answer that keeps Math-Verify busy for long (it evaluates (10^9)!) is cut off at
    the limit; Math-Verify's own signal timeout is disabled in the workers."""
    cfg = MathGraderConfig(checkers=("math_verify",), timeout_s=2.0, num_workers=1)
    with MathGrader(cfg) as g:
        assert g.grade(r"\boxed{1}", "1").correct  # start-up is not charged to the limit
        t0 = time.monotonic()
        v = g.grade(r"\boxed{(10^{9})!}", "5")
        elapsed = time.monotonic() - t0
        assert not v.correct and v.reason in ("timeout", "wrong")
        assert elapsed < 2.0 + 3.0, elapsed
        assert g.grade(r"\boxed{\frac{6}{3}}", "2").correct


# ------------------------------------------------------------------------------------- audit


def test_audit_reports_disagreements(grader):
    responses = [
        r"\boxed{2\sqrt{2}}",
        r"\boxed{1\,000}",
        r"\boxed{3}",
        "no answer",
        r"\boxed{5.0000001}",
    ]
    golds = [r"\sqrt{8}", "1000", "4", "1", "5"]
    rep = audit_graders(responses, golds, grader=grader)
    rows = rep.rows
    assert [r["string"] for r in rows] == ["reject", "accept", "reject", "no_answer", "reject"]
    assert [r["sympy"] for r in rows] == ["accept", "accept", "reject", "no_answer", "accept"]
    assert rows[0]["math_verify"] == "accept" and rows[2]["math_verify"] == "reject"
    assert rep.accept_rates["string"] == pytest.approx(1 / 5)
    assert rep.accept_rates["sympy"] == pytest.approx(3 / 5)
    dis = {r["index"] for r in rep.disagreements}
    assert {0, 4} <= dis and not dis & {2, 3}
    assert rep.counts["n"] == 5 and rep.counts["no_answer"] == 1
    assert rep.counts["any_accept"] == 3 and rep.counts["disagreements"] == len(dis)
    df = rep.to_dataframe()
    assert list(df.columns[:3]) == ["index", "extracted", "gold"] and len(df) == 5
    assert "disagreements" in rep.summary()


# ------------------------------------------------------------------------------------ reward


@pytest.fixture
def shared_reward_grader(grader):
    configure_math_reward(grader)
    yield grader
    configure_math_reward(MathGraderConfig())  # back to a fresh default (no workers yet)


def test_reward_contract(shared_reward_grader):
    assert get_reward("math") is math_reward
    completions = [
        r"<think>...</think> $\boxed{\dfrac{1}{2}}$",
        r"\boxed{3}",
        "no box here",
        [{"role": "assistant", "content": r"\boxed{2\sqrt{2}}"}],  # conversational format
        r"\boxed{1234}",
        r"\boxed{5}",
    ]
    answer = ["0.5", "4", "4", r"\sqrt{8}", "Work...\n#### 1,234", None]
    out = math_reward(completions, answer=answer, prompts=["p"] * 6, trainer_state=None)
    assert out == [1.0, 0.0, 0.0, 1.0, 1.0, None]
    assert all(type(x) is float for x in out if x is not None)
    with pytest.raises(ValueError, match="answers"):
        math_reward(["a", "b"], answer=["1"])


def test_docstring_examples_run(shared_reward_grader):
    from archer.rewards.math import checkers, extract, grader, normalize, reward

    for mod in (checkers, extract, grader, normalize, reward):  # the modules with examples
        res = doctest.testmod(mod)
        assert res.attempted > 0 and res.failed == 0, mod.__name__


def test_import_is_cheap():
    code = "import sys, archer.rewards.math; assert 'sympy' not in sys.modules and 'math_verify' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# ------------------------------------------------------------------------------------ config


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"checkers": ("string", "wolfram")}, r"checkers.*'wolfram'.*'sympy'"),
        ({"checkers": ()}, "checkers"),
        ({"checkers": ("no_such_module_xyz:f",)}, "checkers"),
        ({"fallbacks": ("guess",)}, r"fallbacks.*'answer_line'"),
        ({"timeout_s": -1}, "timeout_s"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"num_workers": 0}, "num_workers"),
        ({"rel_tol": -1e-6}, "rel_tol"),
        ({"cache_size": -1}, "cache_size"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MathGraderConfig(**kwargs)


def test_config_from_dict():
    cfg = MathGraderConfig.from_dict(
        {"checkers": ["string", "sympy"], "fallbacks": ["answer_line"]}
    )
    assert cfg.checkers == ("string", "sympy") and cfg.fallbacks == ("answer_line",)
    with pytest.raises(ValueError, match="unknown field"):
        MathGraderConfig.from_dict({"timeout": 3})


def test_fallback_config_applies_to_grading():
    with MathGrader(MathGraderConfig(checkers=("string",), fallbacks=("answer_line",))) as g:
        assert g.grade("Answer: 025", "25").reason == "correct"
    with MathGrader(MathGraderConfig(checkers=("string",))) as g:
        assert g.grade("Answer: 025", "25").reason == "no_answer"


# -------------------------------------------------------------------------------- benchmarks


def test_every_benchmark_gold_matches_itself(grader):
    golds = [g for _, g in _benchmark_golds()]
    assert len(golds) == 570
    verdicts = grader.grade_batch([f"The answer is $\\boxed{{{g}}}$." for g in golds], golds)
    bad = [(g, v.reason, v.detail) for g, v in zip(golds, verdicts) if not v.correct]
    assert not bad


def test_reformatted_aime_and_amc_golds_are_correct(grader):
    responses, golds = [], []
    for src, gold in _benchmark_golds():
        if src == "aime2024":
            responses.append(f"\\boxed{{{int(gold):03d}}}")  # zero-padded three digits
        elif src == "amc23":
            value = float(gold)
            responses.append(f"\\boxed{{{int(value) if value.is_integer() else value}}}")
        else:
            continue
        golds.append(gold)
    verdicts = grader.grade_batch(responses, golds)
    assert all(v.correct for v in verdicts), [v for v in verdicts if not v.correct]


@pytest.mark.slow
def test_each_checker_alone_on_benchmark_golds(grader):
    """Each checker accepts every gold against itself and rejects every gold against the next
    problem's gold (no false positives on distinct answers)."""
    golds = [g for _, g in _benchmark_golds()]
    shifted = golds[1:] + golds[:1]
    same = audit_graders([f"\\boxed{{{g}}}" for g in golds], golds, grader=grader)
    assert all(same.accept_rates[c] == 1.0 for c in same.checkers), same.summary()
    diff = audit_graders([f"\\boxed{{{g}}}" for g in shifted], golds, grader=grader)
    for row in diff.rows:
        equal_after_norm = normalize_answer(row["extracted"]) == normalize_answer(row["gold"])
        if not equal_after_norm:
            assert all(row[c] != "accept" for c in diff.checkers), row
