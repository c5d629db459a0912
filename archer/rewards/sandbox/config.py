"""What a sandboxed run may use (SandboxConfig) and what it produced (RunResult)."""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field

from archer.rewards.sandbox.packages import SHIPPED_PACKAGES, check_package_names

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
    # third-party packages the code harness's programs may import (top-level module names,
    # taken from this interpreter's installation; see archer.rewards.sandbox.packages)
    packages: tuple[str, ...] = SHIPPED_PACKAGES

    def __post_init__(self) -> None:
        object.__setattr__(self, "packages", check_package_names(self.packages))
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
