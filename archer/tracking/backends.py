"""The logger for a backend named in the ``tracking`` config section: ``mlflow``
(:class:`~archer.tracking.mlflow.MlflowLogger`), ``jsonl``
(:class:`~archer.tracking.jsonl.JsonlLogger` in the run directory) or ``none``
(:class:`~archer.tracking.base.NullLogger`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from archer.tracking.base import MetricLogger, NullLogger
from archer.tracking.jsonl import JsonlLogger
from archer.tracking.mlflow import MlflowLogger
from archer.validation import unknown_name

BACKENDS = ("mlflow", "jsonl", "none")


def make_logger(backend: str, run_dir: str | Path, run_id: str | None,
                **options: Any) -> MetricLogger:
    """The logger for ``backend`` (:data:`BACKENDS`); ``options`` go to
    :class:`MlflowLogger` (the other backends take none)."""
    if backend not in BACKENDS:
        raise unknown_name("tracking backend", backend, BACKENDS)
    if backend == "mlflow":
        return MlflowLogger(run_dir, run_id, **options)
    if options:
        raise ValueError(f"tracking backend {backend!r} takes no options, got {sorted(options)}")
    if backend == "jsonl":
        return JsonlLogger(run_dir, run_id=run_id)
    return NullLogger(run_id)
