"""The MLflow backend: an :class:`archer.tracking.base.MetricLogger` backed by MLflow.

MLflow is imported inside the functions that talk to it, so importing ``archer.tracking``
(as the trainer does) stays light; the trainer takes a logger through
``archer.trainer.fit(cfg, logger=factory)``, where ``factory(run_id_or_None)`` returns one,
so a resumed run continues the MLflow run its checkpoint names.

Where runs go: ``tracking_uri`` if given, else ``$MLFLOW_TRACKING_URI``, else a local SQLite
store ``sqlite:///runs/mlflow.db`` (:mod:`archer.tracking.store`). Browse it with
``mlflow ui --backend-store-uri sqlite:///runs/mlflow.db``.

What is logged: params once (``log_params``; values longer than MLflow's limit are
truncated), tags, artifacts (e.g. the resolved config YAML) and metrics per step. Metric and
param keys keep ``/`` (``actor/entropy``); characters MLflow rejects become ``_`` and path
tricks (``a//b``, ``./a``, ``../a``) are normalised (:func:`sanitize_key`). Non-numeric
metric values are dropped; NaN/inf are logged (MLflow stores them as such).

Offline buffering: every call that cannot reach the tracking store (server down, timeout,
SQLite locked) appends the call to ``<run_dir>/mlflow_buffer.jsonl`` and training goes on.
Each later call first tries to replay the buffer, at most once per back-off interval (1 s,
doubling to 60 s), so a dead server costs one fast failed request per interval, not one per
step; HTTP requests are made with ``MLFLOW_HTTP_REQUEST_MAX_RETRIES=0`` and a short
``MLFLOW_HTTP_REQUEST_TIMEOUT`` (``request_timeout``). If the server is down when the run
starts, the run is created on replay; until then :attr:`MlflowLogger.run_id` is a local
placeholder (``offline-<hex>``) that ``<run_dir>/mlflow_run.json`` maps to the real id once
known, so a checkpoint taken while offline still resumes into the right run. ``finish``
retries for up to ``finish_wait`` seconds; whatever is still buffered then stays on disk and
is uploaded by the next logger opened on the same run directory (e.g. a resume), or by
:func:`sync_run_dir`.

Replay is in order and the buffer is rewritten after each uploaded entry, so an interrupted
replay does not upload an entry twice. A request MLflow refuses as invalid (not a
connectivity problem) is reported once as a warning and dropped rather than retried forever.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from archer.tracking.base import metric_value, sanitize_key
from archer.tracking.store import resolve_tracking_uri, sqlite_artifact_root

log = logging.getLogger(__name__)

DEFAULT_EXPERIMENT = "archer"
BUFFER_NAME = "mlflow_buffer.jsonl"
STATE_NAME = "mlflow_run.json"
OFFLINE_PREFIX = "offline-"

MAX_PARAM_LENGTH = 6000  # MAX_PARAM_VAL_LENGTH
MAX_TAG_LENGTH = 8000  # MAX_TAG_VAL_LENGTH
MAX_METRICS_PER_BATCH = 1000
MAX_PARAMS_TAGS_PER_BATCH = 100

# MLflow error codes that mean "this request is wrong", not "the store is unreachable".
PERMANENT_ERRORS = frozenset({
    "INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "RESOURCE_ALREADY_EXISTS",
    "BAD_REQUEST", "INVALID_STATE", "MALFORMED_REQUEST", "PERMISSION_DENIED",
    "UNAUTHENTICATED", "CUSTOMER_UNAUTHORIZED", "ENDPOINT_NOT_FOUND",
})


def _is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def _error_code(err: BaseException) -> str | None:
    return getattr(err, "error_code", None)


def is_permanent(err: BaseException) -> bool:
    """True when ``err`` says the request itself is invalid (retrying cannot help)."""
    return _error_code(err) in PERMANENT_ERRORS


def retry_locked(fn, *args, attempts: int = 20, **kwargs):
    """Call ``fn``; retry with back-off while SQLite says the database is locked (a reader
    such as ``archer study status`` or ``mlflow ui`` may hold it briefly)."""
    delay = 0.05
    for i in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as err:  # noqa: BLE001
            if "locked" not in str(err).lower() or i == attempts - 1:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 2.0)
    raise AssertionError("unreachable")


class OfflineBuffer:
    """Calls that could not be delivered, one JSON object per line, replayed in order."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, entry: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(entry) + "\n")

    def read(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line]

    def rewrite(self, entries: list[dict[str, Any]]) -> None:
        if not entries:
            self.path.unlink(missing_ok=True)
            return
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(e) + "\n" for e in entries))
        os.replace(tmp, self.path)

    def __len__(self) -> int:
        return len(self.read())


