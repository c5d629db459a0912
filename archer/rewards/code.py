"""Code verifier: run a completion's program against a problem's tests, sandboxed.

Test formats (:class:`Problem.kind`):

* ``"stdin"``: the program reads the test input on stdin (fd 0, so ``input()``,
  ``sys.stdin`` and ``open(0)`` all work) and its stdout is compared as LiveCodeBench does:
  both sides stripped, split in lines, each line stripped, same number of lines, and each line
  equal or, failing that, equal as a list of ``Decimal`` tokens (so ``0.50`` == ``0.5``).
* ``"functional"``: LiveCodeBench's LeetCode format: ``Solution().<func_name>`` (or a
  top-level function) is called with one JSON value per input line; the result (tuples read
  as lists) must ``==`` the JSON expected output.
* ``"check"``: an assert suite ``def check(candidate): assert ...`` followed by
  ``check(Solution().fn)`` (DeepCoder/rllm LeetCode train set); HumanEval problems (prompt +
  completion + test + ``check(entry_point)``) are turned into this kind.  Each top-level
  ``assert`` of ``check`` counts as one test.

One harness process runs all tests of a problem and reports per-test results as JSON lines on
a dedicated pipe; it stops at the first failure (as LiveCodeBench).  For stdin/functional
problems the harness never sees the expected outputs: the parent compares, and kills the
program at the first mismatch.

LiveCodeBench records are loaded with :func:`load_lcb_record`, in the local shape (a list of
test dicts) or the official one (JSON strings, or base64(zlib(pickle(JSON string))) decoded by
a restricted unpickler that refuses every global).
"""

from __future__ import annotations

import ast
import base64
import datetime as _dt
import io
import json
import pickle
import re
import threading
import zlib
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from archer.rewards import register_reward
from archer.rewards.sandbox import RunResult, Sandbox, SandboxConfig

REASONS = (
    "passed", "failed", "no_code", "timeout", "runtime_error", "compile_error", "sandbox_error",
)

