"""The command line's one grammar: ``key=value`` for every setting, ``--flags`` for actions.

A subcommand declares its settings as :class:`Setting` rows; :func:`add_settings` gives its
parser the ``key=value`` positionals (and its old ``--flag`` spellings, hidden, for one more
release) and :func:`resolve_settings` turns what was typed into validated attributes of the
parsed namespace (``tracking.uri`` -> ``args.tracking_uri``):

    archer eval model=tiny benchmarks=[gsm8k,humaneval] k=4 tracking.uri=sqlite:///x.db
    archer eval --model tiny --k 4        # still works; stderr says "--k is deprecated; use k=..."
    archer eval modle=tiny                # error: unknown key(s) in archer eval: 'modle'
                                          #        (did you mean 'model'?); allowed keys: [...]

Names mean one thing everywhere: ``tracking.uri`` (the MLflow store), ``out_dir`` (an output
directory), ``out_file`` (an output file), ``algo`` (a method preset), ``optuna.storage``.

Lives in the core package (it imports nothing above :mod:`archer.validation`) because the
subcommands of every layer declare their settings with it.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from archer.validation import (
    ConfigError,
    check_choice,
    check_int,
    check_range,
    did_you_mean,
    unknown_keys,
)

KINDS = ("str", "int", "float", "bool", "list", "dict")
TRUE = ("true", "yes", "on", "1")
FALSE = ("false", "no", "off", "0")


@dataclass(frozen=True)
class Setting:
    """One ``key=value`` setting of a subcommand.

    ``kind``: str | int | float | bool | list (``a,b`` or ``[a,b]``; repeats add up) | dict
    (``key.NAME=value`` entries, e.g. ``contract.gsm8k=HASH``). ``lo``: the smallest int or
    float allowed (excluded with ``lo_open``). ``deprecated``: old ``--flag`` spellings still accepted (a bool's
    ``--no-...`` spelling means false). ``required``: the command fails without it."""

    key: str
    default: Any = None
    kind: str = "str"
    help: str = ""
    choices: tuple[str, ...] = ()
    lo: float | None = None
    lo_open: bool = False
    deprecated: tuple[str, ...] = ()
    required: bool = False

    @property
    def attr(self) -> str:
        """The namespace attribute the value lands in (``tracking.uri`` -> ``tracking_uri``)."""
        return self.key.replace(".", "_")


def parse_value(setting: Setting, raw: str) -> Any:
    """``raw`` (what followed ``key=``) as the setting's kind, checked; the error names the
    key, the value and what is allowed."""
    key, kind = setting.key, setting.kind
    if raw.lower() in ("null", "none") and setting.default is None and kind != "bool":
        return None
    if kind == "int":
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{key}={raw!r} is invalid; allowed: an int") from None
        return check_int(key, value, lo=int(setting.lo) if setting.lo is not None else -2**63)
    if kind == "float":
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{key}={raw!r} is invalid; allowed: a number") from None
        return check_range(key, value, setting.lo if setting.lo is not None else -math.inf,
                           lo_open=setting.lo_open)
    if kind == "bool":
        if raw.lower() in TRUE:
            return True
        if raw.lower() in FALSE:
            return False
        raise ConfigError(f"{key}={raw!r} must be true or false")
    if kind == "list":
        text = raw.strip()
        if text.startswith("[") and text.endswith("]"):
            text = text[1:-1]
        items = [item.strip() for item in text.split(",") if item.strip()]
        for item in items if setting.choices else ():
            check_choice(key, item, setting.choices)
        return items
    if setting.choices:
        check_choice(key, raw, setting.choices)
    return raw


class _DeprecatedFlag(argparse.Action):
    """An old ``--flag`` spelling of a setting: accepted, noted once on stderr, and queued as
    the ``key=value`` it stands for (before the typed ``key=value`` tokens, which win)."""

    def __init__(self, option_strings, dest, setting: Setting, command: str, **kwargs) -> None:
        self.setting, self.command = setting, command
        nargs = 0 if setting.kind == "bool" else None
        super().__init__(option_strings, dest, nargs=nargs, help=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        s = self.setting
        if s.kind == "bool":
            raw = "false" if option_string.startswith("--no-") else "true"
            new = f"{s.key}={raw}"
        else:
            raw = values
            new = f"{s.key}=..."
        print(f"archer {self.command}: {option_string} is deprecated; use {new}",
              file=sys.stderr)
        queued = list(getattr(namespace, "_from_flags", None) or [])
        namespace._from_flags = queued + [(s.key, raw)]


def settings_help(settings: Sequence[Setting], passthrough: str = "") -> str:
    """The ``settings (key=value)`` section of a subcommand's help."""
    rows = []
    for s in settings:
        kind = "|".join(s.choices) if s.choices else s.kind.upper()
        default = " (required)" if s.required else (
            f" (default: {s.default})" if s.default not in (None, (), [], {}) else "")
        rows.append((f"{s.key}={kind}", f"{s.help}{default}".strip()))
    width = min(max((len(r[0]) for r in rows), default=0), 28)
    lines = ["settings (key=value):"]
    lines += [f"  {left:{width}s}  {right}".rstrip() for left, right in rows]
    if passthrough:
        lines.append(f"  any other key=value: {passthrough}")
    return "\n".join(lines)


