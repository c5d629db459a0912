"""The ``archer`` command line: the top layer of the project, above every package it drives
(core -> tracking -> trainer -> evals -> experiments -> dashboards -> CLI). Each subcommand
lives next to the layer it runs (``evals/cli.py``, ``experiments/train_cli.py``, ...);
:mod:`archer_cli.main` builds the parser and dispatches."""

from archer_cli.version import package_version

__all__ = ["package_version"]
