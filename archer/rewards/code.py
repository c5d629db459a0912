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

Running (:mod:`archer.rewards._harness`): one sandbox per program.  Inside it a *judge*
process that never executes candidate code forks *workers* that do; each worker closes every
inherited descriptor, drops all capabilities and installs its own seccomp filter (no processes,
no signals to other processes, no ptrace, no non-unix sockets, ...) before the program runs.
stdin programs get a fresh worker per test; functional and check programs one worker that
answers the judge's calls.  The verdict comes only from the judge's records on a pipe the
workers do not hold, each stamped with a per-run random nonce; exit codes and printed text
never count, and a run without the judge's final ``end`` record is a failure.

Warm pool (default under bubblewrap; ``SandboxConfig(warm_pool=False)`` for a cold sandbox per
program): each sandbox of :class:`archer.rewards.sandbox.WarmPool` runs a zygote that has the
harness and the usual modules (:data:`ZYGOTE_PRELOAD`) imported and forks the judge of the next
program in advance; that judge forks its worker, which locks itself down and waits for the
program.  Per program the host sends the public spec and then the secrets (fresh nonce, test
code) down the pipe; the judge reads them itself, the spec first and the secrets only after its
worker got the program.  The verdict is returned at the judge's ``end`` record; the zygote then
kills whatever is left, wipes /tmp and the scratch dir and reports, and the sandbox runs
nothing else before a clean report (else it is replaced).  See ``archer.rewards.sandbox`` for
what sharing a sandbox between programs adds to the threat model and how it is contained.

* stdin/functional: the expected outputs never enter the sandbox; the host compares (functional
  results type-strictly, :func:`strict_equal`) and stops at the first mismatch (``fail_fast``).
* check suites (HumanEval, LeetCode): the judge runs ``check`` itself with a proxy
  ``candidate`` that forwards each call to the worker; arguments and results cross as tagged
  JSON and are rebuilt as plain built-in objects (and ``ListNode``/``TreeNode``), so a result
  cannot carry its own ``__eq__``, and patching builtins, ``check``, ``AssertionError`` or the
  harness in the worker changes nothing in the judge.  The worker is forked before the judge
  reads the test code and the nonce, so its memory holds neither.

Threat model, honestly: the judge is as strong as the kernel boundary between two processes of
the same uid without capabilities (the judge is non-dumpable, the workers cannot ptrace, signal
or open its ``/proc`` entries).  A stdin worker is forked after the judge learned the nonce, so
its memory holds a copy; it has no descriptor to use it on.  In the warm pool, nothing of an
earlier program (its code, inputs, test code, nonce) is in a later worker's memory: the zygote
they all descend from never reads a run's data.  The candidate sees its own
arguments, as any program does.  Without bubblewrap (the fallback) the same judge/worker split
and seccomp filter apply, but the file system is not isolated: workers run as ``nobody`` when
started as root and ``nobody`` can read the standard library, otherwise as the same uid without
capabilities, so files that uid owns are writable.

