"""The code verifier's data model: a problem and its tests, and what grading one program gives."""

from __future__ import annotations

from dataclasses import dataclass, field

from archer.rewards.code.checks import count_check_asserts

REASONS = (
    "passed", "failed", "no_code", "timeout", "runtime_error", "compile_error", "sandbox_error",
)


# --- data model ------------------------------------------------------------------------------


@dataclass
class TestCase:
    __test__ = False  # not a pytest class

    input: str
    output: str = ""
    testtype: str = "stdin"


@dataclass
class Problem:
    """One problem's tests.  ``kind`` is "stdin", "functional" or "check"."""

    kind: str
    tests: list[TestCase] = field(default_factory=list)
    func_name: str | None = None
    check_code: str | None = None  # kind "check": code defining check() and calling it
    prompt: str = ""  # HumanEval: the function signature + docstring the completion continues
    entry_point: str | None = None
    header: bool = True  # prepend LiveCodeBench's import header to the program
    problem_id: str = ""
    suffix: str = ""  # appended to the program (MBPP+: wraps the entry point; see mbpp_plus)

    def __post_init__(self) -> None:
        if self.kind not in ("stdin", "functional", "check"):
            raise ValueError(f"unknown problem kind {self.kind!r}")
        if self.kind == "functional" and not self.func_name:
            raise ValueError("a functional problem needs func_name")
        if self.kind == "check" and not self.check_code:
            raise ValueError("a check problem needs check_code")

    @property
    def n_tests(self) -> int:
        if self.kind == "check":
            return max(1, count_check_asserts(self.check_code or ""))
        return len(self.tests)


@dataclass
class TestResult:
    __test__ = False

    index: int
    status: str  # "passed", "failed", "timeout", "runtime_error"
    detail: str = ""


@dataclass
class CodeVerdict:
    passed: bool
    reason: str
    tests_passed: int
    tests_total: int
    sandboxed: bool
    detail: str = ""
    tests: list[TestResult] = field(default_factory=list)
    wall_s: float = 0.0

    def __post_init__(self) -> None:
        assert self.reason in REASONS, self.reason

    @property
    def first_failure(self) -> TestResult | None:
        """The first test that did not pass (status = kind, index, truncated message)."""
        return next((t for t in self.tests if t.status != "passed"), None)
