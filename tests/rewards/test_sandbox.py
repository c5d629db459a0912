"""Sandbox behaviour: limits, isolation (hostile programs), fallback mode."""

from __future__ import annotations

import os
import pathlib
import threading
import time
import uuid

import pytest
from proc_helpers import pids_with

from archer.rewards.code import CodeGrader
from archer.rewards.sandbox import Sandbox, SandboxConfig

REPO = pathlib.Path(__file__).resolve().parents[2]
FAST = dict(test_timeout_s=1.0, wall_time_s=10.0, memory_mb=1024)


def _bwrap_ok() -> bool:
    try:
        return Sandbox(SandboxConfig(**FAST)).sandboxed
    except Exception:  # noqa: BLE001
        return False


needs_bwrap = pytest.mark.skipif(not _bwrap_ok(), reason="bubblewrap unusable here")


@pytest.fixture(scope="module")
def grader():
    g = CodeGrader(SandboxConfig(**FAST))
    assert g.sandbox.sandboxed
    return g


def run_py(grader, code: str, stdin: str = ""):
    """Runs ``code`` as a stdin program and returns (verdict, its stdout)."""
    problem = [{"input": stdin, "output": "__never__"}]
    v = grader.grade("```python\n" + code + "\n```", problem)
    out = v.detail
    return v, out


def test_config_validation_names_field():
    with pytest.raises(ValueError, match="memory_mb"):
        SandboxConfig(memory_mb=-1)
    with pytest.raises(ValueError, match="test_timeout_s"):
        SandboxConfig(test_timeout_s=0)
    with pytest.raises(ValueError, match="max_output_bytes"):
        SandboxConfig(max_output_bytes=-5)


def test_fallback_warns_and_flags_unsandboxed():
    with pytest.warns(RuntimeWarning, match="UNSANDBOXED"):
        g = CodeGrader(SandboxConfig(use_bwrap=False, **FAST))
    v = g.grade("```python\nprint(int(input()) * 2)\n```", [{"input": "21", "output": "42"}])
    assert v.passed and v.sandboxed is False
    v = g.grade("```python\nprint(0)\n```", [{"input": "21", "output": "42"}])
    assert not v.passed and v.sandboxed is False


def test_fallback_timeout_kills_group():
    with pytest.warns(RuntimeWarning):
        sb = Sandbox(SandboxConfig(use_bwrap=False, **FAST))
    _assert_group_killed(sb)


@needs_bwrap
def test_timeout_kills_forked_child():
    sb = Sandbox(SandboxConfig(forbid_fork=False, **FAST))  # let it fork (bounded here)
    assert sb.sandboxed
    _assert_group_killed(sb)


def _assert_group_killed(sb: Sandbox) -> None:
    marker = "archer-child-" + uuid.uuid4().hex
    prog = (
        "import os, sys, time\n"
        "if os.fork() == 0:\n"
        f"    os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)', "
        f"'{marker}'])\n"
        "time.sleep(60)\n"
    )
    seen: list[int] = []

    def watch():
        end = time.monotonic() + 8
        while time.monotonic() < end and not seen:
            seen.extend(pids_with(marker))
            time.sleep(0.05)

    w = threading.Thread(target=watch)
    w.start()
    t0 = time.monotonic()
    res = sb.run(["-c", prog], wall_time_s=2.0)
    w.join()
    assert res.timed_out == "program" and time.monotonic() - t0 < 6
    assert seen, "the child never started"
    time.sleep(0.2)
    assert pids_with(marker) == []
    for pid in seen:
        assert not os.path.exists(f"/proc/{pid}") or pids_with(marker) == []


@needs_bwrap
def test_infinite_loop_times_out(grader):
    t0 = time.monotonic()
    v, _ = run_py(grader, "while True:\n    pass")
    assert v.reason == "timeout" and not v.passed
    assert time.monotonic() - t0 < 5


