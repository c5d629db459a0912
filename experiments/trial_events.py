"""A trial's event log: what a trial would log, one JSON object per line in
``<trial dir>/events.jsonl`` (the format is in :mod:`experiments.trial`'s docstring), and the
``STOP`` file through which the driver asks a trial to stop.

Written by the trial's process (:mod:`experiments.trial`) or by rank 0 of a multi-process
trial (:mod:`experiments.trial_worker`); read by the driver (:mod:`experiments.scheduler`),
which replays the events into MLflow. Both sides import this module and nothing of each
other.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from archer.tracking.base import metric_value

EVENTS = "events.jsonl"
STOP = "STOP"


class TrialStopped(Exception):
    """Raised inside the trainer (from the logger) when the driver asked the trial to stop."""


class EventLog:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def repair(self) -> None:
        """Cut a torn last line (left by a killed writer)."""
        if not self.path.is_file():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            with self.path.open("r+b") as f:
                f.truncate(keep)

    def append(self, event: dict[str, Any]) -> None:
        line = json.dumps(event, default=_jsonable) + "\n"
        with self.path.open("a") as f:
            f.write(line)
            f.flush()

    def read_from(self, offset: int) -> tuple[list[dict[str, Any]], int]:
        """Complete events after byte ``offset`` and the offset after the last of them."""
        if not self.path.is_file():
            return [], offset
        with self.path.open("rb") as f:
            f.seek(offset)
            data = f.read()
        end = data.rfind(b"\n") + 1
        events = [json.loads(line) for line in data[:end].decode().splitlines() if line.strip()]
        return events, offset + end

    def read(self) -> list[dict[str, Any]]:
        return self.read_from(0)[0]


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)


class EventLogger:
    """``archer.tracking.MetricLogger`` writing trial events (see the module docstring).
    ``stop_file``: raise :class:`TrialStopped` after logging a step when it exists (None: the
    caller checks it, as the ranks of a multi-process trial do, together)."""

    def __init__(self, events: EventLog, run_id: str, stop_file: Path | None,
                 system_metrics: bool = False) -> None:
        self.events = events
        self._run_id = run_id
        self.stop_file = stop_file
        self.system_metrics = system_metrics
        self.last_step = 0

    @property
    def run_id(self) -> str:
        return self._run_id

    def log_params(self, params: dict[str, Any]) -> None:
        self.events.append({"op": "params", "values": {k: str(v) for k, v in params.items()}})

    def set_tags(self, tags: dict[str, Any]) -> None:
        self.events.append({"op": "tags", "values": {k: str(v) for k, v in tags.items()}})

    def log_artifact(self, path: str | Path) -> None:
        self.events.append({"op": "artifact", "path": str(Path(path).resolve())})

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        values = {k: n for k, v in metrics.items() if (n := metric_value(v)) is not None}
        self.events.append({"op": "metrics", "step": int(step), "time": time.time(),
                            "values": values})
        self.last_step = int(step)
        if self.system_metrics:
            self.events.append({"op": "system", "step": int(step), "time": time.time(),
                                "values": system_sample()})
        if self.stop_file is not None and self.stop_file.is_file():
            # after the step's checkpoint: a clean, resumable stop
            raise TrialStopped(f"stopped by the scheduler after step {step}")

    def rewind(self, step: int, metrics: dict[str, float] | None = None) -> None:
        values = {k: n for k, v in (metrics or {}).items() if (n := metric_value(v)) is not None}
        self.events.append({"op": "rewind", "step": int(step), "metrics": values,
                            "time": time.time()})
        self.last_step = int(step)

    def finish(self, status: str = "FINISHED") -> None:
        self.events.append({"op": "finish", "status": status})


def system_sample() -> dict[str, float]:
    """CPU, memory and (when present) GPU usage of this machine/process, MLflow's names."""
    import psutil

    proc = psutil.Process()
    out = {"system/cpu_utilization_percentage": psutil.cpu_percent(interval=None),
           "system/system_memory_usage_percentage": psutil.virtual_memory().percent,
           "system/process_rss_megabytes": proc.memory_info().rss / 2**20}
    try:
        import torch

        if torch.cuda.is_available():
            out["system/gpu_0_memory_usage_megabytes"] = torch.cuda.memory_allocated() / 2**20
    except Exception:  # noqa: BLE001  (best effort)
        pass
    return out
