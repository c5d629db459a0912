"""The study scheduler: trials as Ray tasks with declared resources, retried from their
checkpoints, resumable as a whole, logged to MLflow by one writer, shown live.

- **Ray**: a local Ray (``num_cpus`` CPUs, no dashboard) by default, or an existing cluster
  (``ray_address``, e.g. ``auto`` or ``<head ip>:6379``). Each trial is one task
  (``experiments.trial.run_trial``: train, then evaluate) with the study's resources
  (``num_cpus``/``num_gpus``, custom resources, ``SPREAD`` or default placement); at most
  ``max_concurrent`` run at once. A trial with ``procs_per_trial`` N > 1 trains with N
  processes (``torchrun`` inside its task, on the task's node and GPUs). Where each attempt ran (Ray node id, hostname, node IP) is
  recorded in the study state, the trial's log and its MLflow run (``archer.node_*`` tags).
- **Retries**: a trial whose task fails (an exception, or its worker process killed) is
  submitted again up to ``max_retries`` times; the trainer resumes from the trial's latest
  checkpoint, so finished steps are not redone. A configuration error (:data:`NOT_RETRIED`:
  a bad setting, a malformed data file, a reward that cannot be loaded; also when a training
  process of a multi-process trial raised it) fails the trial at once: another attempt would
  fail the same way.
- **Stopping**: SIGINT / SIGTERM (Ctrl-C, ``kill``) stop the study cleanly: no trial starts,
  the running ones are asked to stop (their trainers finish the step under way and checkpoint
  it) and are left ``pending`` with that attempt not counted against ``max_retries``, and
  :meth:`Scheduler.run` raises :class:`StudyInterrupted`; a second signal stops them at once.
  Running the study again resumes them from their checkpoints.
- **Resumable study**: ``<study dir>/study.json`` records every trial by identity hash
  (status, attempts, MLflow run, how far its event file was uploaded). Running the study
  again skips finished trials and resumes the others (also after the scheduler itself was
  killed: a trial marked running by a dead scheduler is resumed).
- **Per-trial logs**: ``<trial dir>/trial.log`` (stdout/stderr of its attempts);
  ``events.jsonl`` is what the trial reported.
- **Single MLflow writer**: the driver tails each trial's ``events.jsonl`` and replays it
  through :class:`archer.tracking.hierarchy.StudyTracker`.
- **Live view**: a table (trial, status, attempt, step, latest metric) redrawn in place on a
  terminal, one line per status change otherwise.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from archer.config import ConfigError
from archer.data.datasets import DataFormatError
from archer.rewards import RewardSpecError
from experiments.study import TrialSpec
from experiments.trial_events import EVENTS, STOP, EventLog

STATE = "study.json"
PASS_ENV = ("ARCHER_DATA_DIR", "ARCHER_CACHE_DIR", "HF_HOME", "HF_HUB_OFFLINE")
SHOWN_METRICS = ("val/accuracy", "val/reward_mean", "reward/mean")
# errors of a trial that another attempt would repeat: the trial fails without a retry
NOT_RETRIED = (ConfigError, DataFormatError, RewardSpecError)


def not_retried(err: BaseException) -> bool:
    """Whether a trial's error is one another attempt would repeat (:data:`NOT_RETRIED`),
    also as Ray's task error wrapping it (its ``cause``) and as raised in a training process
    of a multi-process trial (``TrialWorkerError.error_type``)."""
    cause = getattr(err, "cause", err)
    if isinstance(cause, NOT_RETRIED):
        return True
    named = getattr(cause, "error_type", None)
    return named in {f"{c.__module__}.{c.__qualname__}" for c in NOT_RETRIED}


class StudyInterrupted(Exception):
    """SIGINT / SIGTERM stopped the study (see the module docstring); ``signum`` says which,
    ``trials`` names the trials it stopped (left pending, resumed by a rerun)."""

    def __init__(self, study: str, signum: int, trials: list[str], at_once: bool) -> None:
        how = "stopped at once" if at_once else "checkpointed and stopped"
        stopped = f"trial(s) {', '.join(trials)} {how}, left pending" if trials else \
            "no trial was running"
        super().__init__(f"{signal.Signals(signum).name} received: study {study} stopped; "
                         f"{stopped}")
        self.signum, self.trials = signum, trials


# --------------------------------------------------------------------------------------------
# State
# --------------------------------------------------------------------------------------------


@dataclass
class TrialState:
    number: int
    name: str
    hash: str
    out_dir: str
    total_steps: int
    status: str = "pending"  # pending | running | finished | failed | pruned
    attempts: int = 0
    interrupted: int = 0  # attempts stopped by SIGINT/SIGTERM: not counted as retries
    run_id: str | None = None
    step: int = 0
    metrics: dict[str, float] = field(default_factory=dict)  # latest value per metric
    offset: int = 0  # bytes of events.jsonl uploaded to MLflow
    uploaded_steps: list[int] = field(default_factory=list)
    eval_run_ids: list[str] = field(default_factory=list)
    eval_metrics: dict[str, float] = field(default_factory=dict)
    export_dir: str | None = None
    error: str | None = None
    objective: float | None = None
    compute_s: float = 0.0  # training seconds (sum of time/step over uploaded steps)
    started: float | None = None
    ended: float | None = None
    node_id: str | None = None  # Ray node of the latest attempt
    hostname: str | None = None
    node_ip: str | None = None
    nodes: list[str] = field(default_factory=list)  # Ray node id of each started attempt

    def node(self) -> str:
        """``host/<node id prefix>`` of the latest attempt ("-" before it started)."""
        if not self.node_id:
            return "-"
        return f"{self.hostname or self.node_ip or '?'}/{self.node_id[:8]}"

    def latest(self) -> tuple[str, float] | None:
        for key in SHOWN_METRICS:
            if key in self.metrics:
                return key, self.metrics[key]
        return None


@dataclass
class StudyState:
    study: str
    experiment: str
    tracking_uri: str
    parent_run_id: str | None = None
    status: str = "running"
    trials: dict[str, TrialState] = field(default_factory=dict)  # hash -> state
    updated: float = 0.0
    registered: str | None = None  # "<model name>/<version>" of the best trial's policy
    best: str | None = None  # hash of the best trial
    current: list[str] = field(default_factory=list)  # hashes of the latest invocation

    def shown(self) -> list[TrialState]:
        """The trials of the latest invocation (all when it is not recorded)."""
        keep = set(self.current) or set(self.trials)
        return sorted((t for h, t in self.trials.items() if h in keep), key=lambda t: t.number)

    @classmethod
    def load(cls, path: Path) -> StudyState | None:
        if not path.is_file():
            return None
        data = json.loads(path.read_text())
        trials = {h: TrialState(**t) for h, t in data.pop("trials").items()}
        return cls(**data, trials=trials)

    def save(self, path: Path) -> None:
        self.updated = time.time()
        data = self.__dict__ | {"trials": {h: t.__dict__ for h, t in self.trials.items()}}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
        os.replace(tmp, path)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self.shown():
            out[t.status] = out.get(t.status, 0) + 1
        return out


# --------------------------------------------------------------------------------------------
# Progress view
# --------------------------------------------------------------------------------------------


def format_table(state: StudyState) -> str:
    rows = [("#", "trial", "status", "try", "step", "node", "latest metric")]
    for t in state.shown():
        latest = t.latest()
        metric = f"{latest[0]}={latest[1]:.4g}" if latest else "-"
        if t.objective is not None:
            metric += f"  objective={t.objective:.4g}"
        if t.error and t.status == "failed":
            metric = t.error[:60]
        rows.append((str(t.number), t.name, t.status, str(t.attempts),
                     f"{t.step}/{t.total_steps}", t.node(), metric))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    counts = ", ".join(f"{k} {v}" for k, v in sorted(state.counts().items()))
    head = f"study {state.study} ({state.status}): {counts}"
    return "\n".join([head, *lines])


class ProgressView:
    """Live table on a terminal (redrawn at most every ``interval`` s), else a line per
    trial status change. ``enabled=None``: the table only when ``stream`` is a terminal."""

    def __init__(self, enabled: bool | None = None, stream=None, interval: float = 1.0):
        self.stream = stream or sys.stderr
        tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.live = tty if enabled is None else bool(enabled) and tty
        self.quiet = enabled is False
        self.interval = interval
        self._last = 0.0
        self._seen: dict[str, tuple[str, int]] = {}

    def update(self, state: StudyState, force: bool = False) -> None:
        if self.quiet:
            return
        if self.live:
            now = time.monotonic()
            if force or now - self._last >= self.interval:
                self.stream.write("\x1b[H\x1b[2J" + format_table(state) + "\n")
                self.stream.flush()
                self._last = now
            return
        for t in state.shown():
            key = (t.status, t.attempts)
            if self._seen.get(t.hash) != key:
                self._seen[t.hash] = key
                latest = t.latest()
                extra = f" {latest[0]}={latest[1]:.4g}" if latest else ""
                err = f" ({t.error})" if t.error and t.status == "failed" else ""
                self.stream.write(f"[{state.study}] {t.name}: {t.status} (attempt {t.attempts}"
                                  f", step {t.step}/{t.total_steps}){extra}{err}\n")
        self.stream.flush()


# --------------------------------------------------------------------------------------------
# Sources of trials
# --------------------------------------------------------------------------------------------


class TrialSource:
    """What the scheduler runs. ``next_trial()``: a trial to start now or None;
    ``exhausted()``: no more trials will come; ``on_update(trial, state, tracker)``: called
    after new events were uploaded, returns True to stop (prune) the trial;
    ``on_done(trial, state, tracker)``: the trial ended (finished, failed or pruned), before
    its MLflow run is terminated; ``on_saved(trial, state)``: after that end is on disk (the
    run terminated, the study state saved): where to record it elsewhere (Optuna), so that a
    driver killed in between leaves the end recorded here and a rerun repeats only that."""

    def next_trial(self) -> TrialSpec | None:
        raise NotImplementedError

    def exhausted(self) -> bool:
        raise NotImplementedError

    def on_update(self, trial: TrialSpec, state: TrialState, tracker) -> bool:
        return False

    def on_done(self, trial: TrialSpec, state: TrialState, tracker) -> None:
        pass

    def on_saved(self, trial: TrialSpec, state: TrialState) -> None:
        pass

    def on_poll(self) -> None:
        """Called on every turn of the scheduler's loop (e.g. a heartbeat)."""