@needs_bwrap
@pytest.mark.parametrize("code", [
    "x = bytearray(8 * 1024 ** 3)\nprint(len(x))",
    "a = []\nwhile True:\n    a.append(' ' * 10 ** 7)",
])
def test_memory_bomb_fails(grader, code):
    v, _ = run_py(grader, code)
    assert not v.passed and v.reason in ("runtime_error", "timeout")
    assert grader.grade("```python\nprint(1)\n```", [{"input": "", "output": "1"}]).passed


@needs_bwrap
def test_fork_bomb_is_limited():
    cfg = SandboxConfig(max_processes=16, **FAST)
    sb = Sandbox(cfg)
    prog = (
        "import os, sys, time\n"
        "n = 0\n"
        "for _ in range(200):\n"  # bounded, so a broken limit cannot hurt the host
        "    try:\n"
        "        pid = os.fork()\n"
        "    except OSError:\n"
        "        break\n"
        "    if pid == 0:\n"
        "        time.sleep(3); os._exit(0)\n"
        "    n += 1\n"
        "print('forked', n, flush=True)\n"
        "os._exit(0)\n"
    )
    res = sb.run(["-c", prog])
    out = res.stdout.decode()
    assert out.startswith("forked"), (out, res.stderr)
    assert int(out.split()[1]) < cfg.max_processes


@needs_bwrap
def test_output_flood_is_capped():
    cfg = SandboxConfig(max_output_bytes=4096, **FAST)
    sb = Sandbox(cfg)
    res = sb.run(["-c", "import sys\nfor _ in range(2000): sys.stdout.write('x' * 10000)\n"
                        "sys.stderr.write('y' * 10 ** 6)"])
    assert len(res.stdout) == 4096 and res.stdout_truncated
    assert len(res.stderr) == 4096 and res.stderr_truncated
    g = CodeGrader(cfg)
    v = g.grade("```python\nwhile True: print('x' * 100000)\n```", [{"input": "", "output": "x"}])
    assert not v.passed and v.reason in ("failed", "runtime_error")


# --- hostile programs -------------------------------------------------------------------------

@needs_bwrap
def test_no_network(grader):
    code = (
        "import socket\n"
        "try:\n"
        "    s = socket.create_connection(('127.0.0.1', 22), timeout=1); print('CONNECTED')\n"
        "except OSError as e:\n"
        "    print('refused', e)\n"
        "try:\n"
        "    print('RESOLVED', socket.getaddrinfo('example.com', 80))\n"
        "except OSError as e:\n"
        "    print('noresolve', e)\n"
        "import os; print(os.listdir('/sys') if os.path.exists('/sys') else 'nosys')\n"
    )
    res = grader.sandbox.run(["-c", code])
    out = res.stdout.decode()
    assert "refused" in out and "noresolve" in out, out
    assert "CONNECTED" not in out and "RESOLVED" not in out


@needs_bwrap
def test_host_files_invisible(grader, tmp_path):
    secret = "canary-" + uuid.uuid4().hex
    canaries = [REPO / f".archer_canary_{uuid.uuid4().hex}",
                pathlib.Path.home() / f".archer_canary_{uuid.uuid4().hex}"]
    try:
        for c in canaries:
            c.write_text(secret)
        code = "import os\n"
        for c in canaries:
            code += (f"try:\n    print(open({str(c)!r}).read())\n"
                     "except OSError as e:\n    print('hidden', type(e).__name__)\n")
        code += (
            f"print('REPO' if os.path.exists({str(REPO)!r}) else 'norepo')\n"
            f"print('HOME' if os.path.exists({str(pathlib.Path.home() / '.bashrc')!r}) else 'h')\n"
            "print(os.path.exists('/etc/passwd'), os.path.exists('/etc/shadow'))\n"
        )
        res = grader.sandbox.run(["-c", code])
        out = res.stdout.decode()
        assert secret not in out and out.count("hidden") == 2, out
        assert "REPO" not in out and "HOME" not in out and "True" not in out
    finally:
        for c in canaries:
            c.unlink(missing_ok=True)


