"""Read-only access to what studies and evaluations logged to MLflow (for the dashboards and
the leaderboard).

``search_runs_frame`` turns MLflow runs into a pandas DataFrame in ``mlflow.search_runs``'s
layout (``run_id``, ``experiment``, ``run_name``, ``status``, ``start_time``, ``end_time``,
``parent_run_id`` and one column per ``tags.<key>``, ``params.<key>``, ``metrics.<key>``
holding the last value); pandas is imported when a frame is built. It goes through an
``MlflowClient`` bound to one tracking URI (no global ``mlflow.set_tracking_uri``), and
refuses a SQLite URI whose file does not exist or is not an MLflow database (0 bytes,
another SQLite database) instead of letting MLflow create a store there: readers never
write.

What readers rely on (written by :mod:`archer.tracking.hierarchy` and
:mod:`archer.tracking.eval_runs`): study runs tagged ``archer.kind=study``; trial runs
``archer.kind=trial`` with ``archer.study``, ``archer.preset``, ``archer.seed``,
``archer.variant``, ``archer.axes`` and per-step trainer metrics
(``archer.trainer.STEP_METRICS``); evaluation runs ``archer.kind=eval`` nested under their
trial with ``<bench>/avg_at_K``, ``..._ci_low``, ``..._ci_high``, ``<bench>/pass_at_k``,
params ``<bench>/contract.<field>``, tag ``<bench>/contract_hash`` and the artifact
``<bench>_per_problem.csv``.
"""

from __future__ import annotations

import csv
import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from archer.tracking.base import sanitize_key
from archer.tracking.mlflow import retry_locked
from archer.tracking.store import resolve_tracking_uri

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)


def resolve_uri(tracking_uri: str | None) -> str:
    """The tracking URI a reader opens (:func:`archer.tracking.store.resolve_tracking_uri`)."""
    return resolve_tracking_uri(tracking_uri)


SQLITE_MAGIC = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file


