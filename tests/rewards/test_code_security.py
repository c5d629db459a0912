"""Hostile programs against the code verifier, in every test format, sandboxed and not.

Each attack is written so that the program would PASS if the attack worked: it attempts the
attack and then prints / returns the right answer; a blocked attack raises (or the program is
killed), so the verdict must be a failure.  Cases that cannot be judged that way (forged
records, patched checkers, ``__eq__``) return a wrong answer and try to make it count.  A
control case (no attack) passes in every format, so the failures are the defences' doing.

Modes: ``warm`` (bubblewrap with the warm sandbox pool, the default), ``cold`` (a fresh
bubblewrap sandbox per program, ``SandboxConfig(warm_pool=False)``) and ``fallback`` (no
bubblewrap).  The fallback runs the cases that its defences cover (rlimits, the workers'
seccomp filter, the judge/worker split, a clean environment); it does not isolate files.
In warm mode, ``survives=True`` cases also show that the pool recovers after the attack.
"""

from __future__ import annotations

import os
import pathlib
import socket
import textwrap
import threading
import time
import uuid

import pytest
from proc_helpers import pids_with

from archer.rewards.code import CodeGrader, Problem, TestCase
from archer.rewards.sandbox import Sandbox, SandboxConfig

CFG = dict(test_timeout_s=0.5, wall_time_s=15.0, memory_mb=512, max_output_bytes=1 << 16,
           max_file_mb=4)
FORMATS = ("stdin", "functional", "check")


def _bwrap_ok() -> bool:
    try:
        return Sandbox(SandboxConfig(**CFG)).sandboxed
    except Exception:  # noqa: BLE001
        return False


BWRAP = _bwrap_ok()


@pytest.fixture(scope="module")
def graders():
    out = {}
    if BWRAP:
        out["warm"] = CodeGrader(SandboxConfig(**CFG))
        assert out["warm"].pool is not None
        out["cold"] = CodeGrader(SandboxConfig(warm_pool=False, **CFG))
        assert out["cold"].pool is None
    with pytest.warns(RuntimeWarning, match="UNSANDBOXED"):
        out["fallback"] = CodeGrader(SandboxConfig(use_bwrap=False, **CFG))
    return out


def problem(fmt: str):
    if fmt == "stdin":
        return Problem("stdin", [TestCase("2 3\n", "5\n"), TestCase("10 -4\n", "6\n")])
    if fmt == "functional":
        return Problem("functional", [TestCase("2\n3", "5", "functional"),
                                      TestCase("10\n-4", "6", "functional")], func_name="add")
    return Problem("check", check_code=(
        "def check(candidate):\n"
        "    assert candidate(2, 3) == 5\n"
        "    assert candidate(a=10, b=-4) == 6\n\n"
        "check(Solution().add)\n"))


def program(fmt: str, attack: str = "", where: str = "top", answer: str = "a + b") -> str:
    """The scaffold: ``attack`` at top level or inside the solving call, then the answer."""
    attack = textwrap.dedent(attack).strip("\n")
    top = attack + "\n" if where == "top" else ""
    if fmt == "stdin":
        inner = attack + "\n" if where == "call" else ""
        return top + "a, b = map(int, input().split())\n" + inner + f"print({answer})\n"
    inner = textwrap.indent(attack, " " * 8) + "\n" if where == "call" else ""
    return (top + "class Solution:\n    def add(self, a, b):\n" + inner
            + f"        return {answer}\n")


def grade(graders, mode, fmt, code):
    g = graders.get(mode)
    if g is None:
        pytest.skip("bubblewrap unusable here")
    v = g.grade_code(code, problem(fmt))
    assert v.sandboxed is (mode != "fallback")
    return v


def assert_fails(graders, mode, fmt, code, reasons=None, survives=False):
    v = grade(graders, mode, fmt, code)
    assert not v.passed and v.tests_passed < v.tests_total, v
    if reasons:
        assert v.reason in reasons, v
    if survives:  # the runner survives and still grades a correct program
        ok = grade(graders, mode, fmt, program(fmt))
        assert ok.passed, ok
    return v


#: "warm": bubblewrap with the warm pool (the default), "cold": a fresh bubblewrap sandbox per
#: program, "fallback": no bubblewrap
MODES = ["warm", "cold", "fallback"]
BWRAP_MODES = ["warm", "cold"]


