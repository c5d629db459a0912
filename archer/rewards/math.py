"""Math answer grader: one verifier for both the training reward and the evaluation score.

A response is graded in two steps:

1. **Extraction** (:func:`extract_answer`): the last ``\\boxed{...}`` (or ``\\fbox{...}``,
   ``\\boxed X``) after the last ``</think>``; an unclosed ``<think>`` means no answer.
   Optional fallbacks (``"answer_line"``, ``"last_number"``) apply only when configured.
2. **Equivalence** with the gold answer by an ordered set of checkers; the answer is correct
   when ANY of them accepts it:

   - ``"string"``: a LaTeX string normaliser (:func:`normalize_answer`) plus exact comparison
     of plain numbers and elementwise comparison of tuples, intervals and sets. Pure Python,
     linear time: it runs in the calling process.
   - ``"sympy"``: parses both sides to sympy and accepts when ``simplify(a - b) == 0`` or the
     values agree within ``rel_tol`` (relative).
   - ``"math_verify"``: Hugging Face Math-Verify's ``parse``/``verify``.
   - ``"package.module:function"``: any importable ``fn(pred: str, gold: str) -> bool`` (or
     ``(bool, detail)``), e.g. a project-specific checker.

   Every checker but ``"string"`` runs in a pool of worker processes with a hard per-answer,
   per-checker time limit (``timeout_s``): a worker that overruns is killed and replaced, so a
   hung sympy call never stalls training. Math-Verify's own signal-based timeouts are disabled
   in the workers (they only work in a main thread and raise a ``BaseException``).

Each answer gets a :class:`Verdict` (``correct``/``wrong``/``no_answer``/``timeout``/``error``
plus the extracted answer, the accepting checker and a detail). Results are cached on
``(extracted answer, gold, checker config)``. :func:`audit_graders` runs the checkers side by
side and lists where they disagree. The reward ``"math"`` (:func:`math_reward`) follows TRL's
contract ``fn(completions, **columns) -> list[float | None]``.

Importing this module is cheap: sympy and math_verify are imported only inside the workers.
"""

from __future__ import annotations

import cmath
import functools
import importlib
import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from archer.rewards import register_reward
from archer.rewards._math_normalize import (
    FALLBACKS,
    compound_equal,
    extract_answer,
    extract_boxed,
    gold_from_gsm8k,
    normalize_answer,
    plain_number,
    split_compound,
    string_equivalent,
    to_fraction,
)

__all__ = [
    "BUILTIN_CHECKERS",
    "FALLBACKS",
    "REASONS",
    "AuditReport",
    "MathGrader",
    "MathGraderConfig",
    "Verdict",
    "audit_graders",
    "configure_math_reward",
    "extract_answer",
    "extract_boxed",
    "get_default_grader",
    "gold_from_gsm8k",
    "math_reward",
    "math_verify_equivalent",
    "normalize_answer",
    "string_equivalent",
    "sympy_equivalent",
]

logger = logging.getLogger(__name__)

#: Checkers available by name; any other name must be an importable ``"module:function"``.
BUILTIN_CHECKERS = ("string", "sympy", "math_verify")
#: Every :class:`Verdict` has one of these reasons.
REASONS = ("correct", "wrong", "no_answer", "timeout", "error")


def _default_workers() -> int:
    return max(1, min(4, os.cpu_count() or 1))


