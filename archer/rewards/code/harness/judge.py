"""Harness part 4: the judge (P), which forks the workers, runs check suites itself and
writes the run's records."""

from __future__ import annotations

import _signal as signal  # not ``signal``: it imports enum, a few ms per sandbox
import builtins
import marshal
import os
import select
import sys
import time

if __name__ != "__main__":  # imported on the host; in the sandbox the parts are one script
    from archer.rewards.code.harness.codec import (
        CodecError,
        Timeout,
        WorkerGone,
        _tb,
        _write_all,
        decode,
        encode,
        json_dumps,
        recv,
        send,
    )
    from archer.rewards.code.harness.lockdown import LOCKDOWN_FAILED, _keep_fds, _memfd, lockdown
    from archer.rewards.code.harness.worker import rpc_worker, run_stdin_program

# --- P -------------------------------------------------------------------------------------------

class Judge:
    def __init__(self, spec, kernel):
        self.kernel = kernel
        self.pid = os.getpid()
        self.worker = None  # (pid, req_w, rep_r, err)
        self.configure(spec)

    def configure(self, spec):
        self.spec = spec
        self.T = float(spec.get("test_timeout", 6.0))
        self.cap = int(spec.get("max_output", 1 << 20))
        self.fail_fast = bool(spec.get("fail_fast", True))

    # -- workers --

    def _fork(self, child):
        pid = os.fork()
        if pid == 0:
            try:
                child()
            finally:
                os._exit(LOCKDOWN_FAILED)
        return pid

    def spawn_rpc(self, code):
        """Fork W for ``code``; ``code=None``: a pre-forked W, locked down, that waits for
        :meth:`load_worker`."""
        req_r, req_w = os.pipe()
        rep_r, rep_w = os.pipe()
        null_in, out, err = _memfd("in"), _memfd("out"), _memfd("err")

        def child():
            os.dup2(null_in, 0)
            os.dup2(out, 1)
            os.dup2(err, 2)
            _keep_fds([req_r, rep_w])
            lockdown(self.kernel, self.spec, self.pid)
            rpc_worker(code, self.spec, req_r, rep_w)

        pid = self._fork(child)
        for fd in (req_r, rep_w, null_in, out):
            os.close(fd)
        self.worker = (pid, req_w, rep_r, err)
        return pid

    def load_worker(self, code, cpu_s):
        """Give the pre-forked W its program (compiled here, marshalled)."""
        spec = self.spec
        send(self.worker[1], {"op": "load", "code": marshal.dumps(code).hex(), "cpu": cpu_s,
                              "kind": spec["kind"], "entry": spec.get("entry"),
                              "func_name": spec.get("func_name")})

    def kill_worker(self):
        if self.worker is None:
            return None
        pid, req_w, rep_r, err = self.worker
        self.worker = None
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _, status = os.waitpid(pid, 0)
        tail = os.pread(err, 600, max(0, os.lseek(err, 0, 2) - 600))
        for fd in (req_w, rep_r, err):
            os.close(fd)
        return status, tail.decode("utf-8", "replace")

    def worker_reply(self, msg=None):
        """Send ``msg`` (if any) to W and wait for its reply (test time limit)."""
        pid, req_w, rep_r, _ = self.worker
        try:
            if msg is not None:
                send(req_w, msg)
            return recv(rep_r, time.monotonic() + self.T, 4 * self.cap + (1 << 20))
        except (BrokenPipeError, WorkerGone):
            raise WorkerGone() from None

    def wait_child(self, pid, timeout):
        """The wait status of ``pid``, or None after killing it at ``timeout``."""
        try:
            pfd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            pfd = None
        if pfd is not None:
            try:
                ready = select.select([pfd], [], [], timeout)[0]
            finally:
                os.close(pfd)
        else:
            end, ready = time.monotonic() + timeout, False
            while time.monotonic() < end:
                got, status = os.waitpid(pid, os.WNOHANG)
                if got:
                    return status
                time.sleep(0.001)
        if not ready:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)
            return None
        return os.waitpid(pid, 0)[1]

    # -- kinds --

    def run_stdin(self, code, emit):
        emit(event="ready")
        for i, inp in enumerate(self.spec["inputs"]):
            fin = _memfd("in", inp.encode("utf-8"))
            fout, ferr = _memfd("out"), _memfd("err")

            def child(fin=fin, fout=fout, ferr=ferr):
                os.dup2(fin, 0)
                os.dup2(fout, 1)
                os.dup2(ferr, 2)
                _keep_fds([])
                lockdown(self.kernel, self.spec, self.pid)
                run_stdin_program(code)

            pid = self._fork(child)
            status = self.wait_child(pid, self.T)
            size = os.lseek(fout, 0, 2)
            out = os.pread(fout, min(size, self.cap + 1), 0)[: self.cap]
            err = os.pread(ferr, 1000, max(0, os.lseek(ferr, 0, 2) - 1000))
            for fd in (fin, fout, ferr):
                os.close(fd)
            detail = ""
            if status is None:
                st = "timeout"
            elif os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
                st = "ok"
            else:
                st = "error"
                code_ = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
                if code_ == LOCKDOWN_FAILED:
                    emit(event="sandbox_error", detail=err.decode("utf-8", "replace"))
                    return
                detail = err.decode("utf-8", "replace").strip()[-600:] or (
                    f"exit status {code_}" if code_ is not None
                    else f"killed by signal {os.WTERMSIG(status)}")
            emit(i=i, status=st, out=out.decode("utf-8", "replace"), truncated=size > self.cap,
                 detail=detail)
            if st != "ok" and self.fail_fast:
                return

    def _load(self, emit):
        """Wait for W's ready message; False (after reporting) when the program failed."""
        try:
            rep = self.worker_reply()
        except Timeout:
            self.kill_worker()
            emit(event="load_error", detail="time limit exceeded while loading", timeout=True)
            return False
        except (WorkerGone, CodecError):
            status, tail = self.kill_worker()
            if os.WIFEXITED(status) and os.WEXITSTATUS(status) == LOCKDOWN_FAILED:
                emit(event="sandbox_error", detail=tail)
            else:
                emit(event="load_error", detail=f"program exited while loading "
                     f"({_status_text(status)}) {tail}".strip()[:1000])
            return False
        if "ready" not in rep:
            self.kill_worker()
            emit(event="load_error", detail=str(rep.get("load_error", "bad reply"))[:1000])
            return False
        return True

    def run_functional(self, code, emit):
        if not self._load(emit):
            return
        emit(event="ready")
        for i, inp in enumerate(self.spec["inputs"]):
            if self.worker is None:  # W died on an earlier test (only without fail_fast)
                self.spawn_rpc(code)
                if not self._load(emit):
                    return
            st, ret, detail, trunc = "ok", None, "", False
            try:
                rep = self.worker_reply({"op": "ftest", "inp": inp})
                if "e" in rep:
                    st, detail = "error", str(rep["e"])[:1000]
                else:
                    ret = str(rep.get("r"))
                    trunc = len(ret) > self.cap
                    ret = ret[: self.cap]
            except Timeout:
                st = "timeout"
                self.kill_worker()
            except (WorkerGone, CodecError) as e:
                status, tail = self.kill_worker()
                st = "error"
                detail = (str(e) or f"program exited during the test ({_status_text(status)})"
                          ) + (" " + tail if tail else "")
            emit(i=i, status=st, ret=ret, truncated=trunc, detail=detail[:1000])
            if st != "ok" and self.fail_fast:
                return

    def run_check(self, code, secret, emit):
        cns = {"__name__": "__archer_check__", "__builtins__": builtins}
        try:
            exec(compile(secret.get("prelude", ""), "<prelude>", "exec"), cns)
            if "check_bytecode" in secret:  # compiled by the host (same bytecode format)
                tests = marshal.loads(bytes.fromhex(secret["check_bytecode"]))
            else:
                tests = compile(secret["check_code"], "<tests>", "exec")
            exec(tests, cns)
            check = cns["check"]
        except BaseException as e:  # noqa: BLE001
            self.kill_worker()
            emit(event="test_error", detail=_tb(e))
            return
        sys.setrecursionlimit(10000)
        if not self._load(emit):
            return
        emit(event="ready")
        judge = self
        last = [time.monotonic()]
        n_done = [0]

        def candidate(*args, **kwargs):
            if judge.worker is None:
                raise WorkerGone()
            msg = {"op": "call", "a": encode(list(args)), "k": encode(kwargs)}
            try:
                rep = judge.worker_reply(msg)
            except Timeout:
                judge.kill_worker()
                raise
            except (WorkerGone, CodecError) as e:
                status, tail = judge.kill_worker()
                raise WorkerGone(str(e) or f"program exited during a call "
                                 f"({_status_text(status)}) {tail}".strip()) from None
            if time.monotonic() - last[0] > judge.T / 2:
                emit(event="tick")
                last[0] = time.monotonic()
            if "e" in rep:
                raise _candidate_error(rep)
            try:
                result = decode(rep["r"], cns)
                after = decode(rep["a"], cns)
            except (CodecError, KeyError, TypeError, ValueError) as e:
                raise CodecError(f"bad answer: {e}") from None
            _sync_args(args, after)
            return result

        def case(i, thunk):
            try:
                ok = thunk()
            except AssertionError as e:
                ok, why = False, _tb(e)
            except Exception as e:  # noqa: BLE001 - the candidate raised
                emit(i=i, status="error", detail=_tb(e))
                if judge.fail_fast:
                    raise
                return
            else:
                why = "assertion failed"
            n_done[0] = i + 1
            last[0] = time.monotonic()
            if ok:
                emit(i=i, status="ok")
                return
            emit(i=i, status="fail", detail=why)
            if judge.fail_fast:
                raise AssertionError(f"case {i} failed")

        cns["__archer_case__"] = case
        if self.spec["entry"].isidentifier():
            # the test code may call the entry point by name (HumanEval/33 does): the program's
            # function, as in HumanEval's own harness, not the prompt's stub
            cns[self.spec["entry"]] = candidate
        status, detail = "ok", ""
        try:
            check(candidate)
        except Timeout:
            status = "timeout"
        except WorkerGone as e:
            status, detail = "error", str(e) or "the program exited"
        except AssertionError as e:
            status, detail = "fail", _tb(e)
        except BaseException as e:  # noqa: BLE001
            status, detail = "error", _tb(e)
        emit(event="done", status=status, cases=n_done[0], detail=detail[:1000])