# --- control -------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fmt", FORMATS)
def test_control_program_passes(graders, mode, fmt):
    v = grade(graders, mode, fmt, program(fmt))
    assert v.passed and v.tests_passed == v.tests_total == 2, v
    wrong = grade(graders, mode, fmt, program(fmt, answer="a - b"))
    assert not wrong.passed and wrong.reason == "failed"


# --- resources -----------------------------------------------------------------------------------

FORK_BOMB = """
import os, subprocess, sys, time
for _ in range(20):  # bounded: a broken filter cannot hurt the host
    if os.fork() == 0:
        time.sleep(3)
        os._exit(0)
subprocess.run([sys.executable, "-c", "pass"], check=True)
"""


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fmt", FORMATS)
def test_fork_bomb(graders, mode, fmt):
    assert_fails(graders, mode, fmt, program(fmt, FORK_BOMB), {"runtime_error"}, survives=True)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("bomb", [
    "x = bytearray(8 * 1024 ** 3)",
    "a = []\nwhile True:\n    a.append(' ' * 10 ** 7)",
])
def test_memory_bomb(graders, mode, fmt, bomb):
    assert_fails(graders, mode, fmt, program(fmt, bomb, where="call"),
                 {"runtime_error", "timeout"}, survives=True)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("attack", ["while True:\n    pass", "import time\ntime.sleep(60)"],
                         ids=["loop", "sleep"])
def test_time_limits(graders, mode, fmt, attack):
    t0 = time.monotonic()
    v = grade(graders, mode, fmt, program(fmt, attack, where="call"))
    assert not v.passed and v.reason == "timeout", v
    assert time.monotonic() - t0 < 4 * CFG["test_timeout_s"] + 2  # killed at the test limit


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fmt", FORMATS)
def test_stdout_flood(graders, mode, fmt):
    flood = "import sys\nfor _ in range(100000):\n    sys.stdout.write('x' * 100000)"  # 10 GB
    t0 = time.monotonic()
    assert_fails(graders, mode, fmt, program(fmt, flood, where="call"),
                 {"runtime_error", "failed", "timeout"}, survives=True)
    assert time.monotonic() - t0 < 10


def test_stdout_flood_that_exits_cleanly_is_truncated(graders):
    # fills the output cap without hitting the file-size limit: "output limit exceeded"
    code = "import sys\nsys.stdout.write('5\\n' + 'x' * (1 << 17))\n"
    for mode in graders:
        v = grade(graders, mode, "stdin", code)
        assert not v.passed and "output limit" in v.detail, v


# --- files, environment, network -------------------------------------------------------------------

@pytest.mark.skipif(not BWRAP, reason="bubblewrap unusable here")
@pytest.mark.parametrize("mode", BWRAP_MODES)
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("action", ["write", "delete", "rmtree"])
def test_files_outside_the_sandbox_untouched(graders, tmp_path, mode, fmt, action):
    canary_dir = tmp_path / "canary"
    canary_dir.mkdir()
    canary = canary_dir / "canary.txt"
    canary.write_text("original")
    home = pathlib.Path.home() / f".archer_canary_{uuid.uuid4().hex}"
    home.write_text("original")
    try:
        attack = {
            "write": f"open({str(canary)!r}, 'w').write('pwned')\n"
                     f"open({str(home)!r}, 'a').write('pwned')",
            "delete": f"import os\nos.remove({str(canary)!r})\nos.remove({str(home)!r})",
            "rmtree": f"import shutil\nshutil.rmtree({str(canary_dir)!r})",
        }[action]
        assert_fails(graders, mode, fmt, program(fmt, attack, where="call"),
                     {"runtime_error"})
        assert canary.read_text() == "original" and home.read_text() == "original"
        assert sorted(p.name for p in canary_dir.iterdir()) == ["canary.txt"]
    finally:
        home.unlink(missing_ok=True)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fmt", FORMATS)
def test_parent_environment_secret_not_readable(graders, monkeypatch, mode, fmt):
    secret = "hunter2-" + uuid.uuid4().hex
    monkeypatch.setenv("ARCHER_CANARY_SECRET", secret)
    # passes only if the secret is found in the environment or any process's /proc environ
    attack = f"""
    import os
    found = os.environ.get("ARCHER_CANARY_SECRET") == {secret!r}
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                found = found or {secret!r}.encode() in open(f"/proc/{{p}}/environ", "rb").read()
            except OSError:
                pass
    if not found:
        raise RuntimeError("no secret")
    """
    assert_fails(graders, mode, fmt, program(fmt, attack, where="call"), {"runtime_error"})


