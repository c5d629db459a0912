"""``archer grade``: grade model outputs produced anywhere, from a JSONL file.

    archer grade math in_file=outputs.jsonl out_file=verdicts.jsonl
    archer grade code in_file=outputs.jsonl out_file=verdicts.jsonl timeout=10

Input: one JSON object per line (blank lines are skipped).

* math: ``{"id": ..., "completion": "...", "answer": "..."}``; ``answer`` is the gold answer
  (a string or a number; a GSM8K solution ``"... #### 42"`` is reduced to ``42``).
* code: ``{"id": ..., "completion": "...", "tests": ...}`` where ``tests`` is either

  - a list of LiveCodeBench test cases ``{"input": str, "output": str, "testtype": "stdin" |
    "functional"}`` (``testtype`` defaults to ``"stdin"``; all cases of a record have the same
    type). Functional tests call ``Solution().<func_name>`` (or a top-level function) with one
    JSON value per input line; the function name goes in the record's top-level
    ``"func_name"`` (LiveCodeBench's ``"metadata": {"func_name": ...}`` and a ``"func_name"``
    on each test are accepted too; when several are given they must agree), or
  - an assert suite ``{"check": "def check(candidate): assert ...", "entry_point": "name"}``
    (``entry_point`` is what ``check`` is called with: ``add`` or ``Solution().twoSum``; it
    may be left out when the suite ends with its own ``check(...)`` call).

``id`` is optional (a string or an integer; default: the line number).

Output: one JSON object per input line, in input order: ``line``, ``id``, ``verdict``
(math: correct / wrong / no_answer / timeout / error; code: passed / failed / no_code /
timeout / runtime_error / compile_error / sandbox_error; a malformed line: error), ``correct``,
``reason`` (a readable detail), ``passed`` / ``total`` (tests passed; math: 1/1 or 0/1),
``time_s`` (math: checker time for the answer when it was first checked; code: sandbox wall
time) and, for math, ``extracted`` and ``checker``; for code, ``sandboxed`` (whether the program
ran inside bubblewrap). A malformed line (bad JSON, a missing
field, a wrong type) gets ``verdict: "error"`` with a reason naming its line number; the other
lines are still graded. A summary (counts per verdict, accuracy) goes to stderr. The exit code
is 0 when every line parsed, 1 when some were malformed.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, Any

from archer.cli_settings import Setting, add_settings

__all__ = ["GradeSummary", "Malformed", "add_grade_arguments", "grade_file", "parse_code_record",
           "parse_math_record", "run_grade"]

#: records graded per batch (the output is written batch by batch)
BATCH_LINES = 1000
_ENTRY_POINT_RE = re.compile(r"[A-Za-z_]\w*(?:\(\))?(?:\.[A-Za-z_]\w*)*")


class Malformed(ValueError):
    """A record that cannot be graded (the message says which field and why)."""


# ------------------------------------------------------------------------------- records


def _record_id(rec: dict, line_no: int) -> Any:
    if "id" not in rec or rec["id"] is None:
        return line_no
    rid = rec["id"]
    if isinstance(rid, bool) or not isinstance(rid, (str, int)):
        raise Malformed(f"field 'id' must be a string or an integer, got {type(rid).__name__}")
    return rid


def _string_field(rec: dict, name: str) -> str:
    if name not in rec:
        raise Malformed(f"missing field {name!r}")
    value = rec[name]
    if not isinstance(value, str):
        raise Malformed(f"field {name!r} must be a string, got {type(value).__name__}")
    return value


def parse_math_record(rec: dict) -> tuple[str, str]:
    """``(completion, gold)`` of a math record; raises :class:`Malformed`."""
    completion = _string_field(rec, "completion")
    if "answer" not in rec:
        raise Malformed("missing field 'answer'")
    gold = rec["answer"]
    if isinstance(gold, bool) or not isinstance(gold, (str, int, float)):
        raise Malformed(
            f"field 'answer' must be a string or a number, got {type(gold).__name__}"
        )
    gold = str(gold).strip()
    if "####" in gold:
        from archer.rewards.math import gold_from_gsm8k

        gold = gold_from_gsm8k(gold)
    if not gold:
        raise Malformed("field 'answer' is empty")
    return completion, gold


def _func_name(rec: dict, tests: list[dict]) -> str | None:
    names: dict[str, Any] = {}
    if rec.get("func_name") is not None:
        names["func_name"] = rec["func_name"]
    meta = rec.get("metadata")
    if isinstance(meta, str):
        try:
            meta = json.loads(meta)
        except ValueError:
            raise Malformed("field 'metadata' is a string but not JSON") from None
    if isinstance(meta, dict) and meta.get("func_name") is not None:
        names["metadata.func_name"] = meta["func_name"]
    for i, t in enumerate(tests):
        if t.get("func_name") is not None:
            names[f"tests[{i}].func_name"] = t["func_name"]
    for where, value in names.items():
        if not isinstance(value, str) or not value.isidentifier():
            raise Malformed(f"{where} must be a Python identifier, got {value!r}")
    distinct = set(names.values())
    if len(distinct) > 1:
        raise Malformed(f"func_name given differently: {names}")
    return distinct.pop() if distinct else None


def parse_code_record(rec: dict):
    """``(completion, Problem)`` of a code record; raises :class:`Malformed`."""
    from archer.rewards.code import Problem, TestCase, split_check

    completion = _string_field(rec, "completion")
    if "tests" in rec:
        tests = rec["tests"]
    elif "check" in rec:  # the check suite at top level
        tests = {k: rec[k] for k in ("check", "entry_point") if k in rec}
    else:
        raise Malformed("missing field 'tests'")
    if isinstance(tests, dict):
        if "check" not in tests:
            raise Malformed("field 'tests' is an object without 'check' (an assert suite)")
        check = tests["check"]
        if not isinstance(check, str) or not check.strip():
            raise Malformed("tests.check must be a non-empty string of Python code")
        entry = tests.get("entry_point")
        try:
            tree = ast.parse(check)
        except SyntaxError as e:
            raise Malformed(f"tests.check does not parse: {e}") from None
        has_call = any(
            isinstance(s, ast.Expr) and isinstance(s.value, ast.Call)
            and isinstance(s.value.func, ast.Name) and s.value.func.id == "check"
            for s in tree.body
        )
        if entry is not None:
            if not isinstance(entry, str) or not _ENTRY_POINT_RE.fullmatch(entry.strip()):
                raise Malformed(
                    f"tests.entry_point must name a function, e.g. 'add' or "
                    f"'Solution().twoSum', got {entry!r}"
                )
            entry = entry.strip()
            if not has_call:
                check = check.rstrip() + f"\n\ncheck({entry})\n"
        elif not has_call:
            raise Malformed("tests.entry_point is missing (and the suite never calls check)")
        try:
            split_check(check)
        except (ValueError, SyntaxError) as e:
            raise Malformed(f"tests.check: {e}") from None
        return completion, Problem("check", check_code=check, entry_point=entry)
    if not isinstance(tests, list):
        raise Malformed(
            f"field 'tests' must be a list of test cases or an object with 'check', "
            f"got {type(tests).__name__}"
        )
    if not tests:
        raise Malformed("field 'tests' is an empty list")
    cases = []
    for i, t in enumerate(tests):
        if not isinstance(t, dict):
            raise Malformed(f"tests[{i}] must be an object, got {type(t).__name__}")
        for key in ("input", "output"):
            if key not in t:
                raise Malformed(f"tests[{i}] has no {key!r}")
            if not isinstance(t[key], str):
                raise Malformed(
                    f"tests[{i}].{key} must be a string (functional tests: JSON text, one "
                    f"value per line), got {type(t[key]).__name__}"
                )
        testtype = t.get("testtype", "stdin")
        if testtype not in ("stdin", "functional"):
            raise Malformed(
                f"tests[{i}].testtype must be 'stdin' or 'functional', got {testtype!r}"
            )
        cases.append(TestCase(t["input"], t["output"], testtype))
    kinds = {c.testtype for c in cases}
    if len(kinds) > 1:
        raise Malformed("tests mix 'stdin' and 'functional' test cases")
    kind = kinds.pop()
    func_name = _func_name(rec, tests)
    if kind == "functional":
        if func_name is None:
            raise Malformed("functional tests need 'func_name' (top level of the record)")
        for i, c in enumerate(cases):
            for line in c.input.split("\n"):
                if line.strip():
                    try:
                        json.loads(line)
                    except ValueError:
                        raise Malformed(
                            f"tests[{i}].input line {line[:40]!r} is not JSON (functional "
                            f"inputs are one JSON value per line)"
                        ) from None
    return completion, Problem(kind, cases, func_name=func_name if kind == "functional" else None)


# ---------------------------------------------------------------------------------- I/O


def _read_lines(path: str) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of the non-blank lines of ``path`` (``-``: stdin)."""
    if path == "-":
        handle: IO[str] = sys.stdin
        close = False
    else:
        handle = open(path, encoding="utf-8", errors="replace")  # noqa: SIM115
        close = True
    try:
        for n, line in enumerate(handle, start=1):
            if line.strip():
                yield n, line
    finally:
        if close:
            handle.close()


