"""Sandbox: run one program under bubblewrap (or, the fallback, with rlimits only) and collect
its output and its records."""

from __future__ import annotations

import json
import logging
import os
import resource
import selectors
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import warnings
from collections.abc import Callable

from archer.rewards.sandbox.config import BASE_ENV, SCRATCH, RunResult, SandboxConfig, base_python
from archer.rewards.sandbox.packages import (
    SANDBOX_PACKAGES_DIR,
    bwrap_bind_args,
    link_dir,
    shipped_paths,
)
from archer.rewards.sandbox.seccomp import _seccomp_no_fork

logger = logging.getLogger(__name__)

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
        self.package_paths = shipped_paths(self.config.packages)
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
        args += bwrap_bind_args(self.package_paths)
        args += ["--remount-ro", "/dev",  # no files in /dev or /dev/shm (device nodes work)
                 "--remount-ro", "/"]  # the sandbox's own root tmpfs: not writable either
        if seccomp_fd is not None:
            args += ["--seccomp", str(seccomp_fd)]
        return args

    def _probe(self) -> tuple[bool, str]:
        key = (self.bwrap, self.python, self.config.allow_site_packages, self._seccomp is not None,
               self.config.extra_ro_paths, self.config.shm, tuple(self.package_paths))
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
    def packages_dir(self) -> str | None:
        """The directory to put first on a program's ``sys.path`` for the shipped packages
        (:attr:`SandboxConfig.packages`): inside bubblewrap where they are bound, else a
        host directory of symlinks to them; None when none are shipped."""
        if not self.package_paths:
            return None
        return SANDBOX_PACKAGES_DIR if self.sandboxed else link_dir(self.package_paths)

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
