"""The documentation: the MkDocs site builds in strict mode, the README stays an overview,
and nothing in the repository points at files outside it."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README_MAX_LINES = 250
# Files outside the repository that nothing in it may cite (the in-repo pages replace them).
OUTSIDE_POINTERS = ("ARCHER.md", "DESIGN.md", "../shared")
# Tests, CI and the Makefile may still point ARCHER_DATA_DIR at the shared data folder.
ALLOWED_PREFIXES = ("tests/", ".ci/")
ALLOWED_FILES = ("Makefile",)


def _missing_docs_tools() -> str | None:
    for module in ("mkdocs", "material"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install -e '.[dev]' installs it)"
    return None


@pytest.mark.slow
def test_mkdocs_build_strict(tmp_path):
    missing = _missing_docs_tools()
    if missing:
        pytest.skip(missing)
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet",
         "--config-file", str(REPO / "mkdocs.yml"), "--site-dir", str(tmp_path / "site")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    site = tmp_path / "site"
    # The generated reference pages carry the live objects' content, not just their markers.
    config_page = (site / "reference" / "config" / "index.html").read_text()
    for field in ("entropy_quantile", "kl_weight", "total_steps", "skip_bad_records",
                  "mixed_precision"):
        assert field in config_page, f"config reference lacks the field {field!r}"
    cli_page = (site / "reference" / "cli" / "index.html").read_text()
    for command in ("archer train", "archer eval", "archer ablate", "archer data fetch"):
        assert command in cli_page, f"CLI reference lacks {command!r}"
    assert "actor/clipfrac_high_entropy_upper" in (
        site / "reference" / "metrics" / "index.html").read_text()
    assert "high_entropy_only" in (site / "reference" / "presets" / "index.html").read_text()
    for page in (site / "reference").rglob("*.html"):
        assert "<!-- generated:" not in page.read_text(), f"{page}: a marker was not filled"


def test_readme_is_an_overview():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines; keep it <= {README_MAX_LINES} and move reference "
        "material into docs/")


def _tracked_files() -> list[str]:
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git checkout (no tracked-file list)")
    out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True)
    return [name for name in out.stdout.decode().split("\0") if name]


def test_nothing_cites_files_outside_the_repository():
    offenders = []
    for name in _tracked_files():
        if name.startswith(ALLOWED_PREFIXES) or name in ALLOWED_FILES:
            continue
        path = REPO / name
        if not path.is_file():  # deleted in the work tree, not yet committed
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:  # images and other binary files
            continue
        for number, line in enumerate(text.splitlines(), 1):
            hits = [p for p in OUTSIDE_POINTERS if p in line]
            if hits:
                offenders.append(f"{name}:{number}: {', '.join(hits)}")
    assert not offenders, (
        "these lines point at files outside the repository; point at docs/method.md, "
        "docs/data.md or docs/development.md instead:\n" + "\n".join(offenders))


def _hook():
    """docs/hooks/gen_reference.py as a module (it is not part of any package)."""
    spec = importlib.util.spec_from_file_location(
        "gen_reference", REPO / "docs" / "hooks" / "gen_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


FIELDS_SOURCE = '''
from dataclasses import dataclass, field

@dataclass
class Knobs:
    # --- a section comment, not a field's ---------------------------------------------
    plain: int = 3  # one line
    wrapped: str | None = None  # first part,
    #   continued here
    # said above the field, where a trailing comment would not fit
    above: float = 0.5
    nested: dict = field(
        default_factory=dict
    )  # on the closing line
    bare: bool = False
'''


def test_config_rows_read_each_fields_comment(tmp_path, monkeypatch):
    hook = _hook()
    (tmp_path / "knobs_mod.py").write_text(FIELDS_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    knobs = importlib.import_module("knobs_mod").Knobs
    rows = {row[0]: row for row in hook.config_rows(knobs)}
    assert rows["`plain`"][1:] == ["`int`", "`3`", "one line"]
    assert rows["`wrapped`"][1] == "`str \\| None`"  # the pipe escaped for the table
    assert rows["`wrapped`"][3] == "first part, continued here"
    assert rows["`above`"][3] == "said above the field, where a trailing comment would not fit"
    assert rows["`nested`"][2:] == ["`{}`", "on the closing line"]
    assert rows["`bare`"][3] == ""  # no comment: the build is warned (and fails under --strict)


def test_cli_sections_fold_aliases_and_hide_suppressed_options():
    import argparse

    hook = _hook()
    parser = argparse.ArgumentParser(prog="archer")
    sub = parser.add_subparsers(dest="command")
    algos = sub.add_parser("algos", aliases=["presets"], help="list the presets")
    algos.add_argument("--old-flag", help=argparse.SUPPRESS)
    algos.add_argument("--seed", type=int, default=0, help="a seed (default %(default)s)")
    algos.epilog = "settings (key=value):\n  out_dir=STR  where"
    listed = list(hook._subcommands(parser))
    assert [(name, help_) for name, help_, _ in listed] == [
        ("algos", "list the presets (alias: presets)")]
    text = "\n".join(hook._command_section(["archer", "algos"], listed[0][1], algos))
    assert "--old-flag" not in text
    assert "| `--seed` | `SEED` | `0` | a seed (default 0) |" in text  # a 0 default is shown
    assert "out_dir=STR  where" in text
