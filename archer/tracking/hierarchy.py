"""The MLflow side of a study: one experiment per study, a parent run for the study, a child run
per trial, evaluation runs nested under their trial, the best policy in the model registry.

Single writer: only the study's driver process writes to MLflow. Trials append their calls to
``events.jsonl`` (``experiments.trial_events``); the driver (``experiments.scheduler``) tails
those files and replays them here, through one :class:`archer.tracking.mlflow.MlflowLogger`
per run, so parallel trials never contend for a SQLite store ("database is locked") and a
store that is briefly unreachable costs nothing (the logger's offline buffer keeps the calls
and uploads them later).

Replaying is idempotent: metrics carry the time the trial measured them (so an event
uploaded twice, by a driver killed between an upload and saving its offset, is the same
point, which MLflow's SQL stores keep once), params/tags/artifacts are overwritten with the
same values, and an evaluation run already created for a trial's benchmark is reused.

Where a trial ran: its run has ``archer.node_id``, ``archer.hostname`` and ``archer.node_ip``
(the latest attempt's Ray node); the scheduler adds ``archer.nodes`` (every attempt's).

Tags on every trial and evaluation run: ``archer.study``, ``archer.trial_number``,
``archer.preset``, ``archer.seed``, ``archer.code_version`` (git commit, ``+dirty`` when the
tree has changes), ``archer.config_hash`` (trial identity), and on evaluation runs
``archer.contract_hash`` (the evaluation contract); the trial run carries the contract
hashes of its evaluations too. Params are written once (when the trial run is created: the
trainer's flattened TrainConfig), with the resolved config YAML as an artifact.
"""

from __future__ import annotations

import functools
import json
import logging
import subprocess
from pathlib import Path
from typing import Any

from archer.tracking.eval_runs import log_eval
from archer.tracking.mlflow import STATE_NAME, MlflowLogger, retry_locked
from archer.tracking.reader import metric_history
from archer.tracking.store import resolve_tracking_uri

__all__ = ["StudyTracker", "code_version", "retry_locked"]

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """``git rev-parse HEAD`` of the project (``+dirty`` when it has local changes)."""
    root = Path(__file__).resolve().parents[2]  # archer/tracking/hierarchy.py -> the project
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, capture_output=True, text=True, timeout=10).stdout
        return head + ("+dirty" if dirty.strip() else "")
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import PackageNotFoundError, version

        try:
            return "archer-rlvr==" + version("archer-rlvr")
        except PackageNotFoundError:
            return "unknown"


