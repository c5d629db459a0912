"""The model a study's trials start from, evaluated under the trials' own evaluation.

A study answers "which arm is best"; a reader also asks "did RL help at all, and by more
than learning the answer format". Both need the starting point measured exactly as the
trials are: the same benchmark, problems, samples per problem, temperature and response
budget (the same code, :func:`experiments.trial.evaluate`). With ``eval_start: true`` (a study
key; the ``cpu`` recipe sets it) the driver evaluates the starting model once (the shared
warm start, or the model the trials train) before any trial runs, and logs it as an
evaluation run nested under the study's run, tagged ``archer.role=start`` and
``archer.preset=start`` (the ``start`` row of the leaderboard and of ``archer report``).

A rerun reuses both the samples (the evaluation harness resumes ``samples.jsonl``) and the
MLflow run, when the contracts and the store are the same; a changed contract is measured
and logged again.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

START_LABEL = "start"  # the starting model's row (archer.preset) in leaderboards and reports
ROLE_TAG = "archer.role"
RECORD_NAME = "mlflow_run.json"

__all__ = ["START_LABEL", "ROLE_TAG", "evaluate_start", "start_model_dir"]


def start_model_dir(trial) -> Path:
    """The model directory a trial starts from (its ``model``: a warm start's directory, a
    Hugging Face directory, or a prepared model's name such as ``tiny``)."""
    from archer.models import resolve_model_path

    return Path(resolve_model_path(str(trial.train["model"])))


def evaluate_start(trial, out: Path, tracking_uri: str, *, model_dir: Path | None = None,
                   label: str = START_LABEL, parent_run_id: str | None = None,
                   experiment: str | None = None, tags: dict[str, str] | None = None,
                   ) -> tuple[list[dict[str, Any]], str]:
    """Evaluate ``model_dir`` (default: the model ``trial`` starts from) under ``trial``'s
    evaluation contract and log it as one evaluation run; returns the results and the run id.
    ``tags`` are added to ``archer.study``, ``archer.preset=label`` and ``archer.role=start``."""
    from archer.tracking.eval_runs import log_eval
    from experiments.trial import evaluate

    model_dir = Path(model_dir) if model_dir is not None else start_model_dir(trial)
    out.mkdir(parents=True, exist_ok=True)
    results = evaluate(model_dir, trial.eval, out, train=trial.train)
    record = out / RECORD_NAME
    key = {"uri": tracking_uri, "contracts": [r["contract_hash"] for r in results],
           "parent": parent_run_id}
    if record.is_file():
        logged = json.loads(record.read_text())
        if logged.get("key") == key and run_exists(tracking_uri, logged.get("run_id")):
            return results, logged["run_id"]
    all_tags = {"archer.study": trial.tags["archer.study"], "archer.preset": label,
                ROLE_TAG: "start"} | dict(tags or {})
    run_id = log_eval(results, out, tracking_uri=tracking_uri, parent_run_id=parent_run_id,
                      run_name=f"eval-{label.replace(' ', '-')}",
                      experiment=experiment or "archer-eval", tags=all_tags)
    record.write_text(json.dumps({"key": key, "run_id": run_id}) + "\n")
    return results, run_id


def run_exists(tracking_uri: str, run_id: str | None) -> bool:
    """Whether ``run_id`` is an active run of the store (a deleted one is logged again)."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    if not run_id:
        return False
    try:
        return MlflowClient(tracking_uri).get_run(run_id).info.lifecycle_stage == "active"
    except MlflowException:
        return False