# Imports LiveCodeBench puts before every solution (same modules, same order).
IMPORT_HEADER = "\n".join(
    [f"from {m} import *" for m in (
        "string", "re", "datetime", "collections", "heapq", "bisect", "copy", "math", "random",
        "statistics", "itertools", "functools", "operator", "io", "sys", "json", "builtins",
        "typing")]
    + [f"import {m}" for m in (
        "string", "re", "datetime", "collections", "heapq", "bisect", "copy", "math", "random",
        "statistics", "itertools", "functools", "operator", "io", "sys", "json")]
    + ["sys.setrecursionlimit(50000)", ""]
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


# --- extraction --------------------------------------------------------------------------------

_FENCE = re.compile(r"^[ \t]*```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)^[ \t]*```", re.S | re.M)


def extract_code(completion: str) -> str | None:
    """The last fenced ```python / ```py / ``` block (after ``</think>`` when present)."""
    if not isinstance(completion, str):
        return None
    if "</think>" in completion:
        completion = completion.rsplit("</think>", 1)[1]
    elif "<think>" in completion:
        return None  # thinking never finished
    blocks = [
        body for lang, body in _FENCE.findall(completion)
        if lang.lower() in ("", "python", "py", "python3")
    ]
    if not blocks or not blocks[-1].strip():
        return None
    return blocks[-1]


# --- output comparison -------------------------------------------------------------------------


def _stripped_lines(text: str) -> list[str]:
    return [line.strip() for line in text.strip().split("\n")]


def _decimals(line: str) -> list[Decimal] | None:
    try:
        return [Decimal(tok) for tok in line.split()]
    except (InvalidOperation, ValueError):
        return None


def compare_stdout(output: str, expected: str, float_tol: float = 0.0) -> bool:
    """LiveCodeBench's stdio check; ``float_tol`` > 0 also accepts numbers that close."""
    got, want = _stripped_lines(output), _stripped_lines(expected)
    if len(got) != len(want):
        return False
    for g, w in zip(got, want):
        if g == w:
            continue
        dg, dw = _decimals(g), _decimals(w)
        if dg is None or dw is None or len(dg) != len(dw):
            return False
        if dg == dw:
            continue
        if float_tol > 0 and all(
            abs(a - b) <= Decimal(str(float_tol)) * max(Decimal(1), abs(b))
            for a, b in zip(dg, dw) if a.is_finite() and b.is_finite()
        ) and all(a.is_finite() and b.is_finite() for a, b in zip(dg, dw)):
            continue
        return False
    return True


def compare_functional(result: Any, expected: Any) -> bool:
    if isinstance(result, tuple):
        result = list(result)
    return result == expected


# --- check() suites ----------------------------------------------------------------------------


def _check_def(tree: ast.Module) -> ast.FunctionDef | None:
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "check":
            return node
    return None


def count_check_asserts(code: str) -> int:
    try:
        fn = _check_def(ast.parse(code))
    except SyntaxError:
        return 0
    return sum(isinstance(s, ast.Assert) for s in fn.body) if fn else 0


def instrument_check(code: str) -> tuple[str, int]:
    """Rewrite each top-level ``assert`` of ``check`` into a reported case."""
    tree = ast.parse(code)
    fn = _check_def(tree)
    if fn is None:
        return code, 0
    n = 0
    body = []
    for stmt in fn.body:
        if isinstance(stmt, ast.Assert):
            call = ast.Expr(ast.Call(
                func=ast.Name("__archer_case__", ast.Load()),
                args=[ast.Constant(n), ast.Lambda(
                    ast.arguments(posonlyargs=[], args=[], kwonlyargs=[], kw_defaults=[],
                                  defaults=[]), stmt.test)],
                keywords=[]))
            body.append(ast.copy_location(call, stmt))
            n += 1
        else:
            body.append(stmt)
    fn.body = body
    ast.fix_missing_locations(tree)
    return ast.unparse(tree), n


# --- the harness (runs inside the sandbox) -----------------------------------------------------

HARNESS = r'''
import builtins, io, json, os, signal, sys, threading, traceback
_RES = os.fdopen(int(sys.argv[-1]), "w", buffering=1)
_sys_exit = sys.exit
def _emit(**rec):
    _RES.write(json.dumps(rec) + "\n")
    _RES.flush()
class _Timeout(BaseException):
    pass
def _on_alarm(signum, frame):
    raise _Timeout()
signal.signal(signal.SIGALRM, _on_alarm)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
_spec = json.loads(sys.stdin.buffer.read())
_T = float(_spec["test_timeout"])
_CAP = int(_spec["max_output"])
def _alarm(t):
    signal.setitimer(signal.ITIMER_REAL, t)
def _tb(e):
    s = "".join(traceback.format_exception_only(type(e), e)).strip()
    return s[-1000:]
_OUT = [None]
def _to_fd(fd, target):
    if fd != target:
        os.dup2(fd, target)
        os.close(fd)
def _redirect(data):
    fi = os.open(".archer_in", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fi, data)
    os.lseek(fi, 0, 0)
    _to_fd(fi, 0)
    os.unlink(".archer_in")
    fo = os.open(".archer_out", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    _to_fd(fo, 1)
    os.unlink(".archer_out")
    if _OUT[0] is not None:
        os.close(_OUT[0])
    _OUT[0] = os.dup(1)
    sys.stdin = io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "r", closefd=False)))
    sys.stdout = io.TextIOWrapper(io.BufferedWriter(io.FileIO(1, "w", closefd=False)))
def _collect():
    try:
        sys.stdout.flush()
    except BaseException:
        pass
    fd = _OUT[0]
    size = os.lseek(fd, 0, 2)
    want = min(size, _CAP + 1)
    data = os.pread(fd, want, 0) if want else b""
    return data[:_CAP].decode("utf-8", "replace"), size > _CAP
def _join_threads():
    for t in threading.enumerate():
        if t is not threading.main_thread() and not t.daemon:
            t.join()
_kind = _spec["kind"]
try:
    _code = compile(_spec["code"], "<solution>", "exec")
except BaseException as e:
    _emit(event="compile_error", detail=_tb(e))
    _sys_exit(0)
if _kind == "stdin":
    _emit(event="ready")
    for _i, _inp in enumerate(_spec["inputs"]):
        _redirect(_inp.encode("utf-8"))
        _status, _detail = "ok", ""
        _alarm(_T)
        try:
            try:
                exec(_code, {"__name__": "__main__", "__builtins__": builtins})
            except SystemExit:
                pass
            _join_threads()
            _alarm(0)
        except _Timeout:
            _status = "timeout"
        except BaseException as e:
            _alarm(0)
            _status, _detail = "error", _tb(e)
        _alarm(0)
        _out, _trunc = _collect()
        _emit(i=_i, status=_status, out=_out, truncated=_trunc, detail=_detail)
        if _status != "ok":
            break
elif _kind == "functional":
    _redirect(b"")
    _ns = {"__name__": "solution", "__builtins__": builtins}
    _alarm(_T)
    try:
        exec(_code, _ns)
        _alarm(0)
    except BaseException as e:
        _alarm(0)
        _emit(event="load_error", detail=_tb(e), timeout=isinstance(e, _Timeout))
        _sys_exit(0)
    _fn_name = _spec["func_name"]
    _cls = _ns.get("Solution")
    if not isinstance(_cls, type) and not callable(_ns.get(_fn_name)):
        _emit(event="load_error", detail="no class Solution and no function " + _fn_name)
        _sys_exit(0)
    _emit(event="ready")
    for _i, _inp in enumerate(_spec["inputs"]):
        _status, _detail, _ret = "ok", "", None
        _alarm(_T)
        try:
            _lines = _inp.split("\n")
            while _lines and not _lines[-1].strip():
                _lines.pop()
            _args = [json.loads(_l) for _l in _lines]
            _f = getattr(_cls(), _fn_name) if isinstance(_cls, type) else _ns[_fn_name]
            _r = _f(*_args)
            _alarm(0)
            if isinstance(_r, tuple):
                _r = list(_r)
            try:
                _ret = json.dumps(_r)
            except BaseException:
                _ret = None
                _detail = "result is not JSON: " + repr(_r)[:500]
        except _Timeout:
            _status = "timeout"
        except BaseException as e:
            _alarm(0)
            _status, _detail = "error", _tb(e)
        _alarm(0)
        _emit(i=_i, status=_status, ret=_ret, detail=_detail)
        if _status != "ok":
            break
else:  # check
    _redirect(b"")
    try:
        _check = compile(_spec["check_code"], "<tests>", "exec")
    except BaseException as e:
        _emit(event="test_error", detail=_tb(e))
        _sys_exit(0)
    _state = {"n": 0}
    def __archer_case__(i, thunk):
        _alarm(_T)
        ok = thunk()
        _state["n"] = i + 1
        if not ok:
            _emit(i=i, status="fail", detail="assertion failed")
            raise AssertionError("case %d failed" % i)
        _emit(i=i, status="ok")
        _alarm(_T)
    _ns = {"__name__": "__main__", "__builtins__": builtins, "__archer_case__": __archer_case__}
    _emit(event="ready")
    _alarm(_T)
    try:
        exec(_code, _ns)
        exec(_check, _ns)
        _alarm(0)
        _emit(event="done", status="ok", cases=_state["n"])
    except _Timeout:
        _emit(event="done", status="timeout", cases=_state["n"])
    except AssertionError as e:
        _alarm(0)
        _emit(event="done", status="fail", cases=_state["n"], detail=_tb(e))
    except BaseException as e:
        _alarm(0)
        _emit(event="done", status="error", cases=_state["n"], detail=_tb(e))
    _alarm(0)
_emit(event="end")
sys.stdout.flush()
os._exit(0)
'''


# --- problems from data records ----------------------------------------------------------------


class _NoGlobalsUnpickler(pickle.Unpickler):
    """Unpickles only plain built-in values (str, bytes, numbers, list, dict, tuple, ...)."""

    def find_class(self, module: str, name: str):  # noqa: D401
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("refusing persistent ids")


def restricted_loads(data: bytes) -> Any:
    return _NoGlobalsUnpickler(io.BytesIO(data)).load()


MAX_DECOMPRESSED = 1 << 30


def decode_lcb_tests(value: Any) -> list[dict]:
    """``public_test_cases``/``private_test_cases``: a list, a JSON string, or
    base64(zlib(pickle(JSON string))) as in the official LiveCodeBench release."""
    if value is None or value == "":
        return []
    if isinstance(value, list):
        return value
    if not isinstance(value, (str, bytes)):
        raise ValueError(f"unsupported test-case encoding: {type(value).__name__}")
    try:
        return _as_test_list(json.loads(value))
    except (ValueError, TypeError):
        pass
    raw = base64.b64decode(value, validate=False)
    dec = zlib.decompressobj()
    data = dec.decompress(raw, MAX_DECOMPRESSED)
    if dec.unconsumed_tail:
        raise ValueError("decompressed test cases exceed the size limit")
    obj = restricted_loads(data)
    if isinstance(obj, bytes):
        obj = obj.decode("utf-8")
    if isinstance(obj, str):
        obj = json.loads(obj)
    return _as_test_list(obj)


def _as_test_list(obj: Any) -> list[dict]:
    if not isinstance(obj, list) or not all(isinstance(t, dict) for t in obj):
        raise ValueError("test cases must decode to a list of dicts")
    return obj


def encode_lcb_tests(tests: list[dict]) -> str:
    """The official encoding (for round-trip tests and fixtures)."""
    return base64.b64encode(zlib.compress(pickle.dumps(json.dumps(tests)))).decode()


def load_lcb_record(rec: dict, include_private: bool = True) -> Problem:
    """A LiveCodeBench record (local or official shape) -> :class:`Problem`."""
    tests = decode_lcb_tests(rec.get("public_test_cases"))
    if include_private:
        tests = tests + decode_lcb_tests(rec.get("private_test_cases"))
    meta = rec.get("metadata") or {}
    if isinstance(meta, str):
        meta = json.loads(meta) if meta.strip() else {}
    cases = [TestCase(str(t["input"]), str(t["output"]), t.get("testtype", "stdin"))
             for t in tests]
    functional = any(c.testtype == "functional" for c in cases) or bool(meta.get("func_name"))
    if functional:
        return Problem("functional", cases, func_name=meta.get("func_name"),
                       problem_id=str(rec.get("question_id", "")))
    return Problem("stdin", cases, problem_id=str(rec.get("question_id", "")))


def _to_datetime(x: Any) -> _dt.datetime:
    if isinstance(x, _dt.datetime):
        return x.replace(tzinfo=None)
    if isinstance(x, _dt.date):
        return _dt.datetime(x.year, x.month, x.day)
    return _dt.datetime.fromisoformat(str(x).replace("Z", "")).replace(tzinfo=None)


def filter_lcb(records: Iterable[dict], start_date: Any = None, end_date: Any = None,
               platforms: Iterable[str] | None = None) -> list[dict]:
    """Records whose ``contest_date`` is in ``[start_date, end_date]`` (both inclusive,
    dates or ISO strings, None = open) and, optionally, whose platform is listed."""
    lo = _to_datetime(start_date) if start_date is not None else None
    hi = _to_datetime(end_date) if end_date is not None else None
    plats = set(platforms) if platforms is not None else None
    out = []
    for r in records:
        d = _to_datetime(r["contest_date"])
        if (lo is None or d >= lo) and (hi is None or d <= hi) and (
            plats is None or r.get("platform") in plats
        ):
            out.append(r)
    return out


def humaneval_problem(rec: dict) -> Problem:
    """A HumanEval record (prompt, test, entry_point) -> check problem."""
    return Problem("check", check_code=rec["test"] + f"\n\ncheck({rec['entry_point']})\n",
                   prompt=rec["prompt"], entry_point=rec["entry_point"], header=False,
                   problem_id=str(rec.get("task_id", "")))


def to_problem(obj: Any) -> Problem:
    """Coerce a ``tests`` column value into a :class:`Problem`.

    Accepts a Problem; a LiveCodeBench record; a HumanEval record; ``{"functional": code}``
    (rllm/DeepCoder LeetCode); a list of ``{input, output[, testtype]}``; or a JSON string of
    any of these.
    """
    if isinstance(obj, Problem):
        return obj
    if isinstance(obj, str):
        obj = json.loads(obj)
    if isinstance(obj, list):
        cases = [TestCase(str(t["input"]), str(t["output"]), t.get("testtype", "stdin"))
                 for t in obj]
        if any(c.testtype == "functional" for c in cases):
            raise ValueError("functional tests need a func_name: pass a LiveCodeBench record")
        return Problem("stdin", cases)
    if not isinstance(obj, dict):
        raise TypeError(f"cannot make a problem from {type(obj).__name__}")
    if "public_test_cases" in obj or "private_test_cases" in obj:
        return load_lcb_record(obj)
    if "entry_point" in obj and "test" in obj:
        return humaneval_problem(obj)
    tests = obj.get("tests", obj)
    if isinstance(tests, str):
        tests = json.loads(tests)
    if isinstance(tests, dict) and isinstance(tests.get("functional"), str):
        return Problem("check", check_code=tests["functional"])
    if isinstance(tests, list):
        return to_problem(tests)
    raise ValueError(f"unrecognised tests format (keys: {sorted(obj)[:8]})")


# --- grading -----------------------------------------------------------------------------------


def build_program(code: str, problem: Problem) -> str:
    if problem.prompt:
        # HumanEval: the completion may be a whole function or only its body
        if problem.entry_point and re.search(rf"^\s*def\s+{problem.entry_point}\s*\(", code,
                                             re.M):
            code = problem.prompt + "\n" + code
        else:
            code = problem.prompt + code
    return (IMPORT_HEADER + "\n" + code) if problem.header else code


class CodeGrader:
    """Grades completions against problems, one sandboxed program per completion."""

    def __init__(self, config: SandboxConfig | None = None, float_tol: float = 0.0) -> None:
        self.config = config or SandboxConfig()
        self.sandbox = Sandbox(self.config)
        self.float_tol = float_tol

    def grade(self, completion: str, problem: Any) -> CodeVerdict:
        problem = to_problem(problem)
        code = extract_code(completion)
        if code is None:
            return CodeVerdict(False, "no_code", 0, problem.n_tests, self.sandbox.sandboxed,
                               "no ```python block found")
        return self.grade_code(code, problem)

    def grade_code(self, code: str, problem: Problem) -> CodeVerdict:
        """Grade an already-extracted program."""
        problem = to_problem(problem)
        program = build_program(code, problem)
        spec: dict[str, Any] = {
            "kind": problem.kind, "code": program,
            "test_timeout": self.config.test_timeout_s,
            "max_output": self.config.max_output_bytes,
        }
        total = problem.n_tests
        if problem.kind == "check":
            try:
                check_code, n = instrument_check(problem.check_code or "")
            except SyntaxError as e:
                return CodeVerdict(False, "sandbox_error", 0, total, self.sandbox.sandboxed,
                                   f"test code does not parse: {e}")
            spec["check_code"] = check_code
            total = max(1, n)
        else:
            spec["inputs"] = [t.input for t in problem.tests]
            spec["func_name"] = problem.func_name
            if not problem.tests:
                return CodeVerdict(False, "sandbox_error", 0, 0, self.sandbox.sandboxed,
                                   "problem has no tests")
        results: list[TestResult] = []
        failure: dict[str, str] = {}

        def on_record(rec: dict) -> bool:
            if "i" not in rec or problem.kind == "check":
                return True
            i, status = int(rec["i"]), rec.get("status")
            if status == "timeout":
                results.append(TestResult(i, "timeout", "time limit exceeded"))
                return False
            if status != "ok":
                results.append(TestResult(i, "runtime_error", str(rec.get("detail", ""))))
                return False
            if not 0 <= i < len(problem.tests):
                results.append(TestResult(i, "failed", "bogus test index"))
                return False
            want = problem.tests[i].output
            if problem.kind == "stdin":
                ok = not rec.get("truncated") and compare_stdout(
                    str(rec.get("out", "")), want, self.float_tol)
                got = str(rec.get("out", ""))[:200]
            else:
                ret = rec.get("ret")
                try:
                    ok = ret is not None and compare_functional(json.loads(ret), json.loads(want))
                except (ValueError, TypeError):
                    ok = False
                got = str(ret)[:200] if ret is not None else str(rec.get("detail", ""))[:200]
            if ok:
                results.append(TestResult(i, "passed"))
                return True
            detail = f"wrong answer: got {got!r}, expected {want[:200]!r}"
            if rec.get("truncated"):
                detail = "output limit exceeded"
            results.append(TestResult(i, "failed", detail))
            failure["detail"] = detail
            return False

        run = self.sandbox.run(
            ["-c", HARNESS], json.dumps(spec).encode("utf-8"), on_record=on_record,
            wall_time_s=min(self.config.wall_time_s,
                            5.0 + (total + 1) * self.config.test_timeout_s),
            test_timeout_s=self.config.test_timeout_s,
        )
        return self._verdict(problem, run, results, total)

    def _verdict(self, problem: Problem, run: RunResult, results: list[TestResult],
                 total: int) -> CodeVerdict:
        sb = run.sandboxed

        def verdict(reason: str, detail: str) -> CodeVerdict:
            passed = sum(r.status == "passed" for r in results)
            return CodeVerdict(reason == "passed", reason, passed, total, sb, detail[:2000],
                               results, run.wall_s)

        events = {r.get("event"): r for r in run.records if "event" in r}
        if run.error:
            return verdict("sandbox_error", run.error)
        if "compile_error" in events:
            return verdict("compile_error", events["compile_error"].get("detail", ""))
        if "test_error" in events:
            return verdict("sandbox_error", "tests: " + events["test_error"].get("detail", ""))
        if "load_error" in events:
            ev = events["load_error"]
            return verdict("timeout" if ev.get("timeout") else "runtime_error",
                           ev.get("detail", ""))
        if problem.kind == "check":
            for r in run.records:
                if "i" in r:
                    ok = r.get("status") == "ok"
                    results.append(TestResult(int(r["i"]), "passed" if ok else "failed",
                                              str(r.get("detail", ""))))
            done = events.get("done")
            if done is not None:
                st = done.get("status")
                n = sum(x.status == "passed" for x in results)
                if st == "ok":
                    n_asserts = count_check_asserts(problem.check_code or "")
                    if n < n_asserts:
                        return verdict("failed", f"check() ran {n} of {n_asserts} asserts")
                    if not results:
                        results.append(TestResult(0, "passed"))
                    return verdict("passed", "")
                if st == "timeout":
                    results.append(TestResult(len(results), "timeout", "time limit exceeded"))
                    return verdict("timeout", "time limit exceeded")
                if st == "fail":
                    if not results or results[-1].status == "passed":
                        results.append(TestResult(len(results), "failed",
                                                  done.get("detail", "")))
                    return verdict("failed", done.get("detail", "assertion failed"))
                results.append(TestResult(len(results), "runtime_error", done.get("detail", "")))
                return verdict("runtime_error", done.get("detail", ""))
        else:
            if results and results[-1].status != "passed":
                last = results[-1]
                reason = {"timeout": "timeout", "runtime_error": "runtime_error"}.get(
                    last.status, "failed")
                return verdict(reason, f"test {last.index}: {last.detail}")
            if len(results) == total and all(r.status == "passed" for r in results):
                return verdict("passed", "")
        # the harness died or was killed before reporting everything
        if run.timed_out:
            results.append(TestResult(len(results), "timeout", f"{run.timed_out} wall clock"))
            return verdict("timeout", f"{run.timed_out} wall-clock limit exceeded")
        if run.records_truncated:
            return verdict("failed", "result stream over its size limit")
        if "ready" not in events:
            err = run.stderr[-1000:].decode("utf-8", "replace")
            if run.returncode is not None and run.returncode < 0:
                return verdict("runtime_error", f"killed by signal {-run.returncode}: {err}")
            return verdict("sandbox_error", f"harness failed (rc={run.returncode}): {err}")
        rc = run.returncode
        err = run.stderr[-1000:].decode("utf-8", "replace")
        if rc is not None and rc in (-9, -24, 128 + 9, 128 + 24) and run.wall_s > 0.5:
            # SIGKILL/SIGXCPU: the CPU-time rlimit
            results.append(TestResult(len(results), "timeout", "cpu time limit"))
            return verdict("timeout", f"killed (rc={rc}), cpu time limit")
        results.append(TestResult(len(results), "runtime_error", f"rc={rc}"))
        return verdict("runtime_error", f"program died (rc={rc}): {err}")

    def grade_batch(self, completions: list[str], problems: list[Any]) -> list[CodeVerdict]:
        if len(completions) != len(problems):
            raise ValueError("completions and problems must have the same length")
        if not completions:
            return []
        workers = min(int(self.config.max_workers), len(completions))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="archer-code") as ex:
            return list(ex.map(self._grade_safe, completions, problems))

    def _grade_safe(self, completion: str, problem: Any) -> CodeVerdict:
        try:
            return self.grade(completion, problem)
        except (ValueError, TypeError, KeyError) as e:
            return CodeVerdict(False, "sandbox_error", 0, 0, self.sandbox.sandboxed,
                               f"bad problem: {e}")