@dataclass
class GradeSummary:
    """What :func:`grade_file` did: per-verdict counts and the accuracy over parsed lines."""

    kind: str
    lines: int
    malformed: int
    counts: dict[str, int]
    correct: int
    seconds: float

    @property
    def graded(self) -> int:
        return self.lines - self.malformed

    @property
    def accuracy(self) -> float:
        return self.correct / self.graded if self.graded else 0.0

    def text(self) -> str:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(self.counts.items()))
        return (
            f"archer grade {self.kind}: {self.lines} lines, {self.graded} graded, "
            f"{self.malformed} malformed; {counts or 'nothing graded'}; accuracy "
            f"{self.correct}/{self.graded} = {self.accuracy:.4f} (malformed lines excluded); "
            f"{self.seconds:.1f} s"
        )


def _malformed_row(line_no: int, rid: Any, err: str) -> dict:
    return {
        "line": line_no, "id": rid, "verdict": "error", "correct": False,
        "reason": f"line {line_no}: malformed record: {err}", "passed": 0, "total": 0,
        "time_s": 0.0,
    }


def _math_rows(grader, items: list[tuple[int, Any, str, str]]) -> list[dict]:
    verdicts = grader.grade_batch([c for _, _, c, _ in items], [g for _, _, _, g in items])
    return [
        {
            "line": n, "id": rid, "verdict": v.reason, "correct": v.correct,
            "reason": v.detail, "passed": int(v.correct), "total": 1,
            "time_s": round(v.seconds, 6), "extracted": v.extracted, "checker": v.checker,
        }
        for (n, rid, _, _), v in zip(items, verdicts)
    ]


