"""The package version: the installed distribution's, else the checkout's pyproject.toml."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

DISTRIBUTION = "archer-rlvr"
PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def pyproject_version(path: Path | None = None) -> str | None:
    """``[project] version`` of ``path`` (default: the checkout's pyproject.toml), or None
    when there is no such file or field."""
    try:
        text = (path or PYPROJECT).read_text(encoding="utf-8")
    except OSError:
        return None
    project = re.search(r"^\[project\]\s*$(.*?)(?=^\[|\Z)", text, re.M | re.S)
    found = project and re.search(r'^version\s*=\s*"([^"]+)"', project.group(1), re.M)
    return found.group(1) if found else None


def package_version() -> str:
    """``importlib.metadata``'s version of archer-rlvr; a checkout that was never installed
    falls back to its pyproject.toml; ``unknown`` when neither is there."""
    try:
        return importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return pyproject_version() or "unknown"
