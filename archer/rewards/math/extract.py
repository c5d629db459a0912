"""Answer extraction of the math grader: the final \\boxed{...} of a response (or a
configured fallback) and the gold number of a GSM8K solution.

Pure Python and linear in the length of the text (no backtracking-prone regexes), like
:mod:`archer.rewards.math.normalize`.
"""

from __future__ import annotations

import re

#: Names of the extraction fallbacks, tried in the configured order when no ``\boxed`` is found.
FALLBACKS = ("answer_line", "last_number")


# --------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![a-zA-Z])")


def _match_braces(text: str, open_idx: int) -> int | None:
    """Index of the ``}`` closing the ``{`` at ``open_idx``; escaped ``\\{``/``\\}`` do not count."""
    depth = 0
    i = open_idx
    n = len(text)
    while i < n:
        c = text[i]
        if c == "\\":
            i += 2  # skip the escaped character (\{, \}, \\ ...)
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def extract_boxed(text: str) -> tuple[str | None, str]:
    """Content of the last ``\\boxed{...}`` / ``\\fbox{...}`` / ``\\boxed X`` in ``text``.

    Returns ``(content, detail)``; ``content`` is None when there is no box, when the last box
    has unbalanced braces (e.g. a truncated generation) or when it is empty.

    >>> extract_boxed(r"so $\\boxed{\\frac{1}{\\sqrt{2}}}$.")
    ('\\\\frac{1}{\\\\sqrt{2}}', 'boxed')
    """
    last = None
    for last in _BOX_RE.finditer(text):  # noqa: B007 - we want the last match
        pass
    if last is None:
        return None, "no \\boxed{} found"
    cmd = last.group(0)
    j = last.end()
    n = len(text)
    while j < n and text[j] in " \t":
        j += 1
    if j < n and text[j] == "{":
        close = _match_braces(text, j)
        if close is None:
            return None, f"unbalanced braces in the last {cmd}{{...}}"
        content = text[j + 1 : close].strip()
    elif j > last.end():  # "\boxed 5$": the argument is the next token
        m = re.match(r"[^\s$]+", text[j:])
        content = m.group(0) if m else ""
    else:
        return None, f"malformed {cmd}"
    if not content:
        return None, f"empty {cmd}"
    return content, "boxed"


_ANSWER_LINE_RES = (
    # "Answer: 5", "**Answer:** 5", "Final answer: $5$"
    re.compile(r"(?im)^[ \t>*#_]*(?:final[ \t]+)?answer[ \t*_]*[:：][ \t*_]*(\S[^\n]*)$"),
    # "The final answer is $5$. I hope it is correct." (Minerva / lm-eval style)
    re.compile(r"(?i)the[ \t]+final[ \t]+answer[ \t]+is[ \t:]*(\S[^\n]*)"),
)
_NUMBER_RE = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?")


def _clean_answer_line(s: str) -> str:
    s = re.split(r"(?i)\.?\s*I hope it is correct", s, maxsplit=1)[0]
    s = s.strip().strip("*_").strip()
    if s.endswith("."):
        s = s[:-1].rstrip()
    if s.startswith("$") and s.endswith("$") and len(s) >= 2:
        s = s.strip("$").strip()
    if s.startswith("\\(") and s.endswith("\\)"):
        s = s[2:-2].strip()
    return s


def _fallback_answer_line(text: str) -> str | None:
    best: tuple[int, str] | None = None
    for rx in _ANSWER_LINE_RES:
        for m in rx.finditer(text):
            if best is None or m.start() >= best[0]:
                best = (m.start(), m.group(1))
    if best is None:
        return None
    ans = _clean_answer_line(best[1])
    boxed, _ = extract_boxed(ans)
    return boxed or ans or None


def _fallback_last_number(text: str) -> str | None:
    last = None
    for last in _NUMBER_RE.finditer(text):  # noqa: B007
        pass
    return last.group(0) if last else None


_FALLBACK_FUNCS = {"answer_line": _fallback_answer_line, "last_number": _fallback_last_number}


def extract_answer(
    response: str, fallbacks: tuple[str, ...] | list[str] = ()
) -> tuple[str | None, str]:
    """The final answer of a model response, as ``(answer or None, how)``.

    Only the text after the last ``</think>`` is searched; a ``<think>`` that is never closed
    means no answer. The last ``\\boxed{}`` wins; when there is none, the ``fallbacks``
    (names from :data:`FALLBACKS`) are tried in order.

    >>> extract_answer("<think>maybe \\\\boxed{1}</think>It is \\\\boxed{2}.")
    ('2', 'boxed')
    >>> extract_answer("<think>I think \\\\boxed{1}")
    (None, 'unclosed <think>')
    >>> extract_answer("Answer: 42", fallbacks=["answer_line"])
    ('42', 'fallback:answer_line')
    """
    if not isinstance(response, str):
        return None, f"response is {type(response).__name__}, not str"
    text = response
    if "</think>" in text:
        text = text.rsplit("</think>", 1)[1]
    elif "<think>" in text:
        return None, "unclosed <think>"
    boxed, detail = extract_boxed(text)
    if boxed is not None:
        return boxed, detail
    for name in fallbacks:
        try:
            fn = _FALLBACK_FUNCS[name]
        except KeyError:
            raise ValueError(f"unknown fallback {name!r}; allowed: {list(FALLBACKS)}") from None
        ans = fn(text)
        if ans:
            return ans, f"fallback:{name}"
    return None, detail


def gold_from_gsm8k(answer_text: str) -> str:
    """The final number of a GSM8K reference solution (the text after ``####``).

    >>> gold_from_gsm8k("She has 3 + 4 = <<3+4=7>>7 apples.\\n#### 1,007")
    '1007'
    """
    if "####" not in answer_text:
        raise ValueError("GSM8K answer has no '#### <number>' line")
    ans = answer_text.rsplit("####", 1)[1].strip()
    ans = ans.replace(",", "").replace("$", "").strip()
    return ans.rstrip(".")


# --------------------------------------------------------------------------------------------
# Normalisation
# --------------------------------------------------------------------------------------------