def _code_rows(grader, items: list[tuple[int, Any, str, Any]]) -> list[dict]:
    verdicts = grader.grade_batch([c for _, _, c, _ in items], [p for _, _, _, p in items])
    return [
        {
            "line": n, "id": rid, "verdict": v.reason, "correct": v.passed,
            "reason": v.detail, "passed": v.tests_passed, "total": v.tests_total,
            "time_s": round(v.wall_s, 6), "sandboxed": v.sandboxed,
        }
        for (n, rid, _, _), v in zip(items, verdicts)
    ]


def grade_file(kind: str, input_path: str, output: IO[str], grader) -> GradeSummary:
    """Grade every line of ``input_path`` with ``grader`` (a MathGrader or CodeGrader) and
    write one JSON verdict per line to ``output``, in input order."""
    if kind not in ("math", "code"):
        raise ValueError(f"kind must be 'math' or 'code', got {kind!r}")
    parse = parse_math_record if kind == "math" else parse_code_record
    grade_rows = _math_rows if kind == "math" else _code_rows
    t0 = time.monotonic()
    lines = malformed = correct = 0
    counts: Counter[str] = Counter()

    def flush(batch: list) -> None:
        nonlocal correct
        items = [b for b in batch if not isinstance(b, dict)]
        graded = iter(grade_rows(grader, items) if items else [])
        for b in batch:
            row = b if isinstance(b, dict) else next(graded)
            counts["malformed" if isinstance(b, dict) else row["verdict"]] += 1
            correct += bool(row["correct"])
            output.write(json.dumps(row, ensure_ascii=False) + "\n")
        output.flush()

    batch: list = []
    for line_no, text in _read_lines(input_path):
        lines += 1
        rid = None
        try:
            try:
                rec = json.loads(text)
            except ValueError as e:
                raise Malformed(f"invalid JSON ({e})") from None
            if not isinstance(rec, dict):
                raise Malformed(f"expected a JSON object, got {type(rec).__name__}")
            rid = _record_id(rec, line_no)
            batch.append((line_no, rid, *parse(rec)))
        except Malformed as e:
            malformed += 1
            batch.append(_malformed_row(line_no, rid, str(e)))
        if len(batch) >= BATCH_LINES:
            flush(batch)
            batch = []
    if batch:
        flush(batch)
    return GradeSummary(kind, lines, malformed, dict(counts), correct, time.monotonic() - t0)


