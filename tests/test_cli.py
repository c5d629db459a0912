"""The ``archer`` command line: one key=value grammar (archer.cli_settings), the old --flag
spellings as deprecated aliases, ``archer --version``, ``archer env`` and the layer order."""

from __future__ import annotations

import argparse
import ast
import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

import archer_cli.env as env
import archer_cli.version as version
from archer.cli_settings import Setting, add_settings, resolve_settings
from archer.validation import ConfigError
from archer_cli.main import build_parser, main, parse_args

REPO = Path(__file__).resolve().parent.parent

# --------------------------------------------------------------------- the shared helper

TOY = (
    Setting("n", 3, "int", lo=1, deprecated=("--n",)),
    Setting("rate", None, "float", lo=0, lo_open=True),
    Setting("flag", False, "bool", deprecated=("--flag", "--no-flag")),
    Setting("names", [], "list", choices=("a", "b", "c"), deprecated=("--name",)),
    Setting("pairs", {}, "dict", deprecated=("--pair",)),
    Setting("tracking.uri", deprecated=("--tracking-uri",)),
    Setting("in_file", required=True),
)


def toy(argv: list[str], passthrough: str = "") -> argparse.Namespace:
    p = argparse.ArgumentParser()
    add_settings(p, "toy", TOY, passthrough=passthrough)
    return resolve_settings(p.parse_intermixed_args(argv))


def test_values_are_typed_and_defaults_fill_the_rest():
    args = toy(["in_file=x.jsonl", "n=7", "rate=0.5", "flag=yes", "names=[a,c]",
                "pairs.gsm8k=h1", "pairs.math=h2", "tracking.uri=sqlite:///t.db"])
    assert (args.in_file, args.n, args.rate, args.flag) == ("x.jsonl", 7, 0.5, True)
    assert args.names == ["a", "c"] and args.pairs == {"gsm8k": "h1", "math": "h2"}
    assert args.tracking_uri == "sqlite:///t.db" and args.overrides == []
    default = toy(["in_file=y"])
    assert (default.n, default.rate, default.flag, default.names, default.pairs) == (
        3, None, False, [], {})
    # a list setting adds up over repeats; a scalar's last value wins
    assert toy(["in_file=y", "names=a", "names=b,c", "n=2", "n=5"]).names == ["a", "b", "c"]
    assert toy(["in_file=y", "n=2", "n=5"]).n == 5
    assert toy(["in_file=y", "rate=null"]).rate is None


@pytest.mark.parametrize(("token", "message"), [
    ("n=0", "n=0 is invalid; allowed: an int in [1, inf]"),
    ("n=two", "n='two' is invalid; allowed: an int"),
    ("rate=0", "rate=0.0 is invalid; allowed: a number in (0, inf]"),
    ("flag=maybe", "flag='maybe' must be true or false"),
    ("names=a,d", "names='d' is invalid"),
    ("nn=3", "unknown key(s) in archer toy: 'nn' (did you mean 'n'?)"),
    ("tracking.ur=x", "'tracking.ur' (did you mean 'tracking.uri'?)"),
    ("plain", "archer toy: 'plain' is not key=value"),
    ("+extra=1", "unknown key(s) in archer toy: '+extra=1'"),
])
def test_bad_tokens_fail_naming_the_key(token, message):
    with pytest.raises(ConfigError) as err:
        toy(["in_file=y", token])
    assert message in str(err.value)


def test_a_required_setting_is_named_when_missing():
    with pytest.raises(ConfigError, match=r"archer toy needs in_file=\.\.\."):
        toy(["n=2"])


def test_passthrough_sends_other_keys_to_the_overrides(capsys):
    args = toy(["in_file=y", "total_steps=2", "n=4", "+study.x=1", "~algo.kl",
                "lr=1"], passthrough="trial overrides")
    assert args.n == 4
    assert args.overrides == ["total_steps=2", "+study.x=1", "~algo.kl", "lr=1"]
    assert capsys.readouterr().err == ""  # lr is a trial key: no hint
    # a near miss of a setting still goes through, with a hint naming the setting
    args = toy(["in_file=y", "rat=1", "tracking.ur=x"], passthrough="trial overrides")
    assert args.overrides == ["rat=1", "tracking.ur=x"]
    err = capsys.readouterr().err
    assert "archer toy: rat=1 goes to the trials (did you mean 'rate'?)" in err
    assert "tracking.ur=x goes to the trials (did you mean 'tracking.uri'?)" in err