def add_settings(p: argparse.ArgumentParser, command: str, settings: Sequence[Setting],
                 passthrough: str = "", names: str = "") -> None:
    """Give ``p`` the ``key=value`` positionals of ``settings`` and their deprecated flags.
    ``passthrough`` (its help text) lets keys other than the settings through to
    ``args.overrides`` (a study's trial overrides); without it they are errors. ``names``
    (its help text) lets bare words (no ``=``) through to ``args.names``, in order (``archer
    data fetch aime2024 math500 data_dir=D``); without it a bare word is an error."""
    metavar = "NAME|key=value" if names else "key=value"
    p.add_argument("tokens", nargs="*", default=[], metavar=metavar,
                   help=(f"{names}; " if names else "") + "settings, listed below"
                   + (" (and overrides)" if passthrough else ""))
    for s in settings:
        if s.kind not in KINDS:
            raise ValueError(f"setting {s.key}: kind {s.kind!r} is not one of {KINDS}")
        if s.deprecated:
            p.add_argument(*s.deprecated, dest=f"_flag_{s.attr}", action=_DeprecatedFlag,
                           setting=s, command=command)
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = settings_help(settings, passthrough)
    p.set_defaults(_settings=tuple(settings), _command=command, _passthrough=bool(passthrough),
                   _names=bool(names))


def resolve_settings(args: argparse.Namespace) -> argparse.Namespace:
    """Fill ``args`` with every declared setting (its default unless given) and
    ``args.overrides`` with the passed-through tokens. A parser without settings is left as
    it is. Raises :class:`ConfigError` for an unknown key, a bad value, a missing required
    setting, or a token that is not ``key=value``."""
    settings: tuple[Setting, ...] | None = getattr(args, "_settings", None)
    if settings is None:
        return args
    by_key = {s.key: s for s in settings}
    dicts = {s.key: s for s in settings if s.kind == "dict"}
    heads = {s.key.partition(".")[0] for s in settings if "." in s.key}  # tracking, ray, ...
    values: dict[str, Any] = {}
    overrides: list[str] = []
    unknown: list[str] = []
    bare = [tok for tok in args.tokens if getattr(args, "_names", False) and "=" not in tok
            and not tok.startswith(("+", "~"))]
    typed = [_split(args._command, tok) for tok in args.tokens if tok not in bare]
    for key, raw in list(getattr(args, "_from_flags", None) or []) + typed:
        if key is None:  # a Hydra-style +key / ~key: an override, never a setting
            (overrides if args._passthrough else unknown).append(raw)
            continue
        head, _, rest = key.partition(".")
        if key in by_key and by_key[key].kind == "dict":  # --contract gsm8k=HASH
            name, eq, value = raw.partition("=")
            if not eq or not name:
                raise ConfigError(f"{key}={raw!r} is invalid; allowed: NAME=VALUE "
                                  f"(or {key}.NAME=VALUE)")
            values.setdefault(key, {})[name] = value
        elif key in by_key:
            s = by_key[key]
            value = parse_value(s, raw)
            if s.kind == "list" and isinstance(values.get(key), list) and value is not None:
                value = values[key] + value
            values[key] = value
        elif head in dicts and rest:
            values.setdefault(head, {})[rest] = raw
        elif args._passthrough:
            overrides.append(f"{key}={raw}")
            hint = did_you_mean(key, by_key) if "." not in key or head in heads else ""
            if hint:  # a typo'd setting would otherwise fail later as an unknown trial key
                print(f"archer {args._command}: {key}={raw} goes to the trials{hint}",
                      file=sys.stderr)
        else:
            unknown.append(key)
    if unknown:
        raise unknown_keys(f"archer {args._command}", unknown, by_key)
    for s in settings:
        if s.required and values.get(s.key) is None:
            raise ConfigError(f"archer {args._command} needs {s.key}=... ({s.help})")
        default = copy.copy(s.default)  # a list or dict default is the caller's to change
        if isinstance(default, tuple):
            default = list(default)
        setattr(args, s.attr, values.get(s.key, default))
    args.overrides = overrides
    if getattr(args, "_names", False):
        args.names = bare
    return args


def _split(command: str, token: str) -> tuple[str | None, str]:
    if token.startswith(("+", "~")):
        return None, token
    key, eq, raw = token.partition("=")
    if not eq or not key:
        raise ConfigError(f"archer {command}: {token!r} is not key=value (settings are "
                          "key=value; --flags are actions, see --help)")
    return key, raw
