"""Run untrusted Python programs in a sandbox (bubblewrap + rlimits).

Every program runs as its own process group (``start_new_session``).  When ``bwrap`` works
(probed once per interpreter and cached) the program runs inside a bubblewrap sandbox:

* new user/pid/net/ipc/uts/cgroup namespaces (``--unshare-all``): no network, no host pids;
* ``--die-with-parent``; a size-limited private ``/tmp`` and a scratch dir (``/scratch``,
  the cwd), both tmpfs that vanish with the sandbox; everything else is read-only;
* read-only binds of what the interpreter needs only: ``/usr/lib*``, ``/lib*`` (or their
  symlinks), the base interpreter's prefix (``sys.base_prefix``, never the venv) with its
  ``site-packages`` hidden unless allowed, the interpreter binary; minimal ``/proc``/``/dev``.
  Nothing else of the host exists inside: not ``$HOME``, the project, run dirs, ``/etc``;
* an environment built from scratch (``--clearenv``), the interpreter run with ``-I``;
* a seccomp filter forbids creating processes (threads stay allowed), since
  ``RLIMIT_NPROC`` counts every process of the host user and is ignored for root; see
  :attr:`SandboxConfig.forbid_fork`.

Resource limits are set in ``preexec_fn`` (address space, CPU seconds, file size, processes,
open files); wall-clock limits per program and per test (a test's clock restarts whenever the
harness reports progress) kill the whole process group with ``SIGKILL``; captured
stdout/stderr are read incrementally and truncated past ``max_output_bytes``.

Where bwrap is missing or fails its self-check, programs run with rlimits only: a loud warning
is emitted and every result carries ``sandboxed=False``.  That mode does not isolate files or
network; use it only for trusted code.

The program reports structured results as JSON lines on a dedicated pipe (its fd number is the
last argument); see :meth:`Sandbox.run`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import resource
import selectors
import shutil
import signal
import struct
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

SCRATCH = "/scratch"

#: environment of every sandboxed program (nothing is inherited from the host)
BASE_ENV = {
    "PATH": "/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "LC_ALL": "C.UTF-8",
    "PYTHONHASHSEED": "0",
    "PYTHONIOENCODING": "utf-8",
    "PYTHONDONTWRITEBYTECODE": "1",
    "HOME": "/tmp",
    "TMPDIR": "/tmp",
}


@dataclass(frozen=True)
class SandboxConfig:
    """Limits of one sandboxed program run.  All numbers must be positive."""

    memory_mb: int = 2048  # RLIMIT_AS per process
    cpu_time_s: float = 60.0  # RLIMIT_CPU cap (also bounded by the program's wall limit)
    wall_time_s: float = 120.0  # wall clock for one program run (all tests of a problem)
    test_timeout_s: float = 6.0  # wall clock per test (LiveCodeBench's default)
    max_output_bytes: int = 1 << 20  # cap on captured stdout/stderr (and per-test output)
    max_file_mb: int = 16  # RLIMIT_FSIZE
    max_processes: int = 64  # RLIMIT_NPROC (the kernel counts the host user's processes)
    max_open_files: int = 64  # RLIMIT_NOFILE
    tmpfs_mb: int = 64  # size of the private /tmp and of the scratch dir
    max_workers: int = 4  # concurrent programs in CodeGrader.grade_batch
    use_bwrap: bool | None = None  # None: use bwrap when it passes its self-check
    # seccomp filter forbidding new processes (threads stay allowed). When False (or without
    # bwrap) RLIMIT_NPROC=max_processes applies instead, but the kernel counts all processes of
    # the host user against it and ignores it for root.
    forbid_fork: bool = True
    allow_site_packages: bool = False  # expose the base interpreter's site-packages
    python: str | None = None  # interpreter; default: the base (non-venv) interpreter

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or value is None or isinstance(value, str):
                continue
            if not isinstance(value, (int, float)):
                raise ValueError(f"SandboxConfig.{f.name} must be a number, got {value!r}")
            if value <= 0:
                raise ValueError(f"SandboxConfig.{f.name} must be > 0, got {value!r}")
        if self.max_workers != int(self.max_workers):
            raise ValueError("SandboxConfig.max_workers must be an integer")


@dataclass
class RunResult:
    """What one program run produced."""

    returncode: int | None
    stdout: bytes = b""
    stderr: bytes = b""
    records: list[dict] = field(default_factory=list)  # JSON lines from the results pipe
    timed_out: str | None = None  # None, "test" or "program"
    stopped: bool = False  # the on_record callback asked to stop (and the group was killed)
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    records_truncated: bool = False
    sandboxed: bool = False
    wall_s: float = 0.0
    error: str | None = None  # the sandbox itself failed (not the program)


def base_python() -> str:
    """The base interpreter (outside any virtualenv), resolved."""
    exe = getattr(sys, "_base_executable", None) or ""
    venv = sys.prefix != sys.base_prefix
    if not exe or not os.path.exists(exe) or (
        venv and os.path.realpath(exe).startswith(os.path.realpath(sys.prefix) + os.sep)
    ):
        ver = f"python{sys.version_info.major}.{sys.version_info.minor}"
        exe = os.path.join(sys.base_prefix, "bin", ver)
    return os.path.realpath(exe)


# --- seccomp: forbid process creation (fork/vfork/clone without CLONE_THREAD/clone3) ---------

_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
# (fork, vfork, clone, clone3) syscall numbers; -1 where the syscall does not exist
_NR = {"x86_64": (57, 58, 56, 435), "aarch64": (-1, -1, 220, 435)}


def _seccomp_no_fork() -> bytes | None:
    """A classic-BPF seccomp program (bytes of ``struct sock_filter[]``) or None (arch)."""
    arch = os.uname().machine
    if arch not in _AUDIT_ARCH:
        return None
    fork, vfork, clone, clone3 = _NR[arch]
    ld, jeq, jge, jset, ret = 0x20, 0x15, 0x35, 0x45, 0x06
    allow, eperm, enosys = 0x7FFF0000, 0x00050000 | 1, 0x00050000 | 38
    clone_thread = 0x00010000

    def ins(code, k, jt=0, jf=0):
        return (code, jt, jf, k)

    prog = [
        ins(ld, 4),  # arch
        ins(jeq, _AUDIT_ARCH[arch], 1, 0),
        ins(ret, eperm),  # foreign ABI (e.g. int 0x80): refuse everything
        ins(ld, 0),  # syscall nr
        ins(jge, 0x40000000, 0, 1),  # x32 ABI
        ins(ret, eperm),
    ]
    for nr in (fork, vfork):
        if nr >= 0:
            prog += [ins(jeq, nr, 0, 1), ins(ret, eperm)]
    prog += [
        ins(jeq, clone3, 0, 1),
        ins(ret, enosys),  # libc falls back to clone(), which we can inspect
        ins(jeq, clone, 1, 0),
        ins(ret, allow),
        ins(ld, 16),  # clone flags (args[0], low word)
        ins(jset, clone_thread, 0, 1),
        ins(ret, allow),
        ins(ret, eperm),
    ]
    return b"".join(struct.pack("HBBI", *p) for p in prog)


# --- bwrap probe -----------------------------------------------------------------------------

_PROBE_LOCK = threading.Lock()
_PROBE_CACHE: dict[tuple, tuple[bool, str]] = {}


def _ro_system_args() -> list[str]:
    args: list[str] = []
    for d in ("/usr/lib", "/usr/lib64", "/usr/lib32", "/usr/libx32"):
        if os.path.isdir(d) and not os.path.islink(d):
            args += ["--ro-bind", d, d]
    for d in ("/lib", "/lib64", "/lib32", "/libx32"):
        if os.path.islink(d):
            args += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            args += ["--ro-bind", d, d]
    return args


class Sandbox:
    """Runs ``python -I <args>`` sandboxed; one instance per config (thread-safe)."""

    def __init__(self, config: SandboxConfig | None = None) -> None:
        self.config = config or SandboxConfig()
        self.python = os.path.realpath(self.config.python or base_python())
        self.bwrap = shutil.which("bwrap") if self.config.use_bwrap is not False else None
        self._seccomp = _seccomp_no_fork() if self.config.forbid_fork else None
        if self.config.forbid_fork and self._seccomp is None:
            logger.warning("no seccomp filter for %s: forks limited by RLIMIT_NPROC only",
                           os.uname().machine)
        self.sandboxed = False
        why = "disabled by SandboxConfig(use_bwrap=False)"
        if self.bwrap:
            ok, why = self._probe()
            self.sandboxed = ok
        elif self.config.use_bwrap is not False:
            why = "bwrap not found on PATH"
        if self.config.use_bwrap and not self.sandboxed:
            raise RuntimeError(f"use_bwrap=True but bubblewrap is unusable: {why}")
        if not self.sandboxed:
            msg = (
                f"UNSANDBOXED code execution ({why}): programs run with rlimits only and can "
                "read files and use the network of this machine"
            )
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
            logger.warning(msg)

    # -- command line ----------------------------------------------------------------------

    def _bwrap_args(self, seccomp_fd: int | None) -> list[str]:
        cfg = self.config
        size = str(cfg.tmpfs_mb * 1024 * 1024)
        prefix = os.path.realpath(sys.base_prefix)
        if self.config.python:
            prefix = os.path.dirname(os.path.dirname(self.python))
        args = [self.bwrap or "bwrap", "--unshare-all", "--unshare-user", "--disable-userns",
                "--die-with-parent", "--clearenv"]
        for k, v in BASE_ENV.items():
            args += ["--setenv", k, v]
        args += _ro_system_args()
        args += ["--ro-bind", prefix, prefix]
        if not self.python.startswith(prefix + os.sep):
            args += ["--ro-bind", self.python, self.python]
        if not cfg.allow_site_packages:
            for key in ("purelib", "platlib"):
                sp = os.path.realpath(sysconfig.get_paths(vars={"base": prefix, "platbase": prefix})[key])
                if sp.startswith(prefix + os.sep) and os.path.isdir(sp):
                    args += ["--tmpfs", sp, "--remount-ro", sp]
        args += ["--proc", "/proc", "--dev", "/dev",
                 "--size", size, "--tmpfs", "/tmp",
                 "--size", size, "--tmpfs", SCRATCH, "--chdir", SCRATCH,
                 "--remount-ro", "/"]  # the sandbox's own root tmpfs: not writable either
        if seccomp_fd is not None:
            args += ["--seccomp", str(seccomp_fd)]
        return args

    def _probe(self) -> tuple[bool, str]:
        key = (self.bwrap, self.python, self.config.allow_site_packages, self._seccomp is not None)
        with _PROBE_LOCK:
            if key not in _PROBE_CACHE:
                res = self._run(["-c", "import sys, os; print('ok', os.getpid())"], b"",
                                use_bwrap=True, probe=True)
                out = res.stdout.decode(errors="replace").split()
                ok = res.returncode == 0 and out[:1] == ["ok"] and out[1:2] == ["2"]
                why = "" if ok else (
                    f"self-check failed (rc={res.returncode}, error={res.error}, "
                    f"stderr={res.stderr[-300:].decode(errors='replace')!r})"
                )
                _PROBE_CACHE[key] = (ok, why)
            return _PROBE_CACHE[key]

    def _preexec(self, cpu_s: int, nproc: bool) -> Callable[[], None]:
        cfg = self.config
        limits = [
            (resource.RLIMIT_AS, cfg.memory_mb * 1024 * 1024),
            (resource.RLIMIT_CPU, cpu_s),
            (resource.RLIMIT_FSIZE, cfg.max_file_mb * 1024 * 1024),
            (resource.RLIMIT_NOFILE, cfg.max_open_files),
            (resource.RLIMIT_CORE, 0),
        ]
        if nproc:
            limits.append((resource.RLIMIT_NPROC, cfg.max_processes))

        def preexec() -> None:  # runs in the child between fork and exec: keep it minimal
            for what, value in limits:
                try:
                    resource.setrlimit(what, (value, value))
                except (ValueError, OSError):
                    pass

        return preexec

    # -- running ---------------------------------------------------------------------------

    def run(
        self,
        args: list[str],
        stdin: bytes = b"",
        on_record: Callable[[dict], bool] | None = None,
        wall_time_s: float | None = None,
        test_timeout_s: float | None = None,
    ) -> RunResult:
        """Run ``python -I *args <results-fd>`` and collect what it reports.

        The program may write JSON lines to the results fd; each parsed line is appended to
        ``records`` and passed to ``on_record``, which returns False to stop the run (the
        process group is killed).  ``test_timeout_s`` restarts with every record.
        """
        return self._run(args, stdin, self.sandboxed, on_record=on_record,
                         wall_time_s=wall_time_s, test_timeout_s=test_timeout_s)

    def _run(self, args, stdin, use_bwrap, on_record=None, wall_time_s=None,
             test_timeout_s=None, probe=False) -> RunResult:
        cfg = self.config
        wall = min(wall_time_s or cfg.wall_time_s, cfg.wall_time_s)
        if probe:
            wall = 20.0
        test_wall = test_timeout_s + 1.0 if test_timeout_s else None
        cpu_s = max(1, int(min(cfg.cpu_time_s, wall)) + 1)
        res_r, res_w = os.pipe()
        pass_fds = [res_w]
        seccomp_fd = None
        scratch = None
        if use_bwrap:
            if self._seccomp is not None:
                seccomp_fd = os.memfd_create("archer-seccomp", 0)
                os.write(seccomp_fd, self._seccomp)
                os.lseek(seccomp_fd, 0, os.SEEK_SET)
                pass_fds.append(seccomp_fd)
            cmd = self._bwrap_args(seccomp_fd) + [self.python, "-I", *args]
            cwd = "/"
            env = dict(BASE_ENV)
        else:
            scratch = tempfile.mkdtemp(prefix="archer-sbx-")
            cmd = [self.python, "-I", *args]
            cwd = scratch
            env = dict(BASE_ENV, HOME=scratch, TMPDIR=scratch)
        if not probe:
            cmd.append(str(res_w))
        result = RunResult(returncode=None, sandboxed=bool(use_bwrap))
        t0 = time.monotonic()
        try:
            proc = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                cwd=cwd, env=env, pass_fds=pass_fds, start_new_session=True,
                preexec_fn=self._preexec(cpu_s, nproc=seccomp_fd is None), close_fds=True,
            )
        except OSError as e:
            os.close(res_r)
            os.close(res_w)
            if seccomp_fd is not None:
                os.close(seccomp_fd)
            result.error = f"cannot start sandbox: {e}"
            if scratch:
                shutil.rmtree(scratch, ignore_errors=True)
            return result
        os.close(res_w)
        if seccomp_fd is not None:
            os.close(seccomp_fd)
        try:
            self._communicate(proc, stdin, res_r, result, on_record, t0, wall, test_wall)
        finally:
            _killpg(proc)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                result.error = "process did not exit after SIGKILL"
            result.returncode = proc.returncode
            result.wall_s = time.monotonic() - t0
            os.close(res_r)
            for s in (proc.stdin, proc.stdout, proc.stderr):
                try:
                    s.close()
                except OSError:
                    pass
            if scratch:
                shutil.rmtree(scratch, ignore_errors=True)
        return result

    def _communicate(self, proc, stdin, res_r, result, on_record, t0, wall, test_wall):
        cap = self.config.max_output_bytes
        rec_cap = 4 * cap + (1 << 20)

        def feed() -> None:
            try:
                proc.stdin.write(stdin)
            except (BrokenPipeError, OSError, ValueError):
                pass
            finally:
                try:
                    proc.stdin.close()
                except (BrokenPipeError, OSError):
                    pass

        writer = threading.Thread(target=feed, daemon=True)
        writer.start()
        sel = selectors.DefaultSelector()
        bufs = {"out": bytearray(), "err": bytearray(), "rec": bytearray()}
        sel.register(proc.stdout, selectors.EVENT_READ, "out")
        sel.register(proc.stderr, selectors.EVENT_READ, "err")
        sel.register(res_r, selectors.EVENT_READ, "rec")
        rec_total = 0
        last_progress = t0
        exited_at = None
        try:
            while sel.get_map():
                now = time.monotonic()
                if now - t0 > wall:
                    result.timed_out = "program"
                    return
                if test_wall is not None and now - last_progress > test_wall:
                    result.timed_out = "test"
                    return
                if exited_at is None and proc.poll() is not None:
                    exited_at = now
                if exited_at is not None and now - exited_at > 1.0:
                    return  # something else holds the pipes open; it gets killed
                deadline = t0 + wall
                if test_wall is not None:
                    deadline = min(deadline, last_progress + test_wall)
                timeout = max(0.0, min(deadline - now, 0.2))
                for key, _ in sel.select(timeout):
                    fd = key.fd if key.data == "rec" else key.fileobj.fileno()
                    try:
                        chunk = os.read(fd, 65536)
                    except OSError:
                        chunk = b""
                    if not chunk:
                        sel.unregister(key.fileobj)
                        continue
                    name = key.data
                    if name == "rec":
                        rec_total += len(chunk)
                        if rec_total > rec_cap:
                            result.records_truncated = True
                            return
                        bufs["rec"] += chunk
                        while b"\n" in bufs["rec"]:
                            line, _, rest = bytes(bufs["rec"]).partition(b"\n")
                            bufs["rec"] = bytearray(rest)
                            last_progress = time.monotonic()
                            rec = _parse_record(line)
                            if rec is None:
                                continue
                            result.records.append(rec)
                            if on_record is not None and on_record(rec) is False:
                                result.stopped = True
                                return
                    else:
                        buf = bufs[name]
                        room = cap - len(buf)
                        if room > 0:
                            buf += chunk[:room]
                        if len(chunk) > room:
                            setattr(result, f"std{name}_truncated", True)
        finally:
            sel.close()
            result.stdout = bytes(bufs["out"])
            result.stderr = bytes(bufs["err"])


def _parse_record(line: bytes) -> dict | None:
    try:
        rec = json.loads(line)
    except ValueError:
        return None
    return rec if isinstance(rec, dict) else None


def _killpg(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
