"""The ``archer`` command: one entry point that wires the pieces.

    archer demo [--quick] [key=value ...]        the main job on its embedded default (README)
    archer algos                                 the method presets: algo, paper, update, clips
    archer model prepare NAME [cache_dir=D]      build a local HF model directory
    archer grade math|code in_file=F out_file=F  grade outputs from anywhere (JSONL)
    archer train [--print-config] key=value ...  RL run composed with Hydra (experiments/conf)
    archer sft [--print-config] key=value ...    supervised warm-up -> HF model directory
    archer eval model=DIR benchmarks=gsm8k,lcb_v5 k=8 ...   evaluation (evals/)
    archer data fetch NAME... | --all [--dry-run] [data_dir=D]   fetch data sets by name
    archer data list [data_dir=D]                present / missing / stale data sets
    archer export RUN|CKPT OUT [--step N|--best] a checkpoint as a Hugging Face directory
    archer report STUDY [out_dir=docs/results]   a finished study's results page, from MLflow
    archer ablate STUDY [key=value ...]          a study (experiments/conf/study) on Ray
    archer sweep SPACE [n_trials=N key=value ...]   an Optuna sweep (experiments/conf/sweep)
    archer study status NAME [out_dir=D]         trials of a study: status, step, metric
    archer leaderboard [study=S baseline=grpo out_file=F.md]   leaderboard from MLflow
    archer dashboard build|serve [key=value ...] static dashboards over MLflow/Optuna
    archer env                                   Python, torch, CUDA, sandbox, data, store
    archer --version

Every setting is ``key=value`` (``archer SUBCOMMAND --help`` lists a subcommand's);
``--flags`` are actions (``--print-config``, ``--quick``, ``--pool``, ``--score-only``,
``--compare``, ``--version``). The old ``--flag`` spellings of settings still work for one
release, with a note on stderr naming the new one.
"""

from __future__ import annotations

import argparse
import sys

from archer.cli_settings import Setting, add_settings, resolve_settings
from archer_cli.version import package_version


class IntermixedParser(argparse.ArgumentParser):
    """A subcommand's parser that takes its positionals (the ``key=value`` tokens) anywhere
    among its options: ``archer train --print-config total_steps=2``, ``archer ablate S
    out_dir=D --no-progress total_steps=2`` (argparse's ``parse_known_intermixed_args``).
    A parser with its own subcommands parses as usual (argparse cannot intermix those)."""

    _inner = False

    def parse_known_args(self, args=None, namespace=None):
        if self._inner or self._subparsers is not None:  # the intermixed parse's own passes
            return super().parse_known_args(args, namespace)
        self._inner = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inner = False


# ------------------------------------------------------------------- dispatch (lazy imports)


def _cmd_demo(args: argparse.Namespace) -> int:
    from archer_cli.demo import run_demo_cli

    return run_demo_cli(args)


def _cmd_algos(args: argparse.Namespace) -> int:
    from archer_cli.algos import algo_table, format_table

    if args.command == "presets":
        print("archer presets is deprecated; use archer algos", file=sys.stderr)
    print(format_table(algo_table()))
    return 0


def _cmd_model_prepare(args: argparse.Namespace) -> int:
    from archer.models import prepare_model

    print(prepare_model(args.name, cache_dir=args.cache_dir))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from experiments.train_cli import run_train

    return run_train(args.overrides, print_config=args.print_config)


def _cmd_sft(args: argparse.Namespace) -> int:
    from experiments.train_cli import run_sft

    return run_sft(args.overrides, print_config=args.print_config)


def _cmd_grade(args: argparse.Namespace) -> int:
    from archer.grade import run_grade

    return run_grade(args)


def _cmd_eval(args: argparse.Namespace) -> int:
    from evals.cli import run_eval

    if args.recipe:  # the recipe's eval spec fills what the command line left unset
        apply_recipe_eval(args)
    return run_eval(args)