@needs_bwrap
def test_writes_outside_scratch_fail(grader):
    targets = ["/usr/archer_x", "/archer_x", "/etc/archer_x", str(REPO / "archer_x"),
               os.path.expanduser("~/archer_x")]
    code = "import os\nprint(os.getcwd())\nopen('scratch_ok', 'w').write('ok')\n"
    for t in targets:
        code += (f"try:\n    open({t!r}, 'w').write('x'); print('WROTE', {t!r})\n"
                 "except OSError:\n    print('denied')\n")
    res = grader.sandbox.run(["-c", code])
    out = res.stdout.decode()
    assert out.startswith("/scratch") and "WROTE" not in out and out.count("denied") == 5, out
    for t in targets:
        assert not os.path.exists(t)


@needs_bwrap
def test_no_env_secrets(grader, monkeypatch):
    monkeypatch.setenv("ARCHER_TEST_SECRET", "hunter2-" + uuid.uuid4().hex)
    res = grader.sandbox.run(["-c", "import os; print(dict(os.environ))"])
    out = res.stdout.decode()
    assert "ARCHER_TEST_SECRET" not in out and os.environ["ARCHER_TEST_SECRET"] not in out
    assert "'HOME': '/tmp'" in out


@needs_bwrap
def test_host_pids_invisible(grader):
    res = grader.sandbox.run(["-c", "import os; print(sorted(int(p) for p in os.listdir('/proc') "
                                    "if p.isdigit()), os.getpid())"])
    pids = eval(res.stdout.decode().split("]")[0] + "]")  # noqa: S307 (our own output)
    assert len(pids) <= 3 and max(pids) < 10


@needs_bwrap
def test_tmp_is_private(grader):
    name = f"archer_tmp_{uuid.uuid4().hex}"
    res = grader.sandbox.run(["-c", f"open('/tmp/{name}', 'w').write('x'); import os; "
                                    f"print(len(os.listdir('/tmp')))"])
    assert res.returncode == 0, res.stderr
    assert res.stdout.decode().strip() == "1"  # the host's /tmp content is not there
    assert not os.path.exists(f"/tmp/{name}")


@needs_bwrap
def test_threads_still_work(grader):
    v = grader.grade(
        "```python\nimport threading\nthreading.stack_size(2**26)\n"
        "def main():\n    print(int(input()) + 1)\n"
        "t = threading.Thread(target=main); t.start(); t.join()\n```",
        [{"input": "41", "output": "42"}],
    )
    assert v.passed and v.sandboxed


@needs_bwrap
def test_dev_is_read_only_but_devices_work(grader):
    code = ("import os\nopen('/dev/null', 'w').write('x')\nprint(len(open('/dev/urandom', 'rb')"
            ".read(4)))\n")
    for target in ("/dev/archer_x", "/dev/shm/archer_x"):
        code += (f"try:\n    open({target!r}, 'w').write('x'); print('WROTE')\n"
                 "except OSError:\n    print('denied')\n")
    res = grader.sandbox.run(["-c", code])
    assert res.stdout.decode().split() == ["4", "denied", "denied"], res


@needs_bwrap
@pytest.mark.parametrize("call", ["shmget", "msgget", "semget", "add_key"])
def test_workers_cannot_create_ipc_objects_or_keys(grader, call):
    # objects that would outlive the worker (and, in a warm sandbox, reach the next program)
    libc_call = {
        "shmget": "libc.shmget(0, 4096, 0o1600)", "msgget": "libc.msgget(0, 0o1600)",
        "semget": "libc.semget(0, 1, 0o1600)",
        "add_key": "libc.syscall(248 if os.uname().machine == 'x86_64' else 217, b'user', "
                   "b'archer', b'x', 1, -3)",
    }[call]
    code = (f"import ctypes, os\nlibc = ctypes.CDLL(None, use_errno=True)\nr = {libc_call}\n"
            "print('created' if r >= 0 else 'refused', ctypes.get_errno())\n")
    v = grader.grade("```python\n" + code + "\n```", [{"input": "", "output": "created 0"}])
    assert not v.passed and "refused 1" in v.detail, v  # EPERM
