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

``/dev`` is remounted read-only (device nodes still work): besides /tmp and the scratch dir,
nothing in the sandbox is writable.

**Warm sandboxes** (:class:`WarmSandbox`, :class:`WarmPool`; used by the code grader under
bwrap unless ``SandboxConfig(warm_pool=False)``): the same sandbox, started once, whose only
process is the code harness's *zygote*; it forks a fresh judge per program (which forks the
workers that run candidate code, as in a cold sandbox), so no program pays for bwrap and
interpreter start-up.  What this adds to the threat model, and how it is contained:

* programs share a sandbox one after the other, never at the same time;
* state one program could leave for the next: processes (workers cannot create any; after
  every run the zygote, alone with bwrap's init in the pid namespace and subreaper of all,
  SIGKILLs and reaps everything else, and a run after which anything had outlived the judge
  is not clean), files (/tmp and the scratch dir are emptied and their modes restored; /dev
  is read-only and checked), SysV/POSIX IPC objects and keyrings (workers may not create them;
  SysV objects are checked), bytes left on the input pipe (checked).  Whatever the check
  finds, or a time-out, a failed judge or a broken protocol, the whole sandbox (its process
  group, and so its pid namespace) is killed and a fresh one started;
* memory: the zygote never reads a run's data (the judge it forked in advance reads its
  spec and secrets from the pipe), so the memory every later judge and worker inherits holds
  no earlier program, input, test code or nonce; ``random`` is reseeded per judge; the zygote
  and judges are non-dumpable and workers cannot ptrace or signal them;
* nonces are drawn per program by the host (``secrets``) and sent with the run; a judge
  learns only its own, and its records are only accepted during its own run (the zygote's
  end-of-run report closes a run before the next one is sent);
* rlimits: address space, file size and open files are inherited from the sandbox, per
  process as before; the CPU limit is set per program in the judge and in its worker (the
  zygote, which lives on, carries none); a sandbox is replaced after ``pool_recycle`` runs.

What the pool does not change: the kernel is still shared, and a kernel exploit from a
worker would now also reach later programs of that sandbox (until it is recycled).
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
from concurrent.futures import ThreadPoolExecutor
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
    # seccomp filters: raw programs (Sandbox.run) under bwrap may not create processes
    # (threads stay allowed); the code harness's workers get worker_seccomp_filter() (no
    # processes, no signals to others, no ptrace, no non-unix sockets, ...), with or without
    # bwrap. When False, RLIMIT_NPROC=max_processes applies instead, but the kernel counts all
    # processes of the host user against it and ignores it for root.
    forbid_fork: bool = True
    allow_site_packages: bool = False  # expose the base interpreter's site-packages
    # CodeGrader under bwrap: keep warm sandboxes (a zygote per sandbox forks one judge per
    # program; see WarmSandbox) instead of starting bwrap + Python per program
    warm_pool: bool = True
    pool_recycle: int = 500  # programs per warm sandbox before it is replaced anyway
    python: str | None = None  # interpreter; default: the base (non-venv) interpreter
    # trusted tools that run model code in the sandbox (the evalplus adapter): directories
    # bound read-only at the same path (e.g. a virtualenv's site-packages), and a private
    # writable /dev/shm for multiprocessing's semaphores
    extra_ro_paths: tuple[str, ...] = ()
    shm: bool = False

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, (bool, str, tuple)) or value is None:
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


# --- seccomp filters ---------------------------------------------------------------------------

