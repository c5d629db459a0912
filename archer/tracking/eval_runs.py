"""An evaluation as one MLflow run (:class:`archer.tracking.mlflow.MlflowLogger`: local
SQLite by default, offline buffering), nested under the training run when the model is one of
its outputs. Written by ``archer eval`` (``evals.cli``) and by a study's driver for each
trial's evaluation (:class:`archer.tracking.hierarchy.StudyTracker`).

One MLflow run per ``archer eval`` invocation. Per benchmark ``B``: metrics ``B/avg_at_K``,
``B/avg_at_K_ci_low`` ... ``B/pass_at_k``, ``B/maj_at_k``; params ``B/contract.<field>``;
tags ``B/contract_hash`` and ``B/label``; artifacts ``B_results.json``, ``B_per_problem.csv``
(the per-problem table) and ``B_samples.jsonl``.

Parent run: ``parent_run_id`` if given, else the MLflow run recorded by the training run
directory that holds the model (``mlflow_run.json`` in the model directory or one of its
three parents, as written by the trainer's logger). The child gets MLflow's
``mlflow.parentRunId`` tag, so the MLflow UI shows it under the training run.
"""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path
from typing import Any

from archer.tracking.mlflow import STATE_NAME, MlflowLogger


def find_parent_run(model_path: str | Path) -> str | None:
    """The MLflow run id of the training run whose directory contains ``model_path``."""
    p = Path(model_path).expanduser().resolve()
    for d in [p, *list(p.parents)[:3]]:
        state = d / STATE_NAME
        if state.is_file():
            try:
                run_id = json.loads(state.read_text()).get("run_id")
            except (json.JSONDecodeError, OSError):
                continue
            if run_id:
                return str(run_id)
    return None


class HeldStopSignals:
    """While held, SIGINT / SIGTERM are only recorded (main thread; elsewhere nothing
    changes); :meth:`release` puts the handlers back and hands a recorded signal to its
    handler then, where the caller can clean up after it (a signal mask would not do: any
    other thread of the process takes the signal, and Python runs the handler anyway)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        import threading

        self.received: list[int] = []
        self.previous: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self.previous[sig] = signal.signal(sig, lambda n, _f: self.received.append(n))

    def release(self) -> None:
        import os

        previous, self.previous = self.previous, {}
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        if self.received:
            signum = self.received[0]
            handler = previous.get(signum)
            if callable(handler):
                handler(signum, None)  # e.g. raises (Ctrl-C, EvalStopped)
            elif handler != signal.SIG_IGN:
                os.kill(os.getpid(), signum)  # the default action


def log_eval(results: list[dict[str, Any]], run_dir: str | Path, *,
             tracking_uri: str | None = None, parent_run_id: str | None = None,
             run_name: str | None = None, experiment: str = "archer-eval",
             tags: dict[str, Any] | None = None) -> str:
    """Log ``results`` (from :func:`evals.scoring.score_samples`) as one MLflow run whose
    directory is ``run_dir``; returns the run id. ``tags`` are added (e.g. ``archer.study``
    and ``archer.preset`` to give the run a row in a study's leaderboard)."""
    run_dir = Path(run_dir)
    tags = {"archer.kind": "eval"} | dict(tags or {})
    if parent_run_id:
        tags["mlflow.parentRunId"] = parent_run_id
    if results:
        tags["archer.model"] = results[0].get("model", "")
    # Ctrl-C / SIGTERM are held back while the run is created, and arrive inside the try
    # below: a stop then ends the run KILLED instead of leaving it RUNNING for ever
    held = HeldStopSignals()
    try:
        logger = MlflowLogger(run_dir / "mlflow", None, tracking_uri=tracking_uri,
                              experiment=experiment, run_name=run_name, tags=tags)
    except BaseException:
        held.release()
        raise
    status = "FAILED"
    try:
        held.release()  # a signal held back is handled here
        art = run_dir / "mlflow_artifacts"
        art.mkdir(parents=True, exist_ok=True)
        for res in results:
            b = res["benchmark"]
            logger.log_params({f"{b}/contract.{k}": v for k, v in res["contract"].items()})
            logger.set_tags({f"{b}/contract_hash": res["contract_hash"],
                             f"{b}/label": res.get("label") or "-",
                             f"{b}/engine": res.get("engine", "")})
            metrics = {f"{b}/{k}": v for k, v in res["metrics"].items()}
            for field, groups in res.get("breakdowns", {}).items():
                for g, row in groups.items():
                    metrics[f"{b}/by_{field}/{g}/avg"] = row["avg"]
            logger.log_metrics(metrics, step=0)
            src = Path(res["_dir"]) if "_dir" in res else None
            if src is not None:
                for name in ("results.json", "per_problem.csv", "samples.jsonl"):
                    if (src / name).is_file():
                        dst = art / f"{b}_{name}"
                        shutil.copyfile(src / name, dst)
                        logger.log_artifact(dst)
        status = "FINISHED"
    except KeyboardInterrupt:  # Ctrl-C / SIGTERM (evals.cli.EvalStopped): stopped, not failed
        status = "KILLED"
        raise
    finally:
        logger.finish(status)
    return logger.run_id
