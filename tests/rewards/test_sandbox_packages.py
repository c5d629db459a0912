"""Third-party packages shipped into the sandbox (SandboxConfig.packages): the default set is
importable by sandboxed programs, under bubblewrap and in the fallback, and nothing else of
the host's installation is."""

from __future__ import annotations

import os

import pytest

from archer.rewards.code import CodeGrader, Problem, TestCase
from archer.rewards.sandbox import Sandbox, SandboxConfig
from archer.rewards.sandbox.packages import SANDBOX_PACKAGES_DIR, SHIPPED_PACKAGES, package_paths

FAST = dict(test_timeout_s=5.0, wall_time_s=30.0)

# LeetCode 315-style: how many later numbers are smaller, with a SortedList
SORTED_LIST_SOLUTION = """```python
from typing import List
from sortedcontainers import SortedList

class Solution:
    def countSmaller(self, nums: List[int]) -> List[int]:
        seen, out = SortedList(), []
        for x in reversed(nums):
            out.append(seen.bisect_left(x))
            seen.add(x)
        return out[::-1]
```"""
COUNT_SMALLER = Problem("functional", func_name="countSmaller", tests=[
    TestCase("[5, 2, 6, 1]", "[2, 1, 1, 0]", "functional"),
    TestCase("[-1, -1]", "[0, 0]", "functional"),
])
NUMPY_SOLUTION = """```python
import numpy as np
a = np.array(list(map(int, input().split())), dtype=np.int64)
print(int(a.sum()), int(np.cumsum(a)[-1] * 2))
```"""
SUMS = Problem("stdin", tests=[TestCase("1 2 3 4", "10 20")])


def _bwrap_ok() -> bool:
    try:
        return Sandbox(SandboxConfig(**FAST)).sandboxed
    except Exception:  # noqa: BLE001
        return False


MODES = [
    pytest.param(dict(), id="warm"),
    pytest.param(dict(warm_pool=False), id="cold"),
    pytest.param(dict(use_bwrap=False), id="fallback"),
]


def _grader(request, **cfg) -> CodeGrader:
    if cfg.get("use_bwrap") is not False and not _bwrap_ok():
        pytest.skip("bubblewrap unusable here")
    g = CodeGrader(SandboxConfig(**FAST, **cfg))
    request.addfinalizer(g.close)
    assert g.sandbox.sandboxed == (cfg.get("use_bwrap") is not False)
    return g


@pytest.mark.filterwarnings("ignore:UNSANDBOXED")
@pytest.mark.parametrize("mode", MODES)
def test_default_packages_are_importable(request, mode):
    g = _grader(request, **mode)
    v = g.grade(SORTED_LIST_SOLUTION, COUNT_SMALLER)
    assert v.passed and v.tests_passed == 2, v
    v = g.grade(NUMPY_SOLUTION, SUMS)
    assert v.passed, v


@pytest.mark.filterwarnings("ignore:UNSANDBOXED")
@pytest.mark.parametrize("mode", MODES)
def test_only_the_shipped_packages_are_importable(request, mode):
    """sympy is installed for this interpreter (the math grader uses it) but not shipped; with
    packages=() not even sortedcontainers is there."""
    importable = "```python\nimport importlib.util as u\nprint(u.find_spec(input()) is not None)\n```"
    g = _grader(request, **mode)
    for name, expected in [("sortedcontainers", "True"), ("numpy", "True"), ("sympy", "False"),
                           ("torch", "False"), ("archer", "False")]:
        v = g.grade(importable, Problem("stdin", tests=[TestCase(name, expected)]))
        assert v.passed, (name, v)
    bare = _grader(request, packages=(), **mode)
    assert bare.sandbox.packages_dir is None
    v = bare.grade(SORTED_LIST_SOLUTION, COUNT_SMALLER)
    assert v.reason == "runtime_error" and "sortedcontainers" in v.detail, v


def test_package_paths_of_numpy_include_its_bundled_libraries():
    paths = package_paths("numpy")
    assert os.path.basename(paths[0]) == "numpy" and os.path.isdir(paths[0])
    libs = os.path.join(os.path.dirname(paths[0]), "numpy.libs")
    assert (libs in paths) == os.path.isdir(libs)
    assert package_paths("sortedcontainers")[0].endswith(os.sep + "sortedcontainers")


def test_packages_dir_inside_bubblewrap():
    if not _bwrap_ok():
        pytest.skip("bubblewrap unusable here")
    assert SandboxConfig().packages == SHIPPED_PACKAGES
    assert Sandbox(SandboxConfig(**FAST)).packages_dir == SANDBOX_PACKAGES_DIR


@pytest.mark.parametrize("packages, message", [
    ("numpy", "must be a list of module names"),
    (("bisect",), "'bisect' is in the standard library"),
    (("sorted-containers",), "not a top-level module name"),
])
def test_bad_package_names_are_refused(packages, message):
    with pytest.raises(ValueError, match=message):
        SandboxConfig(packages=packages)


def test_a_package_that_is_not_installed_is_named():
    with pytest.raises(ValueError, match=r"'no_such_package_xyz' is not installed"):
        Sandbox(SandboxConfig(packages=("no_such_package_xyz",), use_bwrap=False))


def test_packages_given_as_a_list_become_a_tuple_without_duplicates():
    assert SandboxConfig(packages=["numpy", "numpy", "sortedcontainers"]).packages == (
        "numpy", "sortedcontainers")
