"""Harness part 2: how a worker locks itself down before candidate code runs (descriptors,
capabilities, no_new_privs, seccomp)."""

from __future__ import annotations

import _signal as signal  # not ``signal``: it imports enum, a few ms per sandbox
import io
import os
import struct
import sys

if __name__ != "__main__":  # imported on the host; in the sandbox the parts are one script
    from archer.rewards.code.harness.codec import _write_all

PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_SECCOMP, PR_SET_NO_NEW_PRIVS = 1, 4, 22, 38
SECCOMP_MODE_FILTER = 2
LOCKDOWN_FAILED = 121  # W's exit status when it could not lock itself down


# --- lockdown of a worker ------------------------------------------------------------------------

class _Kernel:
    """prctl/capset through ctypes (loaded once in P, before any fork)."""

    def __init__(self):
        import ctypes

        self.ctypes = ctypes
        self.libc = ctypes.CDLL(None, use_errno=True)

        class FProg(ctypes.Structure):
            _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

        self.FProg = FProg

    def prctl(self, *args):
        c = self.ctypes
        if self.libc.prctl(*[c.c_ulong(a) for a in args]) != 0:
            err = c.get_errno()
            raise OSError(err, f"prctl{args[:1]}: {os.strerror(err)}")

    def drop_caps(self):
        c = self.ctypes
        header = (c.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
        data = (c.c_uint32 * 6)()
        if self.libc.capset(header, data) != 0:
            err = c.get_errno()
            raise OSError(err, f"capset: {os.strerror(err)}")

    def seccomp(self, prog):
        c = self.ctypes
        buf = c.create_string_buffer(prog, len(prog))
        fprog = self.FProg(len(prog) // 8, c.addressof(buf))
        self.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        self.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, c.addressof(fprog), 0, 0)


def lockdown(kernel, spec, parent):
    """In W, before candidate code: die with P, no caps, seccomp.  Exits on failure."""
    try:
        kernel.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(LOCKDOWN_FAILED)
        uid = spec.get("drop_uid")
        if uid is not None:
            os.setgroups([])
            os.setgid(int(uid))
            os.setuid(int(uid))
        kernel.drop_caps()
        prog = spec.get("seccomp")
        if prog:
            raw = bytes.fromhex(prog)
            me = struct.pack("<I", os.getpid())
            raw = raw.replace(struct.pack("<I", int(spec["pid_placeholder"])), me)
            kernel.seccomp(raw)
        else:
            kernel.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    except BaseException as e:  # noqa: BLE001
        try:
            os.write(2, f"archer: worker lockdown failed: {e!r}\n".encode())
        finally:
            os._exit(LOCKDOWN_FAILED)


def _memfd(name, data=b""):
    fd = os.memfd_create(name, 0)
    if data:
        _write_all(fd, data)
        os.lseek(fd, 0, 0)
    return fd


def _keep_fds(fds):
    """Close every descriptor above 2 except ``fds``."""
    keep = sorted(set(fds))
    top = max(os.sysconf("SC_OPEN_MAX"), max(keep, default=0) + 1)
    lo = 3
    for fd in keep + [top]:
        if fd >= lo:
            os.closerange(lo, fd)
            lo = fd + 1


def _std_streams():
    sys.stdin = io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "r", closefd=False)),
                                 encoding="utf-8", errors="replace")
    sys.stdout = io.TextIOWrapper(io.BufferedWriter(io.FileIO(1, "w", closefd=False)),
                                  encoding="utf-8", errors="replace")
    sys.stderr = io.TextIOWrapper(io.BufferedWriter(io.FileIO(2, "w", closefd=False)),
                                  encoding="utf-8", errors="backslashreplace",
                                  write_through=True)
    sys.__stdin__, sys.__stdout__, sys.__stderr__ = sys.stdin, sys.stdout, sys.stderr


def _join_threads():
    threading = sys.modules.get("threading")  # no threads unless the program imported it
    if threading is not None:
        for t in threading.enumerate():
            if t is not threading.main_thread() and not t.daemon:
                t.join()
