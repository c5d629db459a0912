"""Scoring throughput: LiveCodeBench-format samples per second through Archer's code verifier
(``CodeGrader.grade_batch``: one sandboxed harness per sample that runs all its tests) against
a simple baseline, one fresh ``subprocess.run`` per test (no sandbox, stop at the first
failing test, the same output comparison), measured in the same run on the same samples.

Samples are built from the stdin problems of ``lcb_v5_public.jsonl`` (its tests) and a mix of
programs that pass, fail on the first or a later test, crash or do not compile, so both
paths exercise every outcome; the two must agree on every verdict.

    python bench/eval_throughput.py              # 10,000 samples (default)
    python bench/eval_throughput.py --n 400 --workers 2
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

PROGRAMS = {
    # echoes the input: passes only when output == input (never here); fails on test 1
    "echo": "import sys\nprint(sys.stdin.read().strip())\n",
    "crash": "raise SystemExit(1 / 0)\n",
    "syntax": "def f(:\n    pass\n",
    "line_count": "import sys\nprint(len(sys.stdin.read().split()))\n",
}


def build_samples(n: int) -> list[tuple[str, list[dict]]]:
    """``n`` (code, tests) pairs: for each stdin problem a program printing its first
    expected output (passes test 1, usually fails test 2) plus the fixed programs."""
    from archer.data.datasets import load_dataset

    problems = [r for r in load_dataset("lcb_v5_public") if r["test_type"] == "stdin"]
    pool: list[tuple[str, list[dict]]] = []
    for rec in problems:
        tests = rec["tests"]["public_test_cases"]
        first = tests[0]["output"]
        pool.append((f"print({first.strip()!r})\n", tests))
        for code in PROGRAMS.values():
            pool.append((code, tests))
    return [pool[i % len(pool)] for i in range(n)]


def baseline_one(code: str, tests: list[dict], timeout: float) -> bool:
    from archer.rewards.code import compare_stdout

    for t in tests:
        try:
            proc = subprocess.run([sys.executable, "-c", code], input=t["input"],
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return False
        if proc.returncode != 0 or not compare_stdout(proc.stdout, t["output"]):
            return False
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000, help="samples to score")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--timeout", type=float, default=6.0, help="per-test timeout (s)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    from archer.rewards.code import CodeGrader, to_problem
    from archer.rewards.sandbox import SandboxConfig

    samples = build_samples(args.n)
    completions = [f"```python\n{code}```" for code, _ in samples]
    problems = [to_problem(tests) for _, tests in samples]

    grader = CodeGrader(SandboxConfig(test_timeout_s=args.timeout, max_workers=args.workers))
    t0 = time.perf_counter()
    ours = [v.passed for v in grader.grade_batch(completions, problems)]
    t_ours = time.perf_counter() - t0

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.workers) as ex:
        base = list(ex.map(lambda s: baseline_one(s[0], s[1], args.timeout), samples))
    t_base = time.perf_counter() - t0

    disagree = sum(a != b for a, b in zip(ours, base))
    tests_run = sum(len(t) for _, t in samples)
    out = {
        "samples": args.n, "tests_total": tests_run, "workers": args.workers,
        "sandboxed": grader.sandbox.sandboxed, "passed": sum(ours),
        "archer_s": round(t_ours, 2), "baseline_s": round(t_base, 2),
        "archer_samples_per_s": round(args.n / t_ours, 1),
        "baseline_samples_per_s": round(args.n / t_base, 1),
        "speedup": round(t_base / t_ours, 2), "verdict_disagreements": disagree,
    }
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{args.n} LCB-format samples ({tests_run} tests), {args.workers} workers, "
              f"sandboxed={out['sandboxed']}")
        print(f"  archer CodeGrader : {t_ours:8.2f} s  {out['archer_samples_per_s']:8.1f} "
              "samples/s")
        print(f"  subprocess/test   : {t_base:8.2f} s  {out['baseline_samples_per_s']:8.1f} "
              "samples/s")
        print(f"  ratio (archer / baseline throughput): {out['speedup']:.2f}x; "
              f"verdict disagreements: {disagree}")
    if disagree:
        sys.exit(1)


if __name__ == "__main__":
    main()
