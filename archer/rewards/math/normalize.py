"""The LaTeX string normaliser of the math grader and the ``"string"`` checker built on it.

Nothing here imports sympy or math_verify, and every function runs in time roughly linear in
the length of its input (no backtracking-prone regexes, no big-number arithmetic), so the
string checker may safely run in the calling process. The sympy and Math-Verify checkers live
in :mod:`archer.rewards.math.checkers` and run in worker processes with a hard time limit.
"""

from __future__ import annotations

import functools
import re
from fractions import Fraction

from archer.rewards.math.extract import _match_braces, extract_boxed

# Answers longer than this are not normalised (they are compared verbatim); real answers are short.
_MAX_NORMALIZE_CHARS = 2000
# Numbers with more digits than this are not converted to exact fractions.
_MAX_NUMBER_DIGITS = 200


_UNICODE = {
    "\u2212": "-",  # minus sign
    "\u2013": "-",
    "\u03c0": "\\pi ",
    "\u221e": "\\infty ",
    "\u221a": "\\sqrt",
    "\u00b0": "^\\circ",
    "\u00d7": "\\times ",
    "\u00b7": "\\cdot ",
    "\u2264": "\\leq ",
    "\u2265": "\\geq ",
    "\u00a0": " ",
}

_TEXT_CMDS = r"(?:text|textbf|textit|textrm|textnormal|mbox|mathrm|mathbf|mathit|boldsymbol|bm)"
_TEXT_RE = re.compile(r"\\" + _TEXT_CMDS + r"\s*\{([^{}]*)\}")
_TRAILING_TEXT_RE = re.compile(
    r"^(?P<head>.*?)\s*\\" + _TEXT_CMDS + r"\s*\{[^{}]*\}\s*(?:\^\s*\{?\s*[23]\s*\}?)?\s*\.?$",
    re.S,
)
_UNIT_WORDS = (
    "units?|sq\\.?\\s*units?|square\\s+[a-z]+|cubic\\s+[a-z]+|cm|centimeters?|mm|millimeters?|"
    "meters?|km|kilometers?|inch(?:es)?|in\\.|feet|foot|ft|yards?|miles?|mph|hours?|hrs?|"
    "minutes?|mins?|seconds?|secs?|days?|weeks?|months?|years?|dollars?|cents?|pounds?|lbs?|"
    "ounces?|oz|grams?|kg|kilograms?|liters?|litres?|ml|degrees?|ways|points?|students|people|"
    "marbles|apples|cookies|books|pages|dogs|cats|coins|eggs|boxes|games|sides|edges|vertices|"
    "handshakes|rounds|steps|times|outfits|numbers|integers|digits|terms|positive\\s+integers"
)
_TRAILING_UNIT_RE = re.compile(
    r"^(?P<head>.*[\d}])\s*(?:" + _UNIT_WORDS + r")\s*(?:\^\s*\{?\s*[23]\s*\}?)?\s*\.?$",
    re.I | re.S,
)
_NUMERIC_RE = re.compile(r"^([-+]?)(\d*)(?:\.(\d*))?$")
_THOUSANDS_RE = re.compile(r"^[-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")


def _canonical_number(s: str) -> str | None:
    """'025' -> '25', '27.0' -> '27', '-0.50' -> '-0.5', '.5' -> '0.5'; None if not a plain number."""
    m = _NUMERIC_RE.match(s)
    if not m or not (m.group(2) or m.group(3)):
        return None
    sign, ip, fp = m.group(1), m.group(2).lstrip("0") or "0", (m.group(3) or "").rstrip("0")
    out = ip + ("." + fp if fp else "")
    if out == "0":
        return "0"
    return ("-" if sign == "-" else "") + out


def _strip_outer(s: str, left: str, right: str) -> str:
    """Remove ``left ... right`` when it wraps the whole string (balanced)."""
    while s.startswith(left) and s.endswith(right) and len(s) >= len(left) + len(right):
        inner = s[len(left) : len(s) - len(right)]
        if left == "{":
            if _match_braces(s, 0) != len(s) - 1:
                break
        elif left in ("$", "\\(", "\\["):
            if left in inner:
                break
        s = inner.strip()
    return s


