"""Studies as Hydra configs: ``experiments/conf/study/<name>.yaml`` -> validated trials.

A study file states a grid of training runs in a few lines::

    name: ablate_kl
    recipe: cpu                         # experiments/conf/recipe/<recipe>.yaml: base overrides,
                                        # per-trial evaluation, Ray resources
    eval: null                          # null: the recipe's evaluation; false: none; or a spec
    base: [algo=archer]                 # more overrides for every trial
    axes: {algo.low.kl_weight: [0.0, 0.001, 0.005]}   # cartesian product
    variants: {}                        # or named override lists (one trial each)
    seeds: [0, 1, 2]                    # the trials' seed, an axis of its own
    objective: {metric: val/accuracy, direction: maximize}
    reference_arm: null                 # optional: the arm `archer report` compares with
    max_concurrent: 2
    max_retries: 2
    resources: {num_cpus: 1, num_gpus: 0, custom: {}, strategy: DEFAULT,   # Ray, per trial
                procs_per_trial: 1}     # training processes (torchrun) inside the trial's task
    warm_start: recipe                  # the recipe's shared warm start (the default), null
                                        # (none: a random model stays random) or settings
                                        # {steps, target, lr, batch_size, eval_every, seed}
    eval_start: false                   # also evaluate the model the trials start from (the
                                        # warm start or the given model) under the trials'
                                        # evaluation, once, in the driver: `archer report`'s
                                        # "start" row and each arm's gain over it

Trials = variants x axes x seeds, numbered in that order. Every trial is composed with
``experiments.train_cli`` (the same composition as ``archer train``: recipe, then ``base``,
then the variant and axis values, then the command line's trial overrides, then the seed) and
validated into a TrainConfig *before* anything runs: an unknown preset, an unknown key (in
the study file, the recipe or an override), an empty axis or an empty grid refuse the whole
study with a message naming the problem.

The study file is composed by Hydra (``compose("study/<name>")``) so study-level overrides use
Hydra's syntax and struct mode (``study.seeds=[0]``, ``study.max_concurrent=4``,
``study.eval.k=3``, ``+study.axes={lr:[1e-4]}``); a key the file does not have is
refused by Hydra, a key the schema does not know by :func:`load_study`. A key of a fixed
mapping (``eval``, ``resources``, ``objective``) that the file's mapping lacks is added; a
nested override that cannot work is refused saying which keys exist there and how to write it.

A trial's identity is the hash of its resolved configuration (everything that changes what is
trained and how it is evaluated; not the output directory, the progress bar or the tracking
backend): running the study again skips trials whose hash finished and resumes the others.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from archer.validation import ConfigError, did_you_mean, unknown_name
from experiments.eval_spec import (  # noqa: F401  (re-exported)
    EVAL_CHOICES,
    EVAL_INTS,
    EVAL_KEYS,
    EVAL_NUMBERS,
    check_eval,
    check_eval_data,
    check_keys,
)
from experiments.recipes import (  # noqa: F401  (re-exported: the one recipe loader)
    RECIPE_DIR,
    check_required,
    dedupe,
    load_recipe,
    recipe_names,
    study_defaults,
)
from experiments.renamed_keys import check_renamed_key
from experiments.yaml_files import read_yaml  # noqa: F401  (re-exported)

CONF_DIR = Path(__file__).resolve().parent / "conf"
STUDY_DIR = CONF_DIR / "study"
DEFAULT_ROOT = "runs/studies"

STUDY_KEYS = {
    "name": str, "description": str, "recipe": str, "base": list, "axes": dict,
    "variants": dict, "seeds": list, "objective": dict, "max_concurrent": int,
    "max_retries": int, "eval": (dict, bool, type(None)), "resources": dict,
    "experiment": (str, type(None)), "register_best": bool, "system_metrics": bool,
    "reference_arm": (str, type(None)),
    "warm_start": (dict, bool, type(None), str), "eval_start": bool,
}
STUDY_DEFAULTS: dict[str, Any] = {
    "description": "", "recipe": "cpu", "base": [], "axes": {}, "variants": {}, "seeds": [0],
    "objective": {"metric": "val/accuracy", "direction": "maximize"}, "max_concurrent": 2,
    "max_retries": 2, "experiment": None, "register_best": True, "system_metrics": False,
    "eval": None, "resources": {}, "reference_arm": None, "warm_start": "recipe",
    "eval_start": False,
}
# warm_start (experiments.warm_start): a mapping of settings, null = none (a random model
# stays random), in a recipe; a study's "recipe" (the default) takes its recipe's
RESOURCE_KEYS = ("num_cpus", "num_gpus", "custom", "strategy", "procs_per_trial")
# the mappings of a study (or sweep) file whose keys are fixed
SUBKEYS = {"eval": EVAL_KEYS, "resources": RESOURCE_KEYS, "objective": ("metric", "direction")}
STRATEGIES = ("DEFAULT", "SPREAD")
DIRECTIONS = ("maximize", "minimize")
# Keys that do not change what a trial computes: left out of its identity hash.
NOT_IDENTITY = (("out_dir",), ("progress",), ("tracking",))


def study_names() -> list[str]:
    return sorted(p.stem for p in STUDY_DIR.glob("*.yaml"))


@dataclass(frozen=True)
class TrialSpec:
    """One trial, fully resolved and validated."""

    number: int  # position in the study (Optuna's trial number in a sweep)
    name: str  # e.g. "t003-algo=dapo-seed=0"
    overrides: tuple[str, ...]  # what was composed, in order
    config: dict[str, Any]  # the resolved configuration (as `archer train --print-config`)
    train: dict[str, Any]  # TrainConfig.to_dict() with out_dir set
    hash: str  # identity: hash of the resolved config + evaluation
    out_dir: str  # the trial's run directory (checkpoints, events, logs, evaluation)
    eval: dict[str, Any] | None  # evaluation spec (evals harness) or None
    resources: dict[str, Any]  # Ray resources of the task (see check_resources)
    tags: dict[str, str] = field(default_factory=dict)  # preset, seed, variant, ...

    @property
    def procs(self) -> int:
        """Training processes of the trial (``resources.procs_per_trial``)."""
        return int(self.resources.get("procs_per_trial", 1))


@dataclass(frozen=True)
class StudySpec:
    name: str
    description: str
    recipe: str
    recipe_overrides: tuple[str, ...]
    base: tuple[str, ...]
    axes: dict[str, list]
    variants: dict[str, list[str]]
    seeds: tuple[int, ...]
    objective: dict[str, str]
    max_concurrent: int
    max_retries: int
    eval: dict[str, Any] | None
    resources: dict[str, Any]
    experiment: str
    register_best: bool
    system_metrics: bool
    raw: dict[str, Any]  # the composed study file (logged as the study's config)
    # the arm `archer report` compares every other arm with (a preset or variant name)
    reference_arm: str | None = None
    warm_start: Any = None  # experiments.warm_start.WarmStartSettings, or None: no warm start
    eval_start: bool = False  # evaluate the trials' starting model (experiments.start_eval)

    def size(self) -> int:
        n = max(1, len(self.variants))
        for values in self.axes.values():
            n *= len(values)
        return n * len(self.seeds)


# --------------------------------------------------------------------------------------------
# Loading and validating the study file
# --------------------------------------------------------------------------------------------


def split_overrides(overrides: list[str]) -> tuple[list[str], list[str]]:
    """Command-line overrides -> (study-level without the ``study.`` prefix, trial-level).
    ``recipe=X`` and ``warm_start=...`` are shorthands of ``study.recipe=X`` and
    ``study.warm_start=...``; Hydra's ``+study.<key>`` (add) and
    ``~study.<key>`` (delete) keep their sign."""
    study, trial = [], []
    for ov in overrides:
        if ov.startswith("study."):
            study.append(ov[len("study."):])
        elif ov.startswith(("+study.", "~study.")):
            study.append(ov[0] + ov[len("+study."):])
        elif ov.startswith(("recipe=", "warm_start=")):
            study.append(ov)
        else:
            trial.append(ov)
    return study, trial


def study_path(name: str | Path, group: str = "study") -> Path:
    """``experiments/conf/<group>/<name>.yaml``, or ``name`` itself when it is a YAML file."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"{group} file {path} does not exist")
        return path.resolve()
    path = CONF_DIR / group / f"{name}.yaml"
    if not path.is_file():
        names = [p.stem for p in (CONF_DIR / group).glob("*.yaml")]
        raise unknown_name(group, name, names, f" (or give a path to a {group} .yaml file)")
    return path


