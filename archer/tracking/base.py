"""The MetricLogger protocol the trainer talks to, a logger that discards everything, and the
two value rules every backend shares: which metric keys a store accepts
(:func:`sanitize_key`) and which values are numbers (:func:`metric_value`).

The trainer imports only this protocol; a backend (``archer.tracking.jsonl``,
``archer.tracking.mlflow``, or the trial's event log in ``experiments``) implements it.
"""

from __future__ import annotations

import math
import posixpath
import re
import uuid
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

MAX_KEY_LENGTH = 250  # mlflow.utils.validation.MAX_ENTITY_KEY_LENGTH

_BAD_KEY_CHARS = re.compile(r"[^/\w.\- :]", re.ASCII)


@runtime_checkable
class MetricLogger(Protocol):
    @property
    def run_id(self) -> str: ...

    def log_params(self, params: dict[str, Any]) -> None: ...

    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def set_tags(self, tags: dict[str, Any]) -> None: ...

    def log_artifact(self, path: str | Path) -> None: ...

    def finish(self, status: str = "FINISHED") -> None: ...

    # Optional: ``rewind(step, metrics)``, called when a run resumes from the checkpoint of
    # ``step``: forget metric rows of later steps (they are redone) and log ``metrics`` (the
    # checkpointed step's own) if they never reached the logger.


class NullLogger:
    """Discards everything (a run without tracking)."""

    def __init__(self, run_id: str | None = None) -> None:
        self._run_id = run_id or uuid.uuid4().hex

    @property
    def run_id(self) -> str:
        return self._run_id

    def log_params(self, params: dict[str, Any]) -> None:
        pass

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        pass

    def set_tags(self, tags: dict[str, Any]) -> None:
        pass

    def log_artifact(self, path: str | Path) -> None:
        pass

    def finish(self, status: str = "FINISHED") -> None:
        pass


def sanitize_key(key: str) -> str:
    """A metric/param key MLflow accepts: alphanumerics, ``_ - . : /`` and spaces, no empty,
    ``.`` or ``..`` path segments, no leading ``/``, at most 250 characters
    (``val/pass@4`` -> ``val/pass_4``). Writers store keys through it and readers look keys
    up through it, so a name is found under the same key it was logged as."""
    text = _BAD_KEY_CHARS.sub("_", str(key))
    parts = [p for p in text.split("/") if p not in ("", ".")]
    parts = ["_" if p == ".." else p for p in parts]
    text = "/".join(parts)[:MAX_KEY_LENGTH].rstrip("/") or "_"
    if posixpath.normpath(text) != text:  # e.g. "a/.." after truncation
        text = text.replace(".", "_")
    return text


def metric_value(value: Any) -> float | str | None:
    """A JSON-safe number: finite floats as is, NaN/inf as strings; None when not numeric."""
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else str(value)


def jsonable(value: Any) -> Any:
    """``value`` as JSON can hold it: tensors/numpy scalars as Python numbers, NaN/inf as
    ``"nan"``/``"inf"`` (valid JSON, still visible); anything else unchanged."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if hasattr(value, "item"):
        return jsonable(value.item())
    return value
