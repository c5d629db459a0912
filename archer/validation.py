"""One home for checking configuration values and naming what was meant.

Every range check, choice check and "did you mean" suggestion in the project comes from here,
so an error reads the same wherever it is raised:

    check_int("total_steps", 0, lo=1)
        ConfigError: total_steps=0 is invalid; allowed: an int in [1, inf]
    raise unknown_name("preset", "archr", ["archer", "dapo", "grpo"])
        ConfigError: unknown preset 'archr' (did you mean 'archer'?); choose one of [...]

This module is a leaf: it imports nothing from the project.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from collections.abc import Iterable
from typing import Any


class ConfigError(ValueError):
    """A configuration value is out of range, of the wrong kind, or unknown."""


# --------------------------------------------------------------------------------------
# Suggestions
# --------------------------------------------------------------------------------------


def close_matches(name: str, options: Iterable[str], n: int = 1) -> list[str]:
    """The ``n`` options closest to ``name`` (difflib's ratio >= 0.6), best first."""
    return difflib.get_close_matches(str(name), [str(o) for o in options], n=n)


def did_you_mean(name: str, options: Iterable[str], n: int = 1, fmt: str = "{}") -> str:
    """``" (did you mean 'x'?)"`` for the closest option, or ``""`` when none is close.

    ``fmt`` turns an option into what the user should type (e.g. ``"trainer.{}"``); with
    ``n > 1`` the hint lists up to ``n`` options."""
    close = close_matches(name, options, n=n)
    if not close:
        return ""
    if n == 1:
        return f" (did you mean {fmt.format(close[0])!r}?)"
    return f" (did you mean {[fmt.format(c) for c in close]}?)"


def unknown_name(kind: str, name: Any, options: Iterable[str], extra: str = "") -> ConfigError:
    """The error for an unknown ``kind`` called ``name``: the closest option and all of them.
    ``extra`` is appended (e.g. ``" (or give a path to a .yaml file)"``)."""
    names = sorted(str(o) for o in options)
    return ConfigError(f"unknown {kind} {str(name)!r}{did_you_mean(str(name), names)}; "
                       f"choose one of {names}{extra}")


def unknown_keys(where: str, keys: Iterable[str], allowed: Iterable[str],
                 fmt: str = "{}") -> ConfigError:
    """The error for keys of the mapping ``where`` that are not in ``allowed``, each with its
    closest valid key."""
    allowed = sorted(str(a) for a in allowed)
    hints = [repr(fmt.format(k)) + did_you_mean(str(k), allowed, fmt=fmt) for k in sorted(keys)]
    return ConfigError(f"unknown key(s) in {where}: {', '.join(hints)}; allowed keys: "
                       f"{allowed}")


# --------------------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and not math.isnan(value))


def check_int(name: str, value: Any, lo: int, hi: float = math.inf) -> int:
    """``value`` is an int (not a bool) in ``[lo, hi]``; returns it."""
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(f"{name}={value!r} is invalid; allowed: an int in [{lo}, {hi}]")
    return value


def check_range(name: str, value: Any, lo: float, hi: float = math.inf, *,
                lo_open: bool = False, hi_open: bool = False) -> float:
    """``value`` is a number (not a bool, not NaN) between ``lo`` and ``hi``, each bound
    closed unless said open; returns it."""
    ok = _is_number(value)
    if ok:
        below = value <= lo if lo_open else value < lo
        above = value >= hi if hi_open else value > hi
        ok = not (below or above)
    if not ok:
        lb = "(" if lo_open else "["
        rb = ")" if hi_open else "]"
        raise ConfigError(f"{name}={value!r} is invalid; allowed: a number in "
                          f"{lb}{lo}, {hi}{rb}")
    return value


def check_choice(name: str, value: Any, choices: Iterable[str]) -> Any:
    """``value`` is one of ``choices``; the error names the closest one."""
    choices = list(choices)
    if value not in choices:
        hint = did_you_mean(str(value), [str(c) for c in choices]) if isinstance(
            value, str) else ""
        raise ConfigError(f"{name}={value!r} is invalid{hint}; choose one of {choices}")
    return value


def check_bools(obj: Any, prefix: str = "") -> None:
    """Every field of the dataclass ``obj`` declared ``bool`` holds a real bool: a string such
    as ``"no"`` (truthy!) or ``"maybe"``, or a number, fails naming ``prefix + field``. YAML and
    Hydra overrides already give ``true``/``false`` as bools, so nothing valid is coerced."""
    for f in dataclasses.fields(obj):
        if f.type in ("bool", bool):
            value = getattr(obj, f.name)
            if not isinstance(value, bool):
                raise ConfigError(f"{prefix}{f.name}={value!r} must be true or false")


def check_device(name: str, value: Any) -> None:
    """``auto`` (CUDA when torch sees a GPU, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    ok = isinstance(value, str) and (
        value in ("auto", "cpu", "cuda")
        or (value.startswith("cuda:") and value[5:].isdigit()))
    if not ok:
        raise ConfigError(f"{name}={value!r} is invalid; allowed 'auto', 'cpu', 'cuda' or "
                          "'cuda:N'")


def build_dataclass(cls, data: Any, where: str):
    """Construct the dataclass ``cls`` from a mapping, refusing unknown keys by name (each
    with its closest valid key)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise unknown_keys(where, unknown, names)
    return cls(**data)
