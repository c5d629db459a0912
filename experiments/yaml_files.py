"""Reading the project's YAML files (studies, sweeps, recipes) with errors that say where:
``<file>:<line>:<column>: <problem>``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from archer.validation import ConfigError


def read_yaml(path: Path, what: str) -> dict[str, Any]:
    """The mapping in a study, sweep or recipe file; a YAML syntax error is refused as
    ``<file>:<line>:<column>: <problem>``."""
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark else str(path)
        text = err.problem or err.context or "invalid YAML"
        if err.context and err.problem and err.context_mark is not None:
            text += (f" ({err.context} at line {err.context_mark.line + 1}, column "
                     f"{err.context_mark.column + 1})")
        raise ConfigError(f"{where}: {text}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: {' '.join(str(err).split())}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a {what} file is a mapping of keys (name: ..., ...), got "
                          f"a {type(data).__name__}")
    return data