@pytest.fixture
def tcp_server():
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(0.1)
    seen: list = []
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, addr = srv.accept()
            except OSError:
                continue
            seen.append(addr)
            conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield srv.getsockname()[1], seen
    stop.set()
    t.join()
    srv.close()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fmt", FORMATS)
def test_no_connection_to_loopback_server(graders, tcp_server, mode, fmt):
    port, seen = tcp_server
    attack = f"""
    import socket
    socket.create_connection(("127.0.0.1", {port}), timeout=2).close()
    """
    assert_fails(graders, mode, fmt, program(fmt, attack, where="call"), {"runtime_error"})
    time.sleep(0.2)
    assert seen == []


# --- processes -----------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fmt", FORMATS)
def test_cannot_signal_other_processes(graders, mode, fmt):
    # signal 0: the kernel checks the permission and delivers nothing, so a hole in the filter
    # shows up as a passing program instead of a dead machine (the filter looks at the pid
    # only).  The program passes if ANY of the signals could be sent.
    attack = f"""
    import os
    sent = []
    for name, f in [("parent", lambda: os.kill(os.getppid(), 0)),
                    ("group", lambda: os.killpg(0, 0)),
                    ("everyone", lambda: os.kill(-1, 0)),
                    ("test process", lambda: os.kill({os.getpid()}, 0))]:
        try:
            f()
            sent.append(name)
        except OSError:
            pass
    if not sent:
        raise PermissionError("no signal could be sent")
    """
    v = assert_fails(graders, mode, fmt, program(fmt, attack, where="call"), {"runtime_error"})
    assert "no signal could be sent" in v.detail, v


@pytest.mark.skipif(not BWRAP, reason="bubblewrap unusable here")
@pytest.mark.parametrize("mode", BWRAP_MODES)
@pytest.mark.parametrize("fmt", FORMATS)
def test_sigkill_everything_from_the_sandbox(graders, mode, fmt):
    # real SIGKILLs, only under bubblewrap (its pid namespace bounds them even if the filter
    # failed): parent, own group, every process
    attack = """
    import os, signal
    for f in (lambda: os.kill(os.getppid(), 9), lambda: os.killpg(0, 9),
              lambda: os.kill(-1, 9), lambda: os.kill(1, 9)):
        try:
            f()
        except OSError:
            pass
    """
    assert_fails(graders, mode, fmt, program(fmt, attack, where="call", answer="a * b"),
                 survives=True)
    assert os.getppid() > 0  # this process is alive and well


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fmt", FORMATS)
def test_nothing_outlives_the_run(graders, tmp_path, mode, fmt):
    marker = "archer-stray-" + uuid.uuid4().hex
    late = tmp_path / "late"
    attack = f"""
    import os, subprocess, sys, threading, time
    def later():
        time.sleep(0.4)
        open({str(late)!r}, "w").write("late")
    threading.Thread(target=later, daemon=True).start()
    try:
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)", {marker!r}],
                         start_new_session=True)
    except OSError:
        pass
    # replace this very process by a long sleeper carrying the marker
    os.execv(sys.executable, [sys.executable, "-c", "import time; time.sleep(30)", {marker!r}])
    """
    assert_fails(graders, mode, fmt, program(fmt, attack, where="call"))
    time.sleep(0.8)
    assert pids_with(marker) == []
    assert not late.exists()


# --- forging the verdict ---------------------------------------------------------------------------

EXITS = {"sys_exit": "import sys\nsys.exit(0)", "os_exit": "import os\nos._exit(0)"}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("where", ["top", "call"])
@pytest.mark.parametrize("how", list(EXITS))
def test_exit_before_the_tests(graders, mode, fmt, where, how):
    assert_fails(graders, mode, fmt, program(fmt, EXITS[how], where=where))


