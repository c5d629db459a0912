"""Scoring step: grade a ``samples.jsonl`` with the shared verifiers and compute metrics.

Pure and re-runnable: it reads only the samples file and the data the contract names (the
data hash is checked), and writes ``scores.jsonl`` (one verdict per sample),
``per_problem.csv`` and ``results.json`` beside the samples. Running it twice gives the
same files (bootstrap seeds are fixed).

``results.json`` (the format every engine produces, lm-eval included)::

    {"benchmark", "label", "model", "engine", "contract": {...}, "contract_hash",
     "metrics": {"n_problems", "avg_at_K", "avg_at_K_ci_low", "avg_at_K_ci_high",
                 "pass_at_1".."pass_at_K", "maj_at_k" (math), "truncated_frac"},
     "breakdowns": {"platform": {"atcoder": {"n_problems", "avg", "ci_low", "ci_high"}}},
     "per_problem": [{"problem_id", "n", "c", "accuracy", "correct": [0/1...],
                      "answers": [...] (math), meta...}]}
"""

from __future__ import annotations

import csv
import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from evals import metrics as M
from evals.contracts import EvalContract, check_comparable
from evals.registry import BENCHMARKS, EvalProblem, problems_for
from evals.runner import read_samples

log = logging.getLogger(__name__)

RESULTS_NAME = "results.json"
SCORES_NAME = "scores.jsonl"
TABLE_NAME = "per_problem.csv"


def grade_texts(contract: EvalContract, problems: Sequence[EvalProblem],
                texts: list[list[str]], *, workers: int | None = None) -> list[list[dict]]:
    """Per problem, per sample: ``{"correct": 0/1, "reason", "answer"}`` from the shared
    verifier named by the contract (math: MathGrader; code: CodeGrader; gym: reasoning-gym's
    checker on archer's extracted answer)."""
    flat_t = [t for row in texts for t in row]
    owners = [i for i, row in enumerate(texts) for _ in row]
    out: list[dict] = []
    if contract.grader == "math":
        from archer.rewards.math import MathGrader, MathGraderConfig, normalize_answer

        cfg = dict(contract.grader_config)
        cfg["checkers"] = tuple(cfg.get("checkers", ()))
        cfg["fallbacks"] = tuple(cfg.get("fallbacks", ()))
        if workers is not None:
            cfg["num_workers"] = workers
        with MathGrader(MathGraderConfig.from_dict(cfg)) as grader:
            verdicts = grader.grade_batch(flat_t, [problems[i].gold for i in owners])
        for v in verdicts:
            answer = None
            if v.extracted is not None:
                try:
                    answer = normalize_answer(v.extracted)
                except Exception:  # noqa: BLE001  (an odd answer still votes as itself)
                    answer = v.extracted
            out.append({"correct": int(v.correct), "reason": v.reason, "answer": answer})
    elif contract.grader == "gym":
        from archer.data.datasets import GYM_ANSWERS, extract_answer, gym_reward

        how = contract.grader_config.get("answer", "strict")
        scores = gym_reward(flat_t, [problems[i].gold["entry"] for i in owners],
                            extraction=how)
        for text, score in zip(flat_t, scores):
            answer = GYM_ANSWERS[how](text)
            correct = score == 1.0  # full credit only, as the trainer's val/accuracy
            reason = "correct" if correct else ("no_answer" if answer is None else "wrong")
            out.append({"correct": int(correct), "reason": reason, "answer": answer,
                        "score": float(score), "well_formed": is_one_number(
                            extract_answer(text))})
    else:
        from archer.rewards.code import CodeGrader, to_problem
        from archer.rewards.sandbox import SandboxConfig

        config = SandboxConfig(test_timeout_s=float(contract.test_timeout_s or 6.0),
                               **({"max_workers": workers} if workers else {}))
        grader = CodeGrader(config)
        parsed = [to_problem(p.gold) for p in problems]
        verdicts = grader.grade_batch(flat_t, [parsed[i] for i in owners])
        for v in verdicts:
            out.append({"correct": int(v.passed), "reason": v.reason,
                        "tests": f"{v.tests_passed}/{v.tests_total}"})
    rows: list[list[dict]] = [[] for _ in texts]
    for i, r in zip(owners, out):
        rows[i].append(r)
    return rows


def score_samples(samples_path: str | Path, *, data_dir: str | Path | None = None,
                  data_file: str | Path | None = None, workers: int | None = None,
                  write: bool = True) -> dict[str, Any]:
    """Grade every sample of a finished samples file; return (and write) the result."""
    samples_path = Path(samples_path)
    sf = read_samples(samples_path)
    contract = sf.contract
    problems = problems_for(contract, data_dir=data_dir, data_file=data_file)
    missing = [(p.problem_id, j) for p in problems for j in range(contract.k)
               if (p.problem_id, j) not in sf.samples]
    if missing:
        raise ValueError(f"{samples_path}: {len(missing)} of {len(problems) * contract.k} "
                         f"samples are missing (first: {missing[0]}); finish generation first")
    texts = [[sf.samples[(p.problem_id, j)]["text"] for j in range(contract.k)]
             for p in problems]
    truncated = [sf.samples[(p.problem_id, j)].get("truncated", False)
                 for p in problems for j in range(contract.k)]
    graded = grade_texts(contract, problems, texts, workers=workers)
    result = build_result(contract, problems, graded, model=sf.header.get("model", ""),
                          engine=sf.header.get("engine", "hf"))
    known = [bool(t) for t in truncated if t is not None]  # lm-eval does not report it
    if known:
        result["metrics"]["truncated_frac"] = sum(known) / len(known)
    if write:
        write_result(samples_path.parent, result, graded, problems)
    return result