def test_deprecated_flags_still_work_and_say_the_new_spelling(capsys):
    args = toy(["--n", "9", "--no-flag", "--name", "a", "--name", "b", "--pair", "gsm8k=h",
                "--tracking-uri", "sqlite:///old.db", "in_file=y"])
    assert (args.n, args.flag, args.names, args.pairs, args.tracking_uri) == (
        9, False, ["a", "b"], {"gsm8k": "h"}, "sqlite:///old.db")
    err = capsys.readouterr().err.splitlines()
    assert "archer toy: --n is deprecated; use n=..." in err
    assert "archer toy: --no-flag is deprecated; use flag=false" in err
    assert "archer toy: --tracking-uri is deprecated; use tracking.uri=..." in err
    assert toy(["--flag", "in_file=y"]).flag is True
    # the new spelling wins over the old one given in the same command
    assert toy(["--n", "9", "n=4", "in_file=y"]).n == 4
    with pytest.raises(ConfigError, match="pairs='gsm8k' is invalid"):
        toy(["--pair", "gsm8k", "in_file=y"])


def test_help_lists_every_setting_with_its_kind_and_default():
    p = argparse.ArgumentParser()
    add_settings(p, "toy", TOY)
    text = p.format_help()
    for line in ("n=INT", "(default: 3)", "names=a|b|c", "in_file=STR", "(required)"):
        assert line in text, text
    assert "--tracking-uri" not in text  # the deprecated spellings are hidden


# ------------------------------------------------------------ each subcommand, both ways