_AUDIT_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}
# syscall numbers per architecture; -1 where the syscall does not exist
_NR = {
    "x86_64": dict(
        fork=57, vfork=58, clone=56, clone3=435, kill=62, tkill=200, tgkill=234,
        rt_sigqueueinfo=129, rt_tgsigqueueinfo=297, ptrace=101, process_vm_readv=310,
        process_vm_writev=311, pidfd_open=434, pidfd_getfd=438, pidfd_send_signal=424,
        setsid=112, setpgid=109, io_uring_setup=425, io_uring_enter=426, io_uring_register=427,
        socket=41, unshare=272, setns=308, bpf=321, perf_event_open=298, kcmp=312,
        userfaultfd=323, shmget=29, semget=64, msgget=68, mq_open=240, add_key=248,
        request_key=249, keyctl=250),
    "aarch64": dict(
        fork=-1, vfork=-1, clone=220, clone3=435, kill=129, tkill=130, tgkill=131,
        rt_sigqueueinfo=138, rt_tgsigqueueinfo=240, ptrace=117, process_vm_readv=270,
        process_vm_writev=271, pidfd_open=434, pidfd_getfd=438, pidfd_send_signal=424,
        setsid=157, setpgid=154, io_uring_setup=425, io_uring_enter=426, io_uring_register=427,
        socket=198, unshare=97, setns=268, bpf=280, perf_event_open=241, kcmp=272,
        userfaultfd=282, shmget=194, semget=190, msgget=186, mq_open=180, add_key=217,
        request_key=218, keyctl=219),
}
_LD, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06
_ALLOW, _EPERM, _ENOSYS = 0x7FFF0000, 0x00050000 | 1, 0x00050000 | 38
_CLONE_THREAD = 0x00010000
_ARG0_LO, _ARG0_HI = 16, 20  # struct seccomp_data: nr, arch, ip (8 bytes), args[6]
#: stands for the worker's own pid in :func:`worker_seccomp_filter` (patched by the harness)
PID_PLACEHOLDER = 0x7E57A11D
_AF_UNIX = 1


def _ins(code, k, jt=0, jf=0):
    return (code, jt, jf, k)


def _prologue(arch: str) -> list:
    return [
        _ins(_LD, 4),  # arch
        _ins(_JEQ, _AUDIT_ARCH[arch], 1, 0),
        _ins(_RET, _EPERM),  # foreign ABI (e.g. int 0x80): refuse everything
        _ins(_LD, 0),  # syscall nr
        _ins(_JGE, 0x40000000, 0, 1),  # x32 ABI
        _ins(_RET, _EPERM),
    ]


def _no_process_rules(nr: dict) -> list:
    """fork/vfork refused, clone3 -> ENOSYS (libc falls back to clone), clone only for
    threads.  The accumulator must hold the syscall number; it is reloaded after."""
    prog = []
    for name in ("fork", "vfork"):
        if nr[name] >= 0:
            prog += [_ins(_JEQ, nr[name], 0, 1), _ins(_RET, _EPERM)]
    prog += [
        _ins(_JEQ, nr["clone3"], 0, 1),
        _ins(_RET, _ENOSYS),
        _ins(_JEQ, nr["clone"], 0, 4),
        _ins(_LD, _ARG0_LO),  # clone flags (args[0], low word)
        _ins(_JSET, _CLONE_THREAD, 0, 1),
        _ins(_RET, _ALLOW),
        _ins(_RET, _EPERM),
    ]
    return prog


def _pack(prog: list) -> bytes:
    return b"".join(struct.pack("HBBI", *p) for p in prog)


def _seccomp_no_fork() -> bytes | None:
    """A classic-BPF seccomp program (bytes of ``struct sock_filter[]``) that forbids new
    processes (threads stay allowed), or None on an unknown architecture."""
    arch = os.uname().machine
    if arch not in _AUDIT_ARCH:
        return None
    return _pack(_prologue(arch) + _no_process_rules(_NR[arch]) + [_ins(_RET, _ALLOW)])