def apply_recipe_eval(args: argparse.Namespace) -> None:
    """``archer eval recipe=X``: X's ``eval:`` settings (benchmarks, k, engine, dtype, ...)
    for every setting not typed on the command line (typed ones win). Lives in the CLI
    layer because recipes belong to experiments/, which evals/ may not import."""
    from experiments.recipes import eval_settings

    typed = {tok.partition("=")[0] for tok in args.tokens if "=" in tok}
    typed |= {key for key, _ in getattr(args, "_from_flags", None) or []}
    for key, value in eval_settings(args.recipe).items():
        if key not in typed:
            setattr(args, key.replace(".", "_"), value)


def _cmd_ablate(args: argparse.Namespace) -> int:
    from experiments.study_cli import run_ablate

    return run_ablate(args)


def _cmd_sweep(args: argparse.Namespace) -> int:
    from experiments.study_cli import run_sweep_cli

    return run_sweep_cli(args)


def _cmd_study_status(args: argparse.Namespace) -> int:
    from experiments.study_cli import run_status

    return run_status(args)


def _cmd_leaderboard(args: argparse.Namespace) -> int:
    from dashboards.cli import run_leaderboard_cli

    return run_leaderboard_cli(args)


def _cmd_dashboard_build(args: argparse.Namespace) -> int:
    from dashboards.cli import run_build_cli

    return run_build_cli(args)


def _cmd_dashboard_serve(args: argparse.Namespace) -> int:
    from dashboards.cli import run_serve_cli

    return run_serve_cli(args)


def _cmd_env(args: argparse.Namespace) -> int:
    from archer_cli.env import run_env

    return run_env(args)


# --------------------------------------------------------------------------------- parser


def _add_run_commands(sub) -> None:
    """``train`` and ``sft``: Hydra overrides (their keys are the config's)."""
    for name, func, help_, example in (
        ("train", _cmd_train, "RL training run composed from experiments/conf (Hydra)",
         "archer train algo=archer model=tiny data=gym_arith total_steps=30"),
        ("sft", _cmd_sft, "supervised warm-up; saves an HF model dir for `archer train`",
         "archer sft model=tiny data=gym_arith sft.max_seconds=120"),
    ):
        cmd = sub.add_parser(name, help=help_, description=f"{help_}. Example: {example}")
        cmd.add_argument("overrides", nargs="*", metavar="key=value",
                         help="Hydra overrides: group=option (algo=dapo) or dotted keys "
                              "(lr=3e-4); unknown keys are errors")
        cmd.add_argument("--print-config", action="store_true",
                         help="print the resolved, validated configuration and exit")
        cmd.set_defaults(func=func)


def _add_utility_commands(sub) -> None:
    """``algos``, ``model prepare``, ``data fetch`` and ``env``."""
    sub.add_parser("algos", aliases=["presets"], help="list the method presets (algo=NAME)"
                   ).set_defaults(func=_cmd_algos)
    model = sub.add_parser("model", help="model utilities")
    prep = model.add_subparsers(dest="model_command", required=True).add_parser(
        "prepare", help="build a local HF model directory")
    prep.add_argument("name", help="tiny | smollm2-135m")
    add_settings(prep, "model prepare", (Setting(
        "cache_dir", help="default: $ARCHER_CACHE_DIR", deprecated=("--cache-dir",)),))
    prep.set_defaults(func=_cmd_model_prepare)

    from archer.data.cli import add_subparser as add_data_subparser

    add_data_subparser(sub)  # data fetch | list (func: archer.data.cli.run)
    from archer.trainer import export_cli

    export_cli.add_subparser(sub)  # export (func: archer.trainer.export_cli.run)
    from experiments import report_cli

    report_cli.add_subparser(sub)  # report (func: experiments.report_cli.run)
    sub.add_parser("env", help="report Python, torch, CUDA, vLLM, the sandbox, Ray, MLflow, "
                   "Optuna, the data files and the tracking store, with the next command for "
                   "what is missing").set_defaults(func=_cmd_env)


