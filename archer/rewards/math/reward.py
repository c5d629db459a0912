"""The "math" reward (TRL's contract) and the grader behind it."""

from __future__ import annotations

import threading
from typing import Any

from archer.rewards import register_reward
from archer.rewards.math.config import MathGraderConfig
from archer.rewards.math.extract import gold_from_gsm8k
from archer.rewards.math.grader import MathGrader, _gold_str

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