class MlflowLogger:
    """MetricLogger writing to MLflow, with offline buffering (see the module docstring).

    ``run_id=None`` starts a new MLflow run; an MLflow run id (or the ``offline-`` placeholder
    this logger handed out) continues that run.
    """

    def __init__(
        self,
        run_dir: str | Path,
        run_id: str | None = None,
        *,
        tracking_uri: str | None = None,
        experiment: str = DEFAULT_EXPERIMENT,
        run_name: str | None = None,
        tags: dict[str, Any] | None = None,
        request_timeout: float = 5.0,
        retry_initial: float = 1.0,
        retry_max: float = 60.0,
        finish_wait: float = 10.0,
    ) -> None:
        self._setup(run_dir, tracking_uri, experiment, request_timeout, retry_initial,
                    retry_max, finish_wait)
        state = self._read_state()
        if run_id is None:
            self._adopt_leftovers(state)
            self._start_new_run(run_name, tags or {})
        elif run_id.startswith(OFFLINE_PREFIX) or run_id == state.get("local_id"):
            if state.get("local_id") != run_id:
                raise ValueError(
                    f"offline run id {run_id!r} is unknown in {self._state_path}; the "
                    "buffer of that run is not in this run directory")
            self._local_id, self._mlflow_id = run_id, state.get("run_id")
            self.flush(force=True)
            self._reopen()
        else:
            self._mlflow_id = run_id
            self._local_id = state.get("local_id") if state.get("run_id") == run_id else None
            self.flush(force=True)
            self._reopen()
        self._write_state()

    def _setup(self, run_dir, tracking_uri, experiment, request_timeout, retry_initial,
               retry_max, finish_wait) -> None:
        from mlflow.tracking import MlflowClient

        for name in ("alembic", "mlflow.store.db.utils"):  # SQLite migrations are chatty
            logging.getLogger(name).setLevel(logging.WARNING)
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.uri = resolve_tracking_uri(tracking_uri)
        self.experiment = experiment
        self.request_timeout = request_timeout
        self.retry_initial, self.retry_max = retry_initial, retry_max
        self.finish_wait = finish_wait
        self.client = MlflowClient(tracking_uri=self.uri)
        self.buffer = OfflineBuffer(self.run_dir / BUFFER_NAME)
        self._state_path = self.run_dir / STATE_NAME
        self._delay = retry_initial
        self._next_try = 0.0  # time.monotonic() before which no replay is attempted
        self._warned_offline = False
        self._mlflow_id: str | None = None
        self._local_id: str | None = None

    @classmethod
    def attach(cls, run_dir: str | Path, tracking_uri: str | None = None) -> MlflowLogger:
        """A logger on the run recorded in ``run_dir`` that starts and reopens nothing (for
        uploading a leftover buffer)."""
        state_path = Path(run_dir) / STATE_NAME
        if not state_path.is_file():
            raise FileNotFoundError(f"{state_path} does not exist: no MLflow run in {run_dir}")
        state = json.loads(state_path.read_text())
        self = cls.__new__(cls)
        self._setup(run_dir, tracking_uri or state["uri"],
                    state.get("experiment", DEFAULT_EXPERIMENT), 5.0, 1.0, 60.0, 0.0)
        self._local_id, self._mlflow_id = state.get("local_id"), state.get("run_id")
        return self

    # ----------------------------------------------------------------------------------
    # identity
    # ----------------------------------------------------------------------------------

    @property
    def run_id(self) -> str:
        """The MLflow run id, or the ``offline-`` placeholder while the run is not created."""
        return self._mlflow_id or self._local_id  # type: ignore[return-value]

    @property
    def online(self) -> bool:
        """True when nothing is waiting in the offline buffer."""
        return not self.buffer.path.is_file()

    def _read_state(self) -> dict[str, Any]:
        if not self._state_path.is_file():
            return {}
        return json.loads(self._state_path.read_text())

    def _write_state(self) -> None:
        state = {"local_id": self._local_id, "run_id": self._mlflow_id, "uri": self.uri,
                 "experiment": self.experiment}
        self._state_path.write_text(json.dumps(state, indent=1) + "\n")

    def _adopt_leftovers(self, state: dict[str, Any]) -> None:
        """A new run in a directory whose previous run still has buffered calls: upload them
        into that run first, or move them aside (named after the run) with a warning."""
        if not self.buffer.path.is_file():
            return
        if state.get("uri") == self.uri:
            self._local_id, self._mlflow_id = state.get("local_id"), state.get("run_id")
            if self.flush(force=True):
                return
        aside = self.run_dir / f"mlflow_buffer.{state.get('run_id') or state.get('local_id')}.jsonl"
        os.replace(self.buffer.path, aside)
        log.warning("MLflow: calls buffered for an earlier run could not be uploaded; kept in %s",
                    aside)

    def _start_new_run(self, run_name: str | None, tags: dict[str, Any]) -> None:
        self._local_id = OFFLINE_PREFIX + uuid.uuid4().hex
        self._mlflow_id = None
        entry = {"op": "create", "experiment": self.experiment, "run_name": run_name,
                 "tags": {sanitize_key(k): str(v)[:MAX_TAG_LENGTH] for k, v in tags.items()},
                 "start_time": _now_ms()}
        self._deliver(entry)

    def _reopen(self) -> None:
        """Mark a resumed run RUNNING again (it was FINISHED/FAILED by the last ``finish``)."""
        if self.buffer.path.is_file():
            self.buffer.append({"op": "status", "status": "RUNNING"})
            return
        try:
            with self._short_requests():
                self.client.get_run(self._mlflow_id)
                self.client.update_run(self._mlflow_id, status="RUNNING")
        except Exception as err:  # noqa: BLE001
            if _error_code(err) == "RESOURCE_DOES_NOT_EXIST":
                raise ValueError(
                    f"MLflow run {self._mlflow_id!r} (from the checkpoint) does not exist in "
                    f"{self.uri}; resume with the tracking URI it was logged to") from None
            self._offline(err)
            self.buffer.append({"op": "status", "status": "RUNNING"})

    # ----------------------------------------------------------------------------------
    # MetricLogger
    # ----------------------------------------------------------------------------------

    def log_params(self, params: dict[str, Any]) -> None:
        values = {sanitize_key(k): _param_value(v) for k, v in params.items()}
        items = sorted(values.items())
        for i in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
            self._deliver({"op": "params", "values": dict(items[i:i + MAX_PARAMS_TAGS_PER_BATCH])})

    def set_tags(self, tags: dict[str, Any]) -> None:
        values = {sanitize_key(k): str(v)[:MAX_TAG_LENGTH] for k, v in tags.items()}
        self._deliver({"op": "tags", "values": values})

    def log_metrics(self, metrics: dict[str, float], step: int,
                    timestamp_ms: int | None = None) -> None:
        """Log ``metrics`` at ``step``, stamped ``timestamp_ms`` (default: now). The same
        values, step and timestamp logged twice are one point in MLflow's SQL stores."""
        values = {}
        for k, v in metrics.items():
            number = metric_value(v)
            if number is not None:
                values[sanitize_key(k)] = number
        if values:
            stamp = _now_ms() if timestamp_ms is None else int(timestamp_ms)
            self._deliver({"op": "metrics", "step": int(step), "timestamp": stamp,
                           "values": values})

    def rewind(self, step: int, metrics: dict[str, float] | None = None) -> None:
        """Resuming from the checkpoint of ``step``: buffered metrics of later steps are
        dropped, and ``metrics`` (that step's own) are logged unless MLflow already has them.
        MLflow cannot delete uploaded points: when later steps were uploaded before the crash
        (``ckpt_every`` > 1) they get a second value when redone, and the run is tagged
        ``archer.rewound_to_step`` so a reader knows."""
        entries = self.buffer.read() if self.buffer.path.is_file() else []
        kept = [e for e in entries if e["op"] != "metrics" or e["step"] <= step]
        if len(kept) != len(entries):
            self.buffer.rewrite(kept)
        buffered = {e["step"] for e in kept if e["op"] == "metrics"}
        uploaded: set[int] = set()
        if self._mlflow_id is not None and self.flush(force=True):
            try:
                with self._short_requests():
                    history = self.client.get_metric_history(self._mlflow_id, "time/step")
                uploaded = {m.step for m in history}
            except Exception as err:  # noqa: BLE001
                self._offline(err)
        if any(s > step for s in uploaded):
            self.set_tags({"archer.rewound_to_step": step})
        if metrics and step not in uploaded | buffered:
            self.log_metrics(metrics, step)

    def log_artifact(self, path: str | Path) -> None:
        self._deliver({"op": "artifact", "path": str(Path(path).resolve())})

    def finish(self, status: str = "FINISHED") -> None:
        self._deliver({"op": "terminate", "status": status, "end_time": _now_ms()},
                      flush_first=False)
        deadline = time.monotonic() + self.finish_wait
        while self.buffer.path.is_file() and time.monotonic() < deadline:
            time.sleep(max(0.0, min(self._next_try, deadline) - time.monotonic()))
            self.flush(force=True)
        if self.buffer.path.is_file():
            log.warning(
                "MLflow at %s is unreachable; %d buffered call(s) stay in %s and are uploaded "
                "by the next logger on this run directory (or archer.tracking.sync_run_dir)",
                self.uri, len(self.buffer), self.buffer.path)
        self._write_state()

    # ----------------------------------------------------------------------------------
    # delivery, buffering, replay
    # ----------------------------------------------------------------------------------

    def _deliver(self, entry: dict[str, Any], flush_first: bool = True) -> None:
        """Send ``entry`` now when nothing is pending; else queue it behind the buffer."""
        if self.buffer.path.is_file() and flush_first:
            self.flush()
        if self.buffer.path.is_file() or (entry["op"] != "create" and self._mlflow_id is None):
            self.buffer.append(entry)
            return
        try:
            with self._short_requests():
                self._apply(entry)
        except Exception as err:  # noqa: BLE001
            if is_permanent(err):
                if entry["op"] == "create":
                    raise ValueError(f"MLflow at {self.uri} refused to create the run: "
                                     f"{_short(err)}") from None
                log.warning("MLflow refused %s: %s (dropped)", entry["op"], _short(err))
                return
            self._offline(err)
            self.buffer.append(entry)

    def flush(self, force: bool = False) -> bool:
        """Replay the buffer; True when it is empty afterwards. Without ``force`` nothing is
        tried before the back-off interval since the last failure has passed."""
        if not self.buffer.path.is_file():
            return True
        if not force and time.monotonic() < self._next_try:
            return False
        entries = self.buffer.read()
        done = 0
        try:
            with self._short_requests():
                for entry in entries:
                    try:
                        self._apply(entry)
                    except Exception as err:  # noqa: BLE001
                        if not is_permanent(err) or entry["op"] == "create":
                            raise
                        log.warning("MLflow refused buffered %s: %s (dropped)", entry["op"],
                                    _short(err))
                    done += 1
                    if entry["op"] == "create":
                        self.buffer.rewrite(entries[done:])  # never create the run twice
        except Exception as err:  # noqa: BLE001
            self.buffer.rewrite(entries[done:])
            self._offline(err)
            return False
        self.buffer.rewrite([])
        self._delay, self._next_try = self.retry_initial, 0.0
        if self._warned_offline:
            log.warning("MLflow at %s is reachable again; %d buffered call(s) uploaded",
                        self.uri, len(entries))
            self._warned_offline = False
        return True

    def _offline(self, err: BaseException) -> None:
        if not self._warned_offline:
            log.warning("MLflow at %s is unreachable (%s); training goes on, calls are "
                        "buffered in %s", self.uri, _short(err), self.buffer.path)
            self._warned_offline = True
        self._next_try = time.monotonic() + self._delay
        self._delay = min(self._delay * 2, self.retry_max)

    def _apply(self, entry: dict[str, Any]) -> None:
        """Perform one call against MLflow (raises on failure)."""
        from mlflow.entities import Metric, Param, RunTag

        op, run = entry["op"], self._mlflow_id
        if op == "create":
            if run is not None:  # created already (a replay after a partial upload)
                return
            exp_id = self._experiment_id(entry["experiment"])
            tags = [RunTag(k, v) for k, v in entry["tags"].items()]
            created = self.client.create_run(exp_id, start_time=entry["start_time"],
                                             tags={t.key: t.value for t in tags},
                                             run_name=entry["run_name"])
            self._mlflow_id = created.info.run_id
            self._write_state()
        elif op == "params":
            self.client.log_batch(run, params=[Param(k, v) for k, v in entry["values"].items()])
        elif op == "tags":
            items = list(entry["values"].items())
            for i in range(0, len(items), MAX_PARAMS_TAGS_PER_BATCH):
                chunk = items[i:i + MAX_PARAMS_TAGS_PER_BATCH]
                self.client.log_batch(run, tags=[RunTag(k, v) for k, v in chunk])
        elif op == "metrics":
            items = list(entry["values"].items())
            for i in range(0, len(items), MAX_METRICS_PER_BATCH):
                metrics = [Metric(k, _decode_float(v), entry["timestamp"], entry["step"])
                           for k, v in items[i:i + MAX_METRICS_PER_BATCH]]
                self.client.log_batch(run, metrics=metrics)
        elif op == "artifact":
            path = Path(entry["path"])
            if not path.is_file():
                log.warning("MLflow artifact %s no longer exists (skipped)", path)
                return
            self.client.log_artifact(run, str(path))
        elif op == "status":
            self.client.update_run(run, status=entry["status"])
        elif op == "terminate":
            self.client.set_terminated(run, status=entry["status"], end_time=entry["end_time"])
        else:
            raise ValueError(f"unknown buffered MLflow call {op!r} in {self.buffer.path}")

    def _experiment_id(self, name: str) -> str:
        exp = self.client.get_experiment_by_name(name)
        if exp is not None:
            return exp.experiment_id
        root = sqlite_artifact_root(self.uri)
        try:
            return self.client.create_experiment(
                name, artifact_location=root.as_uri() if root else None)
        except Exception as err:  # noqa: BLE001  (created concurrently by another run)
            exp = self.client.get_experiment_by_name(name)
            if exp is None:
                raise err from None
            return exp.experiment_id

    @contextmanager
    def _short_requests(self) -> Iterator[None]:
        """No HTTP retries and a short timeout while talking to the server."""
        if not _is_http(self.uri):
            yield
            return
        saved = {k: os.environ.get(k) for k in (
            "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT")}
        os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
        os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] = str(max(1, math.ceil(self.request_timeout)))
        try:
            yield
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


def sync_run_dir(run_dir: str | Path, tracking_uri: str | None = None) -> bool:
    """Upload what a run directory still has buffered (e.g. after the server came back);
    True when nothing is left. The run's status is whatever the buffered calls set."""
    return MlflowLogger.attach(run_dir, tracking_uri).flush(force=True)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _param_value(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (list, tuple, dict)) else str(value)
    return text[:MAX_PARAM_LENGTH]


def _decode_float(value: float | str) -> float:
    return float(value)


def _short(err: BaseException, width: int = 160) -> str:
    text = f"{type(err).__name__}: {err}".replace("\n", " ")
    return text if len(text) <= width else text[: width - 3] + "..."
