"""One trial, inside its worker process: train (resuming from the latest checkpoint), then
evaluate; everything it would log goes to ``<trial dir>/events.jsonl``.

The trial never talks to MLflow (nor to Optuna): the study's driver is the single writer
(``archer.tracking.hierarchy``), so parallel trials cannot lock a SQLite store or lose
data. Events are appended one JSON object per line and flushed::

    {"op": "start", "attempt": 2, "pid": 123, "resume_step": 3, "time": ...,
     "node_id": "<Ray node id>", "hostname": "...", "node_ip": "..."}
    {"op": "params", "values": {...}}             (a new run only)
    {"op": "rewind", "step": 3, "metrics": {...}, "time": ...} (a resumed run)
    {"op": "metrics", "step": 4, "values": {...}, "time": ...}
    {"op": "system", "step": 4, "values": {...}, "time": ...}  (system metrics, when asked for)
    {"op": "eval", "results": [...], "time": ...} (evals.scoring results per benchmark)
    {"op": "done", "status": "finished" | "pruned", "step": 6, "export_dir": "..."}

``time`` is when the trial measured the values; the driver uploads metrics with that
timestamp, so uploading the same event twice (a driver killed between an upload and saving
how far it got) gives MLflow identical points, which its SQL store keeps once.

A process killed mid-write leaves a torn last line; the next attempt cuts it off before it
appends (:meth:`EventLog.repair`), and readers only consume complete lines.

Stopping (Optuna pruning): the driver creates ``<trial dir>/STOP``; the trial's logger sees it
when the step's metrics are logged, which is after that step's checkpoint, and raises
:class:`TrialStopped`; the trial ends cleanly as ``pruned``.

Several training processes (``resources.procs_per_trial`` > 1, the payload's ``procs``): the
task runs ``torchrun`` and waits for it (:mod:`experiments.trial_worker`); rank 0 writes the
training events, every rank checks STOP at the same point of the step; the lock, the
``start`` event, the log and the evaluation stay this process's.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from archer.config import ConfigError
from experiments.trial_events import EVENTS, STOP, EventLog, EventLogger, TrialStopped

__all__ = ["EVENTS", "LOG", "LOCK", "RESULT", "STOP", "EventLog", "EventLogger", "TrialStopped",
           "evaluate", "run_trial"]

LOG = "trial.log"
RESULT = "result.json"
LOCK = "trial.lock"
# the event log and its writer live in experiments.trial_events (imported, and re-exported,
# here): experiments.trial_worker imports them from there, not from this module


@contextmanager
def redirect_output(path: Path):
    """fd-level redirection of stdout/stderr to ``path`` (the per-trial log), restored after
    (Ray reuses worker processes between tasks)."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with path.open("a") as f:
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def gym_eval_data(train: dict[str, Any]) -> dict[str, Any]:
    """The ``gym`` benchmark's data config for a trial: the held-out split of the trial's own
    reasoning-gym training data (the problems its periodic validation uses)."""
    data = train.get("data") or {}
    if data.get("file"):
        raise ValueError(f"benchmark gym evaluates a reasoning-gym task, but this trial trains "
                         f"on the data file {data['file']!r}")
    return {"task": data["task"], "size": int(data["size"]), "seed": int(data.get("seed", 0)),
            "val_size": int(train["val_size"]), "task_config": dict(data.get("task_config")
                                                                     or {})}


def gym_answer(train: dict[str, Any]) -> str:
    """How benchmark gym reads answers for a trial: as its training reward reads them."""
    return "last_number" if train.get("reward") == "reasoning_gym_last_number" else "strict"


