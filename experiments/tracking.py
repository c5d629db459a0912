"""Moved: MLflow tracking lives in :mod:`archer.tracking` (``archer.tracking.mlflow``,
``archer.tracking.store``, ``archer.tracking.backends``). This module re-exports what was
imported from here, so ``from experiments.tracking import MlflowLogger`` keeps working;
new code imports from ``archer.tracking``."""

from __future__ import annotations

from archer.tracking.backends import make_logger
from archer.tracking.base import MAX_KEY_LENGTH, metric_value, sanitize_key
from archer.tracking.mlflow import (
    BUFFER_NAME,
    DEFAULT_EXPERIMENT,
    MAX_METRICS_PER_BATCH,
    MAX_PARAM_LENGTH,
    MAX_PARAMS_TAGS_PER_BATCH,
    MAX_TAG_LENGTH,
    OFFLINE_PREFIX,
    PERMANENT_ERRORS,
    STATE_NAME,
    MlflowLogger,
    OfflineBuffer,
    is_permanent,
    sync_run_dir,
)
from archer.tracking.store import (
    DEFAULT_TRACKING_URI,
    TRACKING_URI_SCHEMES,
    check_tracking_config,
    check_tracking_uri,
    resolve_tracking_uri,
    sqlite_artifact_root,
)

__all__ = [
    "BUFFER_NAME", "DEFAULT_EXPERIMENT", "DEFAULT_TRACKING_URI", "MAX_KEY_LENGTH",
    "MAX_METRICS_PER_BATCH", "MAX_PARAMS_TAGS_PER_BATCH", "MAX_PARAM_LENGTH", "MAX_TAG_LENGTH",
    "OFFLINE_PREFIX", "PERMANENT_ERRORS", "STATE_NAME", "TRACKING_URI_SCHEMES", "MlflowLogger",
    "OfflineBuffer", "check_tracking_config", "check_tracking_uri", "is_permanent",
    "make_logger", "metric_value", "resolve_tracking_uri", "sanitize_key",
    "sqlite_artifact_root", "sync_run_dir",
]
