"""The ``archer`` command: one entry point that wires the pieces.

    archer demo                      the main job on its embedded default (see README)
    archer presets                   the method table: paper, preset, module
    archer model prepare NAME        build a local HF model directory (tiny, smollm2-135m)
    archer grade math|code --input F --output F   grade outputs from anywhere (JSONL)
    archer train [--print-config] key=value ...   RL run composed with Hydra (experiments/conf)
    archer sft [--print-config] key=value ...     supervised warm-up -> HF model directory
    archer export RUN|CKPT OUT [--step N|--best]  a checkpoint as an HF model directory
    archer eval --model DIR --benchmarks gsm8k,lcb_v5 --k 8 ...   evaluation (evals/)
    archer data fetch NAME           download a data set from its public hub id
    archer ablate STUDY [key=value ...]           a study (experiments/conf/study) on Ray
    archer sweep SPACE [--n-trials N]             an Optuna sweep (experiments/conf/sweep)
    archer study status NAME         trials of a study: status, step, latest metric
    archer leaderboard [--study S] [--baseline grpo] [--out F.md]   leaderboard from MLflow
    archer dashboard build|serve     static dashboards over MLflow/Optuna, served on localhost
"""

from __future__ import annotations

import argparse
import sys


def _cmd_presets(args: argparse.Namespace) -> int:
    from experiments.presets import load_preset, preset_names

    rows = [("preset", "arXiv", "update", "agg", "clip high-ent", "clip low-ent", "KL low")]
    for name in preset_names():
        p = load_preset(name)
        a = p.algo
        rows.append((
            name, p.arxiv, a.update_mode, a.loss_agg_mode,
            f"{a.high.clip_low}/{a.high.clip_high}", f"{a.low.clip_low}/{a.low.clip_high}",
            str(a.low.kl_weight),
        ))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for i, row in enumerate(rows):
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    return 0


def _cmd_model_prepare(args: argparse.Namespace) -> int:
    from archer.models import prepare_model

    path = prepare_model(args.name, cache_dir=args.cache_dir)
    print(path)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from experiments.demo import run_demo, run_full_demo

    if args.pool:
        from experiments.demo import pooled_report

        print("\n".join(pooled_report(args.out_dir)))
        return 0
    if args.quick:
        if args.overrides:
            raise ValueError(f"archer demo --quick takes no overrides, got {args.overrides}")
        return run_demo(out_dir=args.out_dir, steps=args.steps, seed=args.seed,
                        preset=args.preset or "archer", tracking_uri=args.tracking_uri)
    presets = tuple(p.strip() for p in (args.preset or "grpo,dapo,archer").split(",")
                    if p.strip())
    return run_full_demo(out_dir=args.out_dir, seed=args.seed, tracking_uri=args.tracking_uri,
                         presets=presets, steps=args.steps, dashboard_dir=args.dashboard_dir,
                         overrides=args.overrides)


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

    return run_eval(args)


def _cmd_ablate(args: argparse.Namespace) -> int:
    from experiments.study_cli import run_ablate

    return run_ablate(args)


def _cmd_sweep(args: argparse.Namespace) -> int:
    from experiments.sweep import run_sweep_cli

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


