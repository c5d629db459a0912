"""``archer ablate STUDY [key=value ...]``, ``archer sweep SPACE [key=value ...]`` and
``archer study status NAME``.

``archer ablate`` loads and validates the study (every trial composed before any starts),
runs it on Ray (:mod:`experiments.scheduler`), then scores each trial by the study's
objective, tags the best on the study run and registers its final policy in the MLflow model
registry (``archer-<study>``). Overrides starting with ``study.`` (or ``recipe=``) change the
study (``study.seeds=[0]``, ``study.max_concurrent=4``); all others are applied to every trial
like ``archer train``'s (``total_steps=2``, ``model=<dir>``); the command's own settings
(``out_dir=``, ``tracking.uri=``, ``ray.address=``, ``num_cpus=``, ``progress=``; sweep:
``n_trials=``, ``optuna.storage=``) are key=value too, in any order. Ctrl-C / SIGTERM stops it cleanly (exit 130 / 143): the running trials checkpoint and
stay pending, and the same command resumes them.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

from archer.cli_settings import Setting, add_settings
from experiments.scheduler import (
    STATE,
    ListSource,
    Scheduler,
    StudyInterrupted,
    StudyState,
    format_table,
    objective_value,
)
from experiments.study import (
    DEFAULT_ROOT,
    check_eval_data,
    expand_trials,
    load_study,
    split_overrides,
)


def pick_best(states, direction: str):
    """The finished trial with the best objective (None when none has one)."""
    scored = [t for t in states if t.status == "finished" and t.objective is not None
              and math.isfinite(t.objective)]
    if not scored:
        return None
    return (max if direction == "maximize" else min)(scored, key=lambda t: t.objective)


class StudySource(ListSource):
    def __init__(self, trials, metric: str) -> None:
        super().__init__(trials)
        self.metric = metric

    def on_done(self, trial, state, tracker) -> None:
        state.objective = objective_value(state, self.metric)
        if state.objective is not None and trial.hash in tracker.loggers:
            tracker.loggers[trial.hash].log_metrics({"objective": state.objective},
                                                    step=state.step)


def run_study(name: str, overrides: list[str] | None = None, *, root: str | Path = DEFAULT_ROOT,
              tracking_uri: str | None = None, ray_address: str | None = None,
              num_cpus: int | None = None, progress: bool | None = None,
              observer=None, stream=None) -> StudyState:
    """Validate and run a study; returns its final state (``<root>/<study>/study.json``)."""
    import yaml

    study_ovs, trial_ovs = split_overrides(list(overrides or []))
    spec = load_study(name, study_ovs)
    trials = expand_trials(spec, trial_ovs, root)  # refuses a bad study before any trial
    check_eval_data(f"study {spec.name}", spec.eval, ray_address)
    params = {"study": spec.name, "recipe": spec.recipe, "n_trials": len(trials),
              "seeds": list(spec.seeds), "axes": spec.axes, "variants": spec.variants,
              "objective": f"{spec.objective['direction']} {spec.objective['metric']}",
              "trial_overrides": " ".join(trial_ovs), "eval": spec.eval}
    config = yaml.safe_dump({"study": spec.raw, "trial_overrides": trial_ovs,
                             "trials": [{"name": t.name, "hash": t.hash,
                                         "overrides": list(t.overrides)} for t in trials]},
                            sort_keys=False)
    sched = Scheduler(spec.name, Path(root) / spec.name, experiment=spec.experiment,
                      tracking_uri=tracking_uri, max_concurrent=spec.max_concurrent,
                      max_retries=spec.max_retries, ray_address=ray_address, num_cpus=num_cpus,
                      progress=progress, system_metrics=spec.system_metrics,
                      study_params=params, study_config=config, observer=observer,
                      stream=stream)
    sched.state.current = [t.hash for t in trials]
    state = sched.run(StudySource(trials, spec.objective["metric"]))
    for t in state.shown():
        if t.status == "finished" and t.objective is None:
            t.objective = objective_value(t, spec.objective["metric"])
    best = pick_best(state.shown(), spec.objective["direction"])
    if best is not None:
        state.best = best.hash
        client = sched.tracker.client
        client.set_tag(state.parent_run_id, "archer.best_trial", best.name)
        client.set_tag(state.parent_run_id, "archer.best_run_id", best.run_id)
        client.log_metric(state.parent_run_id, "best_objective", best.objective)
        if spec.register_best and best.export_dir and Path(best.export_dir).is_dir():
            version = sched.tracker.register_policy(best.run_id, best.export_dir,
                                                    f"archer-{spec.name}")
            state.registered = f"archer-{spec.name}/{version}"
    sched.save()
    return state


def run_ablate(args) -> int:
    try:
        state = run_study(args.study, args.overrides, root=args.out_dir,
                          tracking_uri=args.tracking_uri, ray_address=args.ray_address,
                          num_cpus=args.num_cpus, progress=args.progress)
    except StudyInterrupted as stopped:
        print(f"archer ablate: {stopped}; run the same command again to resume (finished "
              "trials are skipped)", file=sys.stderr)
        return 128 + stopped.signum  # the shell's convention for a signalled process
    print(format_table(state))
    best = state.trials.get(state.best) if state.best else None
    if best is not None:
        print(f"best: {best.name} objective={best.objective:.4g} (MLflow run {best.run_id})"
              + (f"; registered as {state.registered}" if state.registered else ""))
    print(f"MLflow: experiment {state.experiment!r}, study run {state.parent_run_id} "
          f"({state.tracking_uri})")
    return 0 if state.status == "finished" else 1


def run_sweep_cli(args) -> int:
    """``archer sweep SPACE [key=value ...]``: ``n_trials`` more Optuna trials on Ray."""
    from experiments.sweep import run_sweep

    try:
        state, study = run_sweep(args.space, args.n_trials, args.overrides, root=args.out_dir,
                                 storage=args.optuna_storage, tracking_uri=args.tracking_uri,
                                 ray_address=args.ray_address, num_cpus=args.num_cpus,
                                 progress=args.progress)
    except StudyInterrupted as stopped:
        print(f"archer sweep: {stopped}; run the same command again to resume (it continues "
              "this invocation)", file=sys.stderr)
        return 128 + stopped.signum
    print(format_table(state))
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    if done and len(study.directions) == 1:
        best = study.best_trial
        print(f"best Optuna trial {best.number}: value {best.value:.4g} params {best.params}")
    elif done:
        print(f"Pareto front: {[(t.number, t.values) for t in study.best_trials]}")
    print(f"Optuna: study {study.study_name!r} in {args.optuna_storage or 'the sweep storage'};"
          f" MLflow: experiment {state.experiment!r} ({state.tracking_uri})")
    return 0 if state.status == "finished" else 1


def study_status(name: str, root: str | Path = DEFAULT_ROOT) -> str:
    path = Path(root) / name / STATE
    state = StudyState.load(path)
    if state is None:
        known = sorted(p.parent.name for p in Path(root).glob(f"*/{STATE}"))
        raise FileNotFoundError(f"no study {name!r} under {root} (no {path}); studies run so "
                                f"far: {known}")
    lines = [format_table(state)]
    extra: list[str] = [f"MLflow: experiment {state.experiment!r}, study run "
                        f"{state.parent_run_id} ({state.tracking_uri})"]
    if state.best and state.best in state.trials:
        b = state.trials[state.best]
        extra.append(f"best: {b.name} objective={b.objective}"
                     + (f"; registered as {state.registered}" if state.registered else ""))
    stale = len(state.trials) - len(state.shown())
    if stale:
        extra.append(f"({stale} trial(s) of earlier configurations not shown)")
    return "\n".join(lines + extra)


def run_status(args) -> int:
    print(study_status(args.name, args.out_dir))
    return 0


OUT_DIR = Setting("out_dir", DEFAULT_ROOT, help="where studies keep their state and trial "
                  "directories", deprecated=("--root",))
RUN_SETTINGS = (
    OUT_DIR,
    Setting("tracking.uri", help="MLflow store (default: $MLFLOW_TRACKING_URI, else "
            "sqlite:///runs/mlflow.db); a PostgreSQL/HTTP URI works too",
            deprecated=("--tracking-uri",)),
    Setting("ray.address", help="an existing Ray cluster (default: start a local Ray)",
            deprecated=("--ray-address",)),
    Setting("num_cpus", None, "int", "CPUs of the local Ray", lo=1, deprecated=("--num-cpus",)),
    Setting("progress", None, "bool", "live table (default: on a terminal; else a line per "
            "change)", deprecated=("--progress", "--no-progress")),
)
TRIAL_OVERRIDES = ("study.<key>=... changes the study (study.seeds=[0]); anything else applies "
                   "to every trial (total_steps=2, model=<dir>)")


def add_ablate_arguments(p, func) -> None:
    p.add_argument("study", help="a study in experiments/conf/study (baselines, ablate_kl, ...) "
                                 "or a study .yaml file")
    add_settings(p, "ablate", RUN_SETTINGS, passthrough=TRIAL_OVERRIDES)
    p.set_defaults(func=func)


def add_sweep_arguments(p, func) -> None:
    from experiments.sweep import DEFAULT_STORAGE

    p.add_argument("space", help="a search space in experiments/conf/sweep or a .yaml file")
    settings = RUN_SETTINGS + (
        Setting("n_trials", 10, "int", "trials to run in this invocation (rerun after the "
                "driver was killed: continues that invocation, its trials count)", lo=1,
                deprecated=("--n-trials",)),
        Setting("optuna.storage", help=f"Optuna RDB storage (default: the space's, else "
                f"{DEFAULT_STORAGE})", deprecated=("--storage",)),
    )
    add_settings(p, "sweep", settings,
                 passthrough="sweep.<key>=... changes the sweep (sweep.sampler=random); "
                             "anything else applies to every trial (total_steps=2)")
    p.set_defaults(func=func)


def add_status_arguments(p, func) -> None:
    p.add_argument("name", help="study name (its directory under out_dir)")
    add_settings(p, "study status", (OUT_DIR,))
    p.set_defaults(func=func)
