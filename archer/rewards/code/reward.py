"""The ``"code"`` reward (TRL's contract) and the grader behind it."""

from __future__ import annotations

import threading
from typing import Any

from archer.rewards import register_reward
from archer.rewards.code.grader import CodeGrader

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
