"""Graders shared by training (rewards) and evaluation (scores).

Reward contract (as TRL): ``fn(completions, **columns) -> list[float | None]`` where
``completions`` is a list of strings and each column is a list aligned with it; ``None``
means "this reward does not apply to that sample".

Built-in rewards live in modules that are imported on first use, so ``import archer`` stays
cheap: ``math`` (archer.rewards.math), ``code`` (archer.rewards.code, sandboxed) and
``reasoning_gym`` (archer.data.datasets).

A reward of the user's own is named ``module.path:function`` (an importable module) or
``path/to/file.py:function`` (a file, relative to the working directory); it is loaded by
:func:`load_user_reward` and follows the same contract. It runs in the trainer's process:
it is the user's code, trusted like the config. Code that a *model* wrote must be run through
the sandbox (``archer.rewards.code``), never by a reward directly.
"""

import hashlib
import importlib
import importlib.util
import sys
from pathlib import Path

from archer.registry import Registry
from archer.validation import did_you_mean

REWARDS: Registry = Registry("reward function")

BUILTIN_REWARD_MODULES = {
    "math": "archer.rewards.math",
    "code": "archer.rewards.code",
    "reasoning_gym": "archer.data.datasets",
    "reasoning_gym_last_number": "archer.data.datasets",
}


def register_reward(name: str):
    """Decorator: ``@register_reward("math")`` makes a reward selectable by name."""
    return REWARDS.register(name)


def get_reward(name: str):
    """The reward function registered under ``name`` (importing built-ins on demand), or the
    user's ``module:function`` / ``file.py:function`` (:func:`load_user_reward`)."""
    if name not in REWARDS and ":" in name:
        return load_user_reward(name)
    if name not in REWARDS and name in BUILTIN_REWARD_MODULES:
        importlib.import_module(BUILTIN_REWARD_MODULES[name])
    if name not in REWARDS:
        raise KeyError(
            f"unknown reward function {name!r}; choose one of "
            f"{sorted(set(REWARDS.names()) | set(BUILTIN_REWARD_MODULES))}"
        )
    return REWARDS.get(name)


class RewardSpecError(ValueError):
    """A ``module:function`` / ``file.py:function`` reward that cannot be loaded; the message
    says which part failed."""


def load_user_reward(spec: str):
    """The function named by ``spec``: ``package.module:function`` (imported) or
    ``path/to/file.py:function`` (the file is run once per process, as a module of its own).
    Raises :class:`RewardSpecError` naming the spec and what is wrong with it."""
    target, _, attr = spec.rpartition(":")
    if not target or not attr.isidentifier():
        raise RewardSpecError(f"reward {spec!r}: expected a registered name, "
                              "'package.module:function' or 'path/to/file.py:function'")
    if is_file_target(target):
        module = _file_module(spec, Path(target).expanduser())
    else:
        module = _import_module(spec, target)
    fn = getattr(module, attr, None)
    if fn is None:
        names = [n for n, v in vars(module).items() if callable(v) and not n.startswith("_")]
        raise RewardSpecError(f"reward {spec!r}: {target} has no {attr!r}"
                              + did_you_mean(attr, names, n=3))
    if not callable(fn):
        raise RewardSpecError(f"reward {spec!r}: {target}.{attr} is a "
                              f"{type(fn).__name__}, not a function")
    return fn


def _import_module(spec: str, target: str):
    """``importlib.import_module(target)``; a module that does not exist (``target`` or one of
    its parent packages) and a module that fails while importing, e.g. on a dependency of its
    own that is missing, are told apart in the :class:`RewardSpecError`."""
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as err:
        if _names_target_or_parent(err.name, target):
            raise RewardSpecError(f"reward {spec!r}: cannot import module {target!r} ({err}); "
                                  "a file needs its path, e.g. ./my_reward.py:fn") from None
        raise RewardSpecError(f"reward {spec!r}: module {target!r} needs {err.name!r}, which "
                              f"is not installed ({err})") from err
    except Exception as err:
        raise RewardSpecError(f"reward {spec!r}: importing {target!r} failed: "
                              f"{type(err).__name__}: {err}") from err


def _names_target_or_parent(missing: str | None, target: str) -> bool:
    """Whether the module ``missing`` is ``target`` itself or one of its parent packages
    (``a`` or ``a.b`` for ``a.b.c``)."""
    parts = target.split(".")
    return missing in {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


def is_file_target(target: str) -> bool:
    """Whether the part before ``:function`` of a reward spec is a file path (``.py`` or with
    a directory part) rather than an importable module name."""
    return target.endswith(".py") or Path(target).name != target


def _file_module(spec: str, path: Path):
    """The module made from the Python file ``path``, loaded once per process."""
    if not path.is_file():
        raise RewardSpecError(f"reward {spec!r}: file {path} does not exist")
    path = path.resolve()
    key = "archer_user_reward_" + hashlib.sha1(str(path).encode()).hexdigest()[:12]
    if key in sys.modules:
        return sys.modules[key]
    loader_spec = importlib.util.spec_from_file_location(key, path)
    if loader_spec is None or loader_spec.loader is None:
        raise RewardSpecError(f"reward {spec!r}: {path} is not a Python file")
    module = importlib.util.module_from_spec(loader_spec)
    sys.modules[key] = module
    try:
        loader_spec.loader.exec_module(module)
    except Exception as err:
        del sys.modules[key]
        raise RewardSpecError(f"reward {spec!r}: running {path} failed: "
                              f"{type(err).__name__}: {err}") from err
    return module
