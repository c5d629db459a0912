"""The JSON-lines backend: a :class:`~archer.tracking.base.MetricLogger` writing into the run
directory, and what a new run in a used directory does with the old run's files.

``JsonlLogger`` writes:

- ``run.json``: ``{"run_id", "status"}`` (the run id survives a resume),
- ``params.json``, ``tags.json``: the last logged values (merged),
- ``metrics.jsonl``: one line per ``log_metrics`` call, ``{"step": s, **metrics}``,
- ``artifacts.jsonl``: the paths given to ``log_artifact``.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

from archer.tracking.base import jsonable

PREVIOUS = "previous"  # <run_dir>/previous/<run id>/: what a new run moved aside


def archive_previous(run_dir: str | Path, names: tuple[str, ...], run_id: str | None
                     ) -> Path | None:
    """Move the files/directories ``names`` of ``run_dir`` that exist (an earlier run's) into
    ``run_dir/previous/<run_id>/`` and return it (None when there was nothing): a new run
    in the same directory starts clean, and nothing of the old one is lost. A name already
    there gets a numbered suffix; an unknown run is filed under the time."""
    run_dir = Path(run_dir)
    found = [n for n in names if (run_dir / n).exists()]
    if not found:
        return None
    dest = run_dir / PREVIOUS / (run_id or time.strftime("unknown-%Y%m%d-%H%M%S", time.gmtime()))
    dest.mkdir(parents=True, exist_ok=True)
    for name in found:
        target, k = dest / name, 1
        while target.exists():
            target, k = dest / f"{name}.{k}", k + 1
        os.replace(run_dir / name, target)
    return dest


def read_run_info(run_dir: str | Path) -> dict[str, Any] | None:
    """``run.json`` of ``run_dir`` (None when absent or unreadable: a run killed while
    writing it, before writes became atomic)."""
    info = Path(run_dir) / "run.json"
    try:
        return json.loads(info.read_text())
    except (OSError, ValueError):
        return None


class JsonlLogger:
    """JSON-lines metrics in ``run_dir``. ``run_id=None`` starts a new run: an earlier run's
    files are moved to ``run_dir/previous/`` (:func:`archive_previous`), never deleted; the
    id of an existing run continues it (metrics are appended)."""

    FILES = ("metrics.jsonl", "params.json", "tags.json", "artifacts.jsonl")

    def __init__(self, run_dir: str | Path, run_id: str | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        previous = (read_run_info(self.run_dir) or {}).get("run_id")
        if run_id is None or run_id != previous:
            archive_previous(self.run_dir, (*self.FILES, "run.json"), previous)
        self._run_id = run_id or uuid.uuid4().hex
        self._write_info("RUNNING")

    @property
    def run_id(self) -> str:
        return self._run_id

    @property
    def metrics_path(self) -> Path:
        return self.run_dir / "metrics.jsonl"

    def _write_info(self, status: str) -> None:
        text = json.dumps({"run_id": self._run_id, "status": status}) + "\n"
        tmp = self.run_dir / f".run.json.{os.getpid()}"
        tmp.write_text(text)
        os.replace(tmp, self.run_dir / "run.json")  # atomic: a kill never leaves it empty

    def _merge(self, name: str, values: dict[str, Any]) -> None:
        path = self.run_dir / name
        data = json.loads(path.read_text()) if path.is_file() else {}
        data.update({k: jsonable(v) for k, v in values.items()})
        path.write_text(json.dumps(data, indent=1, sort_keys=True, default=str) + "\n")

    def log_params(self, params: dict[str, Any]) -> None:
        self._merge("params.json", params)

    def set_tags(self, tags: dict[str, Any]) -> None:
        self._merge("tags.json", tags)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        row = {"step": step, **{k: jsonable(v) for k, v in metrics.items()}}
        with self.metrics_path.open("a") as f:
            f.write(json.dumps(row) + "\n")

    def rewind(self, step: int, metrics: dict[str, float] | None = None) -> None:
        """Resuming from the checkpoint of ``step``: drop rows of later steps (they will be
        redone) and log ``metrics`` for ``step`` itself if the run died before logging it."""
        rows = [r for r in self.read_metrics() if r["step"] <= step]
        text = "".join(json.dumps(r) + "\n" for r in rows)
        tmp = self.metrics_path.with_suffix(".tmp")
        tmp.write_text(text)
        tmp.replace(self.metrics_path)
        if metrics and not any(r["step"] == step for r in rows):
            self.log_metrics(metrics, step)

    def log_artifact(self, path: str | Path) -> None:
        with (self.run_dir / "artifacts.jsonl").open("a") as f:
            f.write(json.dumps({"path": str(path)}) + "\n")

    def finish(self, status: str = "FINISHED") -> None:
        self._write_info(status)

    def read_metrics(self) -> list[dict[str, Any]]:
        """All logged metric rows, in order (for tests and quick looks)."""
        if not self.metrics_path.is_file():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line]
