"""Argument parsing and entry points of ``archer leaderboard`` and ``archer dashboard
build|serve`` (kept free of heavy imports: ``archer --help`` loads this module).

    archer leaderboard study=baselines baseline=grpo out_file=runs/leaderboard.md
    archer leaderboard contract.gsm8k=HASH force=true format=csv
    archer dashboard build tracking.uri=sqlite:///runs/mlflow.db out_dir=runs/dashboard
    archer dashboard serve port=8000 build=false
"""

from __future__ import annotations

from archer.cli_settings import Setting, add_settings

DEFAULT_OUT = "runs/dashboard"

TRACKING_URI = Setting("tracking.uri", help="MLflow store (default: $MLFLOW_TRACKING_URI or "
                       "sqlite:///runs/mlflow.db)", deprecated=("--tracking-uri",))

LEADERBOARD_SETTINGS = (
    TRACKING_URI,
    Setting("study", [], "list", "only these studies (default: every study and evaluation)",
            deprecated=("--study",)),
    Setting("experiment", [], "list", "only these MLflow experiments",
            deprecated=("--experiment",)),
    Setting("benchmarks", [], "list", "benchmarks to show (default: all)",
            deprecated=("--benchmarks",)),
    Setting("baseline", "auto", help="row the paired deltas are measured against (auto: grpo "
            "when present; none: no deltas)", deprecated=("--baseline",)),
    Setting("contract", {}, "dict", "contract.BENCH=HASH keeps only results under this "
            "contract for BENCH", deprecated=("--contract",)),
    Setting("force", False, "bool", "mix results from different contracts (a warning is kept "
            "in the notes)", deprecated=("--force",)),
    Setting("out_file", [], "list", "write the table to these files: .md, .csv or .html",
            deprecated=("--out",)),
    Setting("format", "md", choices=("md", "csv", "html"),
            help="what is printed on the terminal", deprecated=("--format",)),
)


def dashboard_settings(serve: bool) -> tuple[Setting, ...]:
    """The settings of ``archer dashboard build`` (``serve=False``) or ``serve``."""
    build = (
        TRACKING_URI,
        Setting("optuna.storage", help="Optuna storage (default: sqlite:///runs/optuna.db when "
                "present)", deprecated=("--optuna-storage",)),
        Setting("out_dir", DEFAULT_OUT, help="site directory", deprecated=("--out",)),
    )
    if not serve:
        return build
    return build + (
        Setting("host", "127.0.0.1", deprecated=("--host",)),
        Setting("port", 8765, "int", lo=0, deprecated=("--port",)),
        Setting("build", True, "bool", "build the pages before serving (false: serve what is "
                "in out_dir)", deprecated=("--no-build",)),
    )


def add_leaderboard_arguments(p, func) -> None:
    add_settings(p, "leaderboard", LEADERBOARD_SETTINGS)
    p.set_defaults(func=func)


def run_leaderboard_cli(args) -> int:
    from archer.train_config import check_out_file
    from dashboards.leaderboard import Leaderboard, build_leaderboard

    for path in args.out_file:  # every out_file, before the store is read or a file written
        check_out_file("out_file", path)
        Leaderboard.check_format(path)
    baseline = None if str(args.baseline).lower() == "none" else args.baseline
    board = build_leaderboard(
        args.tracking_uri, studies=args.study or None, experiments=args.experiment or None,
        benchmarks=args.benchmarks or None, baseline=baseline, contracts=dict(args.contract),
        force=args.force)
    text = {"md": board.to_markdown, "csv": board.to_csv, "html": board.to_html}[args.format]()
    print(text, end="" if text.endswith("\n") else "\n")
    for path in args.out_file:
        print(f"wrote {board.write(path)}")
    return 0


def add_dashboard_arguments(p, build_func, serve_func) -> None:
    sub = p.add_subparsers(dest="dashboard_command", required=True)
    for name, func, help_ in (
        ("build", build_func, "write the static dashboard pages"),
        ("serve", serve_func, "serve the dashboard pages on localhost (builds them first "
                              "unless build=false)"),
    ):
        c = sub.add_parser(name, help=help_, description=help_)
        add_settings(c, f"dashboard {name}", dashboard_settings(serve=name == "serve"))
        c.set_defaults(func=func)


def run_build_cli(args) -> int:
    from archer.train_config import check_out_dir
    from dashboards.site import build_all

    check_out_dir("out_dir", args.out_dir, "site directory")
    paths = build_all(args.tracking_uri, args.out_dir, optuna_storage=args.optuna_storage)
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


def run_serve_cli(args) -> int:
    from archer.train_config import check_out_dir
    from dashboards.serve import make_server

    check_out_dir("out_dir", args.out_dir, "site directory")
    if args.build:
        run_build_cli(args)
    server = make_server(args.out_dir, args.host, args.port)
    print(f"serving {args.out_dir} at http://{args.host}:{server.server_port}/ (Ctrl-C to "
          "stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
