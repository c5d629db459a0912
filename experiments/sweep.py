"""``archer sweep SPACE [--n-trials N]``: an Optuna ask/tell loop over the study scheduler.

A search space is ``experiments/conf/sweep/<name>.yaml`` (or a path): ``params`` maps trial
override keys to distributions, ``enqueue_presets``/``enqueue`` are the first trials, plus the
objective, an optional second objective (training seconds), sampler (``tpe | grid | random``),
pruner and Optuna storage (RDB: ``sqlite:///runs/optuna.db`` by default, a PostgreSQL URL
accepted).

The driver asks Optuna for a trial, composes it like any study trial (validated, identity
hash), and runs it through :class:`experiments.scheduler.Scheduler` (Ray, retries, MLflow
hierarchy). The trainer never imports Optuna: the pruner is fed from MLflow, where the
driver uploads each trial's validation metric as it arrives; values at steps below
``pruner.min_steps`` are never reported. A trial Optuna prunes is asked to stop (a file the
trial's logger checks after each step's checkpoint) and ends cleanly; it is told PRUNED.
Finished trials are told their objective value(s), which are also logged in MLflow
(``objective``, ``compute_s``) with the tags ``optuna.study`` and ``optuna.trial_number``.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from archer.config import ConfigError
from experiments.scheduler import Scheduler, StudyState, TrialSource, objective_value
from experiments.study import (
    DEFAULT_ROOT,
    DIRECTIONS,
    _compose_study_file,
    _format_value,
    _slug,
    check_eval,
    check_fields,
    check_keys,
    check_resources,
    load_recipe,
    resolve_trial,
    split_overrides,
    study_path,
)

DEFAULT_STORAGE = "sqlite:///runs/optuna.db"
SWEEP_KEYS = {
    "name": str, "description": str, "recipe": str, "base": list, "params": dict,
    "enqueue_presets": list, "enqueue": list, "objective": dict, "compute_objective": bool,
    "sampler": str, "pruner": (dict, type(None)), "seed": int, "max_concurrent": int,
    "max_retries": int, "storage": (str, type(None)), "eval": (dict, bool, type(None)),
    "resources": dict, "experiment": (str, type(None)), "system_metrics": bool,
}
SWEEP_DEFAULTS: dict[str, Any] = {
    "description": "", "recipe": "cpu", "base": [], "enqueue_presets": [], "enqueue": [],
    "objective": {"metric": "val/accuracy", "direction": "maximize"},
    "compute_objective": False, "sampler": "tpe", "pruner": None, "seed": 0,
    "max_concurrent": 2, "max_retries": 1, "storage": None, "eval": None, "resources": {},
    "experiment": None, "system_metrics": False,
}
SAMPLERS = ("tpe", "grid", "random")
PRUNERS = ("median", "percentile", "none")
PARAM_TYPES = ("float", "int", "categorical")
STORAGE_SCHEMES = ("sqlite:///", "postgresql://", "postgresql+psycopg2://", "mysql://",
                   "mysql+pymysql://")


@dataclass(frozen=True)
class SweepSpec:
    name: str
    raw: dict[str, Any]
    recipe_overrides: tuple[str, ...]
    base: tuple[str, ...]
    params: dict[str, dict[str, Any]]
    enqueued: tuple[dict[str, Any], ...]
    objective: dict[str, str]
    compute_objective: bool
    sampler: str
    pruner: dict[str, Any] | None
    seed: int
    max_concurrent: int
    max_retries: int
    storage: str
    eval: dict[str, Any] | None
    resources: dict[str, Any]
    experiment: str
    system_metrics: bool


def load_sweep(name: str | Path, overrides: list[str] | None = None,
               storage: str | None = None) -> SweepSpec:
    path = study_path(name, "sweep")
    name = path.stem
    data = _compose_study_file(path, list(overrides or []), "sweep", SWEEP_KEYS)
    where = f"sweep {name}"
    data = check_fields(where, data, SWEEP_KEYS, SWEEP_DEFAULTS)
    if data["name"] != name:
        raise ConfigError(f"{where}: name={data['name']!r} differs from the file name {name!r}")
    if not data["params"]:
        raise ConfigError(f"{where}: params is empty (nothing to search)")
    params = {str(k): _check_param(where, str(k), v) for k, v in data["params"].items()}
    if data["sampler"] not in SAMPLERS:
        raise ConfigError(f"{where}: sampler={data['sampler']!r}; choose one of {SAMPLERS}")
    if data["sampler"] == "grid":
        bad = [k for k, p in params.items() if p["type"] != "categorical"]
        if bad:
            raise ConfigError(f"{where}: the grid sampler needs categorical params; {bad} "
                              "are ranges")
    objective = dict(data["objective"])
    check_keys(f"{where}.objective", objective, ("metric", "direction"))
    if objective.get("direction") not in DIRECTIONS or not objective.get("metric"):
        raise ConfigError(f"{where}.objective needs a metric and a direction in {DIRECTIONS}")
    pruner = data["pruner"]
    if pruner is not None:
        check_keys(f"{where}.pruner", pruner, ("type", "min_steps", "metric", "startup_trials",
                                               "percentile"))
        pruner = {"type": "median", "min_steps": 1, "metric": objective["metric"],
                  "startup_trials": 2, "percentile": 50.0} | pruner
        if pruner["type"] not in PRUNERS:
            raise ConfigError(f"{where}.pruner.type={pruner['type']!r}; choose one of {PRUNERS}")
        if not isinstance(pruner["min_steps"], int) or pruner["min_steps"] < 1:
            raise ConfigError(f"{where}.pruner.min_steps={pruner['min_steps']!r} must be an "
                              "int >= 1")
        if pruner["type"] == "none":
            pruner = None
        elif data["compute_objective"]:
            raise ConfigError(f"{where}: Optuna prunes single-objective studies only; set "
                              "pruner: null or compute_objective: false")
    enqueued = [_preset_params(where, p, params) for p in data["enqueue_presets"]]
    for i, fixed in enumerate(data["enqueue"]):
        if not isinstance(fixed, dict):
            raise ConfigError(f"{where}: enqueue[{i}] must be a mapping of params")
        unknown = [k for k in fixed if k not in params]
        if unknown:
            raise ConfigError(f"{where}: enqueue[{i}] sets {unknown}, which are not params "
                              f"{sorted(params)}")
        enqueued.append(dict(fixed))
    store = storage or data["storage"] or DEFAULT_STORAGE
    if not store.startswith(STORAGE_SCHEMES):
        raise ConfigError(f"{where}: storage {store!r} is not an RDB URL ({STORAGE_SCHEMES})")
    recipe = load_recipe(data["recipe"])
    resources = check_resources(where, recipe.get("resources"), data["resources"])
    return SweepSpec(
        name=name, raw=data, recipe_overrides=tuple(recipe.get("overrides") or ()),
        base=tuple(data["base"]), params=params, enqueued=tuple(enqueued), objective=objective,
        compute_objective=data["compute_objective"], sampler=data["sampler"], pruner=pruner,
        seed=data["seed"], max_concurrent=data["max_concurrent"],
        max_retries=data["max_retries"], storage=store,
        eval=None if data["eval"] is False else check_eval(
            where, data["eval"] if data["eval"] is not None else recipe.get("eval")),
        resources=resources,
        experiment=data["experiment"] or f"sweep-{name}", system_metrics=data["system_metrics"])


def _check_param(where: str, key: str, spec: Any) -> dict[str, Any]:
    if not isinstance(spec, dict) or spec.get("type") not in PARAM_TYPES:
        raise ConfigError(f"{where}: param {key!r} needs a type in {PARAM_TYPES}, got {spec!r}")
    if spec["type"] == "categorical":
        check_keys(f"{where}.params.{key}", spec, ("type", "choices"))
        if not isinstance(spec.get("choices"), list) or not spec["choices"]:
            raise ConfigError(f"{where}: param {key!r} has no choices (empty grid)")
    else:
        check_keys(f"{where}.params.{key}", spec, ("type", "low", "high", "log", "step"))
        lo, hi = spec.get("low"), spec.get("high")
        if not isinstance(lo, (int, float)) or not isinstance(hi, (int, float)) or lo > hi:
            raise ConfigError(f"{where}: param {key!r} needs low <= high, got {lo}..{hi}")
        if spec.get("log") and lo <= 0:
            raise ConfigError(f"{where}: param {key!r} is log-scaled, so low must be > 0")
    return dict(spec)


def _preset_params(where: str, preset: str, params: dict[str, dict]) -> dict[str, Any]:
    """The values a method preset gives the sweep's params (``algo`` itself, ``algo.*``)."""
    from experiments.presets import load_preset, preset_names

    if preset not in preset_names():
        close = difflib.get_close_matches(preset, preset_names(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{where}: unknown preset {preset!r} in enqueue_presets{hint}; "
                          f"presets: {preset_names()}")
    algo = load_preset(preset).algo.to_dict()
    out: dict[str, Any] = {}
    for key in params:
        if key == "algo":
            out[key] = preset
        elif key.startswith("algo."):
            node: Any = algo
            for part in key.split(".")[1:]:
                node = node[part]
            out[key] = node
    return out


def distributions(spec: SweepSpec) -> dict[str, Any]:
    import optuna.distributions as d

    out = {}
    for key, p in spec.params.items():
        if p["type"] == "categorical":
            out[key] = d.CategoricalDistribution(p["choices"])
        elif p["type"] == "float":
            out[key] = d.FloatDistribution(p["low"], p["high"], log=bool(p.get("log")),
                                           step=p.get("step"))
        else:
            out[key] = d.IntDistribution(p["low"], p["high"], log=bool(p.get("log")),
                                         step=p.get("step") or 1)
    return out


def make_sampler(spec: SweepSpec):
    import optuna

    if spec.sampler == "grid":
        return optuna.samplers.GridSampler({k: p["choices"] for k, p in spec.params.items()},
                                           seed=spec.seed)
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=spec.seed)
    return optuna.samplers.TPESampler(seed=spec.seed, multivariate=True)


