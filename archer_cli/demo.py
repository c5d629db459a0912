"""``archer demo``: the full demo (experiments.demo's study, then the leaderboard and
dashboards over it) or, with ``--quick``, the quickstart.

    archer demo                                  warm start, grpo/dapo/archer study, eval,
                                                 MLflow, leaderboard, dashboards
    archer demo algo=[grpo,archer] total_steps=20    a smaller study; trial overrides
    archer demo --quick seed=3                   one Archer run, held-out accuracy before/after
    archer demo --quick --pool out_dir=runs/demo pool the quickstart's seeds

It lives in the CLI layer because it drives two layers: the study (experiments) and the
pages over its MLflow store (dashboards).
"""

from __future__ import annotations

import time
from pathlib import Path

from archer.cli_settings import Setting, add_settings

DEMO_SETTINGS = (
    Setting("out_dir", "runs/demo", help="where run outputs go", deprecated=("--out-dir",)),
    Setting("steps", None, "int", "training steps per algo", lo=1, deprecated=("--steps",)),
    Setting("seed", 0, "int", lo=0, deprecated=("--seed",)),
    Setting("algo", [], "list", "--quick: the method preset (default archer); full demo: the "
            "presets of the study (default grpo,dapo,archer)", deprecated=("--preset",)),
    Setting("dashboard.out_dir", "runs/dashboard", help="full demo: where the dashboard pages "
            "go", deprecated=("--dashboard-dir",)),
    Setting("tracking.uri", help="MLflow store (default: sqlite:///runs/mlflow.db)",
            deprecated=("--tracking-uri",)),
)


def add_demo_arguments(p, func) -> None:
    p.add_argument("--quick", action="store_true",
                   help="the quickstart: one RL run of algo (default archer)")
    p.add_argument("--pool", action="store_true",
                   help="--quick: no run; pool the seeds already under out_dir into one "
                        "paired after-RL minus warm-start comparison")
    add_settings(p, "demo", DEMO_SETTINGS,
                 passthrough="full demo: trial overrides after the demo recipe "
                             "(experiments/conf/recipe/demo.yaml), e.g. total_steps=20")
    p.set_defaults(func=func)


def run_demo_cli(args) -> int:
    from experiments.demo import FULL_PRESETS, pooled_report, run_demo

    if args.pool:
        print("\n".join(pooled_report(args.out_dir)))
        return 0
    if args.quick:
        if args.overrides:
            raise ValueError(f"archer demo --quick takes no overrides, got {args.overrides}")
        if len(args.algo) > 1:
            raise ValueError(f"archer demo --quick runs one algo, got algo={args.algo}")
        return run_demo(out_dir=args.out_dir, steps=args.steps, seed=args.seed,
                        algo=(args.algo or ["archer"])[0], tracking_uri=args.tracking_uri)
    return run_full_demo(out_dir=args.out_dir, seed=args.seed, tracking_uri=args.tracking_uri,
                         presets=tuple(args.algo) or FULL_PRESETS, steps=args.steps,
                         dashboard_dir=args.dashboard_out_dir, overrides=args.overrides)


def run_full_demo(out_dir: str = "runs/demo", seed: int = 0, tracking_uri: str | None = None,
                  presets: tuple[str, ...] | None = None, steps: int | None = None,
                  num_cpus: int | None = None, dashboard_dir: str = "runs/dashboard",
                  progress: bool | None = None, overrides: list[str] | None = None) -> int:
    """``make demo``: the study (:func:`experiments.demo.run_demo_study`, steps 1-4), then its
    leaderboard against the warm start and the dashboards (steps 5-6)."""
    from dashboards.leaderboard import build_leaderboard
    from experiments.demo import (
        FULL_EXPERIMENT,
        FULL_PRESETS,
        FULL_STUDY,
        WARM_LABEL,
        run_demo_study,
    )

    study = run_demo_study(out_dir=out_dir, seed=seed, tracking_uri=tracking_uri,
                           presets=presets or FULL_PRESETS, steps=steps, num_cpus=num_cpus,
                           progress=progress, overrides=overrides)
    if study.returncode:
        return study.returncode
    uri = study.tracking_uri
    print("[5/6] leaderboard and dashboards")
    board = build_leaderboard(uri, studies=[FULL_STUDY], experiments=[FULL_EXPERIMENT],
                              baseline=WARM_LABEL)
    index = build_demo_pages(uri, dashboard_dir)
    print("[6/6] leaderboard (delta: paired against the warm start on the same problems)\n")
    print(board.to_markdown())
    print("\nthe mechanisms, per arm (means over the training steps; KL to the reference "
          "model, last step):\n")
    print(mechanism_table(FULL_STUDY, uri))
    if index is not None:
        print(f"dashboard: {index}")
        print(f"serve it:  archer dashboard serve out_dir={dashboard_dir}   (then open "
              "http://127.0.0.1:8765)")
    if uri.startswith("sqlite:///"):
        print(f"MLflow UI: mlflow ui --backend-store-uri {uri}")
    print(f"total {time.perf_counter() - study.started:.0f} s")
    return 0


def mechanism_table(study: str, uri: str) -> str:
    """Per arm of the finished ``study``: how often each token class's clip bound bound
    (lower + upper), the KL to the reference on each class, and the share of high-entropy
    tokens, as ``archer report`` reads them from MLflow (:mod:`experiments.report`)."""
    from experiments.report import build_report

    doc, by_arm, client = build_report(study, tracking_uri=uri, n_boot=200)
    rows = ["| arm | clipfrac low-entropy % | clipfrac high-entropy % | KL(ref) low | "
            "KL(ref) high | high-entropy tokens % |", "|---|---|---|---|---|---|"]
    for arm in doc["arms"]:
        kl_high = [_last(client, t.run_id, "actor/kl_high_entropy") for t in by_arm[arm["name"]]]
        rows.append(f"| {arm['name']} | {_pct(arm['clipfrac_low'])} | "
                    f"{_pct(arm['clipfrac_high'])} | {_num(arm['kl_ref_low'])} | "
                    f"{_num(_mean(kl_high))} | {_pct(arm['high_token_fraction'])} |")
    return "\n".join(rows)


def _last(client, run_id: str, key: str) -> float | None:
    history = client.get_metric_history(run_id, key)
    return max(history, key=lambda m: m.step).value if history else None


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def build_demo_pages(uri: str, dashboard_dir: str) -> Path | None:
    """The demo's dashboard pages; their index, or None (saying so, with the pip command)
    when plotly, the ``dashboards`` extra, is not installed: the leaderboard needs none."""
    from archer.extras import MissingExtraError
    from dashboards.site import build_site
    from experiments.demo import FULL_EXPERIMENT

    try:
        paths = build_site(uri, dashboard_dir, experiments=[FULL_EXPERIMENT])
    except MissingExtraError as err:
        print(f"dashboards: skipped; {err}")
        return None
    return Path(paths["index"]).resolve()