# (new spelling, old spelling, attributes both must give)
SPELLINGS = [
    (["eval", "model=tiny", "benchmarks=gsm8k,humaneval", "k=4", "max_new_tokens=8",
      "out_dir=o", "tracking=none", "tracking.uri=sqlite:///e.db", "progress=false",
      "force=true", "gym_data={\"task\": \"chain_sum\"}"],
     ["eval", "--model", "tiny", "--benchmarks", "gsm8k,humaneval", "--k", "4",
      "--max-new-tokens", "8", "--out-dir", "o", "--tracking", "none", "--tracking-uri",
      "sqlite:///e.db", "--no-progress", "--force", "--gym-data", "{\"task\": \"chain_sum\"}"],
     {"model": "tiny", "benchmarks": ["gsm8k", "humaneval"], "k": 4, "max_new_tokens": 8,
      "out_dir": "o", "tracking": "none", "tracking_uri": "sqlite:///e.db", "progress": False,
      "force": True, "gym_data": "{\"task\": \"chain_sum\"}"}),
    (["demo", "--quick", "out_dir=d", "steps=2", "seed=3", "algo=dapo",
      "tracking.uri=sqlite:///d.db", "dashboard.out_dir=dash"],
     ["demo", "--quick", "--out-dir", "d", "--steps", "2", "--seed", "3", "--preset", "dapo",
      "--tracking-uri", "sqlite:///d.db", "--dashboard-dir", "dash"],
     {"quick": True, "out_dir": "d", "steps": 2, "seed": 3, "algo": ["dapo"],
      "tracking_uri": "sqlite:///d.db", "dashboard_out_dir": "dash", "overrides": []}),
    (["leaderboard", "tracking.uri=sqlite:///l.db", "study=baselines", "study=ablate_kl",
      "baseline=none", "contract.gsm8k=abc", "force=true", "out_file=[a.md,b.csv]",
      "format=csv"],
     ["leaderboard", "--tracking-uri", "sqlite:///l.db", "--study", "baselines", "--study",
      "ablate_kl", "--baseline", "none", "--contract", "gsm8k=abc", "--force", "--out", "a.md",
      "--out", "b.csv", "--format", "csv"],
     {"tracking_uri": "sqlite:///l.db", "study": ["baselines", "ablate_kl"], "baseline": "none",
      "contract": {"gsm8k": "abc"}, "force": True, "out_file": ["a.md", "b.csv"],
      "format": "csv"}),
    (["dashboard", "serve", "tracking.uri=sqlite:///s.db", "optuna.storage=sqlite:///o.db",
      "out_dir=site", "port=9000", "build=false"],
     ["dashboard", "serve", "--tracking-uri", "sqlite:///s.db", "--optuna-storage",
      "sqlite:///o.db", "--out", "site", "--port", "9000", "--no-build"],
     {"tracking_uri": "sqlite:///s.db", "optuna_storage": "sqlite:///o.db", "out_dir": "site",
      "port": 9000, "build": False, "host": "127.0.0.1"}),
    (["dashboard", "build", "out_dir=site"], ["dashboard", "build", "--out", "site"],
     {"out_dir": "site", "tracking_uri": None, "optuna_storage": None}),
    (["grade", "math", "in_file=in.jsonl", "out_file=v.jsonl", "workers=2", "timeout=3",
      "checkers=string,sympy", "fallbacks=last_number"],
     ["grade", "math", "--input", "in.jsonl", "--output", "v.jsonl", "--workers", "2",
      "--timeout", "3", "--checkers", "string,sympy", "--fallbacks", "last_number"],
     {"in_file": "in.jsonl", "out_file": "v.jsonl", "workers": 2, "timeout": 3.0,
      "checkers": ["string", "sympy"], "fallbacks": ["last_number"]}),
    (["grade", "code", "in_file=-", "memory_mb=512"],
     ["grade", "code", "--input", "-", "--memory-mb", "512"],
     {"in_file": "-", "out_file": "-", "memory_mb": 512, "timeout": 6.0}),
    (["ablate", "baselines", "out_dir=r", "tracking.uri=sqlite:///a.db", "ray.address=auto",
      "num_cpus=2", "progress=true", "study.seeds=[0]", "total_steps=2"],
     ["ablate", "baselines", "--root", "r", "--tracking-uri", "sqlite:///a.db",
      "--ray-address", "auto", "--num-cpus", "2", "--progress", "study.seeds=[0]",
      "total_steps=2"],
     {"study": "baselines", "out_dir": "r", "tracking_uri": "sqlite:///a.db",
      "ray_address": "auto", "num_cpus": 2, "progress": True,
      "overrides": ["study.seeds=[0]", "total_steps=2"]}),
    (["sweep", "archer_clip_kl", "n_trials=3", "optuna.storage=sqlite:///o.db", "out_dir=r",
      "sweep.sampler=random"],
     ["sweep", "archer_clip_kl", "--n-trials", "3", "--storage", "sqlite:///o.db", "--root",
      "r", "sweep.sampler=random"],
     {"space": "archer_clip_kl", "n_trials": 3, "optuna_storage": "sqlite:///o.db",
      "out_dir": "r", "overrides": ["sweep.sampler=random"]}),
    (["study", "status", "baselines", "out_dir=r"], ["study", "status", "baselines", "--root", "r"],
     {"name": "baselines", "out_dir": "r"}),
    (["model", "prepare", "tiny", "cache_dir=c"], ["model", "prepare", "tiny", "--cache-dir", "c"],
     {"name": "tiny", "cache_dir": "c"}),
    (["data", "fetch", "gsm8k_test", "data_dir=d", "overwrite=true"],
     ["data", "fetch", "gsm8k_test", "--data-dir", "d", "--overwrite"],
     {"names": ["gsm8k_test"], "data_dir": "d", "overwrite": True}),
]


@pytest.mark.parametrize(("new", "old", "expected"), SPELLINGS,
                         ids=[" ".join(s[0][:2]) for s in SPELLINGS])