def worker_seccomp_filter() -> bytes | None:
    """The filter of the code harness's worker processes (see ``archer.rewards._harness``).

    On top of :func:`_seccomp_no_fork`: signals only to the worker itself (``kill``,
    ``tgkill``, ``tkill``, ``rt_(tg)sigqueueinfo`` whose first argument is
    :data:`PID_PLACEHOLDER`, which the worker replaces with its pid), and EPERM for ptrace,
    process_vm_readv/writev, pidfd_*, setsid, setpgid, io_uring, unshare, setns, bpf,
    perf_event_open, kcmp, userfaultfd, SysV/POSIX IPC objects (shmget, semget, msgget,
    mq_open: they would outlive the process), keyrings (add_key, request_key, keyctl) and
    sockets other than AF_UNIX.  None on an unknown architecture.
    """
    arch = os.uname().machine
    if arch not in _AUDIT_ARCH:
        return None
    nr = _NR[arch]
    prog = _prologue(arch)
    for name in ("ptrace", "process_vm_readv", "process_vm_writev", "pidfd_open",
                 "pidfd_getfd", "pidfd_send_signal", "setsid", "setpgid", "io_uring_setup",
                 "io_uring_enter", "io_uring_register", "unshare", "setns", "bpf",
                 "perf_event_open", "kcmp", "userfaultfd", "shmget", "semget", "msgget",
                 "mq_open", "add_key", "request_key", "keyctl"):
        prog += [_ins(_JEQ, nr[name], 0, 1), _ins(_RET, _EPERM)]
    for name in ("kill", "tkill", "tgkill", "rt_sigqueueinfo", "rt_tgsigqueueinfo"):
        prog += [
            _ins(_JEQ, nr[name], 0, 6),
            _ins(_LD, _ARG0_HI),
            _ins(_JEQ, 0, 0, 2),
            _ins(_LD, _ARG0_LO),
            _ins(_JEQ, PID_PLACEHOLDER, 1, 0),
            _ins(_RET, _EPERM),
            _ins(_RET, _ALLOW),
        ]
    prog += [
        _ins(_JEQ, nr["socket"], 0, 4),
        _ins(_LD, _ARG0_LO),
        _ins(_JEQ, _AF_UNIX, 1, 0),
        _ins(_RET, _EPERM),
        _ins(_RET, _ALLOW),
    ]
    prog += _no_process_rules(nr) + [_ins(_RET, _ALLOW)]
    return _pack(prog)


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
        self._nobody_ok: bool | None = None
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
        args += ["--proc", "/proc", "--dev", "/dev"]
        if cfg.shm:
            args += ["--size", size, "--tmpfs", "/dev/shm"]
        args += ["--size", size, "--tmpfs", "/tmp",
                 "--size", size, "--tmpfs", SCRATCH, "--chdir", SCRATCH]
        for path in cfg.extra_ro_paths:  # after the tmpfs mounts, which would hide them
            real = os.path.realpath(path)
            args += ["--ro-bind", real, real]
        args += ["--remount-ro", "/dev",  # no files in /dev or /dev/shm (device nodes work)
                 "--remount-ro", "/"]  # the sandbox's own root tmpfs: not writable either
        if seccomp_fd is not None:
            args += ["--seccomp", str(seccomp_fd)]
        return args

    def _probe(self) -> tuple[bool, str]:
        key = (self.bwrap, self.python, self.config.allow_site_packages, self._seccomp is not None,
               self.config.extra_ro_paths, self.config.shm)
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

    def _preexec(self, cpu_s: int | None, nproc: bool) -> Callable[[], None]:
        cfg = self.config
        limits = [
            (resource.RLIMIT_AS, cfg.memory_mb * 1024 * 1024),
            (resource.RLIMIT_FSIZE, cfg.max_file_mb * 1024 * 1024),
            (resource.RLIMIT_NOFILE, cfg.max_open_files),
            (resource.RLIMIT_CORE, 0),
        ]
        if cpu_s is not None:  # None: a warm sandbox, whose judges set it per program
            limits.append((resource.RLIMIT_CPU, cpu_s))
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
        secret: bytes | None = None,
        own_seccomp: bool = False,
    ) -> RunResult:
        """Run ``python -I *args <results-fd> [<secret-fd>]`` and collect what it reports.

        The program may write JSON lines to the results fd; each parsed line is appended to
        ``records`` and passed to ``on_record``, which returns False to stop the run (the
        process group is killed).  ``test_timeout_s`` restarts with every record.
        ``secret`` (if given) is readable on a second pipe whose fd number is the last argument.
        ``own_seccomp``: the program installs its own filters in the processes that need them
        (the code harness does, per worker), so neither bwrap's no-fork filter nor
        ``RLIMIT_NPROC`` is applied to the program itself.
        """
        return self._run(args, stdin, self.sandboxed, on_record=on_record,
                         wall_time_s=wall_time_s, test_timeout_s=test_timeout_s,
                         secret=secret, own_seccomp=own_seccomp)

    @property
    def drop_uid(self) -> int | None:
        """Unsandboxed and root: the uid (nobody) the code harness's workers switch to, when
        nobody can still read the interpreter's standard library; else None."""
        if self.sandboxed or os.geteuid() != 0:
            return None
        if self._nobody_ok is None:
            stdlib = os.path.dirname(os.__file__) if self.config.python is None else None
            self._nobody_ok = stdlib is not None and _world_readable(stdlib)
            if not self._nobody_ok:
                logger.warning("code workers keep uid 0 (without capabilities): nobody cannot "
                               "read the interpreter's standard library")
        return 65534 if self._nobody_ok else None

    def _run(self, args, stdin, use_bwrap, on_record=None, wall_time_s=None,
             test_timeout_s=None, probe=False, secret=None, own_seccomp=False) -> RunResult:
        cfg = self.config
        wall = min(wall_time_s or cfg.wall_time_s, cfg.wall_time_s)
        if probe:
            wall = 20.0
        test_wall = test_timeout_s + 1.0 if test_timeout_s else None
        cpu_s = max(1, int(min(cfg.cpu_time_s, wall)) + 1)
        res_r, res_w = os.pipe()
        pass_fds = [res_w]
        sec_r = sec_w = None
        if secret is not None:
            sec_r, sec_w = os.pipe()
            pass_fds.append(sec_r)
        seccomp_fd = None
        scratch = None
        if use_bwrap:
            if self._seccomp is not None and not own_seccomp:
                seccomp_fd = os.memfd_create("archer-seccomp", 0)
                os.write(seccomp_fd, self._seccomp)
                os.lseek(seccomp_fd, 0, os.SEEK_SET)
                pass_fds.append(seccomp_fd)
            cmd = self._bwrap_args(seccomp_fd) + [self.python, "-I", *args]
            cwd = "/"
            env = dict(BASE_ENV)
        else:
            scratch = tempfile.mkdtemp(prefix="archer-sbx-")
            if self.drop_uid is not None:
                os.chmod(scratch, 0o777)  # the workers run as nobody
            cmd = [self.python, "-I", *args]
            cwd = scratch
            env = dict(BASE_ENV, HOME=scratch, TMPDIR=scratch)
        if not probe:
            cmd.append(str(res_w))
            if sec_r is not None:
                cmd.append(str(sec_r))
        result = RunResult(returncode=None, sandboxed=bool(use_bwrap))
        t0 = time.monotonic()
        try:
            proc = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                cwd=cwd, env=env, pass_fds=pass_fds, start_new_session=True,
                preexec_fn=self._preexec(cpu_s, nproc=seccomp_fd is None and not own_seccomp),
                close_fds=True,
            )
        except OSError as e:
            for fd in (res_r, res_w, seccomp_fd, sec_r, sec_w):
                if fd is not None:
                    os.close(fd)
            result.error = f"cannot start sandbox: {e}"
            if scratch:
                shutil.rmtree(scratch, ignore_errors=True)
            return result
        os.close(res_w)
        for fd in (seccomp_fd, sec_r):
            if fd is not None:
                os.close(fd)
        if sec_w is not None:
            threading.Thread(target=_write_and_close, args=(sec_w, secret), daemon=True).start()
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
        line_cap = 8 * cap + (1 << 20)  # one record (JSON escapes can inflate the output)

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
                        if len(bufs["rec"]) > line_cap:
                            result.records_truncated = True
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