LiveCodeBench records are loaded with :func:`load_lcb_record`, in the local shape (a list of
test dicts) or the official one (JSON strings, or base64(zlib(pickle(JSON string))) decoded by
a restricted unpickler that refuses every global).
"""

from __future__ import annotations

import ast
import base64
import datetime as _dt
import importlib.util
import io
import json
import marshal
import pickle
import re
import secrets
import subprocess
import threading
import weakref
import zlib
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from archer.rewards import register_reward
from archer.rewards.sandbox import (
    PID_PLACEHOLDER,
    RunResult,
    Sandbox,
    SandboxConfig,
    WarmPool,
    worker_seccomp_filter,
)

REASONS = (
    "passed", "failed", "no_code", "timeout", "runtime_error", "compile_error", "sandbox_error",
)

HEADER_MODULES = (
    "string", "re", "datetime", "collections", "heapq", "bisect", "copy", "math", "random",
    "statistics", "itertools", "functools", "operator", "io", "sys", "json", "builtins", "typing")
# Imports LiveCodeBench puts before every solution (same modules, same order).
#: imported once by a warm sandbox's zygote, so no program pays for them: the LiveCodeBench
#: header's modules, what HumanEval prompts import, what the harness imports on error paths
ZYGOTE_PRELOAD = HEADER_MODULES + (
    "traceback", "dataclasses", "decimal", "fractions", "numbers", "array", "textwrap",
    "hashlib", "time", "unicodedata")
IMPORT_HEADER = "\n".join(
    [f"from {m} import *" for m in HEADER_MODULES]
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


def strict_equal(result: Any, expected: Any) -> bool:
    """Equality of two JSON values that also requires equal types, recursively: ``True`` is
    not ``1``, ``"1"`` is not ``1``, a list is not a dict.  Numbers are the exception: an
    ``int`` equals the ``float`` of the same value (JSON does not keep the distinction)."""
    tr, te = type(result), type(expected)
    if tr is bool or te is bool:
        return tr is te and result == expected
    if tr in (int, float) and te in (int, float):
        return result == expected
    if tr is not te:
        return False
    if tr is list:
        return len(result) == len(expected) and all(
            strict_equal(a, b) for a, b in zip(result, expected))
    if tr is dict:
        return result.keys() == expected.keys() and all(
            strict_equal(result[k], expected[k]) for k in expected)
    return result == expected


def compare_functional(result: Any, expected: Any) -> bool:
    """LiveCodeBench's functional check (tuples read as lists), type-strict: see
    :func:`strict_equal`."""
    if isinstance(result, tuple):
        result = list(result)
    return strict_equal(result, expected)


# --- check() suites ----------------------------------------------------------------------------

#: Helpers the LeetCode check suites (DeepCoder / LeetCodeDataset) call without defining them:
#: the same names and semantics as that data set's prompt preamble.  Prepended to the program
#: and to the test code of ``check`` problems that use the LiveCodeBench header.
LEETCODE_HELPERS = """
inf = float('inf')


class ListNode:
    def __init__(self, val=0, next=None):
        self.val = val
        self.next = next


class TreeNode:
    def __init__(self, val=0, left=None, right=None):
        self.val = val
        self.left = left
        self.right = right


def list_node(values):
    head = None
    for v in reversed(list(values or [])):
        head = ListNode(v, head)
    return head


def is_same_list(p1, p2):
    while p1 is not None and p2 is not None:
        if p1.val != p2.val:
            return False
        p1, p2 = p1.next, p2.next
    return p1 is None and p2 is None


def tree_node(values):
    if not values:
        return None
    root = TreeNode(values[0])
    queue, i = collections.deque([root]), 1
    while queue:
        node = queue.popleft()
        if i < len(values) and values[i] is not None:
            node.left = TreeNode(values[i])
            queue.append(node.left)
        i += 1
        if i < len(values) and values[i] is not None:
            node.right = TreeNode(values[i])
            queue.append(node.right)
        i += 1
    return root


def is_same_tree(p, q):
    if not p and not q:
        return True
    if not p or not q or p.val != q.val:
        return False
    return is_same_tree(p.left, q.left) and is_same_tree(p.right, q.right)