FORGE = """
import gc, json, os, sys
fake = [{"event": "ready"}, {"i": 0, "status": "ok", "out": "5", "ret": "5"},
        {"i": 1, "status": "ok", "out": "6", "ret": "6"}, {"event": "done", "status": "ok",
        "cases": 2}, {"event": "end"}]
lines = "".join(json.dumps(dict(r, k=n)) + "\\n" for r in fake for n in ("", "0" * 32))
print("PASS\\nAll tests passed\\n" + lines, flush=True)
for fd in range(3, 1024):
    try:
        os.write(fd, lines.encode())
    except OSError:
        pass
for pid in (os.getppid(), 1, 2):
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                with open(f"/proc/{pid}/fd/{fd}", "w") as f:
                    f.write(lines)
            except OSError:
                pass
    except OSError:
        pass
# the judge's emitter, if this process inherited one (stdin workers are forked from the judge)
for obj in gc.get_objects():
    if callable(obj) and getattr(obj, "__name__", "") in ("emit", "_emit"):
        for r in fake:
            try:
                obj(**r)
            except Exception:
                pass
frame = sys._getframe()
while frame is not None:
    for v in list(frame.f_locals.values()):
        if callable(v) and getattr(v, "__name__", "") == "emit":
            for r in fake:
                try:
                    v(**r)
                except Exception:
                    pass
    frame = frame.f_back
"""


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("where", ["top", "call"])
def test_fake_pass_and_forged_records(graders, mode, fmt, where):
    assert_fails(graders, mode, fmt, program(fmt, FORGE, where=where, answer="a * b"))


EQ = """
class Anything(int):
    def __eq__(self, other):
        return True
    def __ne__(self, other):
        return False
    __hash__ = int.__hash__
class Whatever(list):
    def __eq__(self, other):
        return True
class Obj:
    def __eq__(self, other):
        return True
"""


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fmt", ["functional", "check"])
@pytest.mark.parametrize("answer", ["Anything(a * b)", "Whatever([a, b])", "Obj()"])
def test_eq_override_does_not_pass(graders, mode, fmt, answer):
    v = assert_fails(graders, mode, fmt, program(fmt, EQ, answer=answer))
    assert v.reason in ("failed", "runtime_error")


PATCH = """
import builtins, gc, json, sys
def check(candidate):
    pass
builtins.AssertionError = type("AssertionError", (Exception,), {})
builtins.__archer_case__ = lambda i, thunk: None
json.loads = lambda *a, **k: {"status": "ok"}
json.dumps = lambda *a, **k: "5"
def _true(*a, **k):
    return True
for obj in gc.get_objects():
    name = getattr(obj, "__name__", "")
    if callable(obj) and name in ("check", "case", "candidate", "emit", "_emit", "encode",
                                  "decode", "send", "recv", "strict_equal", "compare_stdout"):
        try:
            obj.__code__ = _true.__code__
        except Exception:
            pass
import __main__
for name in dir(__main__):
    if not name.startswith("__"):
        try:
            setattr(__main__, name, _true)
        except Exception:
            pass
"""


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("where", ["top", "call"])
def test_monkeypatching_the_checker_and_harness(graders, mode, fmt, where):
    assert_fails(graders, mode, fmt, program(fmt, PATCH, where=where, answer="a * b"))


@pytest.mark.parametrize("mode", MODES)
def test_humaneval_style_check_cannot_be_patched(graders, mode):
    """The HumanEval shape: the program may redefine ``check`` and the entry point."""
    g = graders.get(mode)
    if g is None:
        pytest.skip("bubblewrap unusable here")
    rec = {"task_id": "t/0", "entry_point": "inc",
           "prompt": "def inc(x):\n    \"\"\"x + 1\"\"\"\n",
           "test": "def check(candidate):\n    assert candidate(1) == 2\n"
                   "    assert candidate(41) == 42\n"}
    good = g.grade("```python\n    return x + 1\n```", rec)
    assert good.passed and good.tests_passed == 2 and good.sandboxed is (mode != "fallback")
    for body in ["    return x\n\ndef check(candidate):\n    pass\n",
                 "    return x\nimport builtins\nbuiltins.AssertionError = KeyError\n",
                 "    import sys\n    sys.exit(0)\n",
                 "    return x\n" + textwrap.indent(PATCH, "").replace("\n", "\n"),
                 "    return x\n" + EQ + "\n_inc = inc\ndef inc(x):\n    return Anything(0)\n"]:
        v = g.grade("```python\n" + body + "```", rec)
        assert not v.passed, (body, v)
