"""The warm sandbox pool: what one program may leave for the next, and when a sandbox is
replaced.  (The hostile programs of ``test_code_security.py`` also run under the pool.)"""

from __future__ import annotations

import importlib
import inspect
import os
import subprocess
import sys
import textwrap
import time
import types
import uuid

import pytest
from proc_helpers import pids_with

import archer.rewards.code.grader as grader_mod
from archer.rewards.code import HARNESS, CodeGrader, Problem, TestCase
from archer.rewards.code.harness import PARTS
from archer.rewards.sandbox import Sandbox, SandboxConfig


def _bwrap_ok() -> bool:
    try:
        return Sandbox(SandboxConfig()).sandboxed
    except Exception:  # noqa: BLE001
        return False


pytestmark = pytest.mark.skipif(not _bwrap_ok(), reason="bubblewrap unusable here")

CFG = dict(test_timeout_s=2.0, wall_time_s=20.0, memory_mb=1024, max_workers=1)


def one_sandbox_grader(**kw) -> CodeGrader:
    """A grader whose pool keeps a single sandbox, so consecutive programs share it."""
    g = CodeGrader(SandboxConfig(**{**CFG, **kw}))
    assert g.pool is not None
    g.pool.size = 1
    return g


def stdin_problem(expected: str) -> Problem:
    return Problem("stdin", [TestCase("", expected)])


def test_cold_start_flag_disables_the_pool():
    assert CodeGrader(SandboxConfig(warm_pool=False)).pool is None


def test_files_do_not_survive_into_the_next_program():
    g = one_sandbox_grader()
    litter = textwrap.dedent("""
        import os
        for d in ("/tmp", "."):
            os.makedirs(d + "/deep/er", exist_ok=True)
            open(d + "/deep/er/f", "w").write("left behind")
            open(d + "/note", "w").write("left behind")
            os.symlink("/tmp/note", d + "/link")
            os.chmod(d + "/deep", 0)  # not even listable
        os.chmod("/tmp", 0o500)
        print("ok")
    """)
    look = ("import os\nprint(sorted(os.listdir('/tmp')), sorted(os.listdir('.')), "
            "oct(os.stat('/tmp').st_mode & 0o777))\n")
    clean = "[] [] 0o755"  # bubblewrap's tmpfs mode
    assert g.grade_code(look, stdin_problem(clean)).passed
    assert g.grade_code(litter, stdin_problem("ok")).passed
    v = g.grade_code(look, stdin_problem(clean))
    assert v.passed, v
    assert g.pool.started == 1 and g.pool.replaced == 0  # the same sandbox, cleaned


def _split(marker: str) -> tuple[str, str]:
    return marker[:16], marker[16:]


def test_no_earlier_program_input_or_secret_in_a_workers_memory(monkeypatch):
    """The zygote never reads a run's data, so a worker's memory (inherited from its judge,
    inherited from the zygote) holds nothing of the runs before it: not their programs, not
    their test code, not their nonces.  The scanning program looks for each marker as two
    halves that it never joins, so only a real copy elsewhere in memory matches; a control
    marker of its own program must be found."""
    g = one_sandbox_grader(test_timeout_s=15.0)
    prog1, check1, nonce1, own = (uuid.uuid4().hex for _ in range(4))
    first = Problem("check", check_code=(
        f"def check(candidate):\n    assert candidate() == {check1!r}\n\n"
        "check(Solution().f)\n"))
    drawn = []

    def fixed_nonce(n=16):
        drawn.append(n)
        return nonce1

    # the grader looks the nonce up as ``secrets.token_hex`` in its own module
    monkeypatch.setattr(grader_mod, "secrets", types.SimpleNamespace(token_hex=fixed_nonce))
    v1 = g.grade_code(f"class Solution:\n    def f(self):\n        x = {prog1!r}\n"
                      f"        return {check1!r}\n", first)
    assert v1.passed, v1
    assert drawn == [16], "the first run's nonce must be the patched one"
    monkeypatch.undo()
    halves = [_split(m) for m in (own, prog1, check1, nonce1)]
    scanner = textwrap.dedent(f"""
        OWN = {own!r}

        def scan(halves):
            found = [False] * len(halves)
            with open("/proc/self/maps") as f:
                maps = f.read().splitlines()
            with open("/proc/self/mem", "rb", 0) as mem:
                for line in maps:
                    addr, perms = line.split()[:2]
                    lo, hi = (int(x, 16) for x in addr.split("-"))
                    if "r" not in perms or hi - lo > 1 << 28:
                        continue
                    try:
                        mem.seek(lo)
                        chunk = mem.read(hi - lo)
                    except (OSError, OverflowError, ValueError):
                        continue
                    for i, (a, b) in enumerate(halves):
                        a, b = a.encode(), b.encode()
                        pos = chunk.find(a)
                        while pos >= 0 and not found[i]:
                            found[i] = chunk[pos + len(a):pos + len(a) + len(b)] == b
                            pos = chunk.find(a, pos + 1)
            return found

        class Solution:
            def f(self, halves):
                return scan(halves)
    """)
    second = Problem("check", check_code=(
        "def check(candidate):\n"
        f"    assert candidate({halves!r}) == [True, False, False, False]\n\n"
        "check(Solution().f)\n"))
    v2 = g.grade_code(scanner, second)
    assert v2.passed, v2
    assert g.pool.started == 1  # both ran in the same sandbox