class ListSource(TrialSource):
    def __init__(self, trials: list[TrialSpec]) -> None:
        self.queue = list(trials)

    def next_trial(self) -> TrialSpec | None:
        return self.queue.pop(0) if self.queue else None

    def exhausted(self) -> bool:
        return not self.queue


# --------------------------------------------------------------------------------------------
# Ray
# --------------------------------------------------------------------------------------------


def init_ray(address: str | None = None, num_cpus: int | None = None,
             num_gpus: int | None = None) -> None:
    """Connect to ``address`` (an existing cluster), or start a local Ray without the
    dashboard; nothing when Ray is already initialised in this process."""
    import ray

    if ray.is_initialized():
        return
    if address:
        try:
            ray.init(address=address, log_to_driver=False)
        except (ConnectionError, RuntimeError) as err:
            raise ConnectionError(
                f"cannot connect to the Ray cluster at --ray-address {address!r} ({err}). Start "
                "one with `ray start --head --port=6379` and pass <head ip>:6379 (or `auto` on "
                "a node of the cluster); with Ray's token authentication the driver needs the "
                "cluster's token (RAY_AUTH_MODE=token and RAY_AUTH_TOKEN or "
                "~/.ray/auth_token)") from None
    else:
        ray.init(num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False,
                 log_to_driver=False)


