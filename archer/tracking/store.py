"""Where runs go: the tracking URI (``tracking_uri`` if given, else ``$MLFLOW_TRACKING_URI``,
else a local SQLite store ``sqlite:///runs/mlflow.db`` relative to the working directory,
with artifacts beside it in ``runs/mlartifacts``), and the checks of a URI and of the
``tracking`` section of ``archer train`` before a run loads its model. Nothing here opens a
store; MLflow is only consulted (lazily) for the URI schemes its plugins registered.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

DEFAULT_TRACKING_URI = "sqlite:///runs/mlflow.db"


def resolve_tracking_uri(uri: str | None = None) -> str:
    """``uri``, else ``$MLFLOW_TRACKING_URI``, else the project's local SQLite store."""
    return uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def sqlite_artifact_root(uri: str) -> Path | None:
    """``<directory of the .db>/mlartifacts`` for a ``sqlite:///`` URI, else None."""
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri[len("sqlite:///"):])
    return (db.parent / "mlartifacts").resolve()


# URI schemes MLflow's tracking store accepts (mlflow.tracking._tracking_service.utils): a
# plain path has none; database schemes may name a driver (postgresql+psycopg2://).
TRACKING_URI_SCHEMES = ("", "file", "http", "https", "sqlite", "postgresql", "mysql", "mssql",
                        "databricks", "databricks-uc", "uc")


def _known_schemes() -> set[str]:
    """:data:`TRACKING_URI_SCHEMES` plus those the installed MLflow (and its plugins)
    registered, when its registry can be read."""
    known = set(TRACKING_URI_SCHEMES)
    try:
        from mlflow.tracking._tracking_service.utils import _tracking_store_registry

        known |= {str(k).lower() for k in _tracking_store_registry._registry}
    except Exception:  # noqa: BLE001  (private API: the static list is enough)
        pass
    return known


def check_tracking_uri(uri: Any, key: str = "tracking.uri") -> None:
    """ValueError naming ``key`` unless ``uri`` is a URI MLflow can open (see
    :data:`TRACKING_URI_SCHEMES`) or a plain path; checked before the run loads its model."""
    from urllib.parse import urlparse

    if not isinstance(uri, str) or not uri.strip():
        raise ValueError(f"{key}={uri!r} is invalid; give a tracking URI (http://host:port, "
                         "sqlite:///path.db, file:///dir, ...) or a directory path")
    parsed = urlparse(uri)
    scheme = parsed.scheme.lower()
    if len(scheme) == 1 and scheme.isalpha():  # a Windows drive letter: a plain path
        scheme = ""
    base = scheme.split("+", 1)[0]  # postgresql+psycopg2
    if base not in TRACKING_URI_SCHEMES and base not in _known_schemes():
        allowed = sorted(s for s in _known_schemes() if s)
        raise ValueError(f"{key}={uri!r} has URI scheme {parsed.scheme!r}, which MLflow "
                         f"does not accept; allowed schemes: {allowed}, or a plain directory "
                         "path")
    if base in ("http", "https") and not parsed.hostname:
        raise ValueError(f"{key}={uri!r} names no host; e.g. http://127.0.0.1:5000")


def check_tracking_config(section: dict[str, Any]) -> None:
    """The ``tracking`` section of ``archer train`` (backend mlflow): the URI (or, when it is
    null, ``$MLFLOW_TRACKING_URI``), a positive ``request_timeout``, a ``finish_wait`` >= 0
    and a non-empty experiment name; a bad value is a ValueError naming its key."""
    if section.get("backend") != "mlflow":
        return
    uri = section.get("uri")
    if uri is not None:
        check_tracking_uri(uri, "tracking.uri")
    elif os.environ.get("MLFLOW_TRACKING_URI"):
        check_tracking_uri(os.environ["MLFLOW_TRACKING_URI"],
                           "MLFLOW_TRACKING_URI (used as tracking.uri is null)")

    def number(key: str, lo: float, strict: bool) -> None:
        value = section.get(key)
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool)
              and math.isfinite(value) and (value > lo if strict else value >= lo))
        if not ok:
            raise ValueError(f"tracking.{key}={value!r} is invalid; allowed: a number "
                             + ("> 0 (seconds)" if strict else ">= 0 (seconds)"))

    number("request_timeout", 0.0, strict=True)
    number("finish_wait", 0.0, strict=False)
    experiment = section.get("experiment")
    if not isinstance(experiment, str) or not experiment.strip():
        raise ValueError(f"tracking.experiment={experiment!r} is invalid; allowed: a "
                         "non-empty name")
    run_name = section.get("run_name")
    if run_name is not None and not isinstance(run_name, str):
        raise ValueError(f"tracking.run_name={run_name!r} is invalid; allowed: a string or "
                         "null")