class StudyTracker:
    """Driver-side writer for one study (see the module docstring)."""

    def __init__(self, study: str, study_dir: str | Path, experiment: str,
                 tracking_uri: str | None = None) -> None:
        self.study = study
        self.study_dir = Path(study_dir)
        self.experiment = experiment
        self.uri = resolve_tracking_uri(tracking_uri)
        self.loggers: dict[str, MlflowLogger] = {}  # trial hash -> its run's logger
        self._client = None

    @property
    def client(self):
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    # ------------------------------------------------------------------------------------------
    # runs
    # ------------------------------------------------------------------------------------------

    def open_study_run(self, run_id: str | None, params: dict[str, Any],
                       config_path: Path) -> str:
        """The study's parent run (created once; a rerun of the study reopens it)."""
        tags = {"archer.kind": "study", "archer.study": self.study,
                "archer.code_version": code_version()}
        logger = MlflowLogger(self.study_dir / "mlflow", run_id, tracking_uri=self.uri,
                              experiment=self.experiment, run_name=self.study, tags=tags)
        if run_id is None:
            logger.log_params(params)
            logger.log_artifact(config_path)
        else:
            logger.set_tags({"archer.code_version": code_version()})
        self.loggers["__study__"] = logger
        return logger.run_id

    def log_warm_start(self, digest: str, heldout_accuracy: float | None, model_dir: str,
                       index: int = 0) -> None:
        """The study's shared warm start on its parent run: tags ``warm_start/hash`` and
        ``warm_start/path``, metric ``warm_start/heldout_accuracy`` (the ``index``-th of a
        study whose trials use several: ``warm_start/<index>/...``)."""
        logger = self.loggers["__study__"]
        prefix = "warm_start" if index == 0 else f"warm_start/{index}"
        logger.set_tags({f"{prefix}/hash": digest, f"{prefix}/path": model_dir})
        if heldout_accuracy is not None:
            logger.log_metrics({f"{prefix}/heldout_accuracy": float(heldout_accuracy)}, step=0)

    def finish_study(self, status: str, summary: dict[str, float]) -> None:
        logger = self.loggers.pop("__study__", None)
        if logger is not None:
            if summary:
                logger.log_metrics(summary, step=0)
            logger.finish(status)

    def open_trial_run(self, trial, run_id: str | None, parent_id: str,
                       config_path: Path) -> str:
        """The trial's child run: created with its tags and the config artifact, or reopened
        (``run_id``) when the trial is resumed."""
        tags = dict(trial.tags) | {
            "mlflow.parentRunId": parent_id, "archer.kind": "trial",
            "archer.study": self.study, "archer.trial_number": str(trial.number),
            "archer.config_hash": trial.hash, "archer.code_version": code_version(),
            "archer.overrides": " ".join(trial.overrides)}
        logger = MlflowLogger(Path(trial.out_dir) / "mlflow", run_id, tracking_uri=self.uri,
                              experiment=self.experiment, run_name=trial.name, tags=tags)
        if run_id is None:
            logger.log_artifact(config_path)
        self.loggers[trial.hash] = logger
        return logger.run_id

    def apply(self, trial_hash: str, event: dict[str, Any], uploaded: set[int]) -> None:
        """Replay one trial event into its run; ``uploaded`` (metric steps already sent) is
        kept up to date so a resumed trial's rewind re-sends only what MLflow never got."""
        logger = self.loggers[trial_hash]
        op = event["op"]
        stamp = int(event["time"] * 1000) if isinstance(event.get("time"), (int, float)) \
            else None
        if op == "params":
            logger.log_params(event["values"])
        elif op == "metrics" or op == "system":
            logger.log_metrics(event["values"], event["step"], timestamp_ms=stamp)
            if op == "metrics":
                uploaded.add(int(event["step"]))
        elif op == "tags":
            logger.set_tags(event["values"])
        elif op == "artifact":
            logger.log_artifact(event["path"])
        elif op == "rewind":
            step = int(event["step"])
            later = sorted(s for s in uploaded if s > step)
            if later:  # MLflow cannot delete points: say that steps were redone
                logger.set_tags({"archer.rewound_to_step": step})
                uploaded.difference_update(later)
            if event.get("metrics") and step not in uploaded and step > 0:
                logger.log_metrics(event["metrics"], step, timestamp_ms=stamp)
                uploaded.add(step)
        elif op == "start":
            tags = {"archer.attempts": event["attempt"],
                    "archer.resumed_from_step": event.get("resume_step", 0)}
            if event.get("node_id"):
                tags |= {"archer.node_id": event["node_id"],
                         "archer.hostname": event.get("hostname", ""),
                         "archer.node_ip": event.get("node_ip", "")}
            logger.set_tags(tags)

    def finish_trial(self, trial_hash: str, status: str) -> None:
        logger = self.loggers.pop(trial_hash, None)
        if logger is not None:
            logger.finish(status)

    def log_evaluations(self, trial, run_id: str, results: list[dict[str, Any]],
                        timestamp_ms: int | None = None) -> list[str]:
        """One evaluation run per benchmark, nested under the trial run (through
        :func:`archer.tracking.eval_runs.log_eval`), tagged like the trial plus the contract
        hash. A run already logged for the same benchmark, contract and trial run is reused."""
        ids = []
        for res in results:
            bench = res["benchmark"]
            eval_dir = Path(trial.out_dir) / "eval" / bench
            rid = self._logged_eval(eval_dir, run_id, bench, res["contract_hash"])
            if rid is not None:
                ids.append(rid)
                continue
            rid = log_eval([res], eval_dir, tracking_uri=self.uri, parent_run_id=run_id,
                           run_name=f"{trial.name}/{bench}", experiment=self.experiment)
            eval_logger = MlflowLogger.attach(eval_dir / "mlflow", self.uri)
            eval_logger.set_tags(dict(trial.tags) | {
                "archer.study": self.study, "archer.trial_number": str(trial.number),
                "archer.config_hash": trial.hash, "archer.code_version": code_version(),
                "archer.contract_hash": res["contract_hash"], "archer.benchmark": bench})
            eval_logger.flush(force=True)
            ids.append(rid)
        if results and trial.hash in self.loggers:
            self.loggers[trial.hash].set_tags({
                "archer.contract_hash": ",".join(r["contract_hash"] for r in results)})
            self.loggers[trial.hash].log_metrics(
                {f"eval/{r['benchmark']}/{k}": v for r in results
                 for k, v in r["metrics"].items()}, step=0, timestamp_ms=timestamp_ms)
        return ids

    def _logged_eval(self, eval_dir: Path, parent_id: str, bench: str,
                     contract_hash: str) -> str | None:
        """The evaluation run ``eval_dir`` already has for this trial run and contract."""
        state = eval_dir / "mlflow" / STATE_NAME
        if not state.is_file():
            return None
        rid = json.loads(state.read_text()).get("run_id")
        if not rid:
            return None
        try:
            run = retry_locked(self.client.get_run, rid)
        except Exception:  # noqa: BLE001  (deleted, or another store)
            return None
        tags = run.data.tags
        if (tags.get("mlflow.parentRunId") == parent_id and run.info.status == "FINISHED"
                and tags.get(f"{bench}/contract_hash") == contract_hash):
            return rid
        return None

    # ------------------------------------------------------------------------------------------
    # reading
    # ------------------------------------------------------------------------------------------

    def metric_history(self, run_id: str, key: str) -> list[tuple[int, float]]:
        """``[(step, value)]`` of metric ``key`` in ``run_id`` as MLflow has it, sorted by
        step, after uploading what the run's logger still buffers. ``key`` is the name as
        logged (``val/pass@4``), found under the key it was stored as (``val/pass_4``); a
        step logged twice keeps its latest value (:func:`archer.tracking.reader.metric_history`)."""
        logger = next((lg for lg in self.loggers.values() if lg.run_id == run_id), None)
        if logger is not None:
            logger.flush(force=True)
        return list(metric_history(self.client, run_id, key).items())

    # ------------------------------------------------------------------------------------------
    # model registry
    # ------------------------------------------------------------------------------------------

    def register_policy(self, run_id: str, export_dir: str | Path, name: str) -> str:
        """Log the final policy directory under the run (``policy/``) and register it as a new
        version of model ``name``; returns the version."""
        client = self.client
        retry_locked(client.log_artifacts, run_id, str(export_dir), "policy")
        run = retry_locked(client.get_run, run_id)
        try:
            retry_locked(client.create_registered_model, name)
        except Exception as err:  # noqa: BLE001  (exists already)
            if "already exists" not in str(err).lower() and "RESOURCE_ALREADY_EXISTS" not in str(
                    getattr(err, "error_code", "")):
                raise
        version = retry_locked(client.create_model_version, name,
                               f"{run.info.artifact_uri}/policy", run_id=run_id,
                               tags={"archer.study": self.study})
        retry_locked(client.set_tag, run_id, "archer.registered_model",
                     f"{name}/{version.version}")
        return str(version.version)
