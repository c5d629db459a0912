"""Warm sandboxes: one long-lived bubblewrap sandbox per slot, running the code harness's
zygote, which forks a fresh judge per program (threat model in :mod:`archer.rewards.sandbox`)."""

from __future__ import annotations

import json
import logging
import os
import selectors
import struct
import subprocess
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from archer.rewards.sandbox.config import BASE_ENV, RunResult
from archer.rewards.sandbox.runner import Sandbox, _killpg, _parse_record

logger = logging.getLogger(__name__)

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
    (``archer.rewards.code.harness.zygote.zygote_main``); it forks a fresh judge per program.

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
