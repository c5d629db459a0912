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

A study whose recipe (or study file) has a ``warm_start`` starts every trial from that one
shared warm start (:mod:`experiments.warm_start`, built before any trial and logged on the
study's MLflow run: tag ``warm_start/hash``, metric ``warm_start/heldout_accuracy``);
``warm_start=null`` trains the model as given. With ``eval_start: true`` the starting model
is evaluated once under the trials' evaluation, before the trials
(:mod:`experiments.start_eval`). At launch the mechanism lint
(:mod:`experiments.mechanism_lint`) warns about an axis that cannot act under the trials'
settings. ``archer ablate STUDY --dry-run`` prints the trials, the warm start and a cost
estimate (:mod:`experiments.study_plan`) without starting anything.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from pathlib import Path

from archer.cli_settings import Setting, add_settings
from archer.extras import require
from archer.validation import did_you_mean
from evals.summary import summary_line
from experiments import warm_start as ws
from experiments.mechanism_lint import lint_trials, lint_warm_start, print_warnings
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
    resolve_trial,
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
    where = f"study {spec.name}"
    print_warnings(lint_trials(planned_trains(trials, plan_warm_starts(trials,
                                                                       spec.warm_start))), where)
    trials, warm = on_warm_starts(trials, spec.warm_start)
    print_warnings([m for w in warm for m in lint_warm_start(w.heldout_accuracy)], where)
    params = {"study": spec.name, "recipe": spec.recipe, "n_trials": len(trials),
              "seeds": list(spec.seeds), "axes": spec.axes, "variants": spec.variants,
              "objective": f"{spec.objective['direction']} {spec.objective['metric']}",
              "trial_overrides": " ".join(trial_ovs), "eval": spec.eval,
              "warm_start": " ".join(w.hash[:16] for w in warm) or "none"}
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
    for i, w in enumerate(warm):
        sched.tracker.log_warm_start(w.hash, w.heldout_accuracy, str(w.model_dir), i)
    if spec.eval_start:
        evaluate_study_start(spec, trials, sched)
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


def evaluate_study_start(spec, trials, sched) -> None:
    """``eval_start``: the model the trials start from, evaluated once under their evaluation
    and logged under the study's run (:mod:`experiments.start_eval`); cached in the study's
    directory, so a resumed study does not measure it again."""
    from experiments.start_eval import evaluate_start

    models = {str(t.train["model"]) for t in trials}
    if len(models) > 1:
        print(f"study {spec.name}: eval_start skipped: the trials start from {len(models)} "
              "different models", file=sys.stderr)
        return
    print(f"study {spec.name}: evaluating the starting model {models.pop()}", file=sys.stderr)
    results, _ = evaluate_start(trials[0], sched.dir / "start_eval", sched.tracker.uri,
                                parent_run_id=sched.state.parent_run_id,
                                experiment=spec.experiment)
    for res in results:
        print(f"study {spec.name}: start: {summary_line(res)}", file=sys.stderr)


# --------------------------------------------------------------------------------------------
# A study's trials on their warm start (experiments.warm_start)
# --------------------------------------------------------------------------------------------


def plan_warm_starts(trials, settings: ws.WarmStartSettings | None,
                     root: str | Path | None = None) -> dict[str, ws.WarmStart]:
    """The warm start each trial starts from, by trial hash (built or not; empty without
    ``settings``). Trials that share data and budget share one: the trial seed is not in its
    key."""
    if settings is None:
        return {}
    return {t.hash: ws.locate(t.train, settings, root) for t in trials}


def on_warm_starts(trials, settings: ws.WarmStartSettings | None,
                   root: str | Path | None = None,
                   log: Callable[[str], None] = print) -> tuple[list, list[ws.WarmStart]]:
    """The trials re-resolved with ``model=<their warm start>`` (each distinct warm start
    built once, or reused), and the warm starts used, in first-use order. Without
    ``settings`` the trials are returned as they are."""
    if settings is None:
        return list(trials), []
    built: dict[str, ws.WarmStart] = {}
    out = []
    for t in trials:
        digest = ws.warm_start_hash(ws.warm_start_key(t.train, settings))
        if digest not in built:
            built[digest] = ws.prepare_warm_start(t.train, settings, root, log)
        warm = built[digest]
        tags = {k: v for k, v in t.tags.items() if k != "archer.model"}
        tags["archer.warm_start"] = digest[:ws.HASH_CHARS]
        study_dir = Path(t.out_dir).parent.parent  # <root>/<study>/trials/<name>-<hash>
        out.append(resolve_trial(t.number, t.name, list(t.overrides) + [
            f"model={warm.model_dir}"], study_dir=study_dir, evaluation=t.eval,
            resources=t.resources, tags=tags))
    return out, list(built.values())


def planned_trains(trials, plan: dict) -> list[dict]:
    """The trials' TrainConfig dicts with the model each will start from (its warm start's
    directory, built or not, where ``plan`` has one)."""
    return [t.train | ({"model": str(plan[t.hash].model_dir)} if t.hash in plan else {})
            for t in trials]


def dry_run(name: str, overrides: list[str] | None = None,
            root: str | Path = DEFAULT_ROOT) -> str:
    """``archer ablate STUDY --dry-run``: the trials (arms x seeds, their overrides), the warm
    start they would reuse or build, a CPU/GPU-hour estimate and the lint's warnings; no Ray,
    no training, no warm-start build."""
    from experiments.study_plan import estimate_cost, format_plan

    study_ovs, trial_ovs = split_overrides(list(overrides or []))
    spec = load_study(name, study_ovs)
    trials = expand_trials(spec, trial_ovs, root)
    plan = plan_warm_starts(trials, spec.warm_start)
    warm = list({w.hash: w for w in plan.values()}.values())
    warnings = lint_trials(planned_trains(trials, plan)) + [m for w in warm if w.present
                                      for m in lint_warm_start(w.heldout_accuracy)]
    common = [ov for ov in trials[0].overrides if all(ov in t.overrides for t in trials)]
    cost = estimate_cost(spec.recipe, trials, spec.resources,
                         sum(not w.present for w in warm),
                         spec.warm_start.steps if spec.warm_start else 0)
    return format_plan(spec, trials, common, warm, cost, warnings)


def run_ablate(args) -> int:
    if getattr(args, "dry_run", False):
        print(dry_run(args.study, args.overrides, args.out_dir))
        return 0
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

    require("optuna", "sweeps", "archer sweep")  # before any warning about the trials
    print_warnings(lint_sweep(args.space, args.overrides, args.out_dir),
                   f"sweep {args.space}")
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


def lint_sweep(space: str, overrides: list[str] | None = None,
               root: str | Path = DEFAULT_ROOT) -> list[str]:
    """The mechanism lint of a sweep: its trials at each parameter's ends (a categorical's
    choices, a range's low and high), the others at their first value."""
    from experiments.study import _format_value
    from experiments.sweep import load_sweep

    sweep_ovs, trial_ovs = split_overrides(
        [ov.replace("sweep.", "study.", 1) if ov.lstrip("+~").startswith("sweep.") else ov
         for ov in overrides or []])
    spec = load_sweep(space, sweep_ovs, None)
    ends = {k: (p["choices"] if p["type"] == "categorical" else [p["low"], p["high"]])
            for k, p in spec.params.items()}
    probe = {k: v[0] for k, v in ends.items()}
    points = [probe] + [probe | {k: v} for k, values in ends.items() for v in values[1:]]
    trains = [resolve_trial(0, "lint", list(spec.recipe_overrides) + list(spec.base)
                            + [f"{k}={_format_value(v)}" for k, v in point.items()]
                            + trial_ovs, study_dir=Path(root) / spec.name,
                            evaluation=spec.eval, resources=spec.resources, tags={}).train
              for point in points]
    if spec.warm_start is not None:  # every trial starts from the (planned) warm start
        warm = ws.locate(trains[0], spec.warm_start)
        trains = [t | {"model": str(warm.model_dir)} for t in trains]
    return lint_trials(trains)


def study_status(name: str, root: str | Path = DEFAULT_ROOT) -> str:
    path = Path(root) / name / STATE
    state = StudyState.load(path)
    if state is None:
        known = sorted(p.parent.name for p in Path(root).glob(f"*/{STATE}"))
        raise FileNotFoundError(f"no study {name!r} under {root} (no {path})"
                                f"{did_you_mean(name, known)}; studies run so far: {known}")
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
    p.add_argument("--dry-run", action="store_true",
                   help="print the trials, the warm start they reuse or build and a CPU/GPU-hour "
                        "estimate (with its assumptions), then stop: no Ray, no training")
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