NUMBER = re.compile(r"[+-]?\d+(?:\.\d+)?")


def is_one_number(answer: str | None) -> bool:
    """Whether an extracted answer is one number and nothing else: a well-formed answer to an
    arithmetic task ("Reply with only the final number"), right or wrong. Their share
    (``numeric_answer_frac``) tells learning the answer format apart from learning the
    arithmetic."""
    return answer is not None and NUMBER.fullmatch(answer.strip()) is not None


def numeric_answer_frac(answers: list[list[str | None]]) -> float:
    """The share of answers that are one number (:func:`is_one_number`); NaN for none."""
    flat = [a for row in answers for a in row]
    return sum(map(is_one_number, flat)) / len(flat) if flat else float("nan")


def build_result(contract: EvalContract, problems: Sequence[EvalProblem],
                 graded: list[list[dict]], *, model: str, engine: str) -> dict[str, Any]:
    """Metrics, breakdowns and the per-problem table from per-sample verdicts."""
    correct = [[r["correct"] for r in row] for row in graded]
    is_math = contract.grader in ("math", "gym")  # answers to vote on (maj@k)
    answers = [[r.get("answer") for r in row] for row in graded] if is_math else None
    n_min = min(len(r) for r in correct)
    metrics = M.summarize(correct, k_list=range(1, n_min + 1), answers=answers, seed=0)
    if contract.grader == "gym":
        metrics["numeric_answer_frac"] = float(np.mean(
            [r["well_formed"] for row in graded for r in row])) if n_min else float("nan")
    per_problem = []
    for p, row in zip(problems, graded):
        c = [r["correct"] for r in row]
        entry = {"problem_id": p.problem_id, "n": len(c), "c": sum(c),
                 "accuracy": sum(c) / len(c), "correct": c,
                 "reasons": [r["reason"] for r in row]}
        if is_math:
            entry["answers"] = [r.get("answer") for r in row]
            entry["gold"] = p.gold["answer"] if contract.grader == "gym" else p.gold
        entry.update({k: v for k, v in p.meta.items() if k not in entry})
        per_problem.append(entry)
    breakdowns: dict[str, Any] = {}
    bench = BENCHMARKS.get(contract.benchmark)
    if bench.breakdown:
        import pandas as pd

        long = pd.DataFrame([{"problem_id": e["problem_id"], "correct": v,
                              **{f: e.get(f) for f in bench.breakdown}}
                             for e in per_problem for v in e["correct"]])
        for f in bench.breakdown:
            if long[f].isna().all():
                continue
            table = M.breakdown(long, f, n_boot=2000, seed=0)
            breakdowns[f] = {str(g): {k: (int(v) if k.startswith("n_") else float(v))
                                      for k, v in row.items()}
                             for g, row in table.iterrows()}
    return {"benchmark": contract.benchmark, "label": contract.label, "model": model,
            "engine": engine, "contract": contract.to_dict(), "contract_hash": contract.hash,
            "metrics": metrics, "breakdowns": breakdowns, "per_problem": per_problem}


def write_result(out_dir: Path, result: dict, graded: list[list[dict]] | None,
                 problems: Sequence[EvalProblem]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / RESULTS_NAME).write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    if graded is not None:
        with (out_dir / SCORES_NAME).open("w", encoding="utf-8") as f:
            for p, row in zip(problems, graded):
                for j, r in enumerate(row):
                    f.write(json.dumps({"problem_id": p.problem_id, "sample_index": j, **r},
                                       ensure_ascii=False) + "\n")
    meta_keys = sorted({k for e in result["per_problem"] for k in e}
                       - {"problem_id", "n", "c", "accuracy", "correct", "reasons", "answers"})
    with (out_dir / TABLE_NAME).open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["problem_id", "n", "c", "accuracy", *meta_keys])
        for e in result["per_problem"]:
            w.writerow([e["problem_id"], e["n"], e["c"], f"{e['accuracy']:.6g}",
                        *[e.get(k, "") for k in meta_keys]])


def load_result(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        path = path / RESULTS_NAME
    if not path.is_file():
        raise FileNotFoundError(f"result file {path} does not exist")
    return json.loads(path.read_text())


def compare_results(a: dict | str | Path, b: dict | str | Path, *, force: bool = False,
                    seed: int = 0) -> dict[str, Any]:
    """Paired comparison (a - b) of two results on the same problems: difference of avg@k,
    bootstrap CI and permutation p-value. Refused (ContractMismatch) when the contracts
    differ, unless ``force``."""
    ra = a if isinstance(a, dict) else load_result(a)
    rb = b if isinstance(b, dict) else load_result(b)
    ca, cb = EvalContract.from_dict(ra["contract"]), EvalContract.from_dict(rb["contract"])
    diffs = check_comparable(ca, cb, force=force)
    acc_a = {e["problem_id"]: e["accuracy"] for e in ra["per_problem"]}
    acc_b = {e["problem_id"]: e["accuracy"] for e in rb["per_problem"]}
    out = M.paired_comparison(acc_a, acc_b, seed=seed)
    out.update({"benchmark": ra["benchmark"], "model_a": ra.get("model"),
                "model_b": rb.get("model"), "contract_hash": ca.hash,
                "contract_differences": diffs})
    return out
