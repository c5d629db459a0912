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

import json
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from archer.extras import require
from archer.validation import ConfigError, did_you_mean
from experiments.recipes import check_required, load_recipe, study_defaults
from experiments.renamed_keys import check_renamed_key
from experiments.scheduler import Scheduler, StudyState, TrialSource, objective_value
from experiments.study import (
    DEFAULT_ROOT,
    DIRECTIONS,
    _compose_study_file,
    _format_value,
    _slug,
    check_eval,
    check_eval_data,
    check_fields,
    check_keys,
    check_resources,
    resolve_trial,
    split_overrides,
    study_path,
    warm_start_settings,
)

DEFAULT_STORAGE = "sqlite:///runs/optuna.db"
SWEEP_KEYS = {
    "name": str, "description": str, "recipe": str, "base": list, "params": dict,
    "enqueue_presets": list, "enqueue": list, "objective": dict, "compute_objective": bool,
    "sampler": str, "pruner": (dict, type(None)), "seed": int, "max_concurrent": int,
    "max_retries": int, "storage": (str, type(None)), "eval": (dict, bool, type(None)),
    "resources": dict, "experiment": (str, type(None)), "system_metrics": bool,
    "warm_start": (dict, bool, type(None), str),
}
SWEEP_DEFAULTS: dict[str, Any] = {
    "description": "", "recipe": "cpu", "base": [], "enqueue_presets": [], "enqueue": [],
    "objective": {"metric": "val/accuracy", "direction": "maximize"},
    "compute_objective": False, "sampler": "tpe", "pruner": None, "seed": 0,
    "max_concurrent": 2, "max_retries": 1, "storage": None, "eval": None, "resources": {},
    "experiment": None, "system_metrics": False, "warm_start": "recipe",
}
OWNER, HEARTBEAT, INVOCATION = "archer.owner", "archer.heartbeat", "archer.invocation"
HEARTBEAT_S = 30.0  # how often a driver refreshes the heartbeat of its running trials
HEARTBEAT_TIMEOUT_S = 180.0  # a driver on another host is dead after this long without one
SAMPLERS = ("tpe", "grid", "random")
PRUNERS = ("median", "percentile", "none")
PARAM_TYPES = ("float", "int", "categorical")
STORAGE_SCHEMES = ("sqlite:///", "postgresql://", "postgresql+psycopg://",
                   "postgresql+psycopg2://", "mysql://", "mysql+pymysql://")


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
    warm_start: Any = None  # experiments.warm_start.WarmStartSettings, or None: none


def load_sweep(name: str | Path, overrides: list[str] | None = None,
               storage: str | None = None) -> SweepSpec:
    path = study_path(name, "sweep")
    name = path.stem
    data = _compose_study_file(path, list(overrides or []), "sweep", SWEEP_KEYS,
                               SWEEP_DEFAULTS)
    where = f"sweep {name}"
    # defaults: the schema's, then the recipe's `study:` block; the file and overrides win
    recipe_name = data.get("recipe", SWEEP_DEFAULTS["recipe"])
    defaults = SWEEP_DEFAULTS | (study_defaults(recipe_name, SWEEP_KEYS)
                                 if isinstance(recipe_name, str) else {})
    data = check_fields(where, data, SWEEP_KEYS, defaults)
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
        experiment=data["experiment"] or f"sweep-{name}", system_metrics=data["system_metrics"],
        warm_start=warm_start_settings(where, data["warm_start"], data["recipe"], recipe))


def _check_param(where: str, key: str, spec: Any) -> dict[str, Any]:
    check_renamed_key(f"{where}: param", key)
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
        hint = did_you_mean(preset, preset_names())
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
    d = require("optuna.distributions", "sweeps", "archer sweep")

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


def make_sampler(spec: SweepSpec, offset: int = 0):
    """The sweep's sampler, seeded ``seed + offset``: a rerun passes the number of trials the
    study has, so a seeded sampler does not replay the points its first invocation drew."""
    optuna = require("optuna", "sweeps", "archer sweep")

    seed = spec.seed + offset
    if spec.sampler == "grid":
        return optuna.samplers.GridSampler({k: p["choices"] for k, p in spec.params.items()},
                                           seed=seed)
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, multivariate=True)


