"""The import layers of pyproject.toml's ``[tool.importlinter]`` hold (``lint-imports``), a
forbidden import breaks them, and no project modules import each other in a cycle.

``archer_cli`` (the CLI package, top layer) is in the config; in a checkout without it the
config is run without it (a missing root package is an error to import-linter)."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import grimp  # import-linter's graph (both come with the dev extra)

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: import-linter depends on tomli there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("archer", "archer_cli", "evals", "experiments", "dashboards")
CLI_PACKAGE = "archer_cli"
# Cycles another branch removes (the CLI's move into archer_cli breaks evals.cli <->
# evals.lm_eval_adapter). The test fails when one is gone too, so the entry is deleted then.
KNOWN_CYCLES: set[frozenset[str]] = set()


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, (str, int)):
        return json.dumps(value)  # a JSON string is a TOML basic string
    raise TypeError(f"no TOML for {value!r}")


def _without(config: dict, package: str) -> dict:
    """``config`` with ``package`` dropped from the root packages, the layers and the
    forbidden modules (import-linter refuses a root package that does not exist)."""
    def keep(name: str) -> bool:
        return name.split(".")[0] != package

    out = dict(config, root_packages=[p for p in config["root_packages"] if keep(p)])
    contracts = []
    for contract in config["contracts"]:
        contract = dict(contract)
        if "layers" in contract:
            contract["layers"] = [layer for layer in contract["layers"] if keep(layer)]
        if "forbidden_modules" in contract:
            contract["forbidden_modules"] = [m for m in contract["forbidden_modules"] if keep(m)]
        contracts.append(contract)
    out["contracts"] = contracts
    return out


def project_config() -> dict:
    """``[tool.importlinter]`` of pyproject.toml, as this checkout can run it."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    if importlib.util.find_spec(CLI_PACKAGE) is None:
        config = _without(config, CLI_PACKAGE)
    return config


def write_config(config: dict, path: Path) -> Path:
    lines = ["[tool.importlinter]"]
    lines += [f"{k} = {_toml_value(v)}" for k, v in config.items() if k != "contracts"]
    for contract in config["contracts"]:
        lines += ["", "[[tool.importlinter.contracts]]"]
        lines += [f"{k} = {_toml_value(v)}" for k, v in contract.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def lint_imports(config: Path, cwd: Path) -> tuple[int, str]:
    """``lint-imports`` on ``config`` with ``cwd`` first on the import path: its exit status
    and its report, with the line wrapping undone (it wraps at the terminal's width)."""
    script = ("import sys; sys.path.insert(0, sys.argv[1]); from importlinter.cli import "
              "lint_imports_command; lint_imports_command(sys.argv[2:])")
    result = subprocess.run(
        [sys.executable, "-c", script, str(cwd), str(config), "--no-cache"],
        cwd=cwd, capture_output=True, text=True, timeout=300)
    return result.returncode, " ".join((result.stdout + result.stderr).split())


def test_the_project_keeps_its_import_contracts(tmp_path):
    config = write_config(project_config(), tmp_path / "importlinter.toml")
    status, report = lint_imports(config, ROOT)
    assert status == 0, report
    contracts = len(project_config()["contracts"])
    assert f"Contracts: {contracts} kept, 0 broken." in report


def test_a_core_module_importing_experiments_breaks_the_contracts(tmp_path):
    """A copy of the packages where archer.validation (the lowest core layer) imports
    experiments: lint-imports fails and names the import and both contracts it breaks."""
    for package in PACKAGES:
        if (ROOT / package).is_dir():
            shutil.copytree(ROOT / package, tmp_path / package,
                            ignore=shutil.ignore_patterns("__pycache__", "*.yaml", "*.json"))
    target = tmp_path / "archer" / "validation.py"
    target.write_text(target.read_text() + "\n\ndef _late():\n    import experiments  # noqa\n")
    config = write_config(project_config(), tmp_path / "importlinter.toml")
    status, report = lint_imports(config, tmp_path)
    assert status == 1, report
    names = [c["name"] for c in project_config()["contracts"]]
    layers, forbidden = names[:2]  # the layers, and archer never importing the layers above
    assert f"{layers} BROKEN" in report and f"{forbidden} BROKEN" in report
    assert all(f"{name} KEPT" in report for name in names[2:])  # not their concern
    assert f"Contracts: {len(names) - 2} kept, 2 broken." in report
    assert "archer.validation is not allowed to import experiments" in report
    assert "archer.validation -> experiments (l." in report


def strongly_connected(graph, modules: set[str]) -> list[set[str]]:
    """Tarjan's strongly connected components of the import graph restricted to ``modules``
    (iterative: the graph is deep)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[set[str]] = []
    edges = {m: sorted(graph.find_modules_directly_imported_by(m) & modules) for m in modules}
    for root in sorted(modules):
        if root in index:
            continue
        work = [(root, iter(edges[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(edges[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                out.append(component)
    return out


def test_strongly_connected_finds_a_cycle_and_only_it():
    class Graph:  # a -> b -> c -> a, c -> d, d -> e
        EDGES = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": {"e"}, "e": set()}

        def find_modules_directly_imported_by(self, m):
            return self.EDGES[m]

    components = strongly_connected(Graph(), set(Graph.EDGES))
    assert sorted(map(sorted, components)) == [["a", "b", "c"], ["d"], ["e"]]


def test_no_import_cycles_among_project_modules():
    roots = [p for p in PACKAGES if importlib.util.find_spec(p) is not None]
    graph = grimp.build_graph(*roots, cache_dir=None, exclude_type_checking_imports=True)
    modules = {m for m in graph.modules if m.split(".")[0] in roots}
    cycles = {frozenset(c) for c in strongly_connected(graph, modules) if len(c) > 1}
    new = [sorted(c) for c in cycles - KNOWN_CYCLES]
    gone = [sorted(c) for c in KNOWN_CYCLES - cycles]
    assert not new, f"modules that import each other (directly or in a ring): {new}"
    assert not gone, f"cycle(s) {gone} are gone: delete them from KNOWN_CYCLES"