# ---------------------------------------------------------------------------------- CLI


def _settings(kind: str) -> tuple[Setting, ...]:
    common = (
        Setting("in_file", help="JSONL file of records ('-': stdin)", required=True,
                deprecated=("--input",)),
        Setting("out_file", "-", help="JSONL verdicts ('-': stdout)", deprecated=("--output",)),
        Setting("workers", None, "int", "worker processes (math) / concurrent programs (code)",
                lo=1, deprecated=("--workers",)),
    )
    if kind == "math":
        return common + (
            Setting("timeout", 5.0, "float", "seconds per answer and checker", lo=0,
                    lo_open=True, deprecated=("--timeout",)),
            Setting("checkers", ["string", "sympy", "math_verify"], "list",
                    "checkers, correct if any accepts: string, sympy, math_verify or "
                    "package.module:function", deprecated=("--checkers",)),
            Setting("fallbacks", [], "list", "answer extraction fallbacks when there is no "
                    "\\boxed{}: answer_line,last_number (default: none)",
                    deprecated=("--fallbacks",)),
        )
    return common + (
        Setting("timeout", 6.0, "float", "seconds per test case (as LiveCodeBench)", lo=0,
                lo_open=True, deprecated=("--timeout",)),
        Setting("memory_mb", 2048, "int", "address-space limit of a program", lo=1,
                deprecated=("--memory-mb",)),
    )


def add_grade_arguments(parser: argparse.ArgumentParser, func) -> None:
    """The ``math`` and ``code`` subcommands of ``archer grade`` (``func`` runs them)."""
    sub = parser.add_subparsers(dest="grade_kind", required=True)
    for kind, help_ in (
        ("math", 'records {"id", "completion", "answer"}'),
        ("code", 'records {"id", "completion", "tests"} (LiveCodeBench test list or check suite)'),
    ):
        p = sub.add_parser(
            kind, help=help_,
            description=f"Grade {kind} records {help_[8:]}: one JSON verdict per input line, in "
                        "order; a summary on stderr; exit code 1 when some lines are malformed. "
                        "Formats: README.md, 'Grading outputs from anywhere'.",
        )
        add_settings(p, f"grade {kind}", _settings(kind))
        p.set_defaults(func=func)


def _make_grader(args: argparse.Namespace):
    if args.grade_kind == "math":
        from archer.rewards.math import MathGrader, MathGraderConfig

        cfg: dict[str, Any] = {"checkers": tuple(args.checkers),
                               "fallbacks": tuple(args.fallbacks),
                               "timeout_s": args.timeout}
        if args.workers is not None:
            cfg["num_workers"] = args.workers
        return MathGrader(MathGraderConfig(**cfg))
    from archer.rewards.code import CodeGrader
    from archer.rewards.sandbox import SandboxConfig

    cfg = {"test_timeout_s": args.timeout, "memory_mb": args.memory_mb}
    if args.workers is not None:
        cfg["max_workers"] = args.workers
    # a program gets its tests' time plus slack (the per-problem cap stays the default's)
    return CodeGrader(SandboxConfig(**cfg))


def run_grade(args: argparse.Namespace) -> int:
    """Run ``archer grade math|code`` from parsed arguments; returns the exit code."""
    from archer.train_config import check_out_file

    if args.in_file != "-":
        if os.path.isdir(args.in_file):
            raise ValueError(f"in_file={args.in_file} is a directory; give a JSONL file of "
                             "completions (or - for stdin)")
        with open(args.in_file, encoding="utf-8"):  # FileNotFoundError names the path
            pass
        if args.out_file != "-" and os.path.exists(args.out_file) and \
                os.path.samefile(args.in_file, args.out_file):  # opening it "w" would empty it
            raise ValueError(f"out_file={args.out_file} is the input file: the verdicts would "
                             "overwrite the completions; write them to another file")
    if args.out_file != "-":
        check_out_file("out_file", args.out_file)  # a directory there: before any grading
    grader = _make_grader(args)
    out: IO[str] = sys.stdout if args.out_file == "-" else open(  # noqa: SIM115
        args.out_file, "w", encoding="utf-8"
    )
    try:
        summary = grade_file(args.grade_kind, args.in_file, out, grader)
    finally:
        if out is not sys.stdout:
            out.close()
        close = getattr(grader, "close", None)
        if close is not None:
            close()
    print(summary.text(), file=sys.stderr)
    return 1 if summary.malformed else 0
