"""A trial trained by N processes: ``torchrun`` inside the trial's Ray task.

:func:`experiments.trial.run_trial` calls :func:`train_with_torchrun` when the trial has
``resources.procs_per_trial`` > 1. It writes ``<trial dir>/torchrun/payload.json`` and runs::

    python -m experiments.trial_worker launch <trial pid> -- \\
        --standalone --local-addr 127.0.0.1 --nproc-per-node N --tee 3 \\
        --log-dir <trial dir>/torchrun/logs -m experiments.trial_worker <payload.json>

``launch`` arranges for torchrun to get SIGTERM when the trial's process dies (a killed Ray
worker, a cancelled task) and then execs ``python -m torch.distributed.run``; torchrun then
stops its ranks, which also die with it (SIGKILL) if torchrun itself is killed. torchrun keeps
the trial's lock (its file descriptor is passed on), so a new attempt waits for it.

Every rank runs :func:`archer.trainer.fit` with the same TrainConfig (one node: rendezvous on
127.0.0.1, a free port; on GPUs each rank takes ``cuda:LOCAL_RANK`` among the task's
``CUDA_VISIBLE_DEVICES``, which Ray set). Rank 0 alone writes events (an
:class:`~experiments.trial_events.EventLogger`), checkpoints and exports; the other ranks write
nothing to ``events.jsonl``. Stopping: every rank checks the driver's STOP file after each
logged step and the ranks agree (an all-reduce inside ``fit``), so all stop at the same step
and exit cleanly. Rank 0 writes ``torchrun/result.json`` (finished or pruned, the step, the
export directory); the parent reads it and evaluates, as for a one-process trial.

Output: torchrun tees every rank's stdout/stderr into the trial's log with a ``[defaultK]:``
prefix (and into ``torchrun/logs/``). A rank that fails (a Python error, or killed) makes
torchrun stop the others and exit non-zero; :func:`train_with_torchrun` then raises
:class:`TrialWorkerError` naming the first failed rank and its error (torchrun's "root cause"),
which fails the attempt; the scheduler's retry resumes from the latest checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

WORKDIR = "torchrun"
PAYLOAD = "payload.json"
RESULT = "result.json"
# torchrun's own variables: a trial launched from inside a torchrun job must not inherit them
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK",
                "GROUP_WORLD_SIZE", "ROLE_RANK", "ROLE_WORLD_SIZE", "ROLE_NAME", "MASTER_ADDR",
                "MASTER_PORT", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT",
                "TORCHELASTIC_MAX_RESTARTS", "TORCHELASTIC_USE_AGENT_STORE",
                "TORCHELASTIC_ERROR_FILE")
PROJECT_ROOT = Path(__file__).resolve().parents[1]
PR_SET_PDEATHSIG = 1


class TrialWorkerError(RuntimeError):
    """A training process of the trial failed (its rank and error in the message);
    ``error_type``: the qualified name of the exception it raised, when torchrun's summary
    gives one (``archer.config.ConfigError``), so that the scheduler can tell a configuration
    error (not retried) from a crash."""

    def __init__(self, message: str, error_type: str | None = None) -> None:
        super().__init__(message)
        self.error_type = error_type


# --------------------------------------------------------------------------------------------
# The parent (the trial's Ray task)
# --------------------------------------------------------------------------------------------


def torchrun_command(payload_path: Path, procs: int, log_dir: Path) -> list[str]:
    return [sys.executable, "-m", "experiments.trial_worker", "launch", str(os.getpid()), "--",
            "--standalone", "--local-addr", "127.0.0.1", f"--nproc-per-node={procs}",
            "--tee", "3", "--log-dir", str(log_dir), "-m", "experiments.trial_worker",
            str(payload_path)]


def child_env() -> dict[str, str]:
    """The ranks' environment: this process's (CUDA_VISIBLE_DEVICES from Ray included), this
    project first on PYTHONPATH (the ranks import the code the trial runs), no torchrun
    variables of an enclosing job."""
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV}
    paths = [str(PROJECT_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def train_with_torchrun(payload: dict[str, Any], out: Path, procs: int, log: Path,
                        keep_fds: tuple[int, ...] = ()) -> dict[str, Any]:
    """Train the trial with ``procs`` processes; returns rank 0's result (``status``
    ``finished`` or ``pruned``, ``step``, ``export_dir``). Raises :class:`TrialWorkerError`
    when a rank fails. ``log``: the trial's log (stdout/stderr already go there; its new part
    holds torchrun's failure summary). ``keep_fds``: descriptors torchrun inherits (the
    trial's lock)."""
    work = out / WORKDIR
    work.mkdir(parents=True, exist_ok=True)
    (work / RESULT).unlink(missing_ok=True)
    payload_path = work / PAYLOAD
    payload_path.write_text(json.dumps(payload, default=str) + "\n")
    sys.stdout.flush()
    sys.stderr.flush()
    offset = log.stat().st_size if log.is_file() else 0
    cmd = torchrun_command(payload_path, procs, work / "logs")
    print(f"launching {procs} training processes: {' '.join(cmd)}", flush=True)
    proc = subprocess.Popen(cmd, env=child_env(), stdin=subprocess.DEVNULL,
                            pass_fds=keep_fds)
    try:
        rc = wait_interruptibly(proc)
    except BaseException:  # interrupted: take the ranks down with us
        stop_ranks(proc)
        raise
    if rc != 0:
        text = read_from(log, offset)
        raise TrialWorkerError(failure_message(rc, text, procs), failure_type(text))
    if not (work / RESULT).is_file():
        raise TrialWorkerError(f"torchrun exited 0 but rank 0 wrote no {WORKDIR}/{RESULT}")
    return json.loads((work / RESULT).read_text())


