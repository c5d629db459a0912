"""Harness part 3: the worker bodies, which run candidate code (after lockdown)."""

from __future__ import annotations

import builtins
import marshal
import os
import sys

if __name__ != "__main__":  # imported on the host; in the sandbox the parts are one script
    from archer.rewards.code.harness.codec import (
        CodecError,
        _tb,
        decode,
        encode,
        json_dumps,
        json_loads,
        recv,
        send,
    )
    from archer.rewards.code.harness.lockdown import _join_threads, _std_streams

# --- worker bodies (run in W, after lockdown) ----------------------------------------------------

def _print_exc():
    try:
        import traceback  # only on this error path: its imports cost a few ms

        traceback.print_exc()
    except BaseException:  # noqa: BLE001
        e = sys.exc_info()[1]
        sys.stderr.write(f"{type(e).__name__}: {e}\n")


def run_stdin_program(code):
    """Run the program as ``__main__`` and exit like a real interpreter would."""
    _std_streams()
    rc = 0
    try:
        exec(code, {"__name__": "__main__", "__builtins__": builtins})
        _join_threads()
    except SystemExit as e:
        if e.code is None or e.code == 0:
            rc = 0
        elif isinstance(e.code, int):
            rc = e.code & 0xFF or 1
        else:
            rc = 1
            print(e.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001
        _print_exc()
        rc = 1
    try:
        sys.stdout.flush()
    except BaseException:  # noqa: BLE001 - e.g. the file-size limit
        _print_exc()
        rc = rc or 1
    try:
        sys.stderr.flush()
    finally:
        os._exit(rc)


def _call_args(inp):
    lines = inp.split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    return [json_loads(line) for line in lines]


def rpc_worker(code, spec, req, rep):
    """Load the program, resolve the callable, then answer P's requests until EOF.
    ``code=None`` (a pre-forked W): first wait for P's ``load`` message (the marshalled
    program, its kind, entry and the run's CPU limit)."""
    _std_streams()
    if code is None:
        try:
            spec = recv(req)
            cpu = int(spec["cpu"])
            sys.modules["resource"].setrlimit(sys.modules["resource"].RLIMIT_CPU, (cpu, cpu))
            code = marshal.loads(bytes.fromhex(spec["code"]))
        except BaseException:  # noqa: BLE001 - P went away (or broke the protocol)
            os._exit(0)
    ns = {"__name__": "solution", "__builtins__": builtins}
    kind = spec["kind"]
    try:
        exec(code, ns)
        if kind == "check":
            target = eval(spec["entry"], ns)  # noqa: S307 - W runs untrusted code anyway
            if not callable(target):
                raise TypeError(f"{spec['entry']} is not callable")
        else:
            fn_name = spec["func_name"]
            cls = ns.get("Solution")
            if not isinstance(cls, type) and not callable(ns.get(fn_name)):
                raise NameError("no class Solution and no function " + fn_name)
    except BaseException as e:  # noqa: BLE001
        send(rep, {"load_error": _tb(e)})
        os._exit(0)
    send(rep, {"ready": 1})
    while True:
        try:
            msg = recv(req)
        except BaseException:  # noqa: BLE001 - P went away
            os._exit(0)
        try:
            if kind == "check":
                args = decode(msg["a"], ns)
                kwargs = decode(msg["k"], ns)
                result = target(*args, **kwargs)
                out = {"r": encode(result), "a": encode(args)}
            else:
                args = _call_args(msg["inp"])
                f = getattr(cls(), fn_name) if isinstance(cls, type) else ns[fn_name]
                result = f(*args)
                if isinstance(result, tuple):
                    result = list(result)
                try:
                    out = {"r": json_dumps(result)}
                except (TypeError, ValueError, RecursionError):
                    raise CodecError("result is not JSON: " + repr(result)[:300]) from None
        except BaseException as e:  # noqa: BLE001 - includes SystemExit
            out = {"e": _tb(e), "et": type(e).__name__}
        try:
            send(rep, out)
        except BaseException as e:  # noqa: BLE001
            send(rep, {"e": _tb(e), "et": type(e).__name__})