# --- reward ------------------------------------------------------------------------------------

_GRADER: CodeGrader | None = None
_GRADER_LOCK = threading.Lock()


def default_grader() -> CodeGrader:
    global _GRADER
    with _GRADER_LOCK:
        if _GRADER is None:
            _GRADER = CodeGrader()
        return _GRADER


def _completion_text(c: Any) -> str:
    if isinstance(c, str):
        return c
    if isinstance(c, list) and c and isinstance(c[-1], dict):  # conversational format
        return str(c[-1].get("content", ""))
    if isinstance(c, dict):
        return str(c.get("content", ""))
    return ""


@register_reward("code")
def code_reward(completions: list, tests: list, **columns: Any) -> list[float | None]:
    """1.0 if the completion's last ```python block passes ALL tests, else 0.0.

    ``tests[i]`` is anything :func:`to_problem` accepts; ``None`` gives ``None`` (the reward
    does not apply).  Other columns are ignored.

    >>> code_reward(
    ...     ["```python\\nprint(sum(map(int, input().split())))\\n```", "no code here"],
    ...     tests=[[{"input": "1 2\\n", "output": "3\\n"}]] * 2,
    ... )
    [1.0, 0.0]
    """
    texts = [_completion_text(c) for c in completions]
    idx = [i for i, t in enumerate(tests) if t is not None]
    out: list[float | None] = [None] * len(texts)
    verdicts = default_grader().grade_batch([texts[i] for i in idx], [tests[i] for i in idx])
    for i, v in zip(idx, verdicts):
        out[i] = 1.0 if v.passed else 0.0
    return out
