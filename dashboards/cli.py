"""Argument parsing and entry points of ``archer leaderboard`` and ``archer dashboard
build|serve`` (kept free of heavy imports: ``archer --help`` loads this module)."""

from __future__ import annotations

DEFAULT_OUT = "runs/dashboard"


def parse_contracts(items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--contract {item!r}: expected BENCHMARK=HASH")
        b, h = item.split("=", 1)
        out[b.strip()] = h.strip()
    return out


def add_leaderboard_arguments(p, func) -> None:
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow store (default: $MLFLOW_TRACKING_URI or sqlite:///runs/mlflow.db)")
    p.add_argument("--study", action="append", default=None,
                   help="only this study (repeatable; default: every study and evaluation)")
    p.add_argument("--experiment", action="append", default=None,
                   help="only this MLflow experiment (repeatable)")
    p.add_argument("--benchmarks", default=None, help="comma-separated benchmarks to show")
    p.add_argument("--baseline", default="auto",
                   help="row the paired deltas are measured against (default: grpo when "
                        "present; 'none' for no deltas)")
    p.add_argument("--contract", action="append", default=None, metavar="BENCH=HASH",
                   help="keep only results under this contract for BENCH (repeatable)")
    p.add_argument("--force", action="store_true",
                   help="mix results from different contracts (a warning is kept in the notes)")
    p.add_argument("--out", action="append", default=None,
                   help="write the table to this file: .md, .csv or .html (repeatable)")
    p.add_argument("--format", choices=("md", "csv", "html"), default="md",
                   help="what is printed on the terminal (default: md)")
    p.set_defaults(func=func)


def run_leaderboard_cli(args) -> int:
    from archer.train_config import check_out_file
    from dashboards.leaderboard import Leaderboard, build_leaderboard

    for path in args.out or []:  # every --out, before the store is read or a file written
        check_out_file("--out", path)
        Leaderboard.check_format(path)
    baseline = None if str(args.baseline).lower() == "none" else args.baseline
    board = build_leaderboard(
        args.tracking_uri, studies=args.study, experiments=args.experiment,
        benchmarks=[b.strip() for b in args.benchmarks.split(",")] if args.benchmarks else None,
        baseline=baseline, contracts=parse_contracts(args.contract), force=args.force)
    text = {"md": board.to_markdown, "csv": board.to_csv, "html": board.to_html}[args.format]()
    print(text, end="" if text.endswith("\n") else "\n")
    for path in args.out or []:
        print(f"wrote {board.write(path)}")
    return 0


def add_dashboard_arguments(p, build_func, serve_func) -> None:
    sub = p.add_subparsers(dest="dashboard_command", required=True)
    for name, func, help_ in (
        ("build", build_func, "write the static dashboard pages"),
        ("serve", serve_func, "serve the dashboard pages on localhost (builds them first "
                              "unless --no-build)"),
    ):
        c = sub.add_parser(name, help=help_, description=help_)
        c.add_argument("--tracking-uri", default=None,
                       help="MLflow store (default: $MLFLOW_TRACKING_URI or "
                            "sqlite:///runs/mlflow.db)")
        c.add_argument("--optuna-storage", default=None,
                       help="Optuna storage (default: sqlite:///runs/optuna.db when present)")
        c.add_argument("--out", default=DEFAULT_OUT, help=f"site directory (default: {DEFAULT_OUT})")
        if name == "serve":
            c.add_argument("--host", default="127.0.0.1")
            c.add_argument("--port", type=int, default=8765)
            c.add_argument("--no-build", action="store_true",
                           help="serve what is in --out without rebuilding")
        c.set_defaults(func=func)


def run_build_cli(args) -> int:
    from archer.train_config import check_out_dir
    from dashboards.site import build_all

    check_out_dir("--out", args.out, "site directory")
    paths = build_all(args.tracking_uri, args.out, optuna_storage=args.optuna_storage)
    for name, path in paths.items():
        print(f"{name}: {path}")
    return 0


def run_serve_cli(args) -> int:
    from archer.train_config import check_out_dir
    from dashboards.serve import make_server

    check_out_dir("--out", args.out, "site directory")
    if not args.no_build:
        run_build_cli(args)
    server = make_server(args.out, args.host, args.port)
    print(f"serving {args.out} at http://{args.host}:{server.server_port}/ (Ctrl-C to stop)",
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
