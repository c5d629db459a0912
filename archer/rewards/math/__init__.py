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

Modules: :mod:`~archer.rewards.math.extract` (answer extraction),
:mod:`~archer.rewards.math.normalize` (LaTeX normaliser, string checker),
:mod:`~archer.rewards.math.checkers` (sympy, Math-Verify, custom),
:mod:`~archer.rewards.math.pool` (worker processes and their time limits),
:mod:`~archer.rewards.math.config`, :mod:`~archer.rewards.math.grader`,
:mod:`~archer.rewards.math.audit` and :mod:`~archer.rewards.math.reward` (the ``"math"`` reward).

Importing this package is cheap: sympy and math_verify are imported only inside the workers.
"""

from archer.rewards.math.audit import AuditReport, audit_graders
from archer.rewards.math.checkers import math_verify_equivalent, sympy_equivalent
from archer.rewards.math.config import BUILTIN_CHECKERS, REASONS, MathGraderConfig, Verdict
from archer.rewards.math.extract import FALLBACKS, extract_answer, extract_boxed, gold_from_gsm8k
from archer.rewards.math.grader import MathGrader
from archer.rewards.math.normalize import (
    compound_equal,
    normalize_answer,
    plain_number,
    split_compound,
    string_equivalent,
    to_fraction,
)
from archer.rewards.math.reward import configure_math_reward, get_default_grader, math_reward

__all__ = [
    "BUILTIN_CHECKERS",
    "FALLBACKS",
    "REASONS",
    "AuditReport",
    "MathGrader",
    "MathGraderConfig",
    "Verdict",
    "audit_graders",
    "compound_equal",
    "configure_math_reward",
    "extract_answer",
    "extract_boxed",
    "get_default_grader",
    "gold_from_gsm8k",
    "math_reward",
    "math_verify_equivalent",
    "normalize_answer",
    "plain_number",
    "split_compound",
    "string_equivalent",
    "sympy_equivalent",
    "to_fraction",
]
