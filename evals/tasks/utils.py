"""lm-eval task helpers for the ``archer_*`` tasks in this folder (``--include_path``).

Data come from the Archer data directory (``ARCHER_DATA_DIR``) through the same registry the
HF engine uses, prompts from the same templates, and every one of the ``repeats`` sampled
responses is scored with Archer's shared math verifier (the stock ``aime25`` task keeps only
the first repeat). Metrics per document: ``avg_at_k`` (mean correctness over the k samples)
and ``pass_at_k`` (some sample is correct), both averaged over documents by lm-eval.
"""

from __future__ import annotations

from typing import Any


def _dataset(benchmark: str):
    import datasets

    from evals.registry import load_problems

    rows = [{"problem_id": p.problem_id, "problem": p.record["prompt"], "answer": str(p.gold)}
            for p in load_problems(benchmark)]
    return {"test": datasets.Dataset.from_list(rows)}


def aime2024(**_: Any):
    return _dataset("aime2024")


def aime2025(**_: Any):
    return _dataset("aime2025")


def amc23(**_: Any):
    return _dataset("amc23")


def math500(**_: Any):
    return _dataset("math500")


def gsm8k(**_: Any):
    return _dataset("gsm8k")


def doc_to_text(doc: dict) -> str:
    """The user turn of the ``boxed_math`` template (lm-eval adds the chat template when
    run with ``--apply_chat_template``)."""
    from archer.data.templates import TEMPLATES

    return TEMPLATES.get("boxed_math")(doc["problem"])


_GRADERS: dict[tuple, Any] = {}


def _grader(fallbacks: tuple[str, ...]):
    from archer.rewards.math import MathGrader, MathGraderConfig

    if fallbacks not in _GRADERS:
        _GRADERS[fallbacks] = MathGrader(MathGraderConfig(fallbacks=fallbacks, num_workers=1))
    return _GRADERS[fallbacks]


def _score(doc: dict, results: list, fallbacks: tuple[str, ...]) -> dict[str, float]:
    responses = results[0] if results and isinstance(results[0], list) else results
    if not responses:
        raise ValueError(f"no responses for document {doc.get('problem_id')}")
    verdicts = _grader(fallbacks).grade_batch(list(responses), [doc["answer"]] * len(responses))
    correct = [1.0 if v.correct else 0.0 for v in verdicts]
    return {"avg_at_k": sum(correct) / len(correct), "pass_at_k": max(correct)}


def process_results(doc: dict, results: list) -> dict[str, float]:
    """Boxed answers only, as in the paper (AIME, AMC, MATH-500)."""
    return _score(doc, results, ())


def process_results_gsm8k(doc: dict, results: list) -> dict[str, float]:
    """GSM8K: boxed, else an ``Answer:`` line, else the last number (as the registry)."""
    return _score(doc, results, ("answer_line", "last_number"))