def make_pruner(spec: SweepSpec):
    optuna = require("optuna", "sweeps", "archer sweep")

    if spec.pruner is None:
        return optuna.pruners.NopPruner()
    kw = {"n_startup_trials": spec.pruner["startup_trials"],
          "n_warmup_steps": spec.pruner["min_steps"]}
    if spec.pruner["type"] == "percentile":
        return optuna.pruners.PercentilePruner(spec.pruner["percentile"], **kw)
    return optuna.pruners.MedianPruner(**kw)


class SweepInUse(ValueError):
    """Another live driver is running this sweep (it is single-writer)."""


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _process_start(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks since boot, Linux), None when unknown."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def driver_identity() -> dict[str, Any]:
    """Who this driver is: host (+ boot id), pid and the pid's start time (pids are reused)."""
    return {"host": socket.gethostname(), "boot_id": _boot_id(), "pid": os.getpid(),
            "pid_start": _process_start(os.getpid())}


def owner_alive(owner: dict[str, Any] | None, heartbeat: float | None,
                now: float | None = None, timeout: float | None = None) -> bool:
    """Whether the driver ``owner`` (:func:`driver_identity`) still runs. On this host (same
    boot): its pid exists, is not a zombie and started when it did. This process itself is
    not alive as an owner (its earlier invocation has returned). On another host: it wrote a
    heartbeat less than ``timeout`` seconds ago."""
    if not owner:
        return False
    me = driver_identity()
    if owner.get("host") == me["host"] and owner.get("boot_id") == me["boot_id"]:
        pid = int(owner.get("pid", -1))
        if pid == me["pid"] or pid <= 0:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        stat = Path(f"/proc/{pid}/stat")
        try:
            if stat.read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return False
        except (OSError, IndexError):
            pass
        started = _process_start(pid)
        return started is None or owner.get("pid_start") in (None, started)
    timeout = HEARTBEAT_TIMEOUT_S if timeout is None else timeout
    now = time.time() if now is None else now
    return heartbeat is not None and now - float(heartbeat) < timeout


def _describe(owner: dict[str, Any] | None) -> str:
    return f"pid {owner.get('pid')} on {owner.get('host')}" if owner else "an unknown driver"


