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

Modules: :mod:`~archer.rewards.sandbox.config` (limits, results),
:mod:`~archer.rewards.sandbox.seccomp` (the filters), :mod:`~archer.rewards.sandbox.runner`
(:class:`Sandbox`: bubblewrap's command line, rlimits, one run) and
:mod:`~archer.rewards.sandbox.warm` (warm sandboxes). docs/reference/sandbox.md describes
the isolation and the limits for users.
"""

from archer.rewards.sandbox.config import BASE_ENV, SCRATCH, RunResult, SandboxConfig, base_python
from archer.rewards.sandbox.runner import Sandbox
from archer.rewards.sandbox.seccomp import PID_PLACEHOLDER, worker_seccomp_filter
from archer.rewards.sandbox.warm import WarmPool, WarmSandbox

__all__ = [
    "BASE_ENV",
    "PID_PLACEHOLDER",
    "SCRATCH",
    "RunResult",
    "Sandbox",
    "SandboxConfig",
    "WarmPool",
    "WarmSandbox",
    "base_python",
    "worker_seccomp_filter",
]