def make_pruner(spec: SweepSpec):
    import optuna

    if spec.pruner is None:
        return optuna.pruners.NopPruner()
    kw = {"n_startup_trials": spec.pruner["startup_trials"],
          "n_warmup_steps": spec.pruner["min_steps"]}
    if spec.pruner["type"] == "percentile":
        return optuna.pruners.PercentilePruner(spec.pruner["percentile"], **kw)
    return optuna.pruners.MedianPruner(**kw)


class SweepSource(TrialSource):
    """Asks Optuna for trials (up to ``n_trials`` in this invocation), reports the pruner's
    metric read from MLflow, tells the results."""

    def __init__(self, spec: SweepSpec, study, trial_overrides: list[str], study_dir: Path,
                 n_trials: int) -> None:
        self.spec, self.study = spec, study
        self.trial_overrides = list(trial_overrides)
        self.study_dir = study_dir
        self.n_trials = n_trials
        self.asked = 0
        self.open: dict[str, Any] = {}  # trial hash -> optuna trial
        self.reported: dict[str, set[int]] = {}
        self.dists = distributions(spec)

    def exhausted(self) -> bool:
        return self.asked >= self.n_trials

    def next_trial(self):
        import optuna

        while self.asked < self.n_trials:
            otrial = self.study.ask(self.dists)
            self.asked += 1
            params = otrial.params
            ovs = [f"{k}={_format_value(v)}" for k, v in params.items()]
            name = _slug(f"t{otrial.number:03d}-" + "-".join(
                f"{k.split('.')[-1]}={_short(v)}" for k, v in params.items()))
            overrides = (list(self.spec.recipe_overrides) + list(self.spec.base) + ovs
                         + self.trial_overrides)
            tags = {"archer.study": self.spec.name, "archer.trial_number": str(otrial.number),
                    "optuna.study": self.spec.name, "optuna.trial_number": str(otrial.number),
                    "optuna.params": json.dumps(params, default=str)}
            try:
                trial = resolve_trial(otrial.number, name, overrides, study_dir=self.study_dir,
                                      evaluation=self.spec.eval,
                                      resources=self.spec.resources, tags=tags)
            except ConfigError as err:  # this point of the space is not a valid config
                print(f"sweep {self.spec.name}: trial {otrial.number} {params} is invalid "
                      f"({err}); told FAIL")
                self.study.tell(otrial, state=optuna.trial.TrialState.FAIL)
                continue
            self.open[trial.hash] = otrial
            return trial
        return None

    def on_update(self, trial, state, tracker) -> bool:
        if self.spec.pruner is None or trial.hash not in self.open:
            return False
        otrial = self.open[trial.hash]
        done = self.reported.setdefault(trial.hash, set())
        history = tracker.metric_history(state.run_id, self.spec.pruner["metric"])
        for step, value in history:
            if step >= self.spec.pruner["min_steps"] and step not in done:
                otrial.report(value, step)
                done.add(step)
        return bool(done) and otrial.should_prune()

    def on_done(self, trial, state, tracker) -> None:
        import optuna

        otrial = self.open.pop(trial.hash, None)
        if otrial is None:
            return
        if state.status == "pruned":
            self.study.tell(otrial, state=optuna.trial.TrialState.PRUNED)
            return
        value = objective_value(state, self.spec.objective["metric"])
        state.objective = value
        if state.status != "finished" or value is None:
            self.study.tell(otrial, state=optuna.trial.TrialState.FAIL)
            return
        values = [value] + ([state.compute_s] if self.spec.compute_objective else [])
        self.study.tell(otrial, values if len(values) > 1 else values[0])
        logger = tracker.loggers.get(trial.hash)
        if logger is not None:
            logger.log_metrics({"objective": value, "compute_s": state.compute_s},
                               step=state.step)


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def run_sweep(space: str, n_trials: int, overrides: list[str] | None = None, *,
              root: str | Path = DEFAULT_ROOT, storage: str | None = None,
              tracking_uri: str | None = None, ray_address: str | None = None,
              num_cpus: int | None = None, progress: bool | None = None,
              observer=None) -> tuple[StudyState, Any]:
    """Run ``n_trials`` more trials of the sweep; returns (scheduler state, Optuna study)."""
    import optuna
    import yaml

    if n_trials < 1:
        raise ConfigError(f"--n-trials={n_trials} must be >= 1")
    sweep_ovs, trial_ovs = split_overrides(
        ["study." + ov[len("sweep."):] if ov.startswith("sweep.") else ov
         for ov in overrides or []])
    spec = load_sweep(space, sweep_ovs, storage)
    study_dir = Path(root) / spec.name
    # validate the trial overrides on the first enqueued point (or the space's first choice)
    probe = dict(spec.enqueued[0]) if spec.enqueued else {}
    for key, p in spec.params.items():
        probe.setdefault(key, p["choices"][0] if p["type"] == "categorical" else p["low"])
    resolve_trial(0, "probe", list(spec.recipe_overrides) + list(spec.base)
                  + [f"{k}={_format_value(v)}" for k, v in probe.items()] + trial_ovs,
                  study_dir=study_dir, evaluation=spec.eval, resources=spec.resources, tags={})
    if spec.storage.startswith("sqlite:///"):
        Path(spec.storage[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    directions = [spec.objective["direction"]] + (["minimize"] if spec.compute_objective else [])
    study = optuna.create_study(study_name=spec.name, storage=spec.storage,
                                sampler=make_sampler(spec), pruner=make_pruner(spec),
                                directions=directions, load_if_exists=True)
    for fixed in spec.enqueued:
        study.enqueue_trial(fixed, skip_if_exists=True)
    params = {"sweep": spec.name, "sampler": spec.sampler, "storage": spec.storage,
              "params": spec.params, "objective": spec.objective,
              "compute_objective": spec.compute_objective, "pruner": spec.pruner,
              "trial_overrides": " ".join(trial_ovs)}
    sched = Scheduler(spec.name, study_dir, experiment=spec.experiment,
                      tracking_uri=tracking_uri, max_concurrent=spec.max_concurrent,
                      max_retries=spec.max_retries, ray_address=ray_address,
                      num_cpus=num_cpus, progress=progress, system_metrics=spec.system_metrics,
                      study_params=params, observer=observer,
                      study_config=yaml.safe_dump({"sweep": spec.raw,
                                                   "trial_overrides": trial_ovs}))
    sched.state.current = []
    state = sched.run(SweepSource(spec, study, trial_ovs, study_dir, n_trials))
    return state, study


def run_sweep_cli(args) -> int:
    from experiments.scheduler import format_table

    state, study = run_sweep(args.space, args.n_trials, args.overrides, root=args.root,
                             storage=args.storage, tracking_uri=args.tracking_uri,
                             ray_address=args.ray_address, num_cpus=args.num_cpus,
                             progress=args.progress)
    print(format_table(state))
    done = [t for t in study.trials if t.state.name == "COMPLETE"]
    if done and len(study.directions) == 1:
        best = study.best_trial
        print(f"best Optuna trial {best.number}: value {best.value:.4g} params {best.params}")
    elif done:
        print(f"Pareto front: {[(t.number, t.values) for t in study.best_trials]}")
    print(f"Optuna: study {study.study_name!r} in {args.storage or 'the sweep storage'}; "
          f"MLflow: experiment {state.experiment!r} ({state.tracking_uri})")
    return 0 if state.status == "finished" else 1


def add_sweep_arguments(p, func) -> None:
    from experiments.study_cli import _common

    p.add_argument("space", help="a search space in experiments/conf/sweep or a .yaml file")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="sweep.<key>=... changes the sweep; anything else applies to every "
                        "trial (trainer.steps=2, model=<dir>)")
    p.add_argument("--n-trials", type=int, default=10, help="trials to run in this invocation")
    p.add_argument("--storage", default=None,
                   help=f"Optuna RDB storage (default: the space's, else {DEFAULT_STORAGE})")
    _common(p)
    p.set_defaults(func=func)