class SweepSource(TrialSource):
    """Asks Optuna for trials, reports the pruner's metric read from MLflow, tells the results.

    Budget: ``n_trials`` trials per invocation. A rerun after the driver was killed continues
    that invocation: its trials left RUNNING (owned by no live driver) are resumed first, with
    their params, name and identity hash, from their checkpoints (or, when a trial has no
    checkpoint, told FAIL and its params enqueued again, which costs no budget), and only the
    rest of its ``n_trials`` are asked. Trials carry their driver (``archer.owner``), a
    heartbeat (``archer.heartbeat``), the invocation (``archer.invocation``) and their identity
    (``archer.config_hash``, ``archer.trial_name``) as Optuna user attrs; the study carries the
    latest invocation (``archer.invocation``: id, n_trials, owner, heartbeat, done)."""

    def __init__(self, spec: SweepSpec, study, trial_overrides: list[str], study_dir: Path,
                 n_trials: int) -> None:
        optuna = require("optuna", "sweeps", "archer sweep")

        self.spec, self.study = spec, study
        self.trial_overrides = list(trial_overrides)
        self.study_dir = study_dir
        self.n_trials = n_trials
        self.scheduler: Scheduler | None = None
        self.asked = 0
        self.open: dict[str, Any] = {}  # trial hash -> optuna trial
        self._tells: dict[str, tuple] = {}  # trial hash -> what to tell Optuna once saved
        self.reported: dict[str, set[int]] = {}
        self.dists = distributions(spec)
        self.owner = driver_identity()
        self._beat = 0.0
        self.resume: list[tuple[Any, Any]] = []  # (frozen Optuna trial, TrialSpec)
        self.requeued = 0
        self.hashes: list[str] = []  # trials of this invocation (resumed, earlier, new)

        running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        for t in running:
            if owner_alive(t.user_attrs.get(OWNER), t.user_attrs.get(HEARTBEAT)):
                raise SweepInUse(
                    f"sweep {spec.name}: trial {t.number} is being run by "
                    f"{_describe(t.user_attrs.get(OWNER))} (heartbeat "
                    f"{time.time() - float(t.user_attrs.get(HEARTBEAT, 0)):.0f} s ago); a sweep "
                    f"has one driver at a time: stop that one first (a driver on another host "
                    f"counts as dead {HEARTBEAT_TIMEOUT_S:.0f} s after its last heartbeat)")
        last = study.user_attrs.get(INVOCATION) or {}
        if last and not last.get("done") and owner_alive(last.get("owner"), last.get("heartbeat")):
            raise SweepInUse(f"sweep {spec.name} is being run by {_describe(last.get('owner'))}; "
                             "stop that driver first")
        if last and not last.get("done"):  # its driver died: this invocation continues it
            self.invocation = last["id"]
            # (a trial RUNNING without an invocation: its driver died right after asking)
            mine = [t for t in study.get_trials(deepcopy=False)
                    if t.user_attrs.get(INVOCATION) == self.invocation
                    or (t in running and INVOCATION not in t.user_attrs)]
            self.hashes = [t.user_attrs["archer.config_hash"] for t in mine
                           if t.user_attrs.get("archer.config_hash")]
            self.budget = max(0, n_trials - len(mine))
            print(f"sweep {spec.name}: continuing the invocation of {_describe(last.get('owner'))}"
                  f", which was stopped: {len(mine)} of its {n_trials} trial(s) were asked, "
                  f"{self.budget} more to ask")
        else:
            self.invocation = uuid.uuid4().hex[:12]
            self.budget = n_trials
        self.orphans = sorted(running, key=lambda t: t.number)

    def start(self, scheduler: Scheduler | None = None) -> None:
        """Take over the orphaned trials and record this invocation (after the checks of
        ``__init__`` passed and the scheduler has loaded the study state)."""
        self.scheduler = scheduler
        for frozen in self.orphans:
            self._take_over(frozen)
        self.orphans = []
        self._record_invocation(done=False)

    # ------------------------------------------------------------------------------------------

    def _compose(self, number: int, params: dict[str, Any], tags: dict[str, str] | None = None):
        params = {k: params[k] for k in self.dists if k in params}  # the space's order
        ovs = [f"{k}={_format_value(v)}" for k, v in params.items()]
        name = _slug(f"t{number:03d}-" + "-".join(
            f"{k.split('.')[-1]}={_short(v)}" for k, v in params.items()))
        overrides = (list(self.spec.recipe_overrides) + list(self.spec.base) + ovs
                     + self.trial_overrides)
        check_required(self.spec.raw["recipe"], overrides)
        tags = {"archer.study": self.spec.name, "archer.trial_number": str(number),
                "optuna.study": self.spec.name, "optuna.trial_number": str(number),
                "optuna.params": json.dumps(params, default=str)} | (tags or {})
        return resolve_trial(number, name, overrides, study_dir=self.study_dir,
                             evaluation=self.spec.eval, resources=self.spec.resources, tags=tags)

    def _take_over(self, frozen) -> None:
        """A RUNNING trial whose driver is dead: resume it, or fail and enqueue it again."""
        optuna = require("optuna", "sweeps", "archer sweep")

        from archer.checkpoint import latest_checkpoint

        owner = _describe(frozen.user_attrs.get(OWNER))
        try:
            trial = self._compose(frozen.number, frozen.params)
        except ConfigError as err:
            print(f"sweep {self.spec.name}: trial {frozen.number} of {owner} no longer "
                  f"composes ({err}); told FAIL")
            self.study.tell(frozen.number, state=optuna.trial.TrialState.FAIL)
            return
        recorded = frozen.user_attrs.get("archer.config_hash")
        if self._known(trial):  # it ended and was saved; its driver died before telling
            print(f"sweep {self.spec.name}: trial {frozen.number} ({trial.name}) of {owner} "
                  f"ended before its driver died; telling Optuna its result")
            self.resume.append((frozen, trial))
            return
        if (recorded in (None, trial.hash)) and latest_checkpoint(trial.out_dir) is not None:
            print(f"sweep {self.spec.name}: resuming trial {frozen.number} ({trial.name}) of "
                  f"{owner} from its checkpoint")
            self.resume.append((frozen, trial))
            return
        why = ("its configuration changed (trial overrides?)" if recorded not in (None, trial.hash)
               else "it has no checkpoint")
        print(f"sweep {self.spec.name}: trial {frozen.number} of {owner} cannot be resumed "
              f"({why}); told FAIL, its params enqueued again")
        optuna.trial.Trial(self.study, frozen._trial_id).set_user_attr(
            "archer.requeued", True)
        self.study.tell(frozen.number, state=optuna.trial.TrialState.FAIL)
        self.study.enqueue_trial(frozen.params, user_attrs={"archer.requeued_from":
                                                            frozen.number})
        self.requeued += 1
        if self.scheduler is not None:  # its state gives way to the new trial's (same hash)
            state = self.scheduler.state
            old = state.trials.get(trial.hash)
            if old is not None and old.number == frozen.number:
                old.status, old.error = "failed", f"orphaned, {why}: enqueued again"
                state.trials[f"{trial.hash}@{frozen.number}"] = state.trials.pop(trial.hash)
                if old.run_id and not old.run_id.startswith("offline-"):
                    from archer.tracking.mlflow import retry_locked

                    retry_locked(self.scheduler.tracker.client.set_terminated, old.run_id,
                                 "FAILED")
                self.scheduler.save()

    def _own(self, otrial, trial) -> None:
        for key, value in ((OWNER, self.owner), (HEARTBEAT, time.time()),
                           (INVOCATION, otrial.user_attrs.get(INVOCATION, self.invocation)),
                           ("archer.config_hash", trial.hash),
                           ("archer.trial_name", trial.name)):
            otrial.set_user_attr(key, value)

    def _record_invocation(self, done: bool) -> None:
        self.study.set_user_attr(INVOCATION, {
            "id": self.invocation, "n_trials": self.n_trials, "owner": self.owner,
            "heartbeat": time.time(), "done": done})

    def finish(self) -> None:
        """The invocation ran to its end (a rerun starts a new one)."""
        self._record_invocation(done=True)

    def _known(self, trial) -> bool:
        """The scheduler finished this identity already: tell its result instead of rerunning."""
        if self.scheduler is None:
            return False
        t = self.scheduler.state.trials.get(trial.hash)
        return t is not None and t.status in ("finished", "pruned")

    # ------------------------------------------------------------------------------------------

    def exhausted(self) -> bool:
        return not self.resume and self.asked >= self.budget + self.requeued

    def next_trial(self):
        optuna = require("optuna", "sweeps", "archer sweep")

        while self.resume:
            frozen, trial = self.resume.pop(0)
            otrial = optuna.trial.Trial(self.study, frozen._trial_id)
            if trial.hash not in self.hashes:
                self.hashes.append(trial.hash)
            if self._known(trial):
                self.open[trial.hash] = otrial
                self._settle_known(trial)
                continue
            self._own(otrial, trial)
            self.open[trial.hash] = otrial
            self.reported[trial.hash] = set(frozen.intermediate_values)
            return trial
        while self.asked < self.budget + self.requeued:
            otrial = self.study.ask(self.dists)
            self.asked += 1
            otrial.set_user_attr(INVOCATION, self.invocation)
            params = otrial.params
            try:
                trial = self._compose(otrial.number, params)
            except ConfigError as err:  # this point of the space is not a valid config
                print(f"sweep {self.spec.name}: trial {otrial.number} {params} is invalid "
                      f"({err}); told FAIL")
                self.study.tell(otrial, state=optuna.trial.TrialState.FAIL)
                continue
            self._own(otrial, trial)
            if trial.hash not in self.hashes:
                self.hashes.append(trial.hash)
            if self._known(trial):  # a point the sweep has run already (same identity)
                self.open[trial.hash] = otrial
                self._settle_known(trial)
                continue
            self.open[trial.hash] = otrial
            return trial
        return None

    def on_poll(self) -> None:
        now = time.time()
        if now - self._beat < HEARTBEAT_S:
            return
        self._beat = now
        for otrial in self.open.values():
            if otrial is not None:
                otrial.set_user_attr(HEARTBEAT, now)
        self._record_invocation(done=False)

    def on_update(self, trial, state, tracker) -> bool:
        if self.spec.pruner is None or self.open.get(trial.hash) is None:
            return False
        otrial = self.open[trial.hash]
        done = self.reported.setdefault(trial.hash, set())
        history = tracker.metric_history(state.run_id, self.spec.pruner["metric"])
        for step, value in history:
            if step >= self.spec.pruner["min_steps"] and step not in done:
                otrial.report(value, step)
                done.add(step)
        return bool(done) and otrial.should_prune()

    def _settle_known(self, trial) -> None:
        state = self.scheduler.state.trials[trial.hash]
        self.on_done(trial, state, None)
        self.on_saved(trial, state)

    def on_done(self, trial, state, tracker) -> None:
        """Log the objective into the trial's run (still open) and keep what Optuna is to be
        told; :meth:`on_saved` tells it once the scheduler has terminated the run and saved
        its state. So a driver killed anywhere in between leaves the Optuna trial RUNNING and
        the study state saying how it ended: the rerun takes it over, finds it known and tells
        Optuna, without logging the objective again (told first, a kill there would lose the
        logged objective, or leave the MLflow run RUNNING, for good)."""
        optuna = require("optuna", "sweeps", "archer sweep")

        otrial = self.open.pop(trial.hash, None)
        if otrial is None:
            return
        if state.status == "pruned":
            self._tells[trial.hash] = (otrial, None, optuna.trial.TrialState.PRUNED)
            return
        value = objective_value(state, self.spec.objective["metric"])
        state.objective = value
        if state.status != "finished" or value is None:
            self._tells[trial.hash] = (otrial, None, optuna.trial.TrialState.FAIL)
            return
        values = [value] + ([state.compute_s] if self.spec.compute_objective else [])
        logger = tracker.loggers.get(trial.hash) if tracker is not None else None
        if logger is not None and not self._objective_logged(tracker, state):
            logger.log_metrics({"objective": value, "compute_s": state.compute_s},
                               step=state.step)
        self._tells[trial.hash] = (otrial, values if len(values) > 1 else values[0], None)

    def on_saved(self, trial, state) -> None:
        told = self._tells.pop(trial.hash, None)
        if told is None:
            return
        otrial, values, end = told
        self.study.tell(otrial, values, state=end)  # state None: COMPLETE with the values

    @staticmethod
    def _objective_logged(tracker, state) -> bool:
        """Whether the trial's run already has its objective at this step (a rerun after a
        kill between logging and telling); False when MLflow cannot say (unreachable)."""
        try:
            return any(step == state.step
                       for step, _ in tracker.metric_history(state.run_id, "objective"))
        except Exception:  # noqa: BLE001 - offline: log (buffered), a duplicate is harmless
            return False


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def sweep_warm_start(spec: SweepSpec, probe):
    """The sweep's shared warm start (built once, or reused), from its first trial's
    config; None without one. A parameter the warm start depends on is refused: its trials
    would need different warm starts."""
    if spec.warm_start is None:
        return None
    from experiments.warm_start import WARM_START_INPUTS, prepare_warm_start

    varied = [k for k in spec.params if k.split(".")[0] in WARM_START_INPUTS]
    if varied:
        raise ConfigError(f"sweep {spec.name}: {varied} change what the warm start is built "
                          f"from ({list(WARM_START_INPUTS)}); set warm_start=null or fix them")
    return prepare_warm_start(probe.train, spec.warm_start)