def _fix_fracs(s: str) -> str:
    # \frac12 -> \frac{1}{2}; \frac1{2} -> \frac{1}{2}; \frac{1}2 -> \frac{1}{2}
    s = re.sub(r"\\frac\s*([0-9a-zA-Z])\s*([0-9a-zA-Z])", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac\s*([0-9a-zA-Z])\s*(?=\{)", r"\\frac{\1}", s)
    s = re.sub(r"\\frac\s*(\{[^{}]*\})\s*([0-9a-zA-Z])", r"\\frac\1{\2}", s)
    s = re.sub(r"\\frac\s*(\\[a-zA-Z]+)\s*([0-9a-zA-Z])(?![a-zA-Z])", r"\\frac{\1}{\2}", s)
    return s


def _remove_spaces(s: str) -> str:
    """Drop whitespace, except one space that ends a control word before a letter (``\\pi r``)."""
    s = re.sub(r"\s+", " ", s).strip()
    return re.sub(
        r"(\\[a-zA-Z]+)? (?=(.))",
        lambda m: (m.group(1) + " ") if m.group(1) and m.group(2).isalpha() else (m.group(1) or ""),
        s,
    )


def normalize_answer(answer: str) -> str:
    """Canonical string form of a final answer (LaTeX or plain), for string comparison.

    Handles ``\\dfrac``/``\\tfrac``/``\\frac12``, ``\\left``/``\\right``, ``\\text{...}`` units
    and plain unit words, degrees, percent, dollars, ``x =`` prefixes, thousands separators,
    leading zeros and trailing ``.0``, and spacing. The result is still valid LaTeX in the
    common cases, so it is also what the sympy checker parses.

    >>> normalize_answer(r"\\$1,000.50")
    '1000.5'
    >>> normalize_answer(r"\\left( 3, \\dfrac{\\pi}{2} \\right)")
    '(3,\\\\frac{\\\\pi}{2})'
    """
    s = str(answer).strip()
    if len(s) > _MAX_NORMALIZE_CHARS:
        return s
    return _normalize(s)


@functools.lru_cache(maxsize=65536)
def _normalize(s: str) -> str:
    """:func:`normalize_answer` of a stripped string, memoised (graders see the same gold
    answer once per response of a group, and the same wrong answers again and again)."""
    for k, v in _UNICODE.items():
        if k in s:
            s = s.replace(k, v)
    s = s.replace("\n", " ").strip()
    # math delimiters around the whole answer
    s = _strip_outer(s, "$", "$")
    s = _strip_outer(s, "\\(", "\\)")
    s = _strip_outer(s, "\\[", "\\]")
    # a nested \boxed{...}
    boxed, _ = extract_boxed(s) if s.startswith(("\\boxed", "\\fbox")) else (None, "")
    if boxed is not None:
        s = boxed
    # layout-only commands
    s = re.sub(r"\\(?:left|right)\s*\.", "", s)
    s = re.sub(r"\\(?:left|right|bigl|bigr|Bigl|Bigr|big|Big)(?![a-zA-Z])", "", s)
    s = re.sub(r"\\(?:displaystyle|textstyle|scriptstyle)(?![a-zA-Z])", "", s)
    s = re.sub(r"(?<!\\)\\!", "", s).replace("{,}", ",")
    s = re.sub(r"(?<!\\)\\[,;: ]", " ", s)
    s = re.sub(r"\\q?quad(?![a-zA-Z])", " ", s)
    s = s.replace("~", " ")
    # fractions and friends
    s = re.sub(r"\\[dt]frac(?![a-zA-Z])", r"\\frac", s)
    s = re.sub(r"\\[dt]binom(?![a-zA-Z])", r"\\binom", s)
    s = _fix_fracs(s)
    s = re.sub(r"\\sqrt\s*([0-9a-zA-Z])", r"\\sqrt{\1}", s)
    # degrees, percent, currency
    s = re.sub(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ(?![a-zA-Z])|\\circ(?![a-zA-Z])", "", s)
    s = re.sub(r"\\degree(?![a-zA-Z])", "", s)
    s = s.replace("\\%", "").replace("%", "")
    s = s.replace("\\$", "").replace("$", "")
    # units written as trailing \text{...} (or \mbox, \mathrm) after a value
    for _ in range(3):
        m = _TRAILING_TEXT_RE.match(s)
        if not m:
            break
        head = m.group("head").strip()
        if (
            not head
            or re.fullmatch(r"\\" + _TEXT_CMDS + r"\s*\{[^{}]*\}", head)
            or head[-1] in ",;("
        ):
            break
        s = head
    s = re.sub(r"\s*\b(?:degrees?|percent)\s*$", "", s, flags=re.I)
    m = _TRAILING_UNIT_RE.match(s)
    if m:
        s = m.group("head")
    s = re.sub(r"\\mathrm\{th\}|\^\{?\\text\{th\}\}?", "", s)
    # remaining \text{X} -> X
    for _ in range(4):
        new = _TEXT_RE.sub(r"\1", s)
        if new == s:
            break
        s = new
    s = s.strip()
    # "x = 5" -> "5";  "x \in [1, 2]" -> "[1, 2]"
    m = re.match(
        r"^\s*(?:[a-zA-Z]|\\[a-zA-Z]+)(?:_\{?\w+\}?)?\s*(?:=|\\in(?![a-zA-Z]))(?P<rhs>[^=]+)$", s
    )
    if m and m.group("rhs").strip():
        s = m.group("rhs").strip()
    # synonyms
    s = re.sub(r"\\(?:le|leqslant)(?![a-zA-Z])", r"\\leq", s)
    s = re.sub(r"\\(?:ge|geqslant)(?![a-zA-Z])", r"\\geq", s)
    s = re.sub(r"\\(?:varnothing)(?![a-zA-Z])", r"\\emptyset", s)
    s = re.sub(
        r"^(?:[+-]?)(?:inf|infinity)$",
        lambda m: m.group(0).replace("infinity", "\\infty").replace("inf", "\\infty"),
        s,
    )
    s = _remove_spaces(s)
    s = _strip_outer(s, "{", "}")
    # trailing full stop (not a decimal point)
    if s.endswith("\\."):
        s = s[:-2]
    if len(s) > 1 and s.endswith(".") and not s[-2].isdigit():
        s = s[:-1]
    # numbers: thousands separators, sign, leading zeros, trailing zeros
    if _THOUSANDS_RE.match(s):
        s = s.replace(",", "")
    if s.startswith("+"):
        s = s[1:]
    num = _canonical_number(s)
    if num is not None:
        return num
    # multiple choice "(B)" -> "B"
    m = re.fullmatch(r"\(([A-Ea-e])\)", s)
    if m:
        return m.group(1).upper()
    # plain words are compared case-insensitively
    if re.fullmatch(r"[A-Za-z]{3,}", s):
        s = s.lower()
    return s


# --------------------------------------------------------------------------------------------
# Comparison
# --------------------------------------------------------------------------------------------

_BRACKETS = (
    ("\\{", "\\}"),
    ("(", ")"),
    ("[", "]"),
    ("(", "]"),
    ("[", ")"),
    ("\\langle", "\\rangle"),
)


def _split_top_level(s: str) -> list[str]:
    """Split on commas that are not inside (), [], {}."""
    parts, depth, cur, i = [], 0, [], 0
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s):
            cur.append(s[i : i + 2])
            i += 2
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        if c == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    parts.append("".join(cur))
    return parts


def _balanced(s: str) -> bool:
    depth = 0
    i = 0
    while i < len(s):
        c = s[i]
        if c == "\\":
            i += 2
            continue
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
            if depth < 0:
                return False
        i += 1
    return depth == 0


def split_compound(s: str) -> tuple[str, str, list[str]] | None:
    """``'(1,\\frac{1}{2}]'`` -> ``('(', ']', ['1', '\\frac{1}{2}'])``; None if not a list.

    A bare comma list ``'1,2'`` gives ``('', '', ['1', '2'])``. Only top-level commas split, and
    a single element in brackets (e.g. ``'(5)'``) is not a compound.
    """
    for left, right in _BRACKETS:
        if s.startswith(left) and s.endswith(right) and len(s) > len(left) + len(right):
            inner = s[len(left) : len(s) - len(right)]
            if not _balanced(inner.replace("\\{", "").replace("\\}", "")):
                continue
            parts = _split_top_level(inner)
            if len(parts) >= 2:
                return left, right, [p.strip() for p in parts]
            return None
    if "," in s and _balanced(s):
        parts = _split_top_level(s)
        if len(parts) >= 2:
            return "", "", [p.strip() for p in parts]
    return None


_FRAC_RE = re.compile(r"^([-+]?)\\frac\{([-+]?\d+(?:\.\d+)?)\}\{([-+]?\d+(?:\.\d+)?)\}$")
_SLASH_RE = re.compile(r"^([-+]?\d+(?:\.\d+)?)/(\d+(?:\.\d+)?)$")
_DEC_RE = re.compile(r"^[-+]?(?:\d+(?:\.\d*)?|\.\d+)$")


def to_fraction(s: str) -> Fraction | None:
    """Exact value of a normalised plain number, ``a/b`` or ``\\frac{a}{b}``; else None."""
    if len(s) > _MAX_NUMBER_DIGITS:
        return None
    try:
        if _DEC_RE.match(s):
            return Fraction(s)
        m = _FRAC_RE.match(s)
        if m:
            den = Fraction(m.group(3))
            if den == 0:
                return None
            val = Fraction(m.group(2)) / den
            return -val if m.group(1) == "-" else val
        m = _SLASH_RE.match(s)
        if m:
            den = Fraction(m.group(2))
            return None if den == 0 else Fraction(m.group(1)) / den
    except (ValueError, ZeroDivisionError):
        return None
    return None


def _unordered_match(xs: list[str], ys: list[str], eq) -> bool:
    """Multiset equality of two lists under the relation ``eq`` (greedy is enough for ==-like eq)."""
    if len(xs) != len(ys):
        return False
    remaining = list(ys)
    for x in xs:
        for j, y in enumerate(remaining):
            if eq(x, y):
                del remaining[j]
                break
        else:
            return False
    return True


def compound_equal(a: str, b: str, leaf_eq) -> bool | None:
    """Elementwise comparison of two normalised compounds (tuples, intervals, sets, lists).

    Returns None when neither side is a compound (the caller compares leaves), otherwise the
    verdict: brackets must match exactly; ``\\{...\\}`` sets and bare lists are unordered,
    tuples and intervals ordered.
    """
    ca, cb = split_compound(a), split_compound(b)
    if ca is None and cb is None:
        return None
    if ca is None or cb is None:
        return False
    (la, ra, xs), (lb, rb, ys) = ca, cb
    if (la, ra) != (lb, rb) or len(xs) != len(ys):
        return False

    def elem_eq(x: str, y: str) -> bool:
        sub = compound_equal(x, y, leaf_eq)
        return leaf_eq(x, y) if sub is None else sub

    if la in ("\\{", ""):
        return _unordered_match(xs, ys, elem_eq)
    return all(elem_eq(x, y) for x, y in zip(xs, ys))


def _string_leaf_equal(a: str, b: str) -> bool:
    a, b = normalize_answer(a), normalize_answer(b)
    if not a or not b:
        return False
    if a == b:
        return True
    fa, fb = to_fraction(a), to_fraction(b)
    return fa is not None and fb is not None and fa == fb


def string_equivalent(pred: str, gold: str) -> bool:
    """Whether two answers are equal after :func:`normalize_answer` (numbers compared exactly).

    >>> string_equivalent("025", "25"), string_equivalent(r"\\dfrac{1}{2}", "0.5")
    (True, True)
    >>> string_equivalent("(1,2)", "(2,1)")
    False
    """
    a, b = normalize_answer(pred), normalize_answer(gold)
    if not a or not b:
        return False
    if a == b:
        return True
    res = compound_equal(a, b, _string_leaf_equal)
    if res is not None:
        return res
    return _string_leaf_equal(a, b)


_FRAC_CMD_RE = re.compile(r"\\[dt]?frac(?![a-zA-Z])")
_DEGREE_RE = re.compile(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ(?![a-zA-Z])|\u00b0")
_LAYOUT_RE = re.compile(r"\\(?:left|right|!|,)(?![a-zA-Z])")


def plain_number(answer: str) -> tuple[Fraction, bool] | None:
    """``(value, exact)`` when ``answer`` is nothing but a number, else None.

    A number is a decimal (``025``, ``27.0``, ``-1,000``), ``a/b`` or ``\\frac{a}{b}``, with
    optional ``$``, spacing and a degree sign; anything else (letters, units, ``%``, ``^``,
    ``\\sqrt``...) gives None, so the caller can rely on the value meaning the same to every
    checker.
    ``exact`` is False when a decimal point remains after normalisation (``0.5``, not
    ``27.0``): such values are approximations that checkers compare with a tolerance.

    >>> plain_number("025"), plain_number(r"$\\dfrac{3}{4}$"), plain_number("12 cm")
    ((Fraction(25, 1), True), (Fraction(3, 4), True), None)
    """
    s = str(answer)
    if len(s) > 100:
        return None
    bare = _LAYOUT_RE.sub("", _FRAC_CMD_RE.sub("", _DEGREE_RE.sub("", s)))
    if re.search(r"[^0-9.,+\-/{}$\s\u2212]", bare):
        return None
    norm = normalize_answer(s)
    value = to_fraction(norm)
    if value is None:
        return None
    return value, "." not in norm
