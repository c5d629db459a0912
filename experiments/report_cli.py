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

from archer.cli_settings import Setting, add_settings, resolve_settings
from archer.validation import ConfigError

SETTINGS = (
    Setting("out_dir", "docs/results", help="where <study>.md, <study>.json and the figures go"),
    Setting("tracking.uri", help="the MLflow store (default: as for training)"),
    Setting("reference", help="the arm the others are compared with (default: the study's "
            "reference_arm, else grpo, else the first arm)"),
    Setting("n_boot", 10000, "int", "bootstrap resamples", lo=1),
    Setting("figures", True, "bool", "write the PNG figures"),
)


def add_subparser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "report", help="write a finished study's results (markdown, JSON, figures) from MLflow",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("study", help="the study's name (as logged to MLflow)")
    add_settings(p, "report", SETTINGS)
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from experiments.report import StudyNotFinished, write_report

    try:
        paths = write_report(args.study, args.out_dir, tracking_uri=args.tracking_uri,
                             reference=args.reference, n_boot=args.n_boot,
                             figures=args.figures)
    except (ConfigError, StudyNotFinished, FileNotFoundError, ValueError) as err:
        print(f"archer: error: {err}", file=sys.stderr)
        return 2
    for path in paths.values():
        print(f"wrote {path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="archer")
    add_subparser(parser.add_subparsers(dest="command", required=True))
    try:
        args = resolve_settings(parser.parse_args(argv))
    except ConfigError as err:
        print(f"archer: error: {err}", file=sys.stderr)
        return 2
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