def _world_readable(path: str) -> bool:
    """Every directory from / to ``path`` is searchable by others, and ``path`` readable."""
    path = os.path.realpath(path)
    parts = path.split(os.sep)
    for i in range(1, len(parts) + 1):
        d = os.sep.join(parts[:i]) or os.sep
        try:
            mode = os.stat(d).st_mode
        except OSError:
            return False
        if not mode & 0o001 or (d == path and not mode & 0o004):
            return False
    return True


def _write_and_close(fd: int, data: bytes) -> None:
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except OSError:
        pass
    finally:
        os.close(fd)


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


# --- warm sandboxes ----------------------------------------------------------------------------

_SPAWNER: ThreadPoolExecutor | None = None
_SPAWNER_PID = 0
_SPAWNER_LOCK = threading.Lock()


def _spawn(cmd: list[str], **kw) -> subprocess.Popen:
    """``Popen`` on a thread that lives as long as the process: bwrap's ``--die-with-parent``
    (``PR_SET_PDEATHSIG``) fires when the *thread* that started it exits, and a warm sandbox
    outlives the grading thread that needed it first."""
    global _SPAWNER, _SPAWNER_PID
    with _SPAWNER_LOCK:
        if _SPAWNER is None or _SPAWNER_PID != os.getpid():  # threads do not survive fork()
            _SPAWNER = ThreadPoolExecutor(1, thread_name_prefix="archer-sandbox-spawner")
            _SPAWNER_PID = os.getpid()
    return _SPAWNER.submit(subprocess.Popen, cmd, **kw).result()