def run_sweep(space: str, n_trials: int, overrides: list[str] | None = None, *,
              root: str | Path = DEFAULT_ROOT, storage: str | None = None,
              tracking_uri: str | None = None, ray_address: str | None = None,
              num_cpus: int | None = None, progress: bool | None = None,
              observer=None) -> tuple[StudyState, Any]:
    """Run ``n_trials`` more trials of the sweep; returns (scheduler state, Optuna study)."""
    optuna = require("optuna", "sweeps", "archer sweep")
    import yaml

    if n_trials < 1:
        raise ConfigError(f"--n-trials={n_trials} must be >= 1")
    sweep_ovs, trial_ovs = split_overrides(
        [ov.replace("sweep.", "study.", 1) if ov.lstrip("+~").startswith("sweep.") else ov
         for ov in overrides or []])
    spec = load_sweep(space, sweep_ovs, storage)
    study_dir = Path(root) / spec.name
    # validate the trial overrides on the first enqueued point (or the space's first choice)
    probe = dict(spec.enqueued[0]) if spec.enqueued else {}
    for key, p in spec.params.items():
        probe.setdefault(key, p["choices"][0] if p["type"] == "categorical" else p["low"])
    probe_ovs = (list(spec.recipe_overrides) + list(spec.base)
                 + [f"{k}={_format_value(v)}" for k, v in probe.items()] + trial_ovs)
    check_required(spec.raw["recipe"], probe_ovs)
    probe_trial = resolve_trial(0, "probe", probe_ovs, study_dir=study_dir,
                                evaluation=spec.eval, resources=spec.resources, tags={})
    check_eval_data(f"sweep {spec.name}", spec.eval, ray_address)
    warm = sweep_warm_start(spec, probe_trial)
    if warm is not None:  # every trial starts from it: the model given last wins
        trial_ovs = trial_ovs + [f"model={warm.model_dir}"]
    if spec.storage.startswith("sqlite:///"):
        Path(spec.storage[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    directions = [spec.objective["direction"]] + (["minimize"] if spec.compute_objective else [])
    study = optuna.create_study(study_name=spec.name, storage=spec.storage,
                                sampler=make_sampler(spec), pruner=make_pruner(spec),
                                directions=directions, load_if_exists=True)
    if study.trials:  # a rerun: a fresh random stream
        study.sampler = make_sampler(spec, offset=len(study.trials))
    for fixed in spec.enqueued:
        study.enqueue_trial(fixed, skip_if_exists=True)
    params = {"sweep": spec.name, "sampler": spec.sampler, "storage": spec.storage,
              "params": spec.params, "objective": spec.objective,
              "compute_objective": spec.compute_objective, "pruner": spec.pruner,
              "trial_overrides": " ".join(trial_ovs)}
    # refuses a sweep another live driver runs before touching its state
    source = SweepSource(spec, study, trial_ovs, study_dir, n_trials)
    sched = Scheduler(spec.name, study_dir, experiment=spec.experiment,
                      tracking_uri=tracking_uri, max_concurrent=spec.max_concurrent,
                      max_retries=spec.max_retries, ray_address=ray_address,
                      num_cpus=num_cpus, progress=progress, system_metrics=spec.system_metrics,
                      study_params=params, observer=observer,
                      study_config=yaml.safe_dump({"sweep": spec.raw,
                                                   "trial_overrides": trial_ovs}))
    if warm is not None:
        sched.tracker.log_warm_start(warm.hash, warm.heldout_accuracy, str(warm.model_dir))
    source.start(sched)
    sched.state.current = [h for h in source.hashes if h in sched.state.trials]
    state = sched.run(source)
    source.finish()
    return state, study