# --------------------------------------------------------------------------------------------
# Config and verdict
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MathGraderConfig:
    """Settings of :class:`MathGrader` (validated on construction).

    Attributes:
        checkers: checkers tried in order; the answer is correct when any accepts. Names from
            :data:`BUILTIN_CHECKERS` or ``"package.module:function"``.
        fallbacks: extraction fallbacks tried in order when there is no ``\\boxed{}``
            (names from :data:`FALLBACKS`); empty = boxed only, as in the paper.
        timeout_s: hard wall-clock limit for one checker on one answer, in seconds.
        num_workers: worker processes for the non-string checkers.
        rel_tol: relative tolerance of the sympy checker's numeric comparison.
        cache_size: verdicts kept in the LRU cache (0 disables the cache).
        worker_memory_mb: address-space limit of each worker (None: no limit); a checker that
            runs out of memory gives an ``error`` verdict instead of swapping the machine.
        worker_start_timeout_s: how long a starting worker may take to import its checkers.
    """

    checkers: tuple[str, ...] = BUILTIN_CHECKERS
    fallbacks: tuple[str, ...] = ()
    timeout_s: float = 5.0
    num_workers: int = field(default_factory=_default_workers)
    rel_tol: float = 1e-6
    cache_size: int = 100_000
    worker_memory_mb: int | None = 4096
    worker_start_timeout_s: float = 120.0

    def __post_init__(self) -> None:
        for name in ("checkers", "fallbacks"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = (value,)
            object.__setattr__(self, name, tuple(value))
        if not self.checkers:
            raise ValueError(
                f"MathGraderConfig.checkers must not be empty; allowed: {list(BUILTIN_CHECKERS)} "
                "or 'package.module:function'"
            )
        for c in self.checkers:
            if c in BUILTIN_CHECKERS:
                continue
            if not isinstance(c, str) or ":" not in c:
                raise ValueError(
                    f"MathGraderConfig.checkers: unknown checker {c!r}; allowed: "
                    f"{list(BUILTIN_CHECKERS)} or an importable 'package.module:function'"
                )
            try:
                _resolve_custom_checker(c)
            except Exception as e:  # noqa: BLE001
                raise ValueError(
                    f"MathGraderConfig.checkers: cannot import checker {c!r} ({e}); allowed: "
                    f"{list(BUILTIN_CHECKERS)} or an importable 'package.module:function'"
                ) from e
        if len(set(self.checkers)) != len(self.checkers):
            raise ValueError(f"MathGraderConfig.checkers has duplicates: {list(self.checkers)}")
        for f in self.fallbacks:
            if f not in FALLBACKS:
                raise ValueError(
                    f"MathGraderConfig.fallbacks: unknown fallback {f!r}; allowed: {list(FALLBACKS)}"
                )
        if len(set(self.fallbacks)) != len(self.fallbacks):
            raise ValueError(f"MathGraderConfig.fallbacks has duplicates: {list(self.fallbacks)}")
        _check_number("timeout_s", self.timeout_s, positive=True)
        _check_number("worker_start_timeout_s", self.worker_start_timeout_s, positive=True)
        _check_number("rel_tol", self.rel_tol, positive=False)
        if not isinstance(self.num_workers, int) or self.num_workers < 1:
            raise ValueError(
                f"MathGraderConfig.num_workers must be an int >= 1, got {self.num_workers!r}"
            )
        if not isinstance(self.cache_size, int) or self.cache_size < 0:
            raise ValueError(
                f"MathGraderConfig.cache_size must be an int >= 0, got {self.cache_size!r}"
            )
        if self.worker_memory_mb is not None and (
            not isinstance(self.worker_memory_mb, int) or self.worker_memory_mb <= 0
        ):
            raise ValueError(
                f"MathGraderConfig.worker_memory_mb must be None or an int > 0, "
                f"got {self.worker_memory_mb!r}"
            )

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> MathGraderConfig:
        """Build from a plain mapping (e.g. a Hydra/OmegaConf node); unknown keys are an error."""
        d = dict(d or {})
        allowed = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(allowed))
        if unknown:
            raise ValueError(f"MathGraderConfig: unknown field(s) {unknown}; allowed: {allowed}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def cache_key(self) -> tuple:
        """The part of the config that changes a verdict for a fixed extracted answer."""
        return (self.checkers, self.rel_tol)


def _check_number(name: str, value: Any, *, positive: bool) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
    if ok:
        ok = value > 0 if positive else value >= 0
    if not ok:
        bound = "> 0" if positive else ">= 0"
        raise ValueError(f"MathGraderConfig.{name} must be a number {bound}, got {value!r}")


@dataclass(frozen=True)
class Verdict:
    """The grade of one response.

    ``reason`` is one of :data:`REASONS`: ``correct`` (a checker accepted), ``wrong`` (all
    checkers rejected), ``no_answer`` (nothing extracted), ``timeout`` (no checker accepted
    and at least one ran out of time), ``error`` (no checker accepted and one failed, e.g.
    its worker died). ``checker`` names the accepting checker.
    """

    correct: bool
    reason: str
    extracted: str | None
    checker: str | None
    detail: str
    #: time the checkers spent on this (answer, gold) pair when it was first checked (a cached
    #: verdict keeps it); not part of equality
    seconds: float = field(default=0.0, compare=False)

    @property
    def reward(self) -> float:
        return 1.0 if self.correct else 0.0


@dataclass(frozen=True)
class _Outcome:
    """Result of one checker on one (pred, gold): status in accept/reject/timeout/error."""

    status: str
    detail: str = ""
    seconds: float = 0.0


# --------------------------------------------------------------------------------------------
# Checkers (the sympy and math_verify ones run inside worker processes)
# --------------------------------------------------------------------------------------------

_LATEX_PARSERS: list[Callable[[str], Any]] | None = None
_SAFE_PLAIN_NAMES = {"sqrt", "pi", "oo", "sin", "cos", "tan", "log", "ln", "exp", "E", "I"}


def _latex_parsers() -> list[Callable[[str], Any]]:
    """sympy's own parse_latex when its ANTLR runtime is usable, then Math-Verify's latex2sympy."""
    global _LATEX_PARSERS
    if _LATEX_PARSERS is None:
        parsers: list[Callable[[str], Any]] = []
        try:
            from sympy.parsing.latex import parse_latex

            parse_latex("1")
            parsers.append(parse_latex)
        except Exception:  # noqa: BLE001 - ImportError or an incompatible antlr4 runtime
            pass
        try:
            from latex2sympy2_extended import latex2sympy

            parsers.append(latex2sympy)
        except ImportError:
            pass
        _LATEX_PARSERS = parsers
    return _LATEX_PARSERS


def _parse_plain(s: str):
    """sympy expression of a plain (non-LaTeX) expression like ``2*sqrt(2)/3``, or None.

    Only digits, operators, brackets, single-letter symbols and a few function names are
    allowed, because sympy's parser evaluates Python code.
    """
    if (
        len(s) > 300
        or not re.fullmatch(r"[0-9A-Za-z+\-*/^().\s]*", s)
        or re.search(r"\.\s*[A-Za-z]", s)
    ):
        return None  # (no attribute access either)
    for word in re.findall(r"[A-Za-z]+", s):
        if len(word) > 1 and word not in _SAFE_PLAIN_NAMES:
            return None
    from sympy import Symbol, log
    from sympy.parsing.sympy_parser import (
        convert_xor,
        implicit_multiplication_application,
        parse_expr,
        standard_transformations,
    )

    local = {c: Symbol(c) for c in set(re.findall(r"(?<![A-Za-z])[A-Za-z](?![A-Za-z])", s))}
    local.pop("E", None)
    local.pop("I", None)
    local["ln"] = log
    transformations = standard_transformations + (implicit_multiplication_application, convert_xor)
    return parse_expr(s, local_dict=local, transformations=transformations)


_FUNCTION_WORDS = {
    "sqrt",
    "sin",
    "cos",
    "tan",
    "cot",
    "sec",
    "csc",
    "log",
    "exp",
    "arcsin",
    "arccos",
    "arctan",
    "sinh",
    "cosh",
    "tanh",
    "det",
    "max",
    "min",
    "gcd",
    "lcm",
    "mod",
    "bmod",
    "pmod",
}


def _is_text(s: str) -> bool:
    """Whether ``s`` contains a word of 3+ letters that is not a command or function name.

    Such answers (``east``, ``Monday``) are text: a parser would read them as products of
    symbols, and ``east`` would then equal ``seat``.
    """
    bare = re.sub(r"\\(?:begin|end)\{[^{}]*\}|\\[a-zA-Z]+", " ", s)
    return any(w.lower() not in _FUNCTION_WORDS for w in re.findall(r"[A-Za-z]{3,}", bare))


def _to_sympy(s: str):
    """Parse a normalised answer; plain expressions go through sympify first, LaTeX through
    the LaTeX parsers. Returns None when nothing parses (or ``s`` is text)."""
    if _is_text(s):
        return None
    tries: list[Callable[[str], Any]] = []
    if "\\" not in s:
        tries.append(_parse_plain)
    tries.extend(_latex_parsers())
    for parse in tries:
        try:
            expr = parse(s)
        except Exception:  # noqa: BLE001 - parsers raise all sorts of things
            continue
        if expr is not None:
            return expr
    return None


@functools.lru_cache(maxsize=4096)
def _to_sympy_cached(s: str):
    """:func:`_to_sympy`, memoised per process (a gold answer is parsed once per group)."""
    return _to_sympy(s)


def _differ_at_random_points(a, b, points: int = 2) -> bool:
    """Whether ``a - b`` is clearly non-zero at some rational point: then it is not identically
    zero, and the (slow) ``simplify`` need not run. Points where either side is undefined or
    not finite prove nothing."""
    import random

    import sympy

    syms = sorted(a.free_symbols | b.free_symbols, key=str)
    rng = random.Random(0)
    for _ in range(points):
        pt = {x: sympy.Rational(rng.randint(7, 97), rng.randint(3, 31)) for x in syms}
        try:
            va, vb = complex(sympy.N(a.subs(pt), 30)), complex(sympy.N(b.subs(pt), 30))
        except (TypeError, ValueError, OverflowError, ZeroDivisionError):
            continue
        if not (cmath.isfinite(va) and cmath.isfinite(vb)):
            continue
        if abs(va - vb) > 1e-9 * max(1.0, abs(va), abs(vb)):
            return True
    return False


def _sympy_values_equal(a, b, rel_tol: float) -> bool:
    import sympy

    if a == b:
        return True
    if isinstance(a, sympy.Expr) and isinstance(b, sympy.Expr):
        if not a.free_symbols and not b.free_symbols:
            try:
                va, vb = complex(sympy.N(a, 30)), complex(sympy.N(b, 30))
                fa, fb = cmath.isfinite(va), cmath.isfinite(vb)
                if fa and fb:
                    diff = abs(va - vb)
                    if diff <= rel_tol * max(abs(va), abs(vb)) or diff <= 1e-12:
                        return True
                    if diff > 1e-9 * max(1.0, abs(va), abs(vb)):
                        return False  # clearly different values: simplify cannot equate them
                elif fa != fb:  # one overflows, the other does not: they differ
                    return False
            except (TypeError, ValueError, OverflowError):
                pass
        elif _differ_at_random_points(a, b):
            return False
        try:
            return sympy.simplify(a - b) == 0
        except Exception:  # noqa: BLE001
            return False
    if isinstance(a, sympy.Set) and isinstance(b, sympy.Set):
        try:
            return a.symmetric_difference(b) == sympy.S.EmptySet
        except Exception:  # noqa: BLE001
            return False
    if isinstance(a, sympy.Equality) and isinstance(b, sympy.Equality):
        try:
            return sympy.simplify((a.lhs - a.rhs) - (b.lhs - b.rhs)) == 0
        except Exception:  # noqa: BLE001
            return False
    return False


def sympy_equivalent(pred: str, gold: str, rel_tol: float = 1e-6) -> tuple[bool, str]:
    """Symbolic/numeric equality of two answers with sympy: ``(accepted, detail)``.

    Both sides are normalised (:func:`normalize_answer`), compounds are compared elementwise,
    and leaves are parsed (sympy's ``parse_latex`` if its ANTLR runtime is present, else
    Math-Verify's ``latex2sympy``; plain expressions via a restricted ``parse_expr``), then
    accepted if ``simplify(a - b) == 0`` or ``|a - b| <= rel_tol * max(|a|, |b|)``.
    No time limit here: call it through :class:`MathGrader` for one.

    >>> sympy_equivalent(r"\\sqrt{8}", r"2\\sqrt{2}")[0]
    True
    """
    a, b = normalize_answer(pred), normalize_answer(gold)
    if not a or not b:
        return False, "empty answer"
    failures: list[str] = []

    def leaf_eq(x: str, y: str) -> bool:
        x, y = normalize_answer(x), normalize_answer(y)
        if x == y and x:
            return True
        fx, fy = to_fraction(x), to_fraction(y)
        if fx is not None and fy is not None:  # plain numbers: no need for sympy
            if "." not in x and "." not in y:  # exact integers/fractions: exact comparison
                return fx == fy
            return abs(fx - fy) <= rel_tol * max(abs(fx), abs(fy))
        ex, ey = _to_sympy_cached(x), _to_sympy_cached(y)
        if ex is None or ey is None:
            failures.append(f"unparseable {x if ex is None else y!r}")
            return False
        return _sympy_values_equal(ex, ey, rel_tol)

    res = compound_equal(a, b, leaf_eq)
    if res is None:
        res = leaf_eq(a, b)
    if res:
        return True, "sympy equal"
    return False, failures[0] if failures else "not equal"


@functools.lru_cache(maxsize=4096)
def _math_verify_parse(answer: str) -> tuple:
    """``math_verify.parse`` of ``\\boxed{answer}``, memoised per process: in a batch the gold
    answer of a group is parsed once, not once per response. (Parsed values are immutable
    sympy objects and strings; ``verify`` does not modify them.)"""
    from math_verify import parse

    return tuple(parse("\\boxed{" + answer + "}", parsing_timeout=None))


def math_verify_equivalent(pred: str, gold: str) -> tuple[bool, str]:
    """Math-Verify on the raw answers, with its signal timeouts disabled: ``(accepted, detail)``.

    Both strings are wrapped in ``\\boxed{}`` and parsed with ``math_verify.parse``; then
    ``math_verify.verify(gold, pred)``. Safe in any thread, but without a time limit: call it
    through :class:`MathGrader` for one.
    """
    from math_verify import verify

    g = _math_verify_parse(gold)
    if not g:
        return False, "math_verify could not parse the gold answer"
    p = _math_verify_parse(pred)
    if not p:
        return False, "math_verify could not parse the answer"
    ok = verify(list(g), list(p), timeout_seconds=None)
    return bool(ok), "math_verify equal" if ok else "not equal"


def _string_checker(pred: str, gold: str) -> tuple[bool, str]:
    ok = string_equivalent(pred, gold)
    if ok:
        return True, "normalised strings equal"
    return False, f"{normalize_answer(pred)!r} != {normalize_answer(gold)!r}"


def _resolve_custom_checker(spec: str) -> Callable[[str, str], Any]:
    module, _, attr = spec.partition(":")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"{spec} is not callable")
    return obj