def test_new_and_deprecated_spellings_give_the_same_settings(new, old, expected, capsys):
    fresh = parse_args(new)
    assert {k: getattr(fresh, k) for k in expected} == expected
    assert "deprecated" not in capsys.readouterr().err
    legacy = parse_args(old)
    assert {k: getattr(legacy, k) for k in expected} == expected
    err = capsys.readouterr().err
    flags = [tok for tok in old if tok.startswith("--") and tok != "--quick"]
    for flag in flags:
        assert f"{flag} is deprecated; use " in err, (flag, err)


@pytest.mark.parametrize(("argv", "hint"), [
    (["eval", "modle=tiny"], "'modle' (did you mean 'model'?)"),
    (["leaderboard", "studdy=baselines"], "'studdy' (did you mean 'study'?)"),
    (["dashboard", "build", "out_dri=x"], "'out_dri' (did you mean 'out_dir'?)"),
    (["grade", "math", "in_file=x", "timout=3"], "'timout' (did you mean 'timeout'?)"),
    (["study", "status", "s", "outdir=x"], "'outdir' (did you mean 'out_dir'?)"),
    (["demo", "--quick", "stepz=3"], "archer demo --quick takes no overrides"),
    (["sweep", "archer_clip_kl", "n_trails=3"],
     "n_trails=3 goes to the trials (did you mean 'n_trials'?)"),
])
def test_a_typod_key_fails_with_exit_2_naming_the_closest_key(argv, hint, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "archer: error: " in err and hint in err, err


def test_presets_is_a_deprecated_alias_of_algos(capsys):
    assert main(["algos"]) == 0
    table = capsys.readouterr()
    assert table.out.splitlines()[0].split()[0] == "algo" and "archer" in table.out
    assert main(["presets"]) == 0
    again = capsys.readouterr()
    assert again.out == table.out and "use archer algos" in again.err


def test_every_subcommand_has_help():
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    assert {"demo", "train", "sft", "grade", "eval", "ablate", "sweep", "study", "leaderboard",
            "dashboard", "algos", "model", "data", "env"} <= set(sub.choices)
    text = sub.choices["eval"].format_help()
    assert "tracking.uri=STR" in text and "engine=hf|vllm|lm-eval" in text
    assert "--score-only" in text and "--tracking-uri" not in text


def test_no_subcommand_is_a_usage_error():
    with pytest.raises(SystemExit) as exit_:
        main([])
    assert exit_.value.code == 2


# ------------------------------------------------------------------------------ version


def test_version_is_the_installed_distributions(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"archer {importlib.metadata.version('archer-rlvr')}\n"


def test_version_falls_back_to_pyproject_then_unknown(monkeypatch, tmp_path):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    text = (REPO / "pyproject.toml").read_text()
    assert f'version = "{version.package_version()}"' in text
    toml = tmp_path / "pyproject.toml"
    toml.write_text('[build-system]\nversion = "9"\n[project]\nname = "x"\nversion = "1.2.3"\n'
                    '[tool.x]\nversion = "8"\n')
    assert version.pyproject_version(toml) == "1.2.3"
    monkeypatch.setattr(version, "PYPROJECT", toml)
    assert version.package_version() == "1.2.3"
    assert version.pyproject_version(tmp_path / "missing.toml") is None
    monkeypatch.setattr(version, "PYPROJECT", tmp_path / "missing.toml")
    assert version.package_version() == "unknown"


def test_python_m_archer_cli_runs():
    out = subprocess.run([sys.executable, "-m", "archer_cli", "--version"], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("archer "), out.stderr


# ---------------------------------------------------------------------------------- env


def _report(capsys) -> str:
    assert main(["env"]) == 0
    return capsys.readouterr().out


def test_env_names_a_package_that_cannot_be_imported(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    monkeypatch.setitem(sys.modules, "optuna", None)
    lines = _report(capsys).splitlines()
    ray = next(i for i, line in enumerate(lines) if line.startswith("ray "))
    assert lines[ray].split()[:2] == ["ray", "missing"]
    assert lines[ray + 1].strip() == "-> pip install -e ."
    assert next(line for line in lines if line.startswith("optuna ")).split()[1] == "missing"
    assert next(line for line in lines if line.startswith("python ")).split()[1] == "ok"


def test_env_with_an_empty_data_dir_lists_every_file_and_its_next_command(monkeypatch,
                                                                          capsys, tmp_path):
    from archer.data.datasets import FILES

    monkeypatch.setenv("ARCHER_DATA_DIR", str(tmp_path))
    out = _report(capsys)
    assert f"data dir           ok       {tmp_path} (from $ARCHER_DATA_DIR)" in out
    for name in FILES.names():
        assert f"  {name}" in out
    lines = out.splitlines()
    aime = lines.index(next(line for line in lines if line.strip().startswith("aime2024 ")))
    assert "missing" in lines[aime] and lines[aime + 1].strip() == "-> archer data fetch aime2024"
    # math500's fetch writes the .json the loader reads
    m500 = lines.index(next(line for line in lines if line.strip().startswith("math500 ")))
    assert lines[m500 + 1].strip() == "-> archer data fetch math500"
    monkeypatch.setenv("ARCHER_DATA_DIR", str(tmp_path / "nowhere"))
    out = _report(capsys)
    assert "does not exist" in out
    assert f"-> archer data fetch --all data_dir={tmp_path / 'nowhere'}" in out
    # unset: the user cache directory, filled by `archer data fetch --all`
    monkeypatch.delenv("ARCHER_DATA_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    out = _report(capsys)
    assert f"{tmp_path / 'cache' / 'archer' / 'data'} (from the default) does not exist" in out
    assert "-> archer data fetch --all\n" in out + "\n"


def test_env_and_version_run_when_the_parser_cannot_be_built(monkeypatch, capsys):
    import archer_cli.main as cli_main

    def broken():
        raise ImportError("No module named 'yaml'")

    monkeypatch.setattr(cli_main, "build_parser", broken)
    assert cli_main.main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("archer ")
    monkeypatch.setattr(env, "CHECKS", (env.check_python,))
    assert cli_main.main(["env"]) == 0
    assert capsys.readouterr().out.startswith("python ")
    with pytest.raises(ImportError, match="yaml"):  # any other command: the real error
        cli_main.main(["algos"])


def test_env_turns_a_failing_check_into_a_line(capsys):
    def check_boom():
        raise RuntimeError("broken install")

    report = env.environment_report((env.check_python, check_boom, env.check_python))
    assert [c.status for c in report] == ["ok", "error", "ok"]
    assert report[1].name == "boom" and report[1].detail == "RuntimeError: broken install"


def test_env_with_torch_unimportable_still_reports(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    torch_line, cuda_line = env.check_torch()
    assert (torch_line.status, cuda_line.status) == ("missing", "missing")
    assert torch_line.fix == "pip install -e ."


def test_env_tracking_store_follows_the_environment(monkeypatch, tmp_path):
    db = tmp_path / "m.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{db}")
    assert "not created yet" in env.check_tracking().detail
    db.write_bytes(b"")
    check = env.check_tracking()
    assert check.status == "ok" and "$MLFLOW_TRACKING_URI" in check.detail
    assert "not created yet" not in check.detail


# ------------------------------------------------------------------------- layer order


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_no_upward_imports_in_the_cli_modules():
    """core -> ... -> experiments -> dashboards -> CLI: a module imports only its own layer
    and the ones below."""
    below_cli = [REPO / "archer", REPO / "evals", REPO / "experiments", REPO / "dashboards"]
    for root in below_cli:
        for path in root.rglob("*.py"):
            assert not any(n.startswith("archer_cli") for n in _imports(path)), path
    assert not (REPO / "archer" / "cli.py").exists()
    for path in (REPO / "archer").rglob("*.py"):
        assert not any(n.split(".")[0] in ("experiments", "dashboards")
                       for n in _imports(path)), path
    assert "evals.cli" not in _imports(REPO / "evals" / "lm_eval_adapter.py")
    assert not any(n.startswith("dashboards") for n in _imports(REPO / "experiments" /
                                                                  "demo.py"))
