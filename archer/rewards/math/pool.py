"""Worker processes of the math grader: the checkers that may hang (sympy, Math-Verify, the
user's own) run there, each answer under a hard time limit; a worker that overruns is killed
and replaced."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence

from archer.rewards.math.checkers import _call_checker, _resolve_checker
from archer.rewards.math.config import BUILTIN_CHECKERS, MathGraderConfig, _Outcome

logger = logging.getLogger(__name__)

# Worker processes
# --------------------------------------------------------------------------------------------


_WORKER_BOOT = (
    "import json, sys; sys.path[:0] = json.loads(sys.argv[1]); "
    "from archer.rewards.math.pool import _worker_entry; _worker_entry(int(sys.argv[2]))"
)


def _worker_entry(fd: int) -> None:
    """Entry point of a worker process (started by :class:`_Worker` with ``python -c``)."""
    from multiprocessing.connection import Connection

    conn = Connection(fd)
    try:
        checkers, rel_tol, memory_mb = conn.recv()
    except (EOFError, OSError):
        return
    _worker_main(conn, checkers, rel_tol, memory_mb)


def _exit_when_orphaned(parent_pid: int) -> None:
    """Daemon thread of a worker: exit once the grading process is gone."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent_pid:
            os._exit(1)


def _worker_main(conn, checkers: tuple[str, ...], rel_tol: float, memory_mb: int | None) -> None:
    """Worker loop: receive ``(task_id, checker, pred, gold)``, send ``("result", id, status,
    detail)``. Every exception, BaseExceptions included, becomes an ``error`` result."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's business
    threading.Thread(target=_exit_when_orphaned, args=(os.getppid(),), daemon=True).start()
    if memory_mb:
        try:
            import resource

            limit = memory_mb * 2**20
            _, hard = resource.getrlimit(resource.RLIMIT_AS)
            if hard != resource.RLIM_INFINITY:
                limit = min(limit, hard)
            resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
        except (ImportError, ValueError, OSError):
            pass
    for name in ("math_verify", "latex2sympy2_extended"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        funcs = {name: _resolve_checker(name, rel_tol) for name in checkers}
        # Warm up (imports, parser tables) before declaring ready, so that start-up time is
        # not charged to the first answer's time limit.
        for name in checkers:
            if name in BUILTIN_CHECKERS:
                funcs[name]("1", "1")
    except BaseException as e:  # noqa: BLE001
        conn.send(("fatal", f"{type(e).__name__}: {e}"))
        return
    conn.send(("ready", os.getpid()))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        tid, name, pred, gold = msg
        try:
            out = _call_checker(funcs[name], pred, gold)
        except BaseException as e:  # noqa: BLE001 - incl. math_verify's TimeoutException
            out = _Outcome("error", f"{type(e).__name__}: {str(e)[:200]}")
        try:
            conn.send(("result", tid, out.status, out.detail))
        except (BrokenPipeError, OSError):
            return


class _Worker:
    """One worker process, talking over a socket pair.

    Workers are fresh interpreters (``python -c``), not multiprocessing children: they do not
    re-import the caller's ``__main__`` (no ``if __name__ == "__main__"`` guard needed, no
    torch imported per worker) and share no state with the trainer.
    """

    def __init__(self, checkers: tuple[str, ...], cfg: MathGraderConfig) -> None:
        from multiprocessing.connection import Connection

        parent_sock, child_sock = socket.socketpair()
        try:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    _WORKER_BOOT,
                    json.dumps(sys.path),
                    str(child_sock.fileno()),
                ],
                pass_fds=(child_sock.fileno(),),
                stdin=subprocess.DEVNULL,
            )
        finally:
            child_sock.close()
        self.conn = Connection(parent_sock.detach())
        self.conn.send((checkers, cfg.rel_tol, cfg.worker_memory_mb))
        self.started = time.monotonic()
        self.ready = False
        # tasks sent and not yet answered, oldest first; the worker runs them in this order
        self.inflight: deque[int] = deque()
        # when the oldest in-flight task runs out of time (its clock starts when the worker
        # gets to it, i.e. when the previous result arrives)
        self.deadline = 0.0

    def kill(self) -> None:
        try:
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait(timeout=5)
        except (OSError, subprocess.TimeoutExpired):
            pass
        try:
            self.conn.close()
        except OSError:
            pass


class _CheckerPool:
    """Worker processes with per-task deadlines; an overrunning worker is killed and replaced."""

    #: tasks in flight per worker (hides the parent's round trip between two tasks)
    PIPELINE = 4

    def __init__(self, cfg: MathGraderConfig, checkers: tuple[str, ...]) -> None:
        self.cfg = cfg
        self.checkers = checkers
        self._workers: list[_Worker] = []
        self.owner_pid = os.getpid()
        self.tasks_run = 0
        self.workers_replaced = 0

    def _spawn(self) -> None:
        self._workers.append(_Worker(self.checkers, self.cfg))

    def _replace(self, w: _Worker) -> None:
        w.kill()
        self._workers.remove(w)
        self.workers_replaced += 1
        self._spawn()

    def worker_pids(self) -> list[int | None]:
        return [w.proc.pid for w in self._workers]

    def run(self, tasks: Sequence[tuple[str, str, str]], timeout: float) -> list[_Outcome]:
        """Run ``(checker, pred, gold)`` tasks; each gets ``timeout`` seconds of its worker.

        Up to :attr:`PIPELINE` tasks are in flight per worker, so a worker goes straight on
        to its next task instead of waiting for the parent to read a result and send more.
        A task's clock starts when its worker reaches it; on a timeout the worker is killed,
        and its other in-flight tasks go back to the queue.
        """
        from multiprocessing.connection import wait

        results: list[_Outcome | None] = [None] * len(tasks)
        queue = deque(range(len(tasks)))
        while len(self._workers) < self.cfg.num_workers:
            self._spawn()
        # with few tasks, spread them instead of piling them on the first worker
        depth = max(1, min(self.PIPELINE, -(-len(tasks) // max(1, len(self._workers)))))
        start_failures = 0

        def requeue(w: _Worker) -> None:
            queue.extendleft(reversed(w.inflight))
            w.inflight.clear()

        while queue or any(w.inflight for w in self._workers):
            now = time.monotonic()
            for w in list(self._workers):
                while w.ready and queue and len(w.inflight) < depth:
                    i = queue.popleft()
                    try:
                        w.conn.send((i, *tasks[i]))
                    except (BrokenPipeError, OSError):
                        queue.appendleft(i)
                        requeue(w)
                        self._replace(w)
                        break
                    if not w.inflight:
                        w.deadline = now + timeout
                    w.inflight.append(i)
                    self.tasks_run += 1
            limits = [w.deadline for w in self._workers if w.inflight]
            limits += [
                w.started + self.cfg.worker_start_timeout_s for w in self._workers if not w.ready
            ]
            wait_s = max(0.0, min(limits) - now) if limits else None
            ready = set(wait([w.conn for w in self._workers], timeout=wait_s))
            for w in list(self._workers):
                if w.conn not in ready:
                    continue
                try:
                    msg = w.conn.recv()
                except (EOFError, OSError):  # the worker died
                    try:
                        code = w.proc.wait(timeout=1)
                    except subprocess.TimeoutExpired:
                        code = None
                    if w.inflight:
                        results[w.inflight.popleft()] = _Outcome(
                            "error", f"worker died (exit code {code})"
                        )
                        requeue(w)
                    elif not w.ready:
                        start_failures += 1
                    self._replace(w)
                    continue
                if msg is None:
                    continue
                kind = msg[0]
                if kind == "ready":
                    w.ready = True
                    start_failures = 0
                elif kind == "fatal":
                    self.close()
                    raise RuntimeError(f"math grader worker failed to start: {msg[1]}")
                elif kind == "result":
                    _, tid, status, detail = msg
                    if w.inflight and tid == w.inflight[0]:
                        w.inflight.popleft()
                        now = time.monotonic()
                        # the task's clock started at deadline - timeout
                        results[tid] = _Outcome(status, detail, now - (w.deadline - timeout))
                        w.deadline = now + timeout
            now = time.monotonic()
            for w in list(self._workers):
                if w.inflight and now >= w.deadline:
                    results[w.inflight.popleft()] = _Outcome(
                        "timeout", f"no result within {timeout:g}s (worker killed)", timeout
                    )
                    requeue(w)
                    self._replace(w)
                elif not w.ready and now >= w.started + self.cfg.worker_start_timeout_s:
                    start_failures += 1
                    self._replace(w)
            if start_failures >= 3:
                self.close()
                raise RuntimeError("math grader workers keep dying during start-up")
        return [r if r is not None else _Outcome("error", "lost task") for r in results]

    def close(self) -> None:
        for w in self._workers:
            try:
                w.conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        deadline = time.monotonic() + 0.5  # workers hold no state: no need to wait long
        for w in self._workers:
            try:
                w.proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            w.kill()
        self._workers.clear()


class _PoolHolder:
    def __init__(self) -> None:
        self.pool: _CheckerPool | None = None

    def close(self) -> None:
        if self.pool is not None and self.pool.owner_pid == os.getpid():
            self.pool.close()
        self.pool = None


# --------------------------------------------------------------------------------------------
# The grader
# --------------------------------------------------------------------------------------------
