"""Tracking: what a run logs and where it goes, in one package below the trainer.

- :mod:`~archer.tracking.base`: the :class:`MetricLogger` protocol the trainer talks to,
  :class:`NullLogger`, and the key/value rules all backends share (:func:`sanitize_key`,
  :func:`metric_value`).
- :mod:`~archer.tracking.jsonl`: :class:`JsonlLogger` (JSON lines in the run directory).
- :mod:`~archer.tracking.store`: tracking URIs and the checks of the ``tracking`` section.
- :mod:`~archer.tracking.mlflow`: :class:`MlflowLogger` (offline buffering, resumable runs).
- :mod:`~archer.tracking.backends`: :func:`make_logger`, the logger for a backend name.
- :mod:`~archer.tracking.eval_runs`: an evaluation as one MLflow run (:func:`log_eval`).
- :mod:`~archer.tracking.hierarchy`: a study's parent run, a child run per trial, evaluation
  runs under their trial (:class:`StudyTracker`).
- :mod:`~archer.tracking.reader`: read-only queries for dashboards and the leaderboard.

MLflow (and pandas, for the reader's frames) are imported only inside the functions that use
them: importing this package costs the standard library only.
"""

from __future__ import annotations

from archer.tracking.backends import BACKENDS, make_logger
from archer.tracking.base import MetricLogger, NullLogger, metric_value, sanitize_key
from archer.tracking.jsonl import PREVIOUS, JsonlLogger, archive_previous, read_run_info
from archer.tracking.mlflow import MlflowLogger, sync_run_dir
from archer.tracking.store import check_tracking_config, resolve_tracking_uri

__all__ = [
    "BACKENDS", "PREVIOUS", "JsonlLogger", "MetricLogger", "MlflowLogger", "NullLogger",
    "archive_previous", "check_tracking_config", "make_logger", "metric_value",
    "read_run_info", "resolve_tracking_uri", "sanitize_key", "sync_run_dir",
]
