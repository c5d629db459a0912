"""Where Archer finds its offline data and keeps its caches.

Nothing here is a machine-specific path. The data directory is ``$ARCHER_DATA_DIR`` when set,
else a user cache directory, ``$XDG_CACHE_HOME/archer/data`` (``~/.cache/archer/data`` when
``XDG_CACHE_HOME`` is unset), which ``archer data fetch`` fills. The cache for prepared
models is ``$ARCHER_CACHE_DIR`` (default ``~/.cache/archer``).
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_DIR_ENV = "ARCHER_DATA_DIR"
CACHE_DIR_ENV = "ARCHER_CACHE_DIR"


def repo_root() -> Path:
    """The checkout that holds the ``archer`` package (the parent of ``archer/``)."""
    return Path(__file__).resolve().parent.parent


def user_data_dir() -> Path:
    """The default data directory: ``$XDG_CACHE_HOME/archer/data`` or ~/.cache/archer/data."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "archer" / "data"


def data_dir() -> Path:
    """The data directory: ``$ARCHER_DATA_DIR`` (which must exist; else FileNotFoundError
    naming it), else :func:`user_data_dir` (which may not exist yet: a missing file there is
    reported with the command that fetches it)."""
    env = os.environ.get(DATA_DIR_ENV)
    if not env:
        return user_data_dir()
    path = Path(env).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"data directory {str(path)!r} (from ${DATA_DIR_ENV}={env!r}) does not exist; set "
            f"{DATA_DIR_ENV} to the folder holding eval_math/, train_math/, ... or unset it "
            f"to use {user_data_dir()} (`archer data fetch --all` fills it)"
        )
    return path


def data_dir_origin() -> str:
    """Where :func:`data_dir` comes from, for messages."""
    if os.environ.get(DATA_DIR_ENV):
        return f"from ${DATA_DIR_ENV}"
    return f"the default; set ${DATA_DIR_ENV} to use another"


def cache_dir() -> Path:
    """Cache for prepared models etc. (created on demand): ``$ARCHER_CACHE_DIR`` or ~/.cache/archer."""
    env = os.environ.get(CACHE_DIR_ENV)
    path = Path(env).expanduser() if env else Path.home() / ".cache" / "archer"
    path.mkdir(parents=True, exist_ok=True)
    return path


def display_path(path: str | os.PathLike) -> str:
    """``path`` as a page may print it: under the cache directory as ``$ARCHER_CACHE_DIR/...``,
    under the home directory as ``~/...``, otherwise unchanged (a results page names no
    machine's own directories).

    >>> display_path(Path.home() / "models" / "m")
    '~/models/m'
    """
    text = str(path)
    for root, shown in ((cache_dir(), f"${CACHE_DIR_ENV}"), (Path.home(), "~")):
        prefix = str(root).rstrip(os.sep) + os.sep
        if text.startswith(prefix):
            return f"{shown}/{text[len(prefix):]}"
    return text