class WarmSandbox:
    """One long-lived bubblewrap sandbox whose only process is the code harness's *zygote*
    (``archer.rewards._harness.zygote_main``); it forks a fresh judge per program.

    Same namespaces, mounts, environment and rlimits as :meth:`Sandbox.run` (the CPU limit is
    set per program, in the forked judge: RLIMIT_CPU counts a process's own time, so the zygote
    does not carry it).  Per program (:meth:`run`): frame A (sequence number, CPU seconds,
    public spec) and frame B (secrets, read by the judge only) go down the zygote's stdin;
    the judge's records come back on the results pipe, the judge's stdout/stderr on the
    zygote's; the run ends with the zygote's ``{"z": seq}`` record, written after the judge is
    gone, every other process of the namespace killed and reaped, /tmp and the scratch dir
    wiped and checked.  A sandbox is :attr:`healthy` only while every run ended that way
    (clean, judge exited 0 or was stopped on request, within the time limits); the pool
    replaces it otherwise, and after ``pool_recycle`` runs.
    """

    def __init__(self, sandbox: Sandbox, args: list[str], boot: bytes,
                 preload: tuple[str, ...] = (), init: dict | None = None) -> None:
        if not sandbox.sandboxed:
            raise RuntimeError("warm sandboxes need bubblewrap (the zygote relies on its own "
                               "pid namespace)")
        self.sandbox = sandbox
        self.healthy = False
        self.runs = 0
        self.why = ""
        self._res_r, res_w = os.pipe()
        stop_r, self._stop_w = os.pipe()
        os.set_blocking(self._stop_w, False)
        cmd = sandbox._bwrap_args(None) + [
            sandbox.python, "-I", *args, "--zygote", str(res_w), str(stop_r), ",".join(preload),
            json.dumps(init or {})]
        t0 = time.monotonic()
        try:
            self.proc = _spawn(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                cwd="/", env=dict(BASE_ENV), pass_fds=[res_w, stop_r], start_new_session=True,
                preexec_fn=sandbox._preexec(None, nproc=False), close_fds=True, bufsize=0)
        except OSError as e:
            self.proc = None
            self.why = f"cannot start sandbox: {e}"
            return
        finally:
            os.close(res_w)
            os.close(stop_r)
        self._ctl = self.proc.stdin.fileno()
        self._out = self.proc.stdout.fileno()
        self._err = self.proc.stderr.fileno()
        for fd in (self._out, self._err):
            os.set_blocking(fd, False)
        self._buf = bytearray()
        self._pending: int | None = None  # the run whose zygote report is outstanding
        self._final: dict | None = None
        self._discard = False
        self._writer: threading.Thread | None = None
        self._out_buf, self._err_buf = bytearray(), bytearray()
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._res_r, selectors.EVENT_READ, "rec")
        self._sel.register(self._out, selectors.EVENT_READ, "out")
        self._sel.register(self._err, selectors.EVENT_READ, "err")
        try:
            if boot:
                _write_all_fd(self._ctl, boot)
            rec = self._next_record(t0 + 30.0)
        except OSError as e:
            rec = {"error": str(e)}
        if rec is None or rec.get("z") != "ready":
            err = self._drain(self._err, 2000).decode("utf-8", "replace")
            self.why = f"zygote did not start: {rec} {err}".strip()
            self.close()
            return
        self.healthy = True
        self.start_s = time.monotonic() - t0

    def _next_record(self, deadline: float) -> dict | None:
        """The next record line of the results pipe before ``deadline`` (None: timeout/EOF).
        Lines that are not JSON objects are skipped."""
        while True:
            while b"\n" in self._buf:
                line, _, rest = bytes(self._buf).partition(b"\n")
                self._buf = bytearray(rest)
                rec = _parse_record(line)
                if rec is not None:
                    return rec
            left = deadline - time.monotonic()
            if left <= 0 or not _wait_readable(self._res_r, left):
                return None
            chunk = os.read(self._res_r, 65536)
            if not chunk:
                return None
            self._buf += chunk

    @staticmethod
    def _drain(fd: int, cap: int) -> bytes:
        out = bytearray()
        while True:
            try:
                chunk = os.read(fd, 65536)
            except (BlockingIOError, OSError):
                break
            if not chunk:
                break
            if len(out) < cap:
                out += chunk[: cap - len(out)]
        return bytes(out)

    def run(self, spec: bytes, secret: bytes, cpu_s: int,
            on_record: Callable[[dict], bool] | None = None, wall_time_s: float | None = None,
            test_timeout_s: float | None = None,
            is_last: Callable[[dict], bool] | None = None) -> RunResult:
        """Run one program (see :meth:`Sandbox.run` for ``on_record`` and the limits).

        ``is_last(record)``: True for the program's final record (the judge's authenticated
        ``end``): the result is complete then and returned at once; the zygote's report of the
        run (cleanup done, nothing left) is collected by :meth:`finish`, which must succeed
        before the sandbox runs anything else (:class:`WarmPool` sees to it)."""
        if self._pending is not None:
            self.finish()
        if not self.healthy:
            return RunResult(returncode=None, sandboxed=True, error=f"warm sandbox unusable: "
                             f"{self.why}")
        cfg = self.sandbox.config
        wall = min(wall_time_s or cfg.wall_time_s, cfg.wall_time_s)
        test_wall = test_timeout_s + 1.0 if test_timeout_s else None
        result = RunResult(returncode=None, sandboxed=True)
        t0 = time.monotonic()
        self.runs += 1
        seq = self.runs  # the zygote counts its judges the same way
        frames = (struct.pack("<II", len(spec), cpu_s) + spec
                  + struct.pack("<I", len(secret)) + secret)
        self._writer = None
        try:
            if len(frames) <= 65536:  # the pipe is empty between runs: this cannot block
                _write_all_fd(self._ctl, frames)
            else:
                self._writer = threading.Thread(target=_write_all_quiet,
                                                args=(self._ctl, frames), daemon=True)
                self._writer.start()
        except OSError as e:
            result.error = f"warm sandbox gone: {e}"
            self._fail(str(e))
            return result
        self._pending = seq
        self._discard = False
        self._out_buf, self._err_buf = bytearray(), bytearray()
        cap = cfg.max_output_bytes
        line_cap = 8 * cap + (1 << 20)
        last_progress = t0
        stop_at = None  # when the zygote was asked to stop the judge
        complete = False
        try:
            while self._final is None and not complete:
                now = time.monotonic()
                if stop_at is not None:
                    complete = True  # the records so far are the result; finish() waits
                    break
                if now - t0 > wall:
                    result.timed_out = "program"
                    self._fail("wall-clock limit")
                    break
                if test_wall is not None and now - last_progress > test_wall:
                    result.timed_out = "test"
                    self._fail("test time limit")
                    break
                deadline = t0 + wall
                if test_wall is not None:
                    deadline = min(deadline, last_progress + test_wall)
                for rec in self._poll(max(0.0, min(deadline - now, 0.2))):
                    last_progress = time.monotonic()
                    result.records.append(rec)
                    if is_last is not None and is_last(rec):
                        complete = True
                        break
                    if on_record is not None and on_record(rec) is False:
                        result.stopped = True
                        stop_at = self._stop(seq)
                        break
                if self.proc is None:  # _poll tore it down
                    result.error = f"warm sandbox failed: {self.why}"
                    break
                if self._final is None and stop_at is None and len(self._buf) > line_cap:
                    result.records_truncated = True
                    stop_at = self._stop(seq)
        finally:
            result.stdout, result.stderr = bytes(self._out_buf), bytes(self._err_buf)
            result.wall_s = time.monotonic() - t0
        if self._final is not None:
            result.returncode = self._final.get("rc")
            self._settle()
        return result

    def _poll(self, timeout: float) -> list[dict]:
        """Read what is ready (waiting up to ``timeout``): judge records are returned; the
        zygote's report of the pending run lands in ``_final``; the judge's stdout/stderr
        are kept up to the output cap.  A broken protocol tears the sandbox down."""
        cap = self.sandbox.config.max_output_bytes
        recs: list[dict] = []
        sel = self._sel
        for key, _ in sel.select(timeout):
            try:
                chunk = os.read(key.fd, 65536)
            except BlockingIOError:
                continue
            except OSError:
                chunk = b""
            if key.data != "rec":
                buf = self._out_buf if key.data == "out" else self._err_buf
                if chunk and len(buf) < cap:
                    buf += chunk[: cap - len(buf)]
                if not chunk:
                    sel.unregister(key.fd)
                continue
            if not chunk:
                err = self._drain(self._err, 1000).decode("utf-8", "replace")
                self._fail(f"results pipe closed {err}".strip())
                return recs
            self._buf += chunk
            while b"\n" in self._buf:
                line, _, rest = bytes(self._buf).partition(b"\n")
                self._buf = bytearray(rest)
                rec = _parse_record(line)
                if rec is None:
                    continue
                if "z" in rec:
                    if rec.get("z") != self._pending or self._final is not None:
                        self._fail(f"unexpected zygote record {str(rec)[:200]}")
                        return recs
                    self._final = rec
                elif self._final is not None:
                    self._fail("a record after the end of the run")
                    return recs
                elif not self._discard:
                    recs.append(rec)
        return recs

    def finish(self, timeout: float = 5.0) -> bool:
        """Collect the zygote's report of the pending run (waiting up to ``timeout``); False
        while it is still missing (with ``timeout=0``).  Records the judge wrote after its
        final one, a report that is not clean, or no report in time tear the sandbox down."""
        if self._pending is None:
            return True
        end = time.monotonic() + timeout
        while self._final is None and self.proc is not None:
            left = end - time.monotonic()
            extra = self._poll(max(0.0, left))
            if extra:
                self._fail("records after the judge's last one")
            if self._final is None and left <= 0:
                if timeout > 0:
                    self._fail("no report of the run from the zygote")
                else:
                    return False
        if self.proc is not None:
            self._settle()
        self._pending = None
        return True

    def _settle(self) -> None:
        """The zygote reported the pending run: keep the sandbox only if all went well."""
        final, self._final, self._pending = self._final, None, None
        if self._writer is not None:
            self._writer.join(timeout=1.0)
            if self._writer.is_alive():
                self._fail("input not consumed")
                return
        if not final.get("clean"):
            self._fail(f"unclean run: {final.get('why')}")
        elif not (final.get("rc") == 0 or final.get("stopped")):
            self._fail(f"judge exited with {final.get('rc')}")
        elif self.runs >= self.sandbox.config.pool_recycle:
            self._fail("recycled")

    def _stop(self, seq: int) -> float:
        self._discard = True  # what the judge writes until it is killed does not count
        try:
            os.write(self._stop_w, struct.pack("<Q", seq))
        except OSError:
            pass
        return time.monotonic()

    def _fail(self, why: str) -> None:
        """Tear the sandbox down (the whole process group, SIGKILL)."""
        self.why = why
        self.close()

    def close(self) -> None:
        self.healthy = False
        proc = self.proc
        if proc is None:
            return
        self.proc = None
        try:
            self._sel.close()
        except (OSError, AttributeError):
            pass
        _killpg(proc)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            logger.warning("warm sandbox %d did not exit after SIGKILL", proc.pid)
        for f in (proc.stdin, proc.stdout, proc.stderr):
            try:
                f.close()
            except OSError:
                pass
        for fd in (self._res_r, self._stop_w):
            try:
                os.close(fd)
            except OSError:
                pass