ADD = Problem("stdin", [TestCase("2 3\n", "5\n"), TestCase("10 -4\n", "6\n")])
GOOD = "a, b = map(int, input().split())\nprint(a + b)\n"


def test_ordinary_failures_keep_the_sandbox_misbehaviour_replaces_it():
    g = one_sandbox_grader(test_timeout_s=0.5)
    for bad, reason in [
        ("a, b = map(int, input().split())\nprint(a - b)\n", "failed"),  # stopped early
        ("raise ValueError('no')\n", "runtime_error"),
        ("import sys\nsys.exit(0)\n", "failed"),
        ("def f(:\n", "compile_error"),
    ]:
        v = g.grade_code(bad, ADD)
        assert not v.passed and v.reason == reason, (bad, v)
    assert g.grade_code(GOOD, ADD).passed
    assert (g.pool.started, g.pool.replaced) == (1, 0)
    hang = "import time\ntime.sleep(60)\n"
    check = Problem("check", check_code="def check(candidate):\n    assert candidate(1) == 1\n\n"
                    "check(f)\n")
    v = g.grade_code("def f(x):\n" + textwrap.indent(hang, "    ") + "    return x\n", check)
    assert v.reason == "timeout", v
    v = g.grade_code(GOOD, ADD)
    assert v.passed, v
    # the judge reported the timeout itself (the sandbox stays) or the host's clock ran out
    # first (the sandbox is replaced); either way the next program ran in a sound sandbox
    assert g.pool.started == 1 + g.pool.replaced


def test_a_process_that_outlives_its_judge_gets_the_sandbox_replaced():
    # without the workers' seccomp filter (forbid_fork=False) a program can fork; the zygote
    # kills what is left after the judge and the pool replaces the sandbox
    g = one_sandbox_grader(forbid_fork=False)
    marker = "archer-pool-stray-" + uuid.uuid4().hex
    stray = (f"import os, sys\nif os.fork() == 0:\n    os.execv(sys.executable, "
             f"[sys.executable, '-c', 'import time; time.sleep(30)', {marker!r}])\n"
             + GOOD)
    assert g.grade_code(stray, ADD).passed  # forking is allowed in this configuration
    v = g.grade_code(GOOD, ADD)  # collects the report of the stray run first
    assert v.passed, v
    assert g.pool.replaced == 1 and g.pool.started == 2
    time.sleep(0.3)
    assert pids_with(marker) == []