"""


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


def _is_check_call(stmt: ast.stmt) -> bool:
    return (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call)
            and isinstance(stmt.value.func, ast.Name) and stmt.value.func.id == "check"
            and len(stmt.value.args) == 1 and not stmt.value.keywords)


def split_check(code: str) -> tuple[str, str, int]:
    """Split a check suite into (test code, entry expression, number of cases): see
    :func:`split_check_tree`, whose tree this unparses."""
    tree, entry, n = split_check_tree(code)
    return ast.unparse(tree), entry, n


def split_check_tree(code: str) -> tuple[ast.Module, str, int]:
    """Split a check suite into (test code as a tree, entry expression, number of cases).

    The top-level ``check(<expr>)`` calls are removed: ``<expr>`` (``Solution().twoSum``,
    a HumanEval entry point) is evaluated by the worker that runs the program, and the judge
    calls ``check`` itself with a proxy.  Each top-level ``assert`` of ``check`` becomes a
    reported case ``__archer_case__(i, lambda: <test>)``.  Raises ValueError when there is no
    ``def check`` or no ``check(...)`` call, SyntaxError when the code does not parse.
    """
    tree = ast.parse(code)
    fn = _check_def(tree)
    if fn is None:
        raise ValueError("test code defines no check() function")
    calls = [s for s in tree.body if _is_check_call(s)]
    if not calls:
        raise ValueError("test code never calls check(<candidate>)")
    entry = ast.unparse(calls[-1].value.args[0])
    tree.body = [s for s in tree.body if not _is_check_call(s)]
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
    return tree, entry, n


# --- the harness (runs inside the sandbox) -----------------------------------------------------

#: source of :mod:`archer.rewards._harness`, run with ``python -I -S -c`` in the sandbox
HARNESS = (Path(__file__).with_name("_harness.py")).read_text(encoding="utf-8")
#: reads the harness as marshalled bytecode from stdin (``<length>\\n<bytes>``), then runs it:
#: saves compiling ~900 lines in every sandbox
_BOOT = "import marshal,sys;b=sys.stdin.buffer;exec(marshal.loads(b.read(int(b.readline()))))"
_MAGIC: dict[str, str] = {}
_MAGIC_LOCK = threading.Lock()


def _bytecode_magic(python: str) -> str:
    """``importlib.util.MAGIC_NUMBER`` of ``python`` (hex; "" if it cannot be asked)."""
    with _MAGIC_LOCK:
        if python not in _MAGIC:
            try:
                out = subprocess.run(
                    [python, "-I", "-S", "-c", "import importlib.util as u, sys; "
                     "sys.stdout.write(u.MAGIC_NUMBER.hex())"],
                    capture_output=True, timeout=30, env={"PATH": "/usr/bin:/bin"},
                ).stdout.decode()
            except (OSError, subprocess.SubprocessError):
                out = ""
            _MAGIC[python] = out.strip()
        return _MAGIC[python]


def harness_invocation(python: str, site_packages: bool = False) -> tuple[list[str], bytes]:
    """(interpreter arguments, stdin prefix) that run the harness in ``python``: its
    marshalled bytecode when ``python`` has this interpreter's bytecode format, else the
    source."""
    flags = [] if site_packages else ["-S"]
    if _bytecode_magic(python) == importlib.util.MAGIC_NUMBER.hex():
        blob = marshal.dumps(compile(HARNESS, "<archer-harness>", "exec"))
        return flags + ["-c", _BOOT], str(len(blob)).encode() + b"\n" + blob
    return flags + ["-c", HARNESS], b""


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
                   suffix=rec.get("program_suffix", ""),
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


def _uses_leetcode_helpers(problem: Problem) -> bool:
    return problem.kind == "check" and problem.header


def build_program(code: str, problem: Problem) -> str:
    """The program the worker runs: header (+ LeetCode helpers), HumanEval prompt, code."""
    if problem.prompt:
        # HumanEval: the completion may be a whole function or only its body
        if problem.entry_point and re.search(rf"^\s*def\s+{problem.entry_point}\s*\(", code,
                                             re.M):
            code = problem.prompt + "\n" + code
        else:
            code = problem.prompt + code
    if problem.suffix:
        code = code + "\n\n" + problem.suffix
    if _uses_leetcode_helpers(problem):
        code = LEETCODE_HELPERS + "\n" + code
    return (IMPORT_HEADER + "\n" + code) if problem.header else code


def checker_prelude(problem: Problem) -> str:
    """What the judge runs before a check problem's test code: the HumanEval prompt (its
    helper functions, e.g. ``poly``), or the header and LeetCode helpers."""
    if problem.prompt:
        return problem.prompt
    if problem.header:
        return IMPORT_HEADER + "\n" + LEETCODE_HELPERS
    return ""


_WORKER_FILTER = worker_seccomp_filter()


class CodeGrader:
    """Grades completions against problems, one sandboxed program per completion.

    ``fail_fast`` (default, as LiveCodeBench): stop a program at its first failing test;
    otherwise every test runs and ``tests_passed`` counts them all.
    """

    def __init__(self, config: SandboxConfig | None = None, float_tol: float = 0.0,
                 fail_fast: bool = True) -> None:
        self.config = config or SandboxConfig()
        self.sandbox = Sandbox(self.config)
        self.float_tol = float_tol
        self.fail_fast = fail_fast
        self._filter = _WORKER_FILTER.hex() if (
            _WORKER_FILTER is not None and self.config.forbid_fork) else None
        self._args, self._stdin_prefix = harness_invocation(
            self.sandbox.python, self.config.allow_site_packages)
        self.pool: WarmPool | None = None
        if self.config.warm_pool and self.sandbox.sandboxed:
            self.pool = WarmPool(
                self.sandbox, self._args, self._stdin_prefix, ZYGOTE_PRELOAD,
                init={"seccomp": self._filter, "pid_placeholder": PID_PLACEHOLDER,
                      "drop_uid": self.sandbox.drop_uid},
                # twice the concurrent programs (+1): a sandbox still cleaning up after its
                # last program is rarely the only one free
                size=2 * int(self.config.max_workers) + 1)
            weakref.finalize(self, self.pool.close)

    def warm_up(self) -> None:
        """Start the warm sandboxes now (they are otherwise started on first use)."""
        if self.pool is not None:
            self.pool.prestart()

    def close(self) -> None:
        """Stop the warm sandboxes (they also stop with this process)."""
        if self.pool is not None:
            self.pool.close()

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
        sb = self.sandbox
        program = build_program(code, problem)
        nonce = secrets.token_hex(16)
        spec: dict[str, Any] = {
            "kind": problem.kind, "code": program,
            "test_timeout": self.config.test_timeout_s,
            "max_output": self.config.max_output_bytes,
            "fail_fast": self.fail_fast,
            "seccomp": self._filter, "pid_placeholder": PID_PLACEHOLDER,
            "drop_uid": sb.drop_uid,
            # cold start: imported once by the judge, before it forks workers (a warm
            # sandbox's zygote has ZYGOTE_PRELOAD imported already)
            "preload": list(HEADER_MODULES) if problem.header else [],
        }
        secret: dict[str, Any] = {"nonce": nonce}
        n_asserts = None
        if problem.kind == "check":
            try:
                tree, entry, n_asserts = split_check_tree(problem.check_code or "")
                if self._stdin_prefix:  # the sandbox's interpreter reads our bytecode
                    secret["check_bytecode"] = marshal.dumps(
                        compile(tree, "<tests>", "exec", dont_inherit=True)).hex()
                else:
                    secret["check_code"] = ast.unparse(tree)
            except (SyntaxError, ValueError, RecursionError) as e:
                return CodeVerdict(False, "sandbox_error", 0, problem.n_tests, sb.sandboxed,
                                   f"unusable test code: {e}")
            spec["entry"] = entry
            secret["prelude"] = checker_prelude(problem)
            total = max(1, n_asserts)
        else:
            total = len(problem.tests)
            spec["inputs"] = [t.input for t in problem.tests]
            spec["func_name"] = problem.func_name
            if not problem.tests:
                return CodeVerdict(False, "sandbox_error", 0, 0, sb.sandboxed,
                                   "problem has no tests")
        results: list[TestResult] = []
        forged: list[dict] = []

        def on_record(rec: dict) -> bool:
            if rec.get("k") != nonce:
                forged.append(rec)
                return False
            if "i" not in rec or problem.kind == "check":
                return True
            res = self._judge_record(problem, rec)
            results.append(res)
            return res.status == "passed" or not self.fail_fast

        wall = min(self.config.wall_time_s, 5.0 + (total + 1) * self.config.test_timeout_s)
        if self.pool is not None:
            run = self.pool.run(
                json.dumps(spec).encode("utf-8"), json.dumps(secret).encode("utf-8"),
                max(1, int(min(self.config.cpu_time_s, wall)) + 1), on_record=on_record,
                wall_time_s=wall, test_timeout_s=self.config.test_timeout_s,
                is_last=lambda rec: rec.get("event") == "end" and rec.get("k") == nonce)
        else:
            run = sb.run(
                self._args, self._stdin_prefix + json.dumps(spec).encode("utf-8"),
                on_record=on_record, wall_time_s=wall,
                test_timeout_s=self.config.test_timeout_s,
                secret=json.dumps(secret).encode("utf-8"), own_seccomp=True,
            )
        if forged:
            return CodeVerdict(False, "failed", 0, total, run.sandboxed,
                               "protocol record without the run's nonce", [], run.wall_s)
        return self._verdict(problem, run, results, total, n_asserts)

    def _judge_record(self, problem: Problem, rec: dict) -> TestResult:
        """One stdin/functional test record -> its result (the host holds the outputs)."""
        i, status = int(rec["i"]), rec.get("status")
        detail = str(rec.get("detail", ""))[:1000]
        if status == "timeout":
            return TestResult(i, "timeout", "time limit exceeded")
        if status != "ok":
            return TestResult(i, "runtime_error", detail)
        if not 0 <= i < len(problem.tests):
            return TestResult(i, "failed", "bogus test index")
        if rec.get("truncated"):
            return TestResult(i, "failed", "output limit exceeded")
        want = problem.tests[i].output
        if problem.kind == "stdin":
            out = str(rec.get("out", ""))
            ok, got = compare_stdout(out, want, self.float_tol), out[:200]
        else:
            ret = rec.get("ret")
            try:
                ok = isinstance(ret, str) and compare_functional(json.loads(ret), json.loads(want))
            except (ValueError, TypeError, RecursionError):
                ok = False
            got = str(ret)[:200]
        if ok:
            return TestResult(i, "passed")
        return TestResult(i, "failed", f"wrong answer: got {got!r}, expected {want[:200]!r}")

    def _verdict(self, problem: Problem, run: RunResult, results: list[TestResult],
                 total: int, n_asserts: int | None = None) -> CodeVerdict:
        sb = run.sandboxed

        def verdict(reason: str, detail: str) -> CodeVerdict:
            passed = sum(r.status == "passed" for r in results)
            return CodeVerdict(reason == "passed", reason, passed, total, sb, detail[:2000],
                               results, run.wall_s)

        events = {r.get("event"): r for r in run.records if "event" in r}
        if run.error:
            return verdict("sandbox_error", run.error)
        if "sandbox_error" in events:
            return verdict("sandbox_error", events["sandbox_error"].get("detail", ""))
        if "compile_error" in events:
            return verdict("compile_error", events["compile_error"].get("detail", ""))
        if "test_error" in events:
            return verdict("sandbox_error", "tests: " + events["test_error"].get("detail", ""))
        if "load_error" in events:
            ev = events["load_error"]
            return verdict("timeout" if ev.get("timeout") else "runtime_error",
                           ev.get("detail", ""))
        if problem.kind == "check":
            status_of = {"ok": "passed", "fail": "failed", "error": "runtime_error",
                         "timeout": "timeout"}
            for r in run.records:
                if "i" in r:
                    results.append(TestResult(int(r["i"]), status_of.get(r.get("status"),
                                                                         "failed"),
                                              str(r.get("detail", ""))))
            done = events.get("done")
            if done is not None and "end" in events:
                st = done.get("status")
                n_ok = sum(x.status == "passed" for x in results)
                first_bad = next((x for x in results if x.status != "passed"), None)
                if st == "ok" and first_bad is None:
                    if n_asserts is None:
                        n_asserts = count_check_asserts(problem.check_code or "")
                    if n_ok < n_asserts:
                        return verdict("failed", f"check() ran {n_ok} of {n_asserts} asserts")
                    if not results:
                        results.append(TestResult(0, "passed"))
                    return verdict("passed", "")
                if st == "timeout":
                    results.append(TestResult(len(results), "timeout", "time limit exceeded"))
                    return verdict("timeout", "time limit exceeded")
                if first_bad is not None:
                    reason = first_bad.status if first_bad.status != "passed" else "failed"
                    return verdict(reason, f"test {first_bad.index}: {first_bad.detail}")
                if st == "fail":
                    results.append(TestResult(len(results), "failed", done.get("detail", "")))
                    return verdict("failed", done.get("detail", "") or "assertion failed")
                results.append(TestResult(len(results), "runtime_error", done.get("detail", "")))
                return verdict("runtime_error", done.get("detail", ""))
        else:
            bad = next((r for r in results if r.status != "passed"), None)
            if bad is not None:
                return verdict(bad.status, f"test {bad.index}: {bad.detail}")
            if len(results) == total and "end" in events:
                return verdict("passed", "")
        # the harness died or was killed before reporting everything
        if run.timed_out:
            results.append(TestResult(len(results), "timeout", f"{run.timed_out} wall clock"))
            return verdict("timeout", f"{run.timed_out} wall-clock limit exceeded")
        if run.records_truncated:
            return verdict("failed", "result stream over its size limit")
        err = run.stderr[-1000:].decode("utf-8", "replace")
        if "ready" not in events:
            if run.returncode is not None and run.returncode < 0:
                return verdict("runtime_error", f"killed by signal {-run.returncode}: {err}")
            return verdict("sandbox_error", f"harness failed (rc={run.returncode}): {err}")
        rc = run.returncode
        results.append(TestResult(len(results), "runtime_error", f"rc={rc}"))
        return verdict("runtime_error", f"judge exited early (rc={rc}): {err}")

    def grade_batch(self, completions: list[str], problems: list[Any]) -> list[CodeVerdict]:
        """Grade many completions on a pool of ``max_workers`` threads (one sandboxed
        program each at a time)."""
        if len(completions) != len(problems):
            raise ValueError("completions and problems must have the same length")
        if not completions:
            return []
        workers = min(int(self.config.max_workers), len(completions))
        if workers == 1:
            return [self._grade_safe(c, p) for c, p in zip(completions, problems)]
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