def evaluate(export_dir: Path, spec: dict[str, Any], out_dir: Path,
             train: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Evaluate the trial's final policy with the evaluation harness (``evals/``): per
    benchmark a resumable ``samples.jsonl``, then scores; returns the results (with ``_dir``
    for the artifacts). ``train`` (the trial's TrainConfig dict) gives the ``gym``
    benchmark its problems and prompt template."""
    from evals.registry import BENCHMARKS, GYM_SOURCE, make_contract, problems_for
    from evals.runner import generate_samples, make_backend
    from evals.scoring import score_samples

    batch_size = int(spec.get("batch_size") or 8)
    engine = spec.get("engine") or "hf"  # the spec's engine/dtype (a recipe's: vllm, bf16)
    backend, tokenizer = make_backend(engine, export_dir, batch_size=batch_size,
                                      device="cuda" if _has_cuda() else "cpu",
                                      dtype=spec.get("dtype") or "float32",
                                      gpu_memory_utilization=float(
                                          spec.get("gpu_memory_utilization") or 0.9),
                                      tensor_parallel_size=int(
                                          spec.get("vllm_tensor_parallel_size") or 1),
                                      max_model_len=spec.get("vllm_max_model_len"))
    overrides = {k: spec[k] for k in ("limit", "k", "max_new_tokens", "temperature", "top_p",
                                      "seed") if spec.get(k) is not None}
    results = []
    try:
        for name in spec["benchmarks"]:
            bdir = out_dir / name
            extra: dict[str, Any] = {}
            if BENCHMARKS.get(name).source == GYM_SOURCE:
                if train is None:
                    raise ValueError("benchmark gym needs the trial's training config")
                extra = {"data_config": gym_eval_data(train), "template": train.get("template"),
                         "gym_answer": gym_answer(train)}
            try:
                contract = make_contract(name, tokenizer=tokenizer, **overrides, **extra)
            except (ValueError, FileNotFoundError) as err:  # the spec (or its data) is wrong: not
                raise ConfigError(f"eval benchmark {name}: {err}") from err  # worth a retry
            problems = problems_for(contract)
            generate_samples(contract, problems, backend, bdir / "samples.jsonl",
                             tokenizer=tokenizer, batch_size=batch_size, model=str(export_dir),
                             engine=engine, progress=False)
            res = score_samples(bdir / "samples.jsonl")
            res["_dir"] = str(bdir)
            results.append(res)
    finally:
        close = getattr(backend, "close", None)  # a vLLM engine's processes and memory
        if close is not None:
            close()
    return results


def placement() -> dict[str, str]:
    """Where this process runs: ``hostname``, and inside a Ray task the Ray ``node_id`` and
    ``node_ip`` (several Ray nodes may share a host)."""
    import socket

    out = {"hostname": socket.gethostname()}
    try:
        import ray

        if ray.is_initialized():
            ctx = ray.get_runtime_context()
            out["node_id"] = ctx.get_node_id()
            out["node_ip"] = ray.util.get_node_ip_address()
    except Exception:  # noqa: BLE001  (outside Ray: the hostname is all there is)
        pass
    return out


def release_accelerator_memory() -> None:
    """Before a trial's evaluation loads its engine: collect what the finished training left
    (its policy, reference and sampler, whose vLLM engine ``fit`` has shut down) and hand the
    cached CUDA blocks back, so the evaluation engine (vLLM sizes its KV cache from the free
    memory) sees the GPU as the training found it. A no-op without CUDA."""
    import gc

    gc.collect()
    if _has_cuda():
        import torch

        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # noqa: BLE001
        return False


def run_trial(payload: dict[str, Any]) -> dict[str, Any]:
    """Train + evaluate one trial (the body of the Ray task). ``payload``: ``train``
    (TrainConfig dict), ``run_id`` (the tracking run the driver made), ``attempt``, ``eval``
    (spec or None), ``env`` (variables to set), ``system_metrics``, ``procs`` (training
    processes; > 1: torchrun, see :mod:`experiments.trial_worker`)."""
    for key, value in (payload.get("env") or {}).items():
        os.environ.setdefault(key, value)
    out = Path(payload["train"]["out_dir"])
    out.mkdir(parents=True, exist_ok=True)
    with open(out / LOCK, "w") as lock:
        # one attempt at a time: an attempt left running by a killed scheduler holds the lock
        # until it dies, so a new attempt never writes beside it
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _run_locked(payload, out, lock.fileno())


def _run_locked(payload: dict[str, Any], out: Path, lock_fd: int) -> dict[str, Any]:
    from archer.checkpoint import latest_checkpoint
    from archer.train_config import TrainConfig
    from archer.trainer import fit

    events = EventLog(out / EVENTS)
    events.repair()
    where = placement()
    with redirect_output(out / LOG):
        print(f"=== trial {out.name} attempt {payload['attempt']} pid {os.getpid()} "
              f"host {where['hostname']} node {where.get('node_id') or '-'} "
              f"ip {where.get('node_ip') or '-'} {time.strftime('%Y-%m-%d %H:%M:%S')}",
              flush=True)
        ckpt = latest_checkpoint(out)
        resume_step = int(ckpt.name.rsplit("_", 1)[1]) if ckpt is not None else 0
        procs = int(payload.get("procs") or 1)
        events.append({"op": "start", "attempt": payload["attempt"], "pid": os.getpid(),
                       "resume_step": resume_step, "time": time.time()} | where
                      | ({"procs": procs} if procs > 1 else {}))
        if procs > 1:
            from experiments.trial_worker import train_with_torchrun

            try:
                outcome = train_with_torchrun(payload, out, procs, out / LOG,
                                              keep_fds=(lock_fd,))
            except BaseException:
                traceback.print_exc()
                raise
            if outcome["status"] == "pruned":
                done = {"op": "done", "status": "pruned", "step": int(outcome["step"])}
                events.append(done)
                return done
            step, export_dir = int(outcome["step"]), outcome.get("export_dir")
        else:
            cfg = TrainConfig.from_dict(payload["train"])
            logger = EventLogger(events, payload["run_id"], out / STOP,
                                 system_metrics=bool(payload.get("system_metrics")))
            try:
                result = fit(cfg, logger=lambda _run_id: logger, progress=False)
            except TrialStopped as stop:
                print(str(stop), flush=True)
                done = {"op": "done", "status": "pruned", "step": logger.last_step}
                events.append(done)
                return done
            except BaseException:
                traceback.print_exc()
                raise
            step = result.state.step
            export_dir = str(result.export_dir) if result.export_dir else None
        if payload.get("eval"):
            if export_dir is None:
                raise ValueError("evaluation needs the final policy: set export_final=true")
            release_accelerator_memory()  # the trainer's models and sampler are gone
            results = evaluate(Path(export_dir), payload["eval"], out / "eval",
                               train=payload["train"])
            events.append({"op": "eval", "results": results, "time": time.time()})
        done = {"op": "done", "status": "finished", "step": step, "export_dir": export_dir}
        events.append(done)
        (out / RESULT).write_text(json.dumps(done) + "\n")
        return done
