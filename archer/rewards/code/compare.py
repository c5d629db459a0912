"""How a program's output is compared with the expected one (stdin and functional tests)."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any


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
