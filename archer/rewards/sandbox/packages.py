"""Third-party packages a sandboxed program may import (:attr:`SandboxConfig.packages`).

The sandbox runs the base interpreter with its ``site-packages`` hidden, so a program sees the
standard library only, unless a package is shipped: its directory (and, for a wheel with
bundled shared libraries, the ``<name>.libs`` directory beside it) is taken from the host's
installation, bound read-only under :data:`SANDBOX_PACKAGES_DIR` inside bubblewrap, and that
directory is put first on the code harness's ``sys.path``.  Without bubblewrap (the fallback)
the same directories are reached through symlinks in a private host directory, so in both
modes exactly the shipped packages are importable.

Only top-level modules with no third-party dependencies of their own can be shipped this way
(a dependency has to be listed too).  The default set, :data:`SHIPPED_PACKAGES`, is what
LeetCode's and Codeforces-style Python judges offer beyond the standard library.
"""

from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import sys
import tempfile
import threading

#: importable by default: ``sortedcontainers`` (LeetCode's Python 3 environment has it) and
#: ``numpy`` (Codeforces-style judges have it)
SHIPPED_PACKAGES = ("numpy", "sortedcontainers")
#: where the shipped packages are bound inside bubblewrap (first on the harness's sys.path)
SANDBOX_PACKAGES_DIR = "/packages"

_LINK_DIRS: dict[tuple[str, ...], str] = {}
_LINK_LOCK = threading.Lock()


def check_package_names(names: object) -> tuple[str, ...]:
    """``names`` as a tuple of top-level module names; a clear ValueError otherwise."""
    if isinstance(names, str) or not isinstance(names, (tuple, list)):
        raise ValueError(f"SandboxConfig.packages must be a list of module names, got {names!r}")
    for name in names:
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"SandboxConfig.packages: {name!r} is not a top-level module name "
                             "(e.g. 'sortedcontainers')")
        if name in sys.stdlib_module_names:
            raise ValueError(f"SandboxConfig.packages: {name!r} is in the standard library, which "
                             "every sandboxed program can import already")
    return tuple(dict.fromkeys(names))


def package_paths(name: str) -> list[str]:
    """The host paths that make the top-level module ``name`` importable: its package directory
    (or single-file module) and a ``<name>.libs`` directory beside it, when there is one."""
    spec = importlib.util.find_spec(name)
    if spec is None:
        raise ValueError(f"SandboxConfig.packages: {name!r} is not installed for {sys.executable}; "
                         f"install it (pip install {name}) or leave it out of packages")
    if spec.submodule_search_locations:
        locations = list(spec.submodule_search_locations)
        if len(locations) != 1:
            raise ValueError(f"SandboxConfig.packages: {name!r} is a namespace package spread over "
                             f"{locations}; list one of its regular packages instead")
        paths = [locations[0]]
    elif spec.has_location and spec.origin:
        paths = [spec.origin]
    else:
        raise ValueError(f"SandboxConfig.packages: {name!r} is built into the interpreter "
                         "(nothing to ship)")
    libs = os.path.join(os.path.dirname(paths[0]), f"{name}.libs")
    if os.path.isdir(libs):
        paths.append(libs)
    return [os.path.realpath(p) for p in paths]


def shipped_paths(names: tuple[str, ...]) -> list[str]:
    """Every host path of the packages ``names`` (see :func:`package_paths`)."""
    paths: list[str] = []
    for name in names:
        paths += [p for p in package_paths(name) if p not in paths]
    basenames = [os.path.basename(p) for p in paths]
    clash = sorted({b for b in basenames if basenames.count(b) > 1})
    if clash:
        raise ValueError(f"SandboxConfig.packages: two packages provide {clash}")
    return paths


def bwrap_bind_args(paths: list[str]) -> list[str]:
    """bubblewrap arguments binding each path read-only under :data:`SANDBOX_PACKAGES_DIR`."""
    args: list[str] = []
    for path in paths:
        args += ["--ro-bind", path, f"{SANDBOX_PACKAGES_DIR}/{os.path.basename(path)}"]
    return args


def link_dir(paths: list[str]) -> str:
    """A private host directory (made once per process, removed at exit) holding one symlink
    per path, readable by all (unsandboxed workers may run as ``nobody``): the fallback's
    :data:`SANDBOX_PACKAGES_DIR`."""
    key = tuple(paths)
    with _LINK_LOCK:
        if key not in _LINK_DIRS:
            d = tempfile.mkdtemp(prefix="archer-sandbox-packages-")
            for path in paths:
                os.symlink(path, os.path.join(d, os.path.basename(path)))
            os.chmod(d, 0o755)
            atexit.register(shutil.rmtree, d, ignore_errors=True)
            _LINK_DIRS[key] = d
        return _LINK_DIRS[key]