def task_options(resources: dict[str, Any], name: str) -> dict[str, Any]:
    """Ray ``.options()`` of a trial task from its resources (see ``study.check_resources``)."""
    options: dict[str, Any] = {"num_cpus": resources.get("num_cpus", 1),
                               "num_gpus": resources.get("num_gpus", 0), "name": name}
    if resources.get("custom"):
        options["resources"] = dict(resources["custom"])
    if resources.get("strategy", "DEFAULT") != "DEFAULT":
        options["scheduling_strategy"] = resources["strategy"]
    return options


def _trial_task(payload: dict[str, Any]) -> dict[str, Any]:
    from experiments.trial import run_trial

    interruptible()
    return run_trial(payload)


def interruptible() -> None:
    """Let ``ray.cancel`` stop this task (the study's Ctrl-C / SIGTERM): Ray raises
    KeyboardInterrupt through ``_thread.interrupt_main``, which does nothing while SIGINT is
    ignored, and a Ray started from a background job (``nohup ... &``, a CI runner) hands its
    workers an ignored SIGINT. Python's own handler is put back (main thread only)."""
    import signal
    import threading

    if threading.current_thread() is threading.main_thread() and \
            signal.getsignal(signal.SIGINT) in (signal.SIG_IGN, signal.SIG_DFL, None):
        signal.signal(signal.SIGINT, signal.default_int_handler)