def check_sqlite_store(uri: str, source: str = "--tracking-uri") -> None:
    """Refuse a ``sqlite:///`` URI whose file is not already an MLflow store: MLflow would
    create the file, or its tables in an empty or foreign database, and dashboards never
    write. The file is only read (opened read-only), so it is left as it was. ``source``
    says where the URI came from, for the message."""
    import sqlite3

    path = Path(uri[len("sqlite:///"):].split("?", 1)[0]).expanduser()
    where = f"MLflow store {uri} (from {source})"
    if not path.exists():
        raise FileNotFoundError(f"{where} does not exist (no file {path.absolute()}); run a "
                                "study or an evaluation first, or pass --tracking-uri")
    if not path.is_file():
        raise ValueError(f"{where}: {path.absolute()} is a directory, not an MLflow "
                         "database; pass --tracking-uri sqlite:///<file.db>")
    with path.open("rb") as f:
        head = f.read(len(SQLITE_MAGIC))
    if not head:
        raise ValueError(f"{where}: {path.absolute()} is empty (0 bytes), not an MLflow "
                         "database; left untouched (run a study or an evaluation to create "
                         "the store, or pass --tracking-uri)")
    if head != SQLITE_MAGIC:
        raise ValueError(f"{where}: {path.absolute()} is not an SQLite database, so not an "
                         "MLflow store; pass --tracking-uri")
    try:
        con = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
        try:
            tables = {r[0] for r in con.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            con.close()
    except sqlite3.Error as err:
        raise ValueError(f"{where}: {path.absolute()} cannot be read as an SQLite "
                         f"database ({err})") from None
    if not {"experiments", "runs"} <= tables:
        raise ValueError(f"{where}: {path.absolute()} is an SQLite database without "
                         "MLflow's tables (experiments, runs), not an MLflow store; left "
                         "untouched (pass --tracking-uri)")


def open_client(tracking_uri: str | None):
    """An ``MlflowClient`` on ``tracking_uri`` (default as for training); a ``sqlite:///``
    store must already be an MLflow database (:func:`check_sqlite_store`)."""
    from mlflow.tracking import MlflowClient

    uri = resolve_uri(tracking_uri)
    if uri.startswith("sqlite:///"):
        source = ("--tracking-uri" if tracking_uri else "$MLFLOW_TRACKING_URI"
                  if os.environ.get("MLFLOW_TRACKING_URI") else "the default")
        check_sqlite_store(uri, source)
    for name in ("alembic", "mlflow.store.db.utils"):
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    return MlflowClient(tracking_uri=uri)


def experiment_ids(client, names: list[str] | None = None) -> dict[str, str]:
    """``{experiment id: name}``: all experiments, or those named (a missing name is an error
    listing the ones that exist)."""
    from mlflow.entities import ViewType

    exps = {e.experiment_id: e.name for e in client.search_experiments(view_type=ViewType.ALL)}
    if names:
        by_name = {v: k for k, v in exps.items()}
        missing = [n for n in names if n not in by_name]
        if missing:
            raise ValueError(f"no MLflow experiment named {missing}; there are: "
                             f"{sorted(by_name)}")
        return {by_name[n]: n for n in names}
    return exps


def search_runs_frame(client, exp_ids: dict[str, str], filter_string: str = "") -> pd.DataFrame:
    """Every run of the experiments as one row (see the module docstring)."""
    import pandas as pd

    rows: list[dict[str, Any]] = []
    if not exp_ids:
        return pd.DataFrame(rows)
    token = None
    while True:
        page = client.search_runs(list(exp_ids), filter_string=filter_string,
                                  max_results=5000, page_token=token)
        for run in page:
            info, data = run.info, run.data
            row: dict[str, Any] = {
                "run_id": info.run_id, "experiment": exp_ids.get(info.experiment_id, ""),
                "run_name": info.run_name, "status": info.status,
                "start_time": info.start_time, "end_time": info.end_time,
                "parent_run_id": data.tags.get("mlflow.parentRunId"),
            }
            row.update({f"tags.{k}": v for k, v in data.tags.items()})
            row.update({f"params.{k}": v for k, v in data.params.items()})
            row.update({f"metrics.{k}": v for k, v in data.metrics.items()})
            rows.append(row)
        token = page.token
        if not token:
            break
    return pd.DataFrame(rows)


def prefixed(row: pd.Series, prefix: str) -> dict[str, Any]:
    """``{key: value}`` of a frame row's ``prefix.<key>`` columns that are set."""
    n = len(prefix) + 1
    return {c[n:]: v for c, v in row.items()
            if c.startswith(prefix + ".") and v is not None and not _isnan(v)}


def _isnan(v: Any) -> bool:
    return isinstance(v, float) and v != v


def metric_history(client, run_id: str, key: str) -> dict[int, float]:
    """``{step: value}`` of metric ``key`` of ``run_id``, sorted by step; a step logged twice
    (a resumed trial that redid steps) keeps its latest value. ``key`` is the name as it was
    logged (``val/pass@4``): it is looked up as the loggers stored it (:func:`sanitize_key`,
    ``val/pass_4``). Retried while SQLite is locked by a writer."""
    hist = retry_locked(client.get_metric_history, run_id, sanitize_key(key))
    out: dict[int, tuple[int, float]] = {}
    for m in hist:
        prev = out.get(int(m.step))
        if prev is None or m.timestamp >= prev[0]:
            out[int(m.step)] = (m.timestamp, float(m.value))
    return {s: v for s, (_, v) in sorted(out.items())}


def per_problem_accuracy(client, run_id: str, bench: str) -> dict[str, float] | None:
    """``{problem_id: accuracy}`` from the eval run's ``<bench>_per_problem.csv`` artifact;
    None when the run has no such artifact."""
    name = f"{bench}_per_problem.csv"
    try:
        names = {a.path for a in client.list_artifacts(run_id)}
    except Exception as err:  # noqa: BLE001  (artifact store unreachable)
        log.warning("cannot list artifacts of run %s: %s", run_id, err)
        return None
    if name not in names:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(client.download_artifacts(run_id, name, tmp))
        with path.open(newline="", encoding="utf-8") as f:
            return {r["problem_id"]: float(r["accuracy"]) for r in csv.DictReader(f)}


def arm_label(tags: dict) -> str | None:
    """A trial's arm, as leaderboards and results pages name it: its preset plus what sets it
    apart from the study's other trials besides its seed (its variant and non-``algo`` axis
    values), e.g. ``archer [algo.low.kl_weight=0.005]``; None for a run with no preset tag."""
    preset = tags.get("archer.preset")
    if not preset:
        return None
    extras = []
    variant = tags.get("archer.variant")
    if variant and variant != "-":
        extras.append(str(variant))
    for item in str(tags.get("archer.axes") or "").split():
        if item != "-" and not item.startswith("algo="):
            extras.append(item)
    return str(preset) + (f" [{', '.join(extras)}]" if extras else "")