@pytest.mark.slow
@pytest.mark.parametrize("warm", [True, False], ids=["warm", "cold"])
def test_cpu_limit_applies_to_every_program(warm):
    g = CodeGrader(SandboxConfig(cpu_time_s=1, test_timeout_s=30.0, wall_time_s=40.0,
                                 warm_pool=warm, max_workers=1))
    check = Problem("check", check_code="def check(candidate):\n    assert candidate(1) == 1\n\n"
                    "check(f)\n")
    t0 = time.monotonic()
    for _ in range(2):  # a second program gets its own CPU budget too
        v = g.grade_code("def f(x):\n    while True:\n        pass\n", check)
        assert v.reason == "runtime_error" and "signal" in v.detail, v
    assert time.monotonic() - t0 < 30
    assert g.grade_code("def f(x):\n    return x\n", check).passed


def test_zygote_refuses_to_run_outside_a_fresh_pid_namespace():
    """Its cleanup kills every other process it can see: with another process in its
    namespace it must refuse to start.  (Run inside bubblewrap, so a broken guard could not
    reach this machine's processes.)"""
    sb = Sandbox(SandboxConfig())
    launcher = (
        "import os, subprocess, sys\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(5)'])\n"
        "os.execv(sys.executable, [sys.executable, '-I', '-S', '-c', sys.stdin.read(), "
        "'--zygote', '1', '0', '', '{}'])\n")
    cmd = sb._bwrap_args(None) + [sb.python, "-I", "-S", "-c", launcher]
    res = subprocess.run(cmd, input=HARNESS.encode(), capture_output=True, timeout=60,
                         env={"PATH": "/usr/bin:/bin"})
    assert res.returncode == 3, res
    assert b'"z":"refused"' in res.stdout, res.stdout


def test_harness_is_its_parts_joined_and_runs_as_a_standalone_file(tmp_path):
    """The harness script is the parts of archer.rewards.code.harness joined in order
    (``python -m archer.rewards.code.harness`` prints it); each part is also an ordinary module
    on the host, and the script saved to a file runs under the bare base interpreter (no
    project, no site-packages): its zygote refuses to start beside another process, as above."""
    printed = subprocess.run([sys.executable, "-m", "archer.rewards.code.harness"],
                             capture_output=True, text=True, check=True, timeout=60).stdout
    assert printed == HARNESS
    assert HARNESS.count("from __future__ import annotations") == 1
    for part in PARTS:
        mod = importlib.import_module(f"archer.rewards.code.harness.{part}")
        own = [n for n, v in vars(mod).items()
               if inspect.isfunction(v) and v.__module__ == mod.__name__]
        assert own and all(f"\ndef {n}(" in HARNESS for n in own), part
    script = tmp_path / "harness.py"
    script.write_text(HARNESS)
    sb = Sandbox(SandboxConfig(extra_ro_paths=(str(tmp_path),)))
    launcher = (
        "import os, subprocess, sys\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(5)'])\n"
        f"os.execv(sys.executable, [sys.executable, '-I', '-S', {str(script)!r}, "
        "'--zygote', '1', '0', '', '{}'])\n")
    cmd = sb._bwrap_args(None) + [sb.python, "-I", "-S", "-c", launcher]
    res = subprocess.run(cmd, capture_output=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert res.returncode == 3, res
    assert b'"z":"refused"' in res.stdout, res.stdout


def test_warm_up_starts_the_pool_before_first_use():
    g = CodeGrader(SandboxConfig(**{**CFG, "max_workers": 2}))
    g.warm_up()
    assert g.pool.started == g.pool.size == 5 and len(g.pool._idle) == 5
    vs = g.grade_batch([f"```python\n{GOOD}```"] * 6, [ADD] * 6)
    assert all(v.passed for v in vs)
    assert g.pool.started == 5 and g.pool.replaced == 0  # no start-up while grading
    g.close()
    assert g.pool._idle == [] and g.pool._live == 0


def test_a_forked_host_process_neither_uses_nor_kills_the_parents_sandboxes():
    g = CodeGrader(SandboxConfig(**CFG))
    g.warm_up()
    started = g.pool.started
    pid = os.fork()
    if pid == 0:  # the child grades with sandboxes of its own, then closes its pool
        ok = False
        try:
            ok = g.grade_code(GOOD, ADD).passed and g.pool.started == 1
            g.close()
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    v = g.grade_code(GOOD, ADD)
    assert v.passed, v
    assert g.pool.started == started and g.pool.replaced == 0  # the parent's pool is intact
