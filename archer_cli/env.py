"""``archer env``: what this machine has for Archer, and the next command for what it lacks.

Each check is one line (``ok``, ``missing`` or ``error``, then the detail); a missing piece
adds the command that fixes it. A check that fails in any way becomes its line: the report
itself never raises, so it works on a half-installed machine, which is when it is needed.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from archer.extras import EXTRAS, extras_status, install_command

INSTALL = "pip install -e ."  # the core dependencies (pyproject.toml)


@dataclass(frozen=True)
class Check:
    """One line of the report: ``status`` is ok | missing | error."""

    name: str
    status: str
    detail: str
    fix: str = ""

    def lines(self) -> list[str]:
        out = [f"{self.name:18s} {self.status:8s} {self.detail}"]
        if self.fix:
            out.append(f"{'':18s} {'':8s} -> {self.fix}")
        return out


def _import(module: str):
    """The module, or None when it cannot be imported (not installed, broken, or blocked)."""
    try:
        return importlib.import_module(module)
    except Exception:  # an ImportError, or anything a broken install raises on import
        return None


def check_python() -> Check:
    return Check("python", "ok", f"{sys.version.split()[0]} ({sys.executable})")


def check_package(name: str, module: str, fix: str = INSTALL) -> Check:
    """An installed, importable package and its version."""
    mod = _import(module)
    if mod is None:
        return Check(name, "missing", f"cannot import {module}", fix)
    return Check(name, "ok", str(getattr(mod, "__version__", "installed")))


def check_torch() -> list[Check]:
    """torch, then CUDA and the GPUs torch sees."""
    torch = _import("torch")
    if torch is None:
        return [Check("torch", "missing", "cannot import torch", INSTALL),
                Check("cuda", "missing", "no torch", INSTALL)]
    checks = [Check("torch", "ok", torch.__version__)]
    if not torch.cuda.is_available():
        built = torch.version.cuda
        detail = (f"torch built for CUDA {built} but no GPU is visible" if built
                  else "a CPU-only torch build; training and evaluation run on the CPU")
        checks.append(Check("cuda", "missing", detail, "" if not built else
                            "check nvidia-smi and CUDA_VISIBLE_DEVICES"))
        return checks
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    checks.append(Check("cuda", "ok", f"CUDA {torch.version.cuda}; {len(names)} GPU(s): "
                        + ", ".join(names)))
    return checks


# what each extra is for, and the extra step before it (verl itself: no pip dependencies)
EXTRA_USES = {
    "vllm": "vLLM rollouts and evaluation (a CUDA build)",
    "eval": "archer eval engine=lm-eval, scorer=evalplus, mbpp_plus",
    "sweeps": "archer sweep, optuna-dashboard",
    "dashboards": "archer dashboard",
    "verl": "archer.integrations.verl (verl's trainer)",
    "bench": "bench/trainer_vs_trl.py",
}
VERL_FIRST = "pip install --no-deps verl==0.9.1 && "  # its own pins would break ours


def _version(module: str) -> str:
    """The installed version of the distribution named like ``module``, without importing
    it (vLLM's import alone takes seconds and may touch the GPU); ``?`` if unknown."""
    try:
        return importlib.metadata.version(module)
    except Exception:  # no distribution of that name (or broken metadata)
        return "?"


def check_extras() -> list[Check]:
    """One line per optional extra (pyproject.toml): installed, or what it lacks and the pip
    command. Looks the packages up only, imports none."""
    checks = []
    for extra, missing in extras_status().items():
        name, use = f"extra [{extra}]", EXTRA_USES.get(extra, "")
        if not missing:
            versions = ", ".join(f"{m} {_version(m)}" for m in EXTRAS[extra])
            checks.append(Check(name, "ok", f"{use}; {versions}"))
            continue
        fix = (VERL_FIRST if extra == "verl" and "verl" in missing else "") + \
            install_command(extra)
        checks.append(Check(name, "missing", f"{use}; lacks {', '.join(missing)}", fix))
    return checks


def check_sandbox() -> Check:
    """bubblewrap, and whether generated code would run inside it (its self-check)."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return Check("bubblewrap", "missing", "sandbox mode: rlimits only (UNSANDBOXED code "
                     "execution)", "sudo apt-get install bubblewrap   (or: make system-deps)")
    import warnings

    from archer.rewards.sandbox import Sandbox, SandboxConfig

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sandboxed = Sandbox(SandboxConfig()).sandboxed
    if sandboxed:
        return Check("bubblewrap", "ok", f"{bwrap}; sandbox mode: bubblewrap")
    return Check("bubblewrap", "error", f"{bwrap} fails its self-check; sandbox mode: rlimits "
                 "only (UNSANDBOXED)", "check that unprivileged user namespaces are allowed "
                 "(sysctl kernel.unprivileged_userns_clone=1)")


def check_data() -> list[Check]:
    """The data directory and each registered data file in it."""
    from archer.data.datasets import FILES
    from archer.data.fetch import SOURCES
    from archer.paths import DATA_DIR_ENV, user_data_dir

    env = os.environ.get(DATA_DIR_ENV)
    root = Path(env).expanduser() if env else user_data_dir()
    source = f"${DATA_DIR_ENV}" if env else "the default"
    if not root.is_dir():
        fix = ("archer data fetch --all" if not env else
               f"archer data fetch --all data_dir={root}   (or export {DATA_DIR_ENV}=<dir>)")
        return [Check("data dir", "missing", f"{root} (from {source}) does not exist", fix)]
    checks = [Check("data dir", "ok", f"{root} (from {source})")]
    for name in sorted(FILES.names()):
        path = root / FILES.get(name).relpath
        if path.is_file():
            checks.append(Check(f"  {name}", "ok", str(path)))
            continue
        src = SOURCES.get(name)  # every registered file has a source under its own path
        fix = (f"archer data fetch {name}" if src is not None and src.relpath ==
               FILES.get(name).relpath else f"copy the file to {path} (docs/data.md)")
        checks.append(Check(f"  {name}", "missing", str(path), fix))
    return checks


def check_tracking() -> Check:
    """The MLflow store a run logs to by default, and whether a local one exists yet."""
    from experiments.tracking import resolve_tracking_uri

    uri = resolve_tracking_uri()
    where = "$MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI") else "the default"
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///"):])
        if not db.is_file():
            return Check("tracking store", "ok", f"{uri} (from {where}); not created yet: "
                         "the first run creates it")
    return Check("tracking store", "ok", f"{uri} (from {where})")


CHECKS: tuple[Callable[[], Check | list[Check]], ...] = (
    check_python, check_torch, check_sandbox,
    lambda: check_package("ray", "ray"), lambda: check_package("mlflow", "mlflow"),
    lambda: check_package("optuna", "optuna", install_command("sweeps")), check_extras,
    check_data, check_tracking,
)


def environment_report(checks=None) -> list[Check]:
    """Every check's lines (default: :data:`CHECKS`), in order; a check that raises is an
    ``error`` line naming it."""
    out: list[Check] = []
    for check in CHECKS if checks is None else checks:
        try:
            result = check()
        except Exception as err:  # the report must reach its end whatever a check hits
            label = getattr(check, "__name__", "check").removeprefix("check_")
            out.append(Check(label, "error", f"{type(err).__name__}: {err}"))
            continue
        out.extend(result if isinstance(result, list) else [result])
    return out


def run_env(args=None) -> int:
    """Print the report; exit code 0 whatever is missing (it is a report, not a gate)."""
    for check in environment_report():
        print("\n".join(check.lines()))
    return 0