STOP_WAIT_S = 600  # how long a stopped trial's ranks get to finish their step and save it


def stop_ranks(proc: subprocess.Popen, wait_s: float = STOP_WAIT_S) -> None:
    """Stop a trial's torchrun ``proc``: SIGTERM to each rank (torchrun's children), which
    finish the step under way and checkpoint it together (``TrainingInterrupted``), then
    torchrun exits. The ranks are signalled directly because torchrun, given SIGTERM itself,
    kills its ranks 30 s later, before a real model's step and checkpoint are done. After
    ``wait_s`` torchrun gets SIGTERM, then SIGKILL."""
    import psutil

    try:
        ranks = psutil.Process(proc.pid).children()
    except psutil.NoSuchProcess:
        ranks = []
    for rank in ranks:
        try:
            rank.send_signal(signal.SIGTERM)
        except psutil.NoSuchProcess:
            pass
    if ranks:
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            pass
    proc.terminate()  # torchrun passes it on, and kills its ranks 30 s later
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def wait_interruptibly(proc: subprocess.Popen, poll_s: float = 0.5) -> int:
    """``proc.wait()`` in short waits: Ray cancels a task (the study's Ctrl-C) by raising
    KeyboardInterrupt in its thread between bytecodes, which a single blocking ``waitpid``
    would hold back until the ranks had trained to the end."""
    while True:
        try:
            return proc.wait(timeout=poll_s)
        except subprocess.TimeoutExpired:
            continue


def read_from(path: Path, offset: int) -> str:
    if not path.is_file():
        return ""
    with path.open("rb") as f:
        f.seek(offset)
        return f.read().decode(errors="replace")


_ROOT_CAUSE = re.compile(r"Root Cause \(first observed failure\):(.*?)(?:\n=====|\Z)", re.S)


def _root_cause(text: str) -> tuple[str, str] | None:
    """(the block, its last line without ``traceback :``) of torchrun's failure summary in
    ``text``: the first failed rank, and its error or signal; None without a summary."""
    block = _ROOT_CAUSE.search(text)
    if block is None:
        return None
    body = block.group(1)
    lines = [line.strip() for line in body.splitlines() if line.strip()]
    return body, re.sub(r"^traceback\s*:\s*", "", lines[-1]) if lines else ""


def failure_type(text: str) -> str | None:
    """The exception the first failed rank raised, as its traceback's last line names it
    (``archer.config.ConfigError``; a builtin bare: ``ValueError``), from torchrun's failure
    summary in ``text``; None for a signal or no summary."""
    cause = _root_cause(text)
    found = re.match(r"([A-Za-z_][\w.]*(?:Error|Exception|Interrupted)):", cause[1]) \
        if cause else None
    return found.group(1) if found else None


