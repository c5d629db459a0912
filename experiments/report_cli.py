"""``archer report <study> [key=value ...]``: write a finished study's results
(:mod:`experiments.report`).

Settings (``key=value``): ``out_dir`` (default ``docs/results``), ``tracking.uri`` (the MLflow
store; default as for training), ``reference`` (the arm the others are compared with;
default the study's ``reference_arm``, else ``grpo``, else the first arm), ``n_boot``
(bootstrap resamples, default 10000), ``figures`` (``true``/``false``, default true).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from archer.validation import ConfigError, check_int, unknown_keys

SETTINGS = {"out_dir": "docs/results", "tracking.uri": None, "reference": None,
            "n_boot": 10000, "figures": True}


def parse_settings(items: list[str]) -> dict[str, Any]:
    """``key=value`` settings over :data:`SETTINGS`; an unknown key, a missing ``=`` or a
    bad value is a :class:`ConfigError` naming it."""
    out = dict(SETTINGS)
    unknown = []
    for item in items:
        if "=" not in item:
            raise ConfigError(f"setting {item!r} is not key=value; keys: {sorted(SETTINGS)}")
        key, value = item.split("=", 1)
        if key not in SETTINGS:
            unknown.append(key)
            continue
        out[key] = value
    if unknown:
        raise unknown_keys("archer report settings", unknown, SETTINGS)
    out["n_boot"] = check_int("n_boot", _int(out["n_boot"]), 1)
    if isinstance(out["figures"], str):
        if out["figures"].lower() not in ("true", "false"):
            raise ConfigError(f"figures={out['figures']!r} is not allowed: true or false")
        out["figures"] = out["figures"].lower() == "true"
    return out


def _int(value: Any) -> Any:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"n_boot={value!r} is not an integer") from None


def add_subparser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "report", help="write a finished study's results (markdown, JSON, figures) from MLflow",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("study", help="the study's name (as logged to MLflow)")
    p.add_argument("settings", nargs="*", metavar="key=value",
                   help=f"settings: {', '.join(sorted(SETTINGS))}")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from experiments.report import StudyNotFinished, write_report

    try:
        s = parse_settings(list(args.settings))
        paths = write_report(args.study, s["out_dir"], tracking_uri=s["tracking.uri"],
                             reference=s["reference"], n_boot=s["n_boot"],
                             figures=s["figures"])
    except (ConfigError, StudyNotFinished, FileNotFoundError, ValueError) as err:
        print(f"archer: error: {err}", file=sys.stderr)
        return 2
    for path in paths.values():
        print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="archer")
    add_subparser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
