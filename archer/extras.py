"""Optional dependencies (pyproject ``[project.optional-dependencies]``): which extra holds
which package, whether it is installed, and the one error a command raises without it.

A command that needs an extra imports it through :func:`require`, which names the extra and
the pip command when the package is missing::

    optuna = require("optuna", "sweeps", "archer sweep")
    # MissingExtraError: optuna is not installed: pip install 'archer-rlvr[sweeps]'
    # (needed for archer sweep)

Nothing here imports an optional package at import time; :func:`extras_status` only looks
the packages up (``importlib.util.find_spec``), so ``archer env`` stays fast and never
initialises vLLM or a GPU.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from archer.validation import unknown_name

DISTRIBUTION = "archer-rlvr"  # pyproject [project] name: what pip installs

# extra -> the top-level modules whose presence marks it installed (the packages the extra
# lists that Archer imports; `all` is the union of eval, sweeps, dashboards and verl).
EXTRAS: dict[str, tuple[str, ...]] = {
    "vllm": ("vllm",),
    "eval": ("lm_eval", "evalplus"),
    "sweeps": ("optuna", "optuna_dashboard"),
    "dashboards": ("plotly",),
    "verl": ("verl", "codetiming", "tensordict"),
    "bench": ("trl",),
}


class MissingExtraError(ImportError, ValueError):
    """An optional package is not installed. A ValueError too, so ``archer ...`` reports
    it as one ``archer: error:`` line instead of a traceback."""

    def __init__(self, module: str, extra: str, purpose: str):
        self.module, self.extra, self.purpose = module, extra, purpose
        super().__init__(f"{module} is not installed: {install_command(extra)} "
                         f"(needed for {purpose})", name=module)


def install_command(extra: str) -> str:
    """The pip command that installs ``extra`` (for an editable checkout:
    ``pip install -e '.[extra]'``)."""
    if extra not in EXTRAS and extra != "all":
        raise unknown_name("extra", extra, [*EXTRAS, "all"])
    return f"pip install '{DISTRIBUTION}[{extra}]'"


def is_installed(module: str) -> bool:
    """Whether ``module`` can be found, without importing it (a dotted name imports its
    parent packages). A module blocked in ``sys.modules`` (``None``) counts as missing."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a missing parent, or a module with no __spec__
        return False


def require(module: str, extra: str, purpose: str) -> ModuleType:
    """Import and return ``module``; raise :class:`MissingExtraError` naming ``extra`` and
    ``purpose`` (the command or feature that needs it) when it is not installed.

    Only a missing package becomes this error: an installed package that fails on import
    raises its own error, which is what helps there.
    """
    if extra not in EXTRAS:
        raise unknown_name("extra", extra, list(EXTRAS))
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        missing = err.name or module
        if module != missing and not module.startswith(missing + "."):
            raise  # the package is there but one of its own dependencies is not
        raise MissingExtraError(module.split(".")[0], extra, purpose) from err


def extras_status() -> dict[str, list[str]]:
    """Each extra -> its modules that are not installed (empty: the extra is installed)."""
    return {extra: [m for m in modules if not is_installed(m)]
            for extra, modules in EXTRAS.items()}
