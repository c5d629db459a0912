"""Harness part 5: the zygote of a warm sandbox, which forks one judge per program."""

from __future__ import annotations

import _signal as signal  # not ``signal``: it imports enum, a few ms per sandbox
import os
import select
import struct
import sys
import time

if __name__ != "__main__":  # imported on the host; in the sandbox the parts are one script
    from archer.rewards.code.harness.codec import (
        WorkerGone,
        _read_exact,
        _write_all,
        json_dumps,
        json_loads,
        recv,
    )
    from archer.rewards.code.harness.judge import Judge, serve
    from archer.rewards.code.harness.lockdown import LOCKDOWN_FAILED, PR_SET_DUMPABLE, _Kernel

# --- the zygote: a warm sandbox that forks one judge per program -------------------------------
#
# Started by ``archer.rewards.sandbox.WarmSandbox`` as the only process (pid 2) of a bubblewrap
# pid namespace (pid 1 is bubblewrap's init).  fd 0: frames from the host; ``res_fd``: the
# results pipe (shared with the judges it forks); ``stop_fd``: 8-byte sequence numbers of runs to
# abort; ``init``: the workers' lockdown settings (seccomp filter, pid placeholder, uid).
#
# The zygote itself never reads a run's data.  It forks the judge of run ``seq`` ahead of time;
# that judge reseeds ``random``, forks its worker W (which locks itself down at once and then
# waits for a program), and only then reads frame A = ``<I len><I cpu_s>`` + spec JSON and
# frame B = ``<I len>`` + secret JSON from fd 0 (B after W received the program: W never holds
# the nonce or test code).  After that judge exits (or is killed on a stop), the zygote SIGKILLs
# every other process of the namespace and reaps it (it is their subreaper), wipes /tmp and the
# scratch dir, checks that nothing is left (processes, files, /dev entries, SysV IPC objects,
# unread bytes on fd 0), reports ``{"z": seq, "rc": ..., "clean": ...}`` and forks the next
# judge.  The host replaces the sandbox after any run that was not clean.

PR_SET_CHILD_SUBREAPER = 36
WIPE_DIRS = ("/tmp", "/scratch")
EXIT_NO_INPUT = 120  # a judge found fd 0 closed: the host is gone


