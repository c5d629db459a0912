"""CodeGrader: grades completions against problems, one sandboxed program per completion."""

from __future__ import annotations

import ast
import json
import marshal
import secrets
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from archer.rewards.code.checks import count_check_asserts, split_check_tree
from archer.rewards.code.compare import compare_functional, compare_stdout
from archer.rewards.code.corpora import to_problem
from archer.rewards.code.harness import harness_invocation
from archer.rewards.code.problems import CodeVerdict, Problem, TestResult
from archer.rewards.code.program import (
    HEADER_MODULES,
    ZYGOTE_PRELOAD,
    build_program,
    checker_prelude,
    extract_code,
)
from archer.rewards.sandbox import (
    PID_PLACEHOLDER,
    RunResult,
    Sandbox,
    SandboxConfig,
    WarmPool,
    worker_seccomp_filter,
)

_WORKER_FILTER = worker_seccomp_filter()


class CodeGrader:
    """Grades completions against problems, one sandboxed program per completion.

    ``fail_fast`` (default, as LiveCodeBench): stop a program at its first failing test;
    otherwise every test runs and ``tests_passed`` counts them all.
    """

    def __init__(self, config: SandboxConfig | None = None, float_tol: float = 0.0,
                 fail_fast: bool = True) -> None:
        self.config = config or SandboxConfig()
        self.sandbox = Sandbox(self.config)
        self.float_tol = float_tol
        self.fail_fast = fail_fast
        self._filter = _WORKER_FILTER.hex() if (
            _WORKER_FILTER is not None and self.config.forbid_fork) else None
        self._args, self._stdin_prefix = harness_invocation(
            self.sandbox.python, self.config.allow_site_packages, self.sandbox.packages_dir)
        self.pool: WarmPool | None = None
        if self.config.warm_pool and self.sandbox.sandboxed:
            self.pool = WarmPool(
                self.sandbox, self._args, self._stdin_prefix, ZYGOTE_PRELOAD,
                init={"seccomp": self._filter, "pid_placeholder": PID_PLACEHOLDER,
                      "drop_uid": self.sandbox.drop_uid},
                # twice the concurrent programs (+1): a sandbox still cleaning up after its
                # last program is rarely the only one free
                size=2 * int(self.config.max_workers) + 1)
            weakref.finalize(self, self.pool.close)

    def warm_up(self) -> None:
        """Start the warm sandboxes now (they are otherwise started on first use)."""
        if self.pool is not None:
            self.pool.prestart()

    def close(self) -> None:
        """Stop the warm sandboxes (they also stop with this process)."""
        if self.pool is not None:
            self.pool.close()

    def grade(self, completion: str, problem: Any) -> CodeVerdict:
        problem = to_problem(problem)
        code = extract_code(completion)
        if code is None:
            return CodeVerdict(False, "no_code", 0, problem.n_tests, self.sandbox.sandboxed,
                               "no ```python block found")
        return self.grade_code(code, problem)

    def grade_code(self, code: str, problem: Problem) -> CodeVerdict:
        """Grade an already-extracted program."""
        problem = to_problem(problem)
        sb = self.sandbox
        program = build_program(code, problem)
        nonce = secrets.token_hex(16)
        spec: dict[str, Any] = {
            "kind": problem.kind, "code": program,
            "test_timeout": self.config.test_timeout_s,
            "max_output": self.config.max_output_bytes,
            "fail_fast": self.fail_fast,
            "seccomp": self._filter, "pid_placeholder": PID_PLACEHOLDER,
            "drop_uid": sb.drop_uid,
            # cold start: imported once by the judge, before it forks workers (a warm
            # sandbox's zygote has ZYGOTE_PRELOAD imported already)
            "preload": list(HEADER_MODULES) if problem.header else [],
        }
        secret: dict[str, Any] = {"nonce": nonce}
        n_asserts = None
        if problem.kind == "check":
            try:
                tree, entry, n_asserts = split_check_tree(problem.check_code or "")
                if self._stdin_prefix:  # the sandbox's interpreter reads our bytecode
                    secret["check_bytecode"] = marshal.dumps(
                        compile(tree, "<tests>", "exec", dont_inherit=True)).hex()
                else:
                    secret["check_code"] = ast.unparse(tree)
            except (SyntaxError, ValueError, RecursionError) as e:
                return CodeVerdict(False, "sandbox_error", 0, problem.n_tests, sb.sandboxed,
                                   f"unusable test code: {e}")
            spec["entry"] = entry
            secret["prelude"] = checker_prelude(problem)
            total = max(1, n_asserts)
        else:
            total = len(problem.tests)
            spec["inputs"] = [t.input for t in problem.tests]
            spec["func_name"] = problem.func_name
            if not problem.tests:
                return CodeVerdict(False, "sandbox_error", 0, 0, sb.sandboxed,
                                   "problem has no tests")
        results: list[TestResult] = []
        forged: list[dict] = []

        def on_record(rec: dict) -> bool:
            if rec.get("k") != nonce:
                forged.append(rec)
                return False
            if "i" not in rec or problem.kind == "check":
                return True
            res = self._judge_record(problem, rec)
            results.append(res)
            return res.status == "passed" or not self.fail_fast

        wall = min(self.config.wall_time_s, 5.0 + (total + 1) * self.config.test_timeout_s)
        if self.pool is not None:
            run = self.pool.run(
                json.dumps(spec).encode("utf-8"), json.dumps(secret).encode("utf-8"),
                max(1, int(min(self.config.cpu_time_s, wall)) + 1), on_record=on_record,
                wall_time_s=wall, test_timeout_s=self.config.test_timeout_s,
                is_last=lambda rec: rec.get("event") == "end" and rec.get("k") == nonce)
        else:
            run = sb.run(
                self._args, self._stdin_prefix + json.dumps(spec).encode("utf-8"),
                on_record=on_record, wall_time_s=wall,
                test_timeout_s=self.config.test_timeout_s,
                secret=json.dumps(secret).encode("utf-8"), own_seccomp=True,
            )
        if forged:
            return CodeVerdict(False, "failed", 0, total, run.sandboxed,
                               "protocol record without the run's nonce", [], run.wall_s)
        return self._verdict(problem, run, results, total, n_asserts)

    def _judge_record(self, problem: Problem, rec: dict) -> TestResult:
        """One stdin/functional test record -> its result (the host holds the outputs)."""
        i, status = int(rec["i"]), rec.get("status")
        detail = str(rec.get("detail", ""))[:1000]
        if status == "timeout":
            return TestResult(i, "timeout", "time limit exceeded")
        if status != "ok":
            return TestResult(i, "runtime_error", detail)
        if not 0 <= i < len(problem.tests):
            return TestResult(i, "failed", "bogus test index")
        if rec.get("truncated"):
            return TestResult(i, "failed", "output limit exceeded")
        want = problem.tests[i].output
        if problem.kind == "stdin":
            out = str(rec.get("out", ""))
            ok, got = compare_stdout(out, want, self.float_tol), out[:200]
        else:
            ret = rec.get("ret")
            try:
                ok = isinstance(ret, str) and compare_functional(json.loads(ret), json.loads(want))
            except (ValueError, TypeError, RecursionError):
                ok = False
            got = str(ret)[:200]
        if ok:
            return TestResult(i, "passed")
        return TestResult(i, "failed", f"wrong answer: got {got!r}, expected {want[:200]!r}")

    def _verdict(self, problem: Problem, run: RunResult, results: list[TestResult],
                 total: int, n_asserts: int | None = None) -> CodeVerdict:
        sb = run.sandboxed

        def verdict(reason: str, detail: str) -> CodeVerdict:
            passed = sum(r.status == "passed" for r in results)
            return CodeVerdict(reason == "passed", reason, passed, total, sb, detail[:2000],
                               results, run.wall_s)

        events = {r.get("event"): r for r in run.records if "event" in r}
        if run.error:
            return verdict("sandbox_error", run.error)
        if "sandbox_error" in events:
            return verdict("sandbox_error", events["sandbox_error"].get("detail", ""))
        if "compile_error" in events:
            return verdict("compile_error", events["compile_error"].get("detail", ""))
        if "test_error" in events:
            return verdict("sandbox_error", "tests: " + events["test_error"].get("detail", ""))
        if "load_error" in events:
            ev = events["load_error"]
            return verdict("timeout" if ev.get("timeout") else "runtime_error",
                           ev.get("detail", ""))
        if problem.kind == "check":
            status_of = {"ok": "passed", "fail": "failed", "error": "runtime_error",
                         "timeout": "timeout"}
            for r in run.records:
                if "i" in r:
                    results.append(TestResult(int(r["i"]), status_of.get(r.get("status"),
                                                                         "failed"),
                                              str(r.get("detail", ""))))
            done = events.get("done")
            if done is not None and "end" in events:
                st = done.get("status")
                n_ok = sum(x.status == "passed" for x in results)
                first_bad = next((x for x in results if x.status != "passed"), None)
                if st == "ok" and first_bad is None:
                    if n_asserts is None:
                        n_asserts = count_check_asserts(problem.check_code or "")
                    if n_ok < n_asserts:
                        return verdict("failed", f"check() ran {n_ok} of {n_asserts} asserts")
                    if not results:
                        results.append(TestResult(0, "passed"))
                    return verdict("passed", "")
                if st == "timeout":
                    results.append(TestResult(len(results), "timeout", "time limit exceeded"))
                    return verdict("timeout", "time limit exceeded")
                if first_bad is not None:
                    reason = first_bad.status if first_bad.status != "passed" else "failed"
                    return verdict(reason, f"test {first_bad.index}: {first_bad.detail}")
                if st == "fail":
                    results.append(TestResult(len(results), "failed", done.get("detail", "")))
                    return verdict("failed", done.get("detail", "") or "assertion failed")
                results.append(TestResult(len(results), "runtime_error", done.get("detail", "")))
                return verdict("runtime_error", done.get("detail", ""))
        else:
            bad = next((r for r in results if r.status != "passed"), None)
            if bad is not None:
                return verdict(bad.status, f"test {bad.index}: {bad.detail}")
            if len(results) == total and "end" in events:
                return verdict("passed", "")
        # the harness died or was killed before reporting everything
        if run.timed_out:
            results.append(TestResult(len(results), "timeout", f"{run.timed_out} wall clock"))
            return verdict("timeout", f"{run.timed_out} wall-clock limit exceeded")
        if run.records_truncated:
            return verdict("failed", "result stream over its size limit")
        err = run.stderr[-1000:].decode("utf-8", "replace")
        if "ready" not in events:
            if run.returncode is not None and run.returncode < 0:
                return verdict("runtime_error", f"killed by signal {-run.returncode}: {err}")
            return verdict("sandbox_error", f"harness failed (rc={run.returncode}): {err}")
        rc = run.returncode
        results.append(TestResult(len(results), "runtime_error", f"rc={rc}"))
        return verdict("runtime_error", f"judge exited early (rc={rc}): {err}")

    def grade_batch(self, completions: list[str], problems: list[Any]) -> list[CodeVerdict]:
        """Grade many completions on a pool of ``max_workers`` threads (one sandboxed
        program each at a time)."""
        if len(completions) != len(problems):
            raise ValueError("completions and problems must have the same length")
        if not completions:
            return []
        workers = min(int(self.config.max_workers), len(completions))
        if workers == 1:
            return [self._grade_safe(c, p) for c, p in zip(completions, problems)]
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="archer-code") as ex:
            return list(ex.map(self._grade_safe, completions, problems))

    def _grade_safe(self, completion: str, problem: Any) -> CodeVerdict:
        try:
            return self.grade(completion, problem)
        except (ValueError, TypeError, KeyError) as e:
            return CodeVerdict(False, "sandbox_error", 0, 0, self.sandbox.sandboxed,
                               f"bad problem: {e}")