class WarmPool:
    """Warm sandboxes handed out one per concurrent program (up to ``size`` kept).

    A sandbox goes back to the pool right after its program's final record, while its zygote
    still cleans up; it is handed out again only after :meth:`WarmSandbox.finish` collected
    a clean report (finished ones are preferred, so that wait is rarely felt).  A sandbox
    whose run was not clean, failed or timed out is torn down; the next request starts a
    fresh one."""

    def __init__(self, sandbox: Sandbox, args: list[str], boot: bytes,
                 preload: tuple[str, ...] = (), init: dict | None = None,
                 size: int = 2) -> None:
        self.sandbox = sandbox
        self.size = max(1, int(size))
        self._args, self._boot, self._preload = list(args), boot, tuple(preload)
        self._init = dict(init or {})
        self._idle: list[WarmSandbox] = []  # oldest first; may still be finishing
        self._live = 0
        self._lock = threading.Lock()
        self._closed = False
        self._pid = os.getpid()
        self.started = 0
        self.replaced = 0
        self.last_error = ""

    def _forked(self) -> bool:
        """In a process forked from the pool's owner: forget the owner's sandboxes (using or
        killing them would break the owner's runs) and start afresh.  Caller holds the lock."""
        if self._pid == os.getpid():
            return False
        self._pid = os.getpid()
        self._idle, self._live = [], 0
        self.started = self.replaced = 0
        return True

    def run(self, spec: bytes, secret: bytes, cpu_s: int, **kw) -> RunResult:
        ws = self._acquire()
        if ws is None:
            return RunResult(returncode=None, sandboxed=True,
                             error=f"cannot start a warm sandbox: {self.last_error}")
        try:
            return ws.run(spec, secret, cpu_s, **kw)
        finally:
            self._release(ws)

    def prestart(self, n: int | None = None) -> int:
        """Start sandboxes (up to ``n``, default the pool size) now rather than on first use;
        returns how many are idle."""
        n = self.size if n is None else min(int(n), self.size)
        with self._lock:
            self._forked()
            want = max(0, n - self._live)
            self._live += want
            self.started += want
        fresh = [WarmSandbox(self.sandbox, self._args, self._boot, self._preload, self._init)
                 for _ in range(want)]
        with self._lock:
            for ws in fresh:
                if ws.healthy and not self._closed:
                    self._idle.append(ws)
                else:
                    self.last_error = ws.why or self.last_error
                    self._discard(ws)
            return len(self._idle)

    def _discard(self, ws: WarmSandbox) -> None:
        """Close ``ws`` (not in ``_idle``); the caller holds the lock."""
        if ws.why not in ("", "recycled"):
            logger.debug("warm sandbox replaced: %s", ws.why)
            self.replaced += 1
        ws.close()
        self._live -= 1

    def _acquire(self) -> WarmSandbox | None:
        while True:
            wait_for = None
            with self._lock:
                self._forked()
                for ws in list(self._idle):
                    done = ws.finish(timeout=0)
                    if not ws.healthy:
                        self._idle.remove(ws)
                        self._discard(ws)
                    elif done:
                        self._idle.remove(ws)
                        return ws
                if self._idle and self._live >= self.size:
                    wait_for = self._idle.pop(0)
                else:
                    self._live += 1
                    self.started += 1
            if wait_for is None:
                break
            wait_for.finish()
            if wait_for.healthy:
                return wait_for
            with self._lock:
                self._discard(wait_for)
        ws = WarmSandbox(self.sandbox, self._args, self._boot, self._preload, self._init)
        if not ws.healthy:
            with self._lock:
                self.last_error = ws.why
                self._discard(ws)
            return None
        return ws

    def _release(self, ws: WarmSandbox) -> None:
        with self._lock:
            if self._forked():
                return  # not ours (cannot happen unless a thread forked mid-run)
            if ws.healthy and not self._closed and len(self._idle) < self.size:
                self._idle.append(ws)
            else:
                self._discard(ws)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._forked():
                return
            idle, self._idle = self._idle, []
            for ws in idle:
                self._discard(ws)


def _wait_readable(fd: int, timeout: float) -> bool:
    with selectors.DefaultSelector() as sel:
        sel.register(fd, selectors.EVENT_READ)
        return bool(sel.select(timeout))


def _write_all_fd(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _write_all_quiet(fd: int, data: bytes) -> None:
    try:
        _write_all_fd(fd, data)
    except OSError:
        pass