def failure_message(rc: int, text: str, procs: int) -> str:
    """One line: which rank failed first and why, from torchrun's failure summary in
    ``text`` (the log written while it ran); a generic line when there is none."""
    cause = _root_cause(text)
    if cause is None:
        return (f"{procs} training processes: torchrun exited with code {rc} (see the "
                "trial's trial.log)")
    body, last = cause
    rank = re.search(r"^\s*rank\s*:\s*(\d+)", body, re.M)
    code = re.search(r"^\s*exitcode\s*:\s*(-?\d+)[^\n]*?(?:\((SIG\w+)\))?\s*$", body, re.M)
    who = f"rank {rank.group(1)}" if rank else "a rank"
    how = ""
    if code:
        how = f" (signal {code.group(2)})" if code.group(2) else f" (exit code {code.group(1)})"
    return f"training process {who} of {procs} failed{how}: {last}"[:500]


# --------------------------------------------------------------------------------------------
# The launcher and the ranks
# --------------------------------------------------------------------------------------------


def die_with_parent(sig: int) -> None:
    """Linux: this process gets ``sig`` when its parent dies (nothing elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover  (no prctl: best effort)
        pass


def launch(parent_pid: int, torchrun_args: list[str]) -> None:
    """Become ``python -m torch.distributed.run <args>``, stopped when ``parent_pid`` dies."""
    die_with_parent(signal.SIGTERM)
    if os.getppid() != parent_pid:  # died before the death signal was armed
        raise SystemExit(f"trial process {parent_pid} is gone; not starting torchrun")
    os.execv(sys.executable, [sys.executable, "-m", "torch.distributed.run", *torchrun_args])


def run_rank(payload_path: Path) -> None:
    """One rank: train with the payload's TrainConfig; rank 0 logs events and the result."""
    from archer.tracking import NullLogger
    from archer.train_config import TrainConfig
    from archer.trainer import TrainingInterrupted, TrainingStopped, fit
    from experiments.trial_events import EVENTS, STOP, EventLog, EventLogger

    die_with_parent(signal.SIGKILL)  # torchrun killed: no orphan rank keeps training
    payload = json.loads(payload_path.read_text())
    for key, value in (payload.get("env") or {}).items():
        os.environ.setdefault(key, value)
    rank = int(os.environ.get("RANK", "0"))
    out = Path(payload["train"]["out_dir"])
    stop_file = out / STOP
    cfg = TrainConfig.from_dict(payload["train"])
    if rank == 0:
        # the STOP file is checked by every rank through `stop` (collectively), not here
        logger = EventLogger(EventLog(out / EVENTS), payload["run_id"], stop_file=None,
                             system_metrics=bool(payload.get("system_metrics")))
    else:
        logger = NullLogger(payload["run_id"])
    try:
        result = fit(cfg, logger=lambda _run_id: logger, progress=False,
                     stop=lambda _step: stop_file.is_file())
    except TrainingInterrupted:
        raise  # a signal (checkpointed): the trial failed, resumable; not a scheduler's prune
    except TrainingStopped as stopped:
        print(f"stopped by the scheduler after step {stopped.step}", flush=True)
        outcome = {"status": "pruned", "step": stopped.step, "export_dir": None}
    else:
        export_dir = str(result.export_dir) if result.export_dir else None
        outcome = {"status": "finished", "step": result.state.step, "export_dir": export_dir}
    if rank == 0:
        path = out / WORKDIR / RESULT
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(outcome) + "\n")
        os.replace(tmp, path)


def main(argv: list[str]) -> None:
    if argv[:1] == ["launch"]:
        if len(argv) < 4 or argv[2] != "--":
            raise SystemExit("usage: python -m experiments.trial_worker launch <parent pid> -- "
                             "<torchrun args>")
        launch(int(argv[1]), argv[3:])
        return
    if len(argv) != 1:
        raise SystemExit("usage: python -m experiments.trial_worker <payload.json> (under "
                         "torchrun)")
    from torch.distributed.elastic.multiprocessing.errors import record

    record(run_rank)(Path(argv[0]))  # an error reaches torchrun's failure summary


if __name__ == "__main__":
    main(sys.argv[1:])