_REMOTE = None


def _remote():
    global _REMOTE
    if _REMOTE is None:
        import ray

        _REMOTE = ray.remote(max_retries=0)(_trial_task)  # retries are the scheduler's
    return _REMOTE


# --------------------------------------------------------------------------------------------
# The scheduler
# --------------------------------------------------------------------------------------------


@dataclass
class _Running:
    trial: TrialSpec
    ref: Any


class Scheduler:
    def __init__(self, study: str, study_dir: str | Path, *, experiment: str,
                 tracking_uri: str | None = None, max_concurrent: int = 2,
                 max_retries: int = 2, ray_address: str | None = None,
                 num_cpus: int | None = None, progress: bool | None = None,
                 poll_s: float = 0.25, system_metrics: bool = False,
                 study_params: dict[str, Any] | None = None, study_config: str = "",
                 observer: Callable[[StudyState], None] | None = None,
                 stream=None) -> None:
        from archer.tracking.hierarchy import StudyTracker

        self.study = study
        self.dir = Path(study_dir).resolve()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state_path = self.dir / STATE
        self.max_concurrent = max_concurrent
        self.max_retries = max_retries
        self.ray_address, self.num_cpus = ray_address, num_cpus
        self.poll_s = poll_s
        self.system_metrics = system_metrics
        self.observer = observer
        self.view = ProgressView(progress, stream=stream)
        self.tracker = StudyTracker(study, self.dir, experiment, tracking_uri)
        previous = StudyState.load(self.state_path)
        if previous is not None and previous.tracking_uri != self.tracker.uri:
            raise ValueError(f"study {study} was logged to {previous.tracking_uri}; rerun it "
                             f"with that tracking URI (got {self.tracker.uri})")
        self.state = previous or StudyState(study=study, experiment=experiment,
                                            tracking_uri=self.tracker.uri)
        self.state.status = "running"
        config_path = self.dir / "study.yaml"
        config_path.write_text(study_config)
        self.state.parent_run_id = self.tracker.open_study_run(
            self.state.parent_run_id, study_params or {}, config_path)
        self.save()

    def save(self) -> None:
        self.state.save(self.state_path)

    # ------------------------------------------------------------------------------------------

    def is_finished(self, trial: TrialSpec) -> bool:
        t = self.state.trials.get(trial.hash)
        return t is not None and t.status in ("finished", "pruned")

    def _prepare(self, trial: TrialSpec) -> TrialState:
        """State + MLflow run for ``trial`` (new, or continued from an earlier invocation)."""
        t = self.state.trials.get(trial.hash)
        if t is None:
            t = TrialState(number=trial.number, name=trial.name, hash=trial.hash,
                           out_dir=trial.out_dir, total_steps=int(trial.train["total_steps"]))
            self.state.trials[trial.hash] = t
        if trial.hash not in self.state.current:
            self.state.current.append(trial.hash)
        out = Path(trial.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        config_path = out / "config.yaml"
        if not config_path.is_file():
            import yaml

            config_path.write_text(yaml.safe_dump(trial.config, sort_keys=False))
        if trial.hash not in self.tracker.loggers:
            t.run_id = self.tracker.open_trial_run(trial, t.run_id, self.state.parent_run_id,
                                                   config_path)
        self._drain(trial, t)  # events a killed scheduler had not uploaded yet
        (out / STOP).unlink(missing_ok=True)
        return t

    def _submit(self, trial: TrialSpec, t: TrialState) -> _Running:
        t.attempts += 1
        t.status = "running"
        t.error = None
        t.started = t.started or time.time()
        payload = {"train": trial.train, "run_id": t.run_id, "attempt": t.attempts,
                   "eval": trial.eval, "system_metrics": self.system_metrics,
                   "procs": trial.procs,
                   "env": {k: os.environ[k] for k in PASS_ENV if k in os.environ}}
        ref = _remote().options(**task_options(trial.resources, f"{self.study}/{trial.name}")
                                ).remote(payload)
        self.save()
        return _Running(trial, ref)

    def _drain(self, trial: TrialSpec, t: TrialState) -> bool:
        """Upload the trial's new events to MLflow; True when there were any."""
        events, offset = EventLog(Path(trial.out_dir) / EVENTS).read_from(t.offset)
        if not events:
            return False
        uploaded = set(t.uploaded_steps)
        for event in events:
            self.tracker.apply(trial.hash, event, uploaded)
            if event["op"] == "metrics":
                t.step = int(event["step"])
                t.metrics.update({k: v for k, v in event["values"].items()
                                  if isinstance(v, (int, float))})
                t.compute_s += float(event["values"].get("time/step", 0.0) or 0.0)
            elif event["op"] == "rewind":
                t.step = int(event["step"])
            elif event["op"] == "start" and event.get("node_id"):
                t.node_id, t.hostname = event["node_id"], event.get("hostname")
                t.node_ip = event.get("node_ip")
                t.nodes.append(event["node_id"])
                self.tracker.loggers[trial.hash].set_tags({"archer.nodes": ",".join(t.nodes)})
            elif event["op"] == "eval":
                stamp = int(event["time"] * 1000) if "time" in event else None
                t.eval_run_ids = self.tracker.log_evaluations(trial, t.run_id, event["results"],
                                                              timestamp_ms=stamp)
                t.eval_metrics = {f"{r['benchmark']}/{k}": v for r in event["results"]
                                  for k, v in r["metrics"].items()
                                  if isinstance(v, (int, float))}
            elif event["op"] == "done":
                t.export_dir = event.get("export_dir")
        t.uploaded_steps = sorted(uploaded)
        t.offset = offset
        self.save()
        return True

    def _finish(self, run: _Running, t: TrialState, status: str, source: TrialSource,
                error: str | None = None) -> None:
        t.status = status
        t.error = error
        t.ended = time.time()
        mlflow_status = {"finished": "FINISHED", "pruned": "KILLED"}.get(status, "FAILED")
        if status == "pruned":
            self.tracker.loggers[run.trial.hash].set_tags({"archer.pruned": "true"})
        source.on_done(run.trial, t, self.tracker)  # may log the objective into the run
        self.tracker.finish_trial(run.trial.hash, mlflow_status)
        self.save()
        source.on_saved(run.trial, t)  # e.g. tell Optuna, once the end is on disk

    def run(self, source: TrialSource) -> StudyState:
        """Run the source's trials; raises :class:`StudyInterrupted` after SIGINT/SIGTERM."""
        import ray

        from archer.trainer import StopOnSignal, StoppedAtOnce

        init_ray(self.ray_address, self.num_cpus)
        running: dict[Any, _Running] = {}
        signals = StopOnSignal(say=self._say, action="checkpointing each running trial")
        stopped: set[str] = set()  # hashes of the trials running when the signal came
        try:
            with signals:
                self._loop(source, running, signals, stopped)
        except StoppedAtOnce:  # a second signal: the finally below stops them at once
            stopped |= {job.trial.hash for job in running.values()}
        finally:
            for job in running.values():  # stopped at once (or the driver failed)
                ray.cancel(job.ref, force=True)
                t = self.state.trials[job.trial.hash]
                t.status, t.interrupted = "pending", t.interrupted + 1
            self.save()
        if signals.received is not None:
            self.state.status = "interrupted"
            self.tracker.finish_study("KILLED", {})
            self.save()
            self.view.update(self.state, force=True)
            names = [t.name for t in self.state.shown()
                     if t.hash in stopped and t.status == "pending"]
            raise StudyInterrupted(self.study, signals.received, names, at_once=bool(running))
        counts = self.state.counts()
        self.state.status = "finished" if set(counts) <= {"finished", "pruned"} else "failed"
        self.tracker.finish_study("FINISHED" if self.state.status == "finished" else "FAILED",
                                  {f"trials_{k}": float(v) for k, v in counts.items()})
        self.save()
        self.view.update(self.state, force=True)
        return self.state

    def _say(self, text: str) -> None:
        self.view.stream.write(f"[{self.study}] {text}\n")
        self.view.stream.flush()

    def _loop(self, source: TrialSource, running: dict, signals, stopped: set[str]) -> None:
        """Submit, watch and settle trials until the source is done or a signal came (then
        ask the running trials to stop, and wait for them)."""
        import ray

        stopping = False
        while True:
            if signals.received is not None and not stopping:
                stopping = True
                for job in running.values():  # the task's SIGINT: its trainer checkpoints
                    ray.cancel(job.ref, force=False)
                    stopped.add(job.trial.hash)
            while not stopping and len(running) < self.max_concurrent:
                trial = source.next_trial()
                if trial is None:
                    break
                if self.is_finished(trial):  # a rerun: identity hash already done
                    continue
                t = self._prepare(trial)
                job = self._submit(trial, t)
                running[job.ref] = job
            if not running:
                if stopping or source.exhausted():
                    break
                time.sleep(self.poll_s)
                continue
            self.view.update(self.state)
            ready, _ = ray.wait(list(running), num_returns=1, timeout=self.poll_s)
            for job in list(running.values()):
                t = self.state.trials[job.trial.hash]
                if self._drain(job.trial, t) and t.status == "running":
                    if source.on_update(job.trial, t, self.tracker):
                        (Path(job.trial.out_dir) / STOP).touch()
            for ref in ready:
                job = running.pop(ref)
                if not (stopping and self._stopped(job)):
                    self._settle(job, source, running)
            source.on_poll()
            if self.observer is not None:
                self.observer(self.state)

    def _settle(self, job: _Running, source: TrialSource, running: dict) -> None:
        import ray

        t = self.state.trials[job.trial.hash]
        try:
            result = ray.get(job.ref)
        except Exception as err:  # noqa: BLE001  (task error or worker crash)
            self._drain(job.trial, t)
            message = _error_line(err)
            if not_retried(err):
                message += " (a configuration error: not retried)"
            elif t.attempts - t.interrupted <= self.max_retries:
                t.error = message
                retry = self._submit(job.trial, t)
                running[retry.ref] = retry
                return
            self._finish(job, t, "failed", source, error=message)
            return
        self._drain(job.trial, t)
        self._finish(job, t, result["status"], source)

    def _stopped(self, job: _Running) -> bool:
        """A trial that ended after the study was asked to stop: True when the stop ended it
        (it is left pending, its MLflow run KILLED until a rerun reopens it, and the attempt
        is not counted as a retry); False when it finished (or was pruned) anyway."""
        import ray

        t = self.state.trials[job.trial.hash]
        try:
            ray.get(job.ref)
        except Exception:  # noqa: BLE001  (TrainingInterrupted, or cancelled before it began)
            self._drain(job.trial, t)
            t.status, t.interrupted, t.error = "pending", t.interrupted + 1, None
            self.tracker.finish_trial(job.trial.hash, "KILLED")
            self.save()
            return True
        return False


def _error_line(err: BaseException) -> str:
    text = str(err).strip()
    lines = [line for line in text.splitlines() if line.strip()]
    kind = type(err).__name__
    if "WorkerCrashed" in kind or "died" in text.lower() and "worker" in text.lower():
        return f"{kind}: the trial's worker process died"
    return f"{kind}: {lines[-1] if lines else ''}"[:300]


def objective_value(t: TrialState, metric: str) -> float | None:
    """The trial's objective: its last value of ``metric`` (training/validation metrics),
    else an evaluation metric ``<benchmark>/<metric>``; None when it has neither."""
    value = t.metrics.get(metric, t.eval_metrics.get(metric))
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None
