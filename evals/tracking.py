"""Moved: an evaluation's MLflow run is logged by :mod:`archer.tracking.eval_runs` (shared
with a study's driver). This module re-exports what was imported from here, so
``from evals.tracking import log_eval`` keeps working; new code imports from
``archer.tracking.eval_runs``."""

from __future__ import annotations

from archer.tracking.eval_runs import STATE_NAME, HeldStopSignals, find_parent_run, log_eval

__all__ = ["STATE_NAME", "HeldStopSignals", "find_parent_run", "log_eval"]