def _read_into(fd, n):
    """Exactly ``n`` bytes from ``fd`` into a new bytearray (no intermediate bytes objects)."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = os.readv(fd, [view[got:]])
        if k == 0:
            raise WorkerGone()
        got += k
    view.release()
    return buf


def _others(me):
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) not in (1, me)]


def _reap():
    while True:
        try:
            got, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if got == 0:
            return


def _kill_others(me, grace=1.0):
    """SIGKILL and reap every process of the namespace but pid 1 and ``me``.  Returns (the
    processes found at first, those still there after ``grace`` seconds)."""
    end = time.monotonic() + grace
    found = None
    while True:
        _reap()
        left = _others(me)
        if found is None:
            found = left
        if not left or time.monotonic() > end:
            return found, left
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.001)


def _rm(path):
    st = os.lstat(path)
    if (st.st_mode & 0o170000) == 0o040000:  # a directory (not a symlink to one)
        os.chmod(path, 0o700)
        for name in os.listdir(path):
            _rm(path + "/" + name)
        os.rmdir(path)
    else:
        os.unlink(path)


def _wipe(dirs, modes):
    """Empty ``dirs`` and restore their modes; a list of what could not be cleaned."""
    bad = []
    for d in dirs:
        try:
            os.chmod(d, modes[d])
            for name in os.listdir(d):
                _rm(d + "/" + name)
            if os.listdir(d):
                bad.append(d)
        except (OSError, RecursionError):
            bad.append(d)
    return bad


def _sysv_objects():
    n = 0
    for kind in ("shm", "msg", "sem"):
        try:
            with open("/proc/sysvipc/" + kind, "rb") as f:
                n += max(0, len(f.read().splitlines()) - 1)
        except OSError:
            pass
    return n


def _dev_listing():
    out = []
    for d in ("/dev", "/dev/shm"):
        try:
            out.append(sorted(os.listdir(d)))
        except OSError:
            out.append(None)
    return out


def warm_judge(init, kernel, res_fd):
    """A judge forked ahead of its run: pre-fork W, then read the run from fd 0 and serve it."""
    rnd = sys.modules.get("random")
    if rnd is not None:
        rnd.seed()  # not the zygote's state, which every run would share
    judge = Judge(dict(init), kernel)
    judge.spawn_rpc(None)
    try:
        n, cpu_s = struct.unpack("<II", _read_exact(0, 8, None))
        spec = json_loads(_read_into(0, n))
    except WorkerGone:
        judge.kill_worker()
        os._exit(EXIT_NO_INPUT)
    sys.modules["resource"].setrlimit(sys.modules["resource"].RLIMIT_CPU, (cpu_s, cpu_s))
    spec.update(init)  # the lockdown settings are the zygote's, whatever the spec says
    serve(spec, kernel, res_fd, lambda: recv(0), judge=judge, cpu_s=cpu_s)


def zygote_main(res_fd, stop_fd, preload, init):
    import gc
    import resource  # noqa: F401 - the judges and workers use it (sys.modules)

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    kernel = _Kernel()
    kernel.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    kernel.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    me = os.getpid()

    def report(**rec):
        _write_all(res_fd, (json_dumps(rec) + "\n").encode("utf-8"))

    if me != 2 or _others(me):
        # not alone in a fresh pid namespace: refuse (killing "every other process" would be
        # wrong here)
        report(z="refused", detail=f"zygote is pid {me} with others {_others(me)[:5]}")
        os._exit(3)
    for mod in preload:
        try:
            __import__(mod)
        except ImportError:
            pass
    gc.freeze()  # forked judges and workers never scan (and so never copy) these objects
    modes = {d: os.stat(d).st_mode & 0o7777 for d in WIPE_DIRS}
    dev0 = _dev_listing()
    os.set_blocking(stop_fd, False)
    report(z="ready")
    seq = 0
    while True:
        seq += 1
        t0 = time.monotonic()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(stop_fd)
                warm_judge(init, kernel, res_fd)
                os._exit(0)
            finally:
                os._exit(LOCKDOWN_FAILED)
        status, stopped = _await_judge(pid, stop_fd, seq)
        t1 = time.monotonic()
        found, left = _kill_others(me)
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == EXIT_NO_INPUT:
            os._exit(0)
        rc = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -os.WTERMSIG(status)
        pending = bool(select.select([0], [], [], 0)[0])
        bad = _wipe(WIPE_DIRS, modes)
        ipc = _sysv_objects()
        dev_changed = _dev_listing() != dev0
        why = []
        if left:
            why.append(f"processes that would not die: {left[:5]}")
        elif found and rc == 0:  # a judge that exits normally has reaped its workers
            why.append(f"processes outlived the judge: {found[:5]}")
        if pending:
            why.append("unread input")
        if bad:
            why.append(f"could not wipe {bad}")
        if ipc:
            why.append(f"{ipc} SysV IPC objects")
        if dev_changed:
            why.append("/dev changed")
        report(z=seq, rc=rc, stopped=stopped, clean=not why, why="; ".join(why),
               ms=[round(1000 * (t1 - t0), 2), round(1000 * (time.monotonic() - t1), 2)])


def _await_judge(pid, stop_fd, seq):
    """Wait for the judge; SIGKILL it when the host sends ``seq`` on the stop pipe.
    Returns (wait status, whether it was stopped)."""
    pfd = os.pidfd_open(pid)
    stopped = False
    try:
        while True:
            ready = select.select([pfd, stop_fd], [], [])[0]
            if stop_fd in ready:
                try:
                    data = os.read(stop_fd, 4096)
                except BlockingIOError:
                    data = None
                if data == b"":  # the host is gone
                    os.kill(pid, signal.SIGKILL)
                    _kill_others(os.getpid())
                    os._exit(0)
                if data and seq in struct.unpack(f"<{len(data) // 8}Q", data[: len(data) // 8 * 8]):
                    os.kill(pid, signal.SIGKILL)
                    stopped = True
            if pfd in ready:
                break
    finally:
        os.close(pfd)
    return os.waitpid(pid, 0)[1], stopped
