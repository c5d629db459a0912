"""The equivalence checkers of the math grader: ``"string"`` (run in the calling process),
``"sympy"``, ``"math_verify"`` and ``"module:function"`` (run in the worker processes of
:mod:`archer.rewards.math.pool`)."""

from __future__ import annotations

import cmath
import functools
import re
from collections.abc import Callable
from typing import Any

from archer.rewards.math.config import _Outcome, _resolve_custom_checker
from archer.rewards.math.normalize import (
    compound_equal,
    normalize_answer,
    string_equivalent,
    to_fraction,
)

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
