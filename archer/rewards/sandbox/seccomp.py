"""Seccomp filters, as raw classic-BPF programs: the no-fork filter bubblewrap installs for a
raw program, and the stricter filter the code harness's workers install themselves."""

from __future__ import annotations

import os
import struct

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
    """The filter of the code harness's worker processes (see :mod:`archer.rewards.code.harness.lockdown`).

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
