"""Where Archer finds its offline data and keeps its caches.

Nothing here is a machine-specific path: the data directory comes from ``ARCHER_DATA_DIR``
(default ``<repo root>/../shared/data``, the layout of the project's checkouts and CI), and
the cache from ``ARCHER_CACHE_DIR`` (default ``~/.cache/archer``).
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_DIR_ENV = "ARCHER_DATA_DIR"
CACHE_DIR_ENV = "ARCHER_CACHE_DIR"


def repo_root() -> Path:
    """The checkout that holds the ``archer`` package (the parent of ``archer/``)."""
    return Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    """The offline data directory; raises FileNotFoundError naming both ways to set it."""
    env = os.environ.get(DATA_DIR_ENV)
    path = Path(env).expanduser() if env else repo_root().parent / "shared" / "data"
    if not path.is_dir():
        source = f"${DATA_DIR_ENV}={env!r}" if env else "the default <repo>/../shared/data"
        raise FileNotFoundError(
            f"data directory {str(path)!r} (from {source}) does not exist; set "
            f"{DATA_DIR_ENV} to the folder holding eval_math/, train_math/, ... "
            "(see the data README for the files and their public sources)"
        )
    return path


def cache_dir() -> Path:
    """Cache for prepared models etc. (created on demand): ``$ARCHER_CACHE_DIR`` or ~/.cache/archer."""
    env = os.environ.get(CACHE_DIR_ENV)
    path = Path(env).expanduser() if env else Path.home() / ".cache" / "archer"
    path.mkdir(parents=True, exist_ok=True)
    return path