def _status_text(status):
    if status is None:
        return "killed"
    if os.WIFEXITED(status):
        return f"exit status {os.WEXITSTATUS(status)}"
    return f"signal {os.WTERMSIG(status)}"


def _candidate_error(rep):
    name = str(rep.get("et", ""))
    cls = getattr(builtins, name, None)
    msg = str(rep.get("e", ""))[:1000]
    if isinstance(cls, type) and issubclass(cls, Exception) and cls.__module__ == "builtins":
        try:
            return cls(msg)
        except Exception:  # noqa: BLE001
            pass
    return RuntimeError(msg)


def _sync_args(args, after):
    """Copy in-place changes W made to list/dict/set arguments back into P's objects."""
    if type(after) is not list or len(after) != len(args):
        return
    for a, b in zip(args, after):
        if type(a) is list and type(b) is list:
            a[:] = b
        elif type(a) is dict and type(b) is dict:
            a.clear()
            a.update(b)
        elif type(a) is set and type(b) is set:
            a.clear()
            a.update(b)


def _make_emitter(fd, nonce):
    dumps, write = json_dumps, _write_all

    def emit(**rec):
        rec["k"] = nonce
        write(fd, (dumps(rec) + "\n").encode("utf-8"))

    return emit


def serve(spec, kernel, res_fd, read_secret, judge=None, cpu_s=None):
    """One program run as the judge: compile, fork W (rpc kinds) *before* the secrets are read
    (``read_secret()``: the nonce and, for check problems, the test code), then run the tests
    and report on ``res_fd``.  ``judge``: one with a pre-forked W (warm sandboxes)."""
    if judge is None:
        judge = Judge(spec, kernel)
    else:
        judge.configure(spec)
    kind = spec["kind"]
    try:
        code = compile(spec["code"], "<solution>", "exec")
    except BaseException as e:  # noqa: BLE001
        code, compile_error = None, _tb(e)
    if code is not None and kind in ("functional", "check"):
        if judge.worker is not None:
            judge.load_worker(code, cpu_s)  # forked before this run's spec was even read
        else:
            judge.spawn_rpc(code)  # before the secrets are read: W never holds them
    elif judge.worker is not None:
        judge.kill_worker()
    secret = read_secret()
    emit = _make_emitter(res_fd, secret.pop("nonce"))
    if code is None:
        emit(event="compile_error", detail=compile_error)
    elif kind == "stdin":
        judge.run_stdin(code, emit)
    elif kind == "functional":
        judge.run_functional(code, emit)
    else:
        judge.run_check(code, secret, emit)
    # the verdict is complete: say so first, then kill W (its teardown takes a while); W has no
    # descriptor to the host and whatever it still does changes nothing
    emit(event="end")
    judge.kill_worker()