def build_parser() -> argparse.ArgumentParser:
    """The whole ``archer`` parser (the docs generate the CLI reference from it)."""
    from archer.grade import add_grade_arguments
    from archer_cli.demo import add_demo_arguments
    from dashboards.cli import add_dashboard_arguments, add_leaderboard_arguments
    from evals.cli import add_eval_arguments
    from experiments.study_cli import (
        add_ablate_arguments,
        add_status_arguments,
        add_sweep_arguments,
    )

    parser = argparse.ArgumentParser(
        prog="archer", description="Archer: RLVR training, evaluation and studies. Settings "
        "are key=value (archer SUBCOMMAND --help lists them); --flags are actions.")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", parser_class=IntermixedParser)
    add_demo_arguments(sub.add_parser(
        "demo", help="run the main job on its embedded default (make demo)",
        description="The full demo: warm-start a tiny model, run the baselines study (grpo, "
                    "dapo, archer) on a local Ray, evaluate, log to MLflow, build the "
                    "leaderboard and dashboards. --quick: the quickstart (one Archer run, "
                    "held-out accuracy before and after)."), _cmd_demo)
    _add_run_commands(sub)
    add_grade_arguments(sub.add_parser("grade", help="grade math/code outputs from a JSONL "
                                       "file"), _cmd_grade)
    add_eval_arguments(sub.add_parser("eval", help="evaluate a model on benchmarks (samples "
                                      "-> scores -> results + MLflow)"), _cmd_eval)
    add_ablate_arguments(sub.add_parser(
        "ablate", help="run a study (trials on Ray, logged to MLflow); resumable",
        description="Run a study of experiments/conf/study. Example: archer ablate baselines "
                    "study.seeds=[0] total_steps=2"), _cmd_ablate)
    add_sweep_arguments(sub.add_parser(
        "sweep", help="Optuna sweep over a search space (experiments/conf/sweep)",
        description="Example: archer sweep archer_clip_kl n_trials=20"), _cmd_sweep)
    study = sub.add_parser("study", help="study utilities")
    add_status_arguments(study.add_subparsers(dest="study_command", required=True).add_parser(
        "status", help="show a study's trials"), _cmd_study_status)
    add_leaderboard_arguments(sub.add_parser(
        "leaderboard", help="leaderboard from MLflow: seeds aggregated, CIs, paired deltas",
        description="Example: archer leaderboard study=baselines baseline=grpo "
                    "out_file=runs/leaderboard.md"), _cmd_leaderboard)
    add_dashboard_arguments(sub.add_parser(
        "dashboard", help="static dashboards over MLflow (build) served on localhost (serve)"),
        _cmd_dashboard_build, _cmd_dashboard_serve)
    _add_utility_commands(sub)
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """``argv`` parsed and its settings resolved (``args.tracking_uri``, ``args.overrides``,
    ...): what a subcommand's function receives. Raises ConfigError for a bad setting."""
    return resolve_settings(build_parser().parse_args(argv))


def main(argv: list[str] | None = None) -> int:
    """Run ``archer`` with ``argv`` (default: the process's arguments); returns the exit
    code: 2 for a usage or configuration error, printed as one ``archer: error:`` line."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        parser = build_parser()
    except ImportError:  # a broken install: the two commands that diagnose it still run
        if argv == ["env"]:
            return _cmd_env(argparse.Namespace())
        if argv == ["--version"]:
            print(f"archer {package_version()}")
            return 0
        raise
    args = parser.parse_args(argv)
    if args.version:
        print(f"archer {package_version()}")
        return 0
    if getattr(args, "func", None) is None:
        parser.error("a subcommand is required (archer --help lists them)")
    try:
        resolve_settings(args)
        return int(args.func(args) or 0)
    except (ValueError, KeyError, FileNotFoundError, ConnectionError) as err:
        print(f"archer: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        if not _is_mlflow_error(err):  # a bug: the traceback is what helps
            raise
        print(f"archer: error: MLflow: {err}", file=sys.stderr)  # a store MLflow refuses
        return 2


def _is_mlflow_error(err: BaseException) -> bool:
    """Whether ``err`` is MLflow's own error (a tracking URI or store it refuses), without
    importing MLflow where the command never did."""
    mlflow_exceptions = sys.modules.get("mlflow.exceptions")
    return mlflow_exceptions is not None and isinstance(err, mlflow_exceptions.MlflowException)


if __name__ == "__main__":
    sys.exit(main())