def _resolve_checker(name: str, rel_tol: float) -> Callable[[str, str], Any]:
    if name == "string":
        return _string_checker
    if name == "sympy":
        return lambda p, g: sympy_equivalent(p, g, rel_tol=rel_tol)
    if name == "math_verify":
        return math_verify_equivalent
    return _resolve_custom_checker(name)


def _call_checker(fn: Callable[[str, str], Any], pred: str, gold: str) -> _Outcome:
    res = fn(pred, gold)
    if isinstance(res, tuple):
        ok, detail = bool(res[0]), str(res[1]) if len(res) > 1 else ""
    else:
        ok, detail = bool(res), ""
    return _Outcome("accept" if ok else "reject", detail or ("accepted" if ok else "not equal"))


# --------------------------------------------------------------------------------------------
# Worker processes
# --------------------------------------------------------------------------------------------


_WORKER_BOOT = (
    "import json, sys; sys.path[:0] = json.loads(sys.argv[1]); "
    "from archer.rewards.math import _worker_entry; _worker_entry(int(sys.argv[2]))"
)


def _worker_entry(fd: int) -> None:
    """Entry point of a worker process (started by :class:`_Worker` with ``python -c``)."""
    from multiprocessing.connection import Connection

    conn = Connection(fd)
    try:
        checkers, rel_tol, memory_mb = conn.recv()
    except (EOFError, OSError):
        return
    _worker_main(conn, checkers, rel_tol, memory_mb)