def _flow(value: Any) -> str:
    """``value`` in Hydra's override syntax (``[a,b]``, ``{k:v}``)."""
    if isinstance(value, list):
        return "[" + ",".join(_flow(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{_flow(v)}" for k, v in value.items()) + "}"
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    return str(value)


def _nested_override(group: str, name: str, ov: str, data: dict, keys: dict,
                     defaults: dict, study_ovs: list[str]) -> str:
    """A ``<head>.<sub>=value`` override of the file ``data`` as Hydra should compose it:
    ``+`` added for a key of :data:`SUBKEYS` the file's mapping lacks, a dotted key of the
    file's mapping (``axes.algo.low.kl_weight=[0.1]``) given as ``head={sub:value}``;
    refused (saying which keys exist there and how to write it) when it cannot work."""
    key, value = ov.split("=", 1)
    head, _, sub = key.partition(".")
    if not sub or head not in keys:
        return ov  # a plain key, or not a key of the schema: Hydra / check_fields refuse it
    first = sub.split(".")[0]
    fixed = SUBKEYS.get(head)
    where, full = f"{group} {name}", f"{group}.{key}"
    if fixed is not None and first not in fixed:
        hint = did_you_mean(first, fixed, fmt=f"{group}.{head}.{{}}")
        raise ConfigError(f"{where}: unknown key '{full}'{hint}; keys of {group}.{head}: "
                          f"{sorted(fixed)}")
    current = data[head] if head in data else defaults.get(head)
    if head in data and isinstance(current, dict) and first in current:
        return ov
    if head in data and isinstance(current, dict) and sub in current:  # a dotted key (axes)
        return f"{head}={{{sub}:{value}}}"  # a path cannot name it; a mapping can
    if fixed is not None and isinstance(current, dict) and (head in data or not current):
        return "+" + ov  # a key of the mapping that the file leaves out: added
    if fixed is not None and "." not in sub:  # the whole mapping is needed: show it
        base = current if isinstance(current, dict) else {}
        note = (f"{group}.{head} is {_flow(current)} in the {group} file, not a mapping"
                if head in data else f"the {group} file sets no {group}.{head} mapping")
        if head == "eval" and current is None:
            recipe = next((o.split("=", 1)[1] for o in reversed(study_ovs)
                           if o.lstrip("+").startswith("recipe=")),
                          data.get("recipe", defaults.get("recipe")))
            try:
                base = (load_recipe(str(recipe)).get("eval") or {}) if recipe else {}
            except ConfigError:
                base = {}
            note += (f" (its trials use recipe {recipe}'s evaluation, {_flow(base)})" if base
                     else f" (recipe {recipe} has no evaluation)")
        elif head not in data:
            note += f" (the default is {_flow(current)})"
        example = dict((base or {"benchmarks": ["gsm8k"]}) if head == "eval" else base)
        example[first] = value
        raise ConfigError(f"{where}: cannot set '{full}': {note}; give the whole mapping, "
                          f"e.g. '{group}.{head}={_flow(example)}' (keys of {group}.{head}: "
                          f"{sorted(fixed)})")
    if isinstance(current, dict):
        raise ConfigError(f"{where}: cannot set '{full}': {group}.{head} has no key {sub!r} "
                          f"(keys there: {sorted(current)}); add it with "
                          f"'+{group}.{head}={{{sub}:{value}}}'")
    raise ConfigError(f"{where}: cannot set '{full}': {group}.{head} is {_flow(current)}, "
                      f"which has no keys; set it whole: '{group}.{head}=...'")


def _compose_study_file(path: Path, overrides: list[str], group: str = "study",
                        keys: dict[str, Any] = STUDY_KEYS,
                        defaults: dict[str, Any] = STUDY_DEFAULTS) -> dict[str, Any]:
    """Compose a study (or sweep) file with Hydra; ``group`` is its directory under
    ``experiments/conf`` (a file elsewhere is composed from its own directory)."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    in_group = path.parent == CONF_DIR / group  # composed under the package `<group>`
    conf_dir = CONF_DIR if in_group else path.parent
    config_name = f"{group}/{path.stem}" if in_group else path.stem
    prefix = f"{group}." if in_group else ""
    data = read_yaml(path, group)
    in_file = set(data)
    # a schema key the file leaves at its default is added (Hydra's `+`), any other is an error
    overrides = [("+" if ov.split("=", 1)[0] in set(keys) - in_file else "") + ov
                 for ov in overrides]
    overrides = [_nested_override(group, path.stem, ov, data, keys, defaults, overrides)
                 if "=" in ov and ov[0] not in "+~" else ov for ov in overrides]
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3",
                               job_name="archer-study"):
        try:
            cfg = compose(config_name, overrides=[
                f"{ov[0]}{prefix}{ov[1:]}" if ov[:1] in ("+", "~") else f"{prefix}{ov}"
                for ov in overrides])
        except (HydraException, OmegaConfBaseException) as err:
            text = str(err).strip().splitlines()[0]
            m = re.search(r"Could not override '([^']+)'", text)
            if m and m.group(1).removeprefix(prefix) in keys and err.__cause__ is not None:
                # a known key whose mapping value brings keys the file's mapping lacks
                key = m.group(1).removeprefix(prefix)
                cause = str(err.__cause__).strip().splitlines()[0]
                raise ConfigError(
                    f"{group} {path.stem}: cannot set '{group}.{key}': {cause}; a mapping "
                    f"given to {group}.{key} is merged into the file's (keys: "
                    f"{sorted(data.get(key) or {})}): add keys with '+{group}.{key}={{...}}', "
                    f"or replace it with '~{group}.{key}' '+{group}.{key}={{...}}'") from None
            if m:
                key = m.group(1).removeprefix(prefix)
                hint = did_you_mean(key, keys, fmt=f"{group}.{{}}")
                raise ConfigError(f"{group} {path.stem}: unknown {group} key '{group}.{key}'"
                                  f"{hint}; keys: {sorted(keys)}") from None
            raise ConfigError(f"{group} {path.stem}: bad override: {text}") from None
    data = OmegaConf.to_container(cfg, resolve=True)
    return data[group] if in_group and set(data) == {group} else data


def check_fields(where: str, data: dict, keys: dict, defaults: dict) -> dict:
    """``data`` with ``defaults`` filled in; unknown or missing keys and wrong types fail."""
    check_keys(where, data, keys)
    data = defaults | data
    for key, types in keys.items():
        if key not in data:
            raise ConfigError(f"{where}: missing key {key!r}")
        if not isinstance(data[key], types) or (types is int and isinstance(data[key], bool)):
            raise ConfigError(f"{where}: {key}={data[key]!r} has the wrong type "
                              f"(expected {getattr(types, '__name__', types)})")
    return data


def check_resources(where: str, recipe: dict | None, given: dict | None) -> dict[str, Any]:
    """The Ray resources of each trial task: the recipe's, updated by the study's.

    ``num_cpus``/``num_gpus`` (>= 0), ``custom`` (Ray custom resources a node declares with
    ``ray start --resources``, e.g. ``{a100: 1}``: the trial only runs on nodes that have
    them) and ``strategy`` (``DEFAULT``: Ray packs tasks; ``SPREAD``: across nodes).

    ``procs_per_trial``: training processes of each trial (an integer >= 1). 1 trains in the
    Ray task's own process; N > 1 launches ``torchrun --standalone --nproc_per_node N``
    inside the task (FSDP2 data parallelism, one node: the task's). Unset, it is
    ``num_gpus`` when the trial has several GPUs, else 1. With GPUs every process needs its
    own: ``procs_per_trial`` may not exceed ``num_gpus``."""
    resources = dict(recipe or {}) | dict(given or {})
    check_keys(f"{where}.resources", resources, RESOURCE_KEYS)
    out: dict[str, Any] = {}
    for key, default in (("num_cpus", 1), ("num_gpus", 0)):
        value = resources.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ConfigError(f"{where}.resources.{key}={value!r} must be a number >= 0")
        out[key] = float(value)
    custom = resources.get("custom") or {}
    if not isinstance(custom, dict):
        raise ConfigError(f"{where}.resources.custom must map resource names to amounts, "
                          f"got {custom!r}")
    for name, amount in custom.items():
        if name in ("CPU", "GPU", "num_cpus", "num_gpus", "memory"):
            raise ConfigError(f"{where}.resources.custom.{name}: give CPUs/GPUs as "
                              "resources.num_cpus/num_gpus")
        if isinstance(amount, bool) or not isinstance(amount, (int, float)) or amount <= 0:
            raise ConfigError(f"{where}.resources.custom.{name}={amount!r} must be a number > 0")
    out["custom"] = {str(k): float(v) for k, v in custom.items()}
    strategy = str(resources.get("strategy", "DEFAULT")).upper()
    if strategy not in STRATEGIES:
        raise ConfigError(f"{where}.resources.strategy={resources.get('strategy')!r}; choose "
                          f"one of {list(STRATEGIES)}")
    out["strategy"] = strategy
    out["procs_per_trial"] = check_procs(where, resources.get("procs_per_trial"),
                                         out["num_gpus"])
    return out


def check_procs(where: str, procs: Any, num_gpus: float) -> int:
    """``resources.procs_per_trial`` resolved (see :func:`check_resources`)."""
    key = f"{where}.resources.procs_per_trial"
    if procs is None:
        if num_gpus <= 1:
            return 1
        if num_gpus != int(num_gpus):
            raise ConfigError(f"{where}.resources.num_gpus={num_gpus:g}: a trial with more than "
                              "one GPU must ask for a whole number of them (one training "
                              "process per GPU), or set resources.procs_per_trial")
        return int(num_gpus)
    if isinstance(procs, bool) or not isinstance(procs, int) or procs < 1:
        raise ConfigError(f"{key}={procs!r} must be an integer >= 1 (training processes per "
                          "trial)")
    if num_gpus > 0 and procs > num_gpus:
        raise ConfigError(f"{key}={procs} exceeds resources.num_gpus={num_gpus:g}: each "
                          "training process of a GPU trial needs a GPU of its own")
    return procs


def load_study(name: str | Path, overrides: list[str] | None = None) -> StudySpec:
    """Compose and validate ``experiments/conf/study/<name>.yaml`` or a study file path
    (study-level overrides without the ``study.`` prefix)."""
    path = study_path(name)
    name = path.stem
    data = _compose_study_file(path, list(overrides or []))
    where = f"study {name}"
    # defaults: the schema's, then the recipe's `study:` block; the file and overrides win
    recipe_name = data.get("recipe", STUDY_DEFAULTS["recipe"])
    defaults = STUDY_DEFAULTS | (study_defaults(recipe_name, STUDY_KEYS)
                                 if isinstance(recipe_name, str) else {})
    data = check_fields(where, data, STUDY_KEYS, defaults)
    if data["name"] != name:
        raise ConfigError(f"{where}: name={data['name']!r} differs from the file name {name!r}")
    recipe = load_recipe(data["recipe"])
    axes: dict[str, list] = {}
    for key, values in data["axes"].items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: axis {key!r} is empty (give at least one value)")
        check_renamed_key(f"{where}: axis", str(key))
        axes[str(key)] = list(values)
    variants: dict[str, list[str]] = {}
    for vname, ovs in data["variants"].items():
        if not isinstance(ovs, list) or not all(isinstance(o, str) and "=" in o for o in ovs):
            raise ConfigError(f"{where}: variant {vname!r} must be a list of key=value overrides")
        variants[str(vname)] = list(ovs)
    if not data["seeds"]:
        raise ConfigError(f"{where}: seeds is empty (give at least one seed)")
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in data["seeds"]):
        raise ConfigError(f"{where}: seeds={data['seeds']!r} must be non-negative integers")
    if len(set(data["seeds"])) != len(data["seeds"]):
        raise ConfigError(f"{where}: seeds={data['seeds']!r} has duplicates")
    for key in ("max_concurrent",):
        if data[key] < 1:
            raise ConfigError(f"{where}: {key}={data[key]} must be >= 1")
    if data["max_retries"] < 0:
        raise ConfigError(f"{where}: max_retries={data['max_retries']} must be >= 0")
    objective = dict(data["objective"])
    check_keys(f"{where}.objective", objective, ("metric", "direction"))
    if objective.get("direction") not in DIRECTIONS or not objective.get("metric"):
        raise ConfigError(f"{where}.objective must give a metric and a direction in "
                          f"{list(DIRECTIONS)}, got {objective!r}")
    _check_presets(where, axes, variants, data["base"] + list(recipe.get("overrides") or []))
    evaluation = None if data["eval"] is False else check_eval(
        where, data["eval"] if data["eval"] is not None else recipe.get("eval"))
    resources = check_resources(where, recipe.get("resources"), data["resources"])
    ref = data["reference_arm"]
    arm_names = [str(v) for values in axes.values() for v in values] + list(variants)
    if ref is not None and ref not in arm_names:
        raise ConfigError(f"{where}: reference_arm={ref!r} is not an arm of the study"
                          f"{did_you_mean(ref, arm_names)}; arms: {arm_names}")

    spec = StudySpec(
        name=name, description=data["description"], recipe=data["recipe"],
        recipe_overrides=tuple(recipe.get("overrides") or ()), base=tuple(data["base"]),
        axes=axes, variants=variants, seeds=tuple(data["seeds"]), objective=objective,
        max_concurrent=data["max_concurrent"], max_retries=data["max_retries"],
        eval=evaluation, resources=resources,
        experiment=data["experiment"] or f"study-{name}", register_best=data["register_best"],
        system_metrics=data["system_metrics"], raw=data, reference_arm=ref,
        warm_start=warm_start_settings(where, data["warm_start"], data["recipe"], recipe),
        eval_start=bool(data["eval_start"]) and evaluation is not None)
    if spec.size() == 0:
        raise ConfigError(f"{where}: the grid is empty (no trials)")
    return spec


def warm_start_settings(where: str, warm: Any, recipe_name: str, recipe: dict[str, Any]):
    """A study or sweep file's ``warm_start`` (``recipe``: its recipe's; null: none; or a
    mapping of settings) as :class:`experiments.warm_start.WarmStartSettings` or None."""
    from experiments.warm_start import WarmStartSettings

    if warm == "recipe":
        return WarmStartSettings.from_spec(recipe.get("warm_start"),
                                           f"recipe {recipe_name}: warm_start")
    if isinstance(warm, str):
        raise ConfigError(f"{where}: warm_start={warm!r}; give a mapping of warm-start "
                          "settings, null (none) or 'recipe' (the recipe's)")
    return WarmStartSettings.from_spec(warm, f"{where}: warm_start")


def _check_presets(where: str, axes: dict[str, list], variants: dict[str, list[str]],
                   base: list[str]) -> None:
    from experiments.presets import preset_names

    names = preset_names()

    def check(value: Any, origin: str) -> None:
        if str(value) not in names:
            hint = did_you_mean(str(value), names)
            raise ConfigError(f"{where}: unknown preset {value!r} in {origin}{hint}; presets: "
                              f"{names}")

    for value in axes.get("algo", []):
        check(value, "axes.algo")
    for vname, ovs in variants.items():
        for ov in ovs:
            if ov.startswith("algo="):
                check(ov.split("=", 1)[1], f"variants.{vname}")
    for ov in base:
        if ov.startswith("algo="):
            check(ov.split("=", 1)[1], "base")


# --------------------------------------------------------------------------------------------
# Trials
# --------------------------------------------------------------------------------------------


def _format_value(value: Any) -> str:
    if isinstance(value, (list, dict)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


def _slug(text: str) -> str:
    return re.sub(r"[^\w.=+-]+", "_", text)[:80]


def identity_hash(config: dict[str, Any], evaluation: dict[str, Any] | None,
                  procs: int = 1) -> str:
    """sha256 (first 12 hex digits) of the resolved config without the keys that do not
    change what is computed (:data:`NOT_IDENTITY`), plus the evaluation spec, plus the number
    of training processes when it is not 1 (data parallelism changes the rollouts' random
    streams unless ``rollout_batch_size`` divides each rank's prompts; a 1-process trial keeps
    the hash it always had)."""
    data = json.loads(json.dumps(config, default=str))
    for path in NOT_IDENTITY:
        node = data
        for part in path[:-1]:
            node = node.get(part, {})
        node.pop(path[-1], None)
    ident = {"config": data, "eval": evaluation} | ({"procs": procs} if procs != 1 else {})
    text = json.dumps(ident, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def resolve_trial(number: int, name: str, overrides: list[str], *, study_dir: Path,
                  evaluation: dict[str, Any] | None, resources: dict[str, Any],
                  tags: dict[str, str]) -> TrialSpec:
    """Compose + validate one trial (``archer train``'s composition with ``overrides``)."""
    from experiments.train_cli import build_train_setup, compose_config

    fixed = ["tracking=none", "progress=false"]
    try:
        setup = build_train_setup(compose_config(dedupe(list(overrides) + fixed), "config"))
    except ConfigError as err:
        raise ConfigError(f"trial {name}: {err}") from None
    config = setup.composed.config
    procs = int(resources.get("procs_per_trial", 1))
    check_trial_procs(name, setup.train, resources)
    digest = identity_hash(config, evaluation, procs)
    out_dir = (study_dir / "trials" / f"{name}-{digest[:8]}").resolve()
    config["out_dir"] = str(out_dir)
    train = setup.train.to_dict() | {"out_dir": str(out_dir)}
    # the user's own data file / reward file, as absolute paths: a trial process on Ray
    # need not share the driver's working directory
    data_file, reward = user_file_paths(train["data"]["file"], train["reward"])
    train["data"]["file"] = config["data"]["file"] = data_file
    train["reward"] = config["reward"] = reward
    if evaluation and "gym" in evaluation["benchmarks"] and setup.train.data.file:
        raise ConfigError(f"trial {name}: eval benchmark gym is the held-out split of a "
                          f"reasoning-gym task, but the trial trains on the data file "
                          f"{setup.train.data.file!r}")
    choices = setup.composed.choices
    tags = {"archer.preset": choices.get("algo", ""), "archer.seed": str(setup.train.seed),
            "archer.model": str(setup.train.model), "archer.data": choices.get("data", "")
            } | tags
    return TrialSpec(number=number, name=name, overrides=tuple(overrides), config=config,
                     train=train, hash=digest, out_dir=str(out_dir), eval=evaluation,
                     resources=dict(resources), tags=tags)


def user_file_paths(data_file: str | None, reward: str) -> tuple[str | None, str]:
    """``data.file`` and ``reward`` with the paths of the user's own files made
    absolute (a registered name or an importable ``module:function`` is kept as is)."""
    from archer.data.datasets import is_data_path
    from archer.rewards import is_file_target

    if data_file and is_data_path(data_file):
        data_file = str(Path(data_file).expanduser().resolve())
    target, sep, attr = reward.rpartition(":")
    if sep and is_file_target(target):
        reward = f"{Path(target).expanduser().resolve()}:{attr}"
    return data_file, reward


def check_trial_procs(name: str, train, resources: dict[str, Any]) -> None:
    """A trial's TrainConfig must suit its ``procs_per_trial`` processes (checked before any
    trial starts, not by the ranks once launched)."""
    procs = int(resources.get("procs_per_trial", 1))
    if procs == 1:
        return
    if train.prompts_per_step % procs:
        raise ConfigError(f"trial {name}: prompts_per_step={train.prompts_per_step} "
                          f"must be divisible by resources.procs_per_trial={procs} (each "
                          "training process rolls out an equal share of the prompts)")
    if train.distributed.backend == "nccl" and not resources.get("num_gpus"):
        raise ConfigError(f"trial {name}: distributed.backend=nccl needs GPUs, but "
                          f"resources.num_gpus=0 (use gloo, or auto, for CPU processes)")


def expand_trials(spec: StudySpec, trial_overrides: list[str] | None = None,
                  root: str | Path = DEFAULT_ROOT) -> list[TrialSpec]:
    """All trials of the study, composed and validated (any error refuses the study)."""
    study_dir = Path(root) / spec.name
    variants = list(spec.variants.items()) or [("", [])]
    axis_keys = list(spec.axes)
    combos = list(itertools.product(*(spec.axes[k] for k in axis_keys)))
    trials: list[TrialSpec] = []
    number = 0
    for vname, vovs in variants:
        for combo in combos:
            for seed in spec.seeds:
                axis_ovs = [f"{k}={_format_value(v)}" for k, v in zip(axis_keys, combo)]
                parts = ([vname] if vname else []) + axis_ovs + [f"seed={seed}"]
                name = _slug(f"t{number:03d}-" + "-".join(parts))
                overrides = (list(spec.recipe_overrides) + list(spec.base) + list(vovs)
                             + axis_ovs + list(trial_overrides or []) + [f"seed={seed}"])
                check_required(spec.recipe, overrides)
                tags = {"archer.study": spec.name, "archer.trial_number": str(number),
                        "archer.variant": vname or "-",
                        "archer.axes": " ".join(axis_ovs) or "-"}
                trials.append(resolve_trial(number, name, overrides, study_dir=study_dir,
                                            evaluation=spec.eval, resources=spec.resources,
                                            tags=tags))
                number += 1
    hashes = [t.hash for t in trials]
    dupes = sorted({t.name for t in trials if hashes.count(t.hash) > 1})
    if dupes:
        raise ConfigError(f"study {spec.name}: trials {dupes} resolve to the same configuration "
                          "(an axis value is overridden by a fixed override?)")
    return trials