def _cmd_data_fetch(args: argparse.Namespace) -> int:
    from archer.data.fetch import run_fetch

    return run_fetch(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="archer", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, parser_class=IntermixedParser)

    demo = sub.add_parser(
        "demo", help="run the main job on its embedded default (make demo)",
        description="The full demo: warm-start a tiny model, run the baselines study (grpo, "
                    "dapo, archer) on a local Ray, evaluate, log to MLflow, build the "
                    "leaderboard and dashboards. --quick: the quickstart (one Archer run, "
                    "held-out accuracy before and after).")
    demo.add_argument("--quick", action="store_true",
                      help="the quickstart: one RL run of --preset (default archer)")
    demo.add_argument("--pool", action="store_true",
                      help="--quick: no run; pool the seeds already under --out-dir into one "
                           "paired after-RL minus warm-start comparison")
    demo.add_argument("--out-dir", default="runs/demo", help="where run outputs go")
    demo.add_argument("--steps", type=int, default=None, help="training steps per preset")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--preset", default=None,
                      help="--quick: the preset (default archer); full demo: comma-separated "
                           "presets of the study (default grpo,dapo,archer)")
    demo.add_argument("--dashboard-dir", default="runs/dashboard",
                      help="full demo: where the dashboard pages go")
    demo.add_argument("overrides", nargs="*", metavar="key=value",
                      help="full demo: trial overrides after the demo recipe "
                           "(experiments/conf/recipe/demo.yaml), e.g. trainer.steps=20")
    demo.add_argument("--tracking-uri", default=None,
                      help="MLflow tracking URI (default: sqlite:///runs/mlflow.db)")
    demo.set_defaults(func=_cmd_demo)

    for name, func, help_, example in (
        ("train", _cmd_train, "RL training run composed from experiments/conf (Hydra)",
         "archer train algo=archer model=tiny data=gym_arith trainer.steps=30"),
        ("sft", _cmd_sft, "supervised warm-up; saves an HF model dir for `archer train`",
         "archer sft model=tiny data=gym_arith sft.max_seconds=120"),
    ):
        cmd = sub.add_parser(name, help=help_, description=f"{help_}. Example: {example}")
        cmd.add_argument("overrides", nargs="*", metavar="key=value",
                         help="Hydra overrides: group=option (algo=dapo) or dotted keys "
                              "(trainer.lr=3e-4); unknown keys are errors")
        cmd.add_argument("--print-config", action="store_true",
                         help="print the resolved, validated configuration and exit")
        cmd.set_defaults(func=func)

    from archer.grade import add_grade_arguments

    add_grade_arguments(
        sub.add_parser("grade", help="grade math/code outputs from a JSONL file"), _cmd_grade
    )

    from evals.cli import add_eval_arguments

    add_eval_arguments(
        sub.add_parser("eval", help="evaluate a model on benchmarks (samples -> scores -> "
                       "results + MLflow)"), _cmd_eval
    )
    data = sub.add_parser("data", help="data utilities")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    from archer.data.fetch import add_fetch_arguments

    add_fetch_arguments(data_sub.add_parser("fetch", help="download a data set from its public "
                                            "hub id into the data directory"), _cmd_data_fetch)

    from experiments.study_cli import add_ablate_arguments, add_status_arguments
    from experiments.sweep import add_sweep_arguments

    add_ablate_arguments(sub.add_parser(
        "ablate", help="run a study (trials on Ray, logged to MLflow); resumable",
        description="Run a study of experiments/conf/study. Example: archer ablate baselines "
                    "study.seeds=[0] trainer.steps=2"), _cmd_ablate)
    add_sweep_arguments(sub.add_parser(
        "sweep", help="Optuna sweep over a search space (experiments/conf/sweep)",
        description="Example: archer sweep archer_clip_kl --n-trials 20"), _cmd_sweep)
    study = sub.add_parser("study", help="study utilities")
    study_sub = study.add_subparsers(dest="study_command", required=True)
    add_status_arguments(study_sub.add_parser("status", help="show a study's trials"),
                         _cmd_study_status)

    from dashboards.cli import add_dashboard_arguments, add_leaderboard_arguments

    add_leaderboard_arguments(sub.add_parser(
        "leaderboard", help="leaderboard from MLflow: seeds aggregated, CIs, paired deltas",
        description="Example: archer leaderboard --study baselines --baseline grpo "
                    "--out runs/leaderboard.md"), _cmd_leaderboard)
    add_dashboard_arguments(sub.add_parser(
        "dashboard", help="static dashboards over MLflow (build) served on localhost (serve)"),
        _cmd_dashboard_build, _cmd_dashboard_serve)

    presets = sub.add_parser("presets", help="list method presets")
    presets.set_defaults(func=_cmd_presets)

    model = sub.add_parser("model", help="model utilities")
    model_sub = model.add_subparsers(dest="model_command", required=True)
    prep = model_sub.add_parser("prepare", help="build a local HF model directory")
    prep.add_argument("name", help="tiny | smollm2-135m")
    prep.add_argument("--cache-dir", default=None, help="default: $ARCHER_CACHE_DIR")
    prep.set_defaults(func=_cmd_model_prepare)

    from archer.trainer import export_cli

    export_cli.add_subparser(sub)
    return parser


class IntermixedParser(argparse.ArgumentParser):
    """A subcommand's parser that takes its positionals (the overrides) anywhere among its
    options: ``archer train --print-config trainer.steps=2``, ``archer ablate S --root D
    trainer.steps=2`` (argparse's ``parse_known_intermixed_args``). A parser with its own
    subcommands parses as usual (argparse cannot intermix those)."""

    _inner = False

    def parse_known_args(self, args=None, namespace=None):
        if self._inner or self._subparsers is not None:  # the intermixed parse's own passes
            return super().parse_known_args(args, namespace)
        self._inner = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inner = False


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
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