def _exit_when_orphaned(parent_pid: int) -> None:
    """Daemon thread of a worker: exit once the grading process is gone."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent_pid:
            os._exit(1)


def _worker_main(conn, checkers: tuple[str, ...], rel_tol: float, memory_mb: int | None) -> None:
    """Worker loop: receive ``(task_id, checker, pred, gold)``, send ``("result", id, status,
    detail)``. Every exception, BaseExceptions included, becomes an ``error`` result."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business
    threading.Thread(target=_exit_when_orphaned, args=(os.getppid(),), daemon=True).start()
    if memory_mb:
        try:
            import resource

            limit = memory_mb * 2**20
            _, hard = resource.getrlimit(resource.RLIMIT_AS)
            if hard != resource.RLIM_INFINITY:
                limit = min(limit, hard)
            resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
        except (ImportError, ValueError, OSError):
            pass
    for name in ("math_verify", "latex2sympy2_extended"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        funcs = {name: _resolve_checker(name, rel_tol) for name in checkers}
        # Warm up (imports, parser tables) before declaring ready, so that start-up time is
        # not charged to the first answer's time limit.
        for name in checkers:
            if name in BUILTIN_CHECKERS:
                funcs[name]("1", "1")
    except BaseException as e:  # noqa: BLE001
        conn.send(("fatal", f"{type(e).__name__}: {e}"))
        return
    conn.send(("ready", os.getpid()))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        tid, name, pred, gold = msg
        try:
            out = _call_checker(funcs[name], pred, gold)
        except BaseException as e:  # noqa: BLE001 - incl. math_verify's TimeoutException
            out = _Outcome("error", f"{type(e).__name__}: {str(e)[:200]}")
        try:
            conn.send(("result", tid, out.status, out.detail))
        except (BrokenPipeError, OSError):
            return


class _Worker:
    """One worker process, talking over a socket pair.

    Workers are fresh interpreters (``python -c``), not multiprocessing children: they do not
    re-import the caller's ``__main__`` (no ``if __name__ == "__main__"`` guard needed, no
    torch imported per worker) and share no state with the trainer.
    """

    def __init__(self, checkers: tuple[str, ...], cfg: MathGraderConfig) -> None:
        from multiprocessing.connection import Connection

        parent_sock, child_sock = socket.socketpair()
        try:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    _WORKER_BOOT,
                    json.dumps(sys.path),
                    str(child_sock.fileno()),
                ],
                pass_fds=(child_sock.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        finally:
            child_sock.close()
        self.conn = Connection(parent_sock.detach())
        self.conn.send((checkers, cfg.rel_tol, cfg.worker_memory_mb))
        self.started = time.monotonic()
        self.ready = False
        # tasks sent and not yet answered, oldest first; the worker runs them in this order
        self.inflight: deque[int] = deque()
        # when the oldest in-flight task runs out of time (its clock starts when the worker
        # gets to it, i.e. when the previous result arrives)
        self.deadline = 0.0

    def kill(self) -> None:
        try:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            pass
        try:
            self.conn.close()
        except OSError:
            pass


class _CheckerPool:
    """Worker processes with per-task deadlines; an overrunning worker is killed and replaced."""

    #: tasks in flight per worker (hides the parent's round trip between two tasks)
    PIPELINE = 4

    def __init__(self, cfg: MathGraderConfig, checkers: tuple[str, ...]) -> None:
        self.cfg = cfg
        self.checkers = checkers
        self._workers: list[_Worker] = []
        self.owner_pid = os.getpid()
        self.tasks_run = 0
        self.workers_replaced = 0

    def _spawn(self) -> None:
        self._workers.append(_Worker(self.checkers, self.cfg))

    def _replace(self, w: _Worker) -> None:
        w.kill()
        self._workers.remove(w)
        self.workers_replaced += 1
        self._spawn()

    def worker_pids(self) -> list[int | None]:
        return [w.proc.pid for w in self._workers]

    def run(self, tasks: Sequence[tuple[str, str, str]], timeout: float) -> list[_Outcome]:
        """Run ``(checker, pred, gold)`` tasks; each gets ``timeout`` seconds of its worker.

        Up to :attr:`PIPELINE` tasks are in flight per worker, so a worker goes straight on
        to its next task instead of waiting for the parent to read a result and send more.
        A task's clock starts when its worker reaches it; on a timeout the worker is killed,
        and its other in-flight tasks go back to the queue.
        """
        from multiprocessing.connection import wait

        results: list[_Outcome | None] = [None] * len(tasks)
        queue = deque(range(len(tasks)))
        while len(self._workers) < self.cfg.num_workers:
            self._spawn()
        # with few tasks, spread them instead of piling them on the first worker
        depth = max(1, min(self.PIPELINE, -(-len(tasks) // max(1, len(self._workers)))))
        start_failures = 0

        def requeue(w: _Worker) -> None:
            queue.extendleft(reversed(w.inflight))
            w.inflight.clear()

        while queue or any(w.inflight for w in self._workers):
            now = time.monotonic()
            for w in list(self._workers):
                while w.ready and queue and len(w.inflight) < depth:
                    i = queue.popleft()
                    try:
                        w.conn.send((i, *tasks[i]))
                    except (BrokenPipeError, OSError):
                        queue.appendleft(i)
                        requeue(w)
                        self._replace(w)
                        break
                    if not w.inflight:
                        w.deadline = now + timeout
                    w.inflight.append(i)
                    self.tasks_run += 1
            limits = [w.deadline for w in self._workers if w.inflight]
            limits += [
                w.started + self.cfg.worker_start_timeout_s for w in self._workers if not w.ready
            ]
            wait_s = max(0.0, min(limits) - now) if limits else None
            ready = set(wait([w.conn for w in self._workers], timeout=wait_s))
            for w in list(self._workers):
                if w.conn not in ready:
                    continue
                try:
                    msg = w.conn.recv()
                except (EOFError, OSError):  # the worker died
                    try:
                        code = w.proc.wait(timeout=1)
                    except subprocess.TimeoutExpired:
                        code = None
                    if w.inflight:
                        results[w.inflight.popleft()] = _Outcome(
                            "error", f"worker died (exit code {code})"
                        )
                        requeue(w)
                    elif not w.ready:
                        start_failures += 1
                    self._replace(w)
                    continue
                if msg is None:
                    continue
                kind = msg[0]
                if kind == "ready":
                    w.ready = True
                    start_failures = 0
                elif kind == "fatal":
                    self.close()
                    raise RuntimeError(f"math grader worker failed to start: {msg[1]}")
                elif kind == "result":
                    _, tid, status, detail = msg
                    if w.inflight and tid == w.inflight[0]:
                        w.inflight.popleft()
                        now = time.monotonic()
                        # the task's clock started at deadline - timeout
                        results[tid] = _Outcome(status, detail, now - (w.deadline - timeout))
                        w.deadline = now + timeout
            now = time.monotonic()
            for w in list(self._workers):
                if w.inflight and now >= w.deadline:
                    results[w.inflight.popleft()] = _Outcome(
                        "timeout", f"no result within {timeout:g}s (worker killed)", timeout
                    )
                    requeue(w)
                    self._replace(w)
                elif not w.ready and now >= w.started + self.cfg.worker_start_timeout_s:
                    start_failures += 1
                    self._replace(w)
            if start_failures >= 3:
                self.close()
                raise RuntimeError("math grader workers keep dying during start-up")
        return [r if r is not None else _Outcome("error", "lost task") for r in results]

    def close(self) -> None:
        for w in self._workers:
            try:
                w.conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        deadline = time.monotonic() + 0.5  # workers hold no state: no need to wait long
        for w in self._workers:
            try:
                w.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            w.kill()
        self._workers.clear()


class _PoolHolder:
    def __init__(self) -> None:
        self.pool: _CheckerPool | None = None

    def close(self) -> None:
        if self.pool is not None and self.pool.owner_pid == os.getpid():
            self.pool.close()
        self.pool = None


# --------------------------------------------------------------------------------------------
# The grader
# --------------------------------------------------------------------------------------------


class MathGrader:
    """Grades responses against gold answers; see the module docstring.

    >>> grader = MathGrader(MathGraderConfig(checkers=("string",)))
    >>> grader.grade(r"<think>...</think> The answer is $\\boxed{\\dfrac{1}{2}}$.", "0.5").reason
    'correct'
    >>> grader.close()

    Use as a context manager or call :meth:`close` to stop the workers (they are also
    stopped at interpreter exit). Thread-safe; a grader copied into a forked process starts
    its own workers there.
    """

    def __init__(self, config: MathGraderConfig | dict | None = None) -> None:
        if config is None:
            config = MathGraderConfig()
        elif isinstance(config, dict):
            config = MathGraderConfig.from_dict(config)
        elif not isinstance(config, MathGraderConfig):
            raise TypeError(
                f"config must be a MathGraderConfig or dict, got {type(config).__name__}"
            )
        self.config = config
        self._cache: OrderedDict[tuple, Verdict] = OrderedDict()
        self._hits = 0
        self._misses = 0
        self._holder = _PoolHolder()
        self._lock = threading.RLock()
        # stops the workers when the grader is garbage-collected or at interpreter exit
        self._finalizer = weakref.finalize(self, self._holder.close)

    # -- lifecycle ---------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the worker processes (a later call starts new ones)."""
        with self._lock:
            self._holder.close()

    def __enter__(self) -> MathGrader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def _pool(self) -> _CheckerPool | None:
        return self._holder.pool

    def _get_pool(self) -> _CheckerPool:
        h = self._holder
        if h.pool is None or h.pool.owner_pid != os.getpid():
            h.pool = _CheckerPool(
                self.config, tuple(c for c in self.config.checkers if c != "string")
            )
        return h.pool

    def worker_pids(self) -> list[int | None]:
        """PIDs of the current worker processes (empty before the first pooled check)."""
        return [] if self._pool is None else self._pool.worker_pids()

    # -- cache -------------------------------------------------------------------------------

    def cache_info(self) -> dict[str, int]:
        """``{"hits", "misses", "size", "tasks_run", "workers_replaced"}``."""
        pool = self._pool
        return {
            "hits": self._hits,
            "misses": self._misses,
            "size": len(self._cache),
            "tasks_run": pool.tasks_run if pool else 0,
            "workers_replaced": pool.workers_replaced if pool else 0,
        }

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()
            self._hits = self._misses = 0

    def _cache_get(self, key: tuple) -> Verdict | None:
        v = self._cache.get(key)
        if v is not None:
            self._cache.move_to_end(key)
        return v

    def _cache_put(self, key: tuple, v: Verdict) -> None:
        if self.config.cache_size <= 0 or v.reason == "error":
            return
        self._cache[key] = v
        self._cache.move_to_end(key)
        while len(self._cache) > self.config.cache_size:
            self._cache.popitem(last=False)

    # -- checking ----------------------------------------------------------------------------

    def run_checkers(
        self,
        pairs: Sequence[tuple[str, str]],
        checkers: Iterable[str] | None = None,
        *,
        short_circuit: bool = False,
    ) -> list[dict[str, _Outcome]]:
        """Run checkers on ``(extracted, gold)`` pairs; one ``{checker: outcome}`` per pair.

        With ``short_circuit`` a pair stops at the first accepting checker (grading); without
        it every checker runs on every pair (auditing).
        """
        checkers = tuple(self.config.checkers if checkers is None else checkers)
        unknown = [c for c in checkers if c not in self.config.checkers]
        if unknown:
            raise ValueError(
                f"checkers {unknown} are not enabled in the config {self.config.checkers}"
            )
        results: list[dict[str, _Outcome]] = [{} for _ in pairs]
        with self._lock:
            for name in checkers:
                todo = [
                    i
                    for i, r in enumerate(results)
                    if not (short_circuit and any(o.status == "accept" for o in r.values()))
                ]
                if not todo:
                    break
                if name == "string":
                    for i in todo:
                        t0 = time.perf_counter()
                        try:
                            out = _call_checker(_string_checker, *pairs[i])
                        except Exception as e:  # noqa: BLE001
                            out = _Outcome("error", f"{type(e).__name__}: {e}")
                        results[i][name] = replace(out, seconds=time.perf_counter() - t0)
                    continue
                outs = self._get_pool().run(
                    [(name, pairs[i][0], pairs[i][1]) for i in todo], self.config.timeout_s
                )
                for i, out in zip(todo, outs):
                    results[i][name] = out
        return results

    @staticmethod
    def _verdict(extracted: str, outcomes: dict[str, _Outcome]) -> Verdict:
        detail = "; ".join(f"{c}: {o.status} ({o.detail})" for c, o in outcomes.items())
        seconds = sum(o.seconds for o in outcomes.values())
        for c, o in outcomes.items():
            if o.status == "accept":
                return Verdict(True, "correct", extracted, c, f"{c}: {o.detail}", seconds)
        statuses = {o.status for o in outcomes.values()}
        reason = "timeout" if "timeout" in statuses else "error" if "error" in statuses else "wrong"
        return Verdict(False, reason, extracted, None, detail, seconds)

    def _numbers_differ(self, extracted: str, gold: str) -> Verdict | None:
        """A ``wrong`` verdict when no builtin checker can accept: two plain numbers
        (:func:`plain_number`) that differ exactly (integers, fractions) or beyond every
        checker's tolerance, or a plain number against a tuple/interval/set/list of two or more
        elements. None when the checkers must decide.
        """
        a = plain_number(extracted)
        b = plain_number(gold)
        if (a is None) != (b is None):
            # a number never equals a tuple, interval, set or list of two or more elements
            other = normalize_answer(gold if a is not None else extracted)
            if split_compound(other) is not None:
                return Verdict(
                    False, "wrong", extracted, None, "a number vs a compound answer (no checker run)"
                )
            return None
        if a is None or b is None or a[0] == b[0]:
            return None
        (x, x_exact), (y, y_exact) = a, b
        if not (x_exact and y_exact):
            # sympy accepts within rel_tol; Math-Verify rounds to 6 decimals
            tol = max(self.config.rel_tol, 1e-4) * max(1, abs(x), abs(y))
            if abs(x - y) <= tol:
                return None
        return Verdict(
            False, "wrong", extracted, None, f"plain numbers differ: {x} != {y} (no checker run)"
        )

    def grade_batch(self, responses: Sequence[str], golds: Sequence[Any]) -> list[Verdict]:
        """One :class:`Verdict` per response; identical (answer, gold) pairs are checked once.

        When only builtin checkers are enabled, two plain numbers that differ (exactly, or
        beyond every checker's tolerance) are ``wrong`` without a round trip to the workers;
        all other pairs go through the checkers in order.

        Verdicts are cached, timeouts included (a hung answer is not retried); ``error``
        verdicts (e.g. a worker that died) are not cached. A missing gold gives ``error``.
        """
        if len(responses) != len(golds):
            raise ValueError(f"{len(responses)} responses but {len(golds)} gold answers")
        cfg = self.config
        verdicts: list[Verdict | None] = [None] * len(responses)
        todo: dict[tuple, list[int]] = {}
        fast_reject = all(c in BUILTIN_CHECKERS for c in cfg.checkers)
        with self._lock:
            for i, (resp, gold) in enumerate(zip(responses, golds)):
                if gold is None or (isinstance(gold, str) and not gold.strip()):
                    verdicts[i] = Verdict(False, "error", None, None, "missing gold answer")
                    continue
                extracted, how = extract_answer(resp, cfg.fallbacks)
                if extracted is None:
                    verdicts[i] = Verdict(False, "no_answer", None, None, how)
                    continue
                gold_s = _gold_str(gold)
                if fast_reject:
                    v = self._numbers_differ(extracted, gold_s)
                    if v is not None:
                        verdicts[i] = v
                        continue
                key = (extracted, gold_s, cfg.cache_key)
                cached = self._cache_get(key)
                if cached is not None:
                    self._hits += 1
                    verdicts[i] = cached
                    continue
                self._misses += 1
                todo.setdefault(key, []).append(i)
            keys = list(todo)
            outcomes = self.run_checkers([(k[0], k[1]) for k in keys], short_circuit=True)
            for key, outs in zip(keys, outcomes):
                v = self._verdict(key[0], outs)
                self._cache_put(key, v)
                for i in todo[key]:
                    verdicts[i] = v
        return verdicts  # type: ignore[return-value]

    def grade(self, response: str, gold: Any) -> Verdict:
        """Grade one response (see :meth:`grade_batch`)."""
        return self.grade_batch([response], [gold])[0]


def _gold_str(gold: Any) -> str:
    return gold.strip() if isinstance(gold, str) else str(gold)


# --------------------------------------------------------------------------------------------
# Audit
# --------------------------------------------------------------------------------------------


@dataclass
class AuditReport:
    """Side-by-side results of every checker.

    ``rows`` has one dict per response: ``index``, ``extracted``, ``gold`` and one column per
    checker with ``accept``/``reject``/``timeout``/``error``/``no_answer``. ``accept_rates``
    is per checker over all responses (no answer counts as not accepted). ``disagreements``
    are the rows where some checker accepted and another did not. ``counts`` has ``n``,
    ``no_answer``, ``any_accept``, ``all_accept``, ``disagreements``, ``timeouts``, ``errors``
    and ``only_<checker>`` (accepted by that checker alone).
    """

    checkers: tuple[str, ...]
    rows: list[dict[str, Any]]
    accept_rates: dict[str, float]
    disagreements: list[dict[str, Any]]
    counts: dict[str, int]

    def to_dataframe(self):
        import pandas as pd

        return pd.DataFrame(self.rows)

    def summary(self) -> str:
        rates = ", ".join(f"{c} {r:.3f}" for c, r in self.accept_rates.items())
        return (
            f"{self.counts['n']} answers ({self.counts['no_answer']} without answer); "
            f"accept rates: {rates}; {self.counts['disagreements']} disagreements"
        )


def audit_graders(
    responses: Sequence[str],
    golds: Sequence[Any],
    config: MathGraderConfig | dict | None = None,
    *,
    grader: MathGrader | None = None,
) -> AuditReport:
    """Run each enabled checker separately on every response and compare them.

    Pass ``grader`` to reuse its workers (its config then applies), else ``config`` (default:
    all three builtin checkers) builds a temporary grader.
    """
    if len(responses) != len(golds):
        raise ValueError(f"{len(responses)} responses but {len(golds)} gold answers")
    own = grader is None
    g = grader if grader is not None else MathGrader(config)
    checkers = g.config.checkers
    try:
        rows: list[dict[str, Any]] = []
        pairs: list[tuple[str, str]] = []
        answered: list[int] = []
        for i, (resp, gold) in enumerate(zip(responses, golds)):
            extracted, _ = extract_answer(resp, g.config.fallbacks)
            rows.append({"index": i, "extracted": extracted, "gold": _gold_str(gold)})
            if extracted is None:
                rows[-1].update({c: "no_answer" for c in checkers})
            else:
                answered.append(i)
                pairs.append((extracted, _gold_str(gold)))
        uniq = list(dict.fromkeys(pairs))
        outs = dict(zip(uniq, g.run_checkers(uniq)))
        for i, pair in zip(answered, pairs):
            for c in checkers:
                rows[i][c] = outs[pair][c].status
                rows[i][f"{c}_detail"] = outs[pair][c].detail
    finally:
        if own:
            g.close()
    n = len(rows)
    accepted = {c: [r[c] == "accept" for r in rows] for c in checkers}
    disagreements = [
        r
        for r in rows
        if any(r[c] == "accept" for c in checkers) and not all(r[c] == "accept" for c in checkers)
    ]
    counts = {
        "n": n,
        "no_answer": sum(r["extracted"] is None for r in rows),
        "any_accept": sum(any(accepted[c][i] for c in checkers) for i in range(n)),
        "all_accept": sum(all(accepted[c][i] for c in checkers) for i in range(n)),
        "disagreements": len(disagreements),
        "timeouts": sum(any(r[c] == "timeout" for c in checkers) for r in rows),
        "errors": sum(any(r[c] == "error" for c in checkers) for r in rows),
    }
    for c in checkers:
        counts[f"only_{c}"] = sum(
            accepted[c][i] and not any(accepted[o][i] for o in checkers if o != c) for i in range(n)
        )
    rates = {c: (sum(accepted[c]) / n if n else 0.0) for c in checkers}
    return AuditReport(checkers, rows, rates, disagreements, counts)


# --------------------------------------------------------------------------------------------
# Reward
# --------------------------------------------------------------------------------------------

_DEFAULT_GRADER: MathGrader | None = None
_DEFAULT_OWNED = False
_DEFAULT_LOCK = threading.Lock()


def configure_math_reward(config: MathGrader | MathGraderConfig | dict | None = None) -> MathGrader:
    """Set the grader behind :func:`math_reward`: an existing :class:`MathGrader` (shared, e.g.
    with the evaluator; the caller keeps closing it) or a config for a new one. The previous
    grader is closed if this module created it."""
    global _DEFAULT_GRADER, _DEFAULT_OWNED
    with _DEFAULT_LOCK:
        if _DEFAULT_GRADER is not None and _DEFAULT_OWNED:
            _DEFAULT_GRADER.close()
        if isinstance(config, MathGrader):
            _DEFAULT_GRADER, _DEFAULT_OWNED = config, False
        else:
            _DEFAULT_GRADER, _DEFAULT_OWNED = MathGrader(config), True
        return _DEFAULT_GRADER


def get_default_grader() -> MathGrader:
    """The grader used by :func:`math_reward` (created with the default config on first use)."""
    global _DEFAULT_GRADER, _DEFAULT_OWNED
    with _DEFAULT_LOCK:
        if _DEFAULT_GRADER is None:
            _DEFAULT_GRADER, _DEFAULT_OWNED = MathGrader(), True
        return _DEFAULT_GRADER


def _completion_text(c: Any) -> str:
    """A completion as text: a string, or TRL's conversational ``[{"role", "content"}, ...]``."""
    if isinstance(c, str):
        return c
    if isinstance(c, dict):
        return str(c.get("content", ""))
    if isinstance(c, (list, tuple)) and c:
        return _completion_text(c[-1])
    return ""


def _coerce_gold(g: Any) -> str | None:
    if g is None:
        return None
    g = _gold_str(g)
    if "####" in g:
        g = gold_from_gsm8k(g)
    return g or None


@register_reward("math")
def math_reward(completions: list, answer: list, **columns: Any) -> list[float | None]:
    """TRL-style reward: 1.0 if the completion's final answer equals ``answer``, else 0.0.

    ``completions`` are strings or conversational message lists; ``answer`` holds gold answers
    (a GSM8K ``"... #### N"`` solution is reduced to ``N``); a ``None`` gold gives ``None``
    ("does not apply"). Other columns are ignored. Timeouts and errors score 0.0. Uses
    :func:`get_default_grader` (see :func:`configure_math_reward`).

    >>> math_reward([r"<think>1/2?</think> $\\boxed{\\dfrac{1}{2}}$", r"\\boxed{3}", "no box"],
    ...             answer=["0.5", "4", "4"], prompts=["p1", "p2", "p3"])
    [1.0, 0.0, 0.0]
    """
    if len(completions) != len(answer):
        raise ValueError(f"{len(completions)} completions but {len(answer)} answers")
    golds = [_coerce_gold(a) for a in answer]
    idx = [i for i, g in enumerate(golds) if g is not None]
    verdicts = get_default_grader().grade_batch(
        [_completion_text(completions[i]) for i in idx], [golds[i] for i in idx]
    )
    out: list[float | None] = [None] * len(completions)
    for i, v in zip(idx, verdicts):
        out[i] = v.reward
    return out
