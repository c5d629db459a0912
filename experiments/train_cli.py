"""``archer train`` / ``archer sft``: Hydra composition of ``experiments/conf`` -> validated
configs -> the trainer (or the supervised warm-up).

The composed tree mirrors the config dataclass, so a key's path in YAML is its path in code:
the root of ``archer train`` IS :class:`archer.train_config.TrainConfig` (``total_steps=30``,
``lr=3e-4``, ``algo.high.clip_low=0.4``, ``data.task=...``, ``distributed.backend=gloo``,
``model=tiny``, ``reward=...``), plus two keys that are not TrainConfig's: ``tracking.*`` and
``progress`` (the tqdm bar). The root of ``archer sft`` IS :class:`archer.sft.SFTConfig`.
Composition uses Hydra's compose API (``initialize_config_dir`` + ``compose``) so that errors
are ours to phrase. Groups:

- ``algo``: the method presets (``experiments/conf/preset/*.yaml``, validated by
  ``experiments.presets``), each registered as a complete AlgoConfig mapping, so
  ``algo.low.kl_weight=0.005`` or ``algo.entropy_scope=batch`` override any knob;
- ``data``: ``gym_arith`` | ``math_train`` | ``gsm8k`` | ... (``# @package _global_``: each
  sets ``data.*`` plus the root's ``reward`` and ``template``);
- ``tracking``: ``mlflow`` (default) | ``jsonl`` | ``none`` (``archer train`` only).

``model`` is a plain string: ``tiny`` | ``smollm2-135m`` | a local HF directory.
The full key set of the root comes from the dataclass (registered as ``_train_base`` /
``_sft_base``), so the YAML files only set what differs and cannot drift. Struct mode makes
``total_stpes=3`` a composition error, reported naming the key with the closest valid one.
``+key=value`` (Hydra's escape for new keys) passes composition but not validation: every
section is checked against its dataclass and unknown keys fail by name. A key of the old
layout (``trainer.steps``, ``data.reward``, ``model.path``, ``sft.lr``) is refused with its
new name (:mod:`experiments.renamed_keys`, docs/config-migration.md).

Recipes (``experiments/conf/recipe/*.yaml``, loaded by :mod:`experiments.recipes`;
docs/guides/recipes.md): ``recipe=archer_math_1p5b`` is not a key of the tree but a named list
of overrides. The order of application, a later override of a key winning, is

1. the recipe's ``overrides:`` (``archer train recipe=X``, ``archer ablate S recipe=X``, ...),
2. a study's or sweep's overrides (``base``, then the variant / axis / param values; only
   ``archer ablate`` and ``archer sweep`` have them),
3. the command line's ``key=value`` overrides (then, in a study, the trial's seed).

A recipe's ``model=???`` is required: without a later ``model=...`` the run is refused with
``recipe X needs model=<hf dir or hub id>``; an unknown recipe is refused listing the recipes.
``archer train --print-config recipe=X ...`` prints the result of all three.
"""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from archer.config import AlgoConfig, TokenClassConfig, build_config
from archer.train_config import DataConfig, TrainConfig
from archer.validation import (
    ConfigError,
    check_choice,
    did_you_mean,
    unknown_keys,
)
from experiments.recipes import expand_recipe, recipe_names
from experiments.renamed_keys import check_renamed

CONF_DIR = Path(__file__).resolve().parent / "conf"
COMMANDS = {"config": "archer train", "sft": "archer sft"}
GROUPS = {"config": ("algo", "data", "tracking"), "sft": ("data",)}  # Hydra groups
NOT_CONFIG = {"config": ("progress", "tracking"), "sft": ()}  # root keys outside the dataclass
TRACKING_KEYS = {
    "mlflow": ("backend", "uri", "experiment", "run_name", "request_timeout", "finish_wait"),
    "jsonl": ("backend",),
    "none": ("backend",),
}


def config_class(config_name: str) -> type:
    """The dataclass the root of ``config_name`` mirrors."""
    if config_name == "sft":
        from archer.sft import SFTConfig

        return SFTConfig
    return TrainConfig


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    value = f.default_factory()
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


def root_defaults(config_name: str = "config") -> dict[str, Any]:
    """The root's keys and defaults, from the dataclass (``algo`` comes from its group), plus
    ``progress`` for ``archer train``; ``out_dir: null`` is computed from the choices."""
    out = {f.name: _default(f) for f in dataclasses.fields(config_class(config_name))
           if f.name != "algo"}
    if config_name == "config":
        out["out_dir"] = None
        out["progress"] = None
    return out


def root_keys(config_name: str) -> list[str]:
    """Every top-level key of ``config_name``, in the dataclass's order."""
    return ([f.name for f in dataclasses.fields(config_class(config_name))]
            + list(NOT_CONFIG[config_name]))


def register_configs(config_name: str = "config") -> None:
    """Put the presets (group ``algo``) and the dataclass base into Hydra's ConfigStore."""
    from hydra.core.config_store import ConfigStore

    from experiments.presets import load_preset, preset_names

    cs = ConfigStore.instance()
    if config_name == "config":
        for name in preset_names():
            cs.store(group="algo", name=name, node=load_preset(name).algo.to_dict())
        cs.store(name="_train_base", node=root_defaults("config"))
    else:
        cs.store(name="_sft_base", node=root_defaults("sft"))


@dataclass(frozen=True)
class Composed:
    config: dict[str, Any]  # the resolved configuration (plain containers)
    choices: dict[str, str]  # group -> chosen option, e.g. {"algo": "archer", ...}
    overrides: tuple[str, ...]  # as given on the command line


# --------------------------------------------------------------------------------------
# Composition
# --------------------------------------------------------------------------------------


def group_options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def compose_config(overrides: list[str], config_name: str = "config") -> Composed:
    """Compose ``experiments/conf/<config_name>.yaml`` with ``overrides``; resolve it. For
    ``archer train``, a ``recipe=X`` puts recipe X's overrides before the others."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf, open_dict
    from omegaconf.errors import OmegaConfBaseException

    given = tuple(overrides)
    recipe = None
    if config_name == "config":
        recipe, overrides = expand_recipe(list(overrides))
    check_renamed(list(overrides), config_name)
    register_configs(config_name)
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="archer"):
        try:
            cfg = compose(config_name, overrides=list(overrides), return_hydra_config=True)
        except (HydraException, OmegaConfBaseException) as err:
            raise ConfigError(_explain(err, config_name, list(overrides), compose)) from None
    choices = {k: str(v) for k, v in cfg.hydra.runtime.choices.items()
               if not k.startswith("hydra") and v is not None}
    if recipe is not None:
        choices["recipe"] = recipe
    with open_dict(cfg):
        del cfg["hydra"]
    try:
        data = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        raise ConfigError(f"config key {key!r} has no value: {_first_line(err)}"
                          + (" (give a model directory: model=<dir>)" if key == "model"
                             else "")) from None
    order = root_keys(config_name)
    data = {k: data[k] for k in order if k in data} | {k: v for k, v in data.items()
                                                        if k not in order}
    return Composed(config=data, choices=choices, overrides=given)


def _first_line(err: BaseException) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__


def _explain(err: BaseException, config_name: str, overrides: list[str], compose) -> str:
    """Hydra's composition error, rephrased: an unknown key names the closest valid one."""
    text = str(err)
    m = re.search(r"Could not override '([^']+)'", text) or re.search(
        r"Could not append to config\. An item is already at '([^']+)'", text)
    if m and text.startswith("Could not override"):
        key = m.group(1)
        # the other overrides, less the failing one (`modle=tiny` is itself an unknown key)
        others = [o for o in overrides if re.fullmatch(r"[\w/-]+=.*", o)
                  and o.split("=", 1)[0] != key]
        tree = None
        for attempt in (others, []):
            try:
                tree = compose(config_name, overrides=attempt)
                break
            except Exception:  # noqa: BLE001  (the suggestion is best effort)
                continue
        return unknown_key_message(key, tree, config_name)
    if "Could not find" in text:  # a missing group option: keep Hydra's list of options
        kept = [line for line in text.splitlines()
                if line.strip() and not line.startswith(("Config search path", "\tprovider"))]
        return " ".join(line.strip() for line in kept)
    return (f"bad override: {text.strip()} (a value with characters such as , ~ = [ or a "
            "space needs Hydra's quotes, inside the shell's: \"model='~/my model'\")")


def unknown_key_message(key: str, tree, config_name: str = "config") -> str:
    """``unknown config key 'algo.lowx' (did you mean 'algo.low'?)``; at the top level
    (``modle=tiny``) the groups and keys of ``config_name``."""
    parts = key.split(".")
    node, prefix = tree, []
    for part in parts:
        keys = list(node.keys()) if node is not None and hasattr(node, "keys") else None
        if not prefix and not keys:  # no composed tree: the top level is still known
            keys = root_keys(config_name)
        if keys is None or part not in keys:
            if not prefix:
                return top_level_message(key, part, config_name, [str(k) for k in keys])
            where = ".".join(prefix)
            if not keys:
                return f"unknown config key {key!r}: {where} has no keys to override"
            hint = did_you_mean(part, [str(k) for k in keys], fmt=f"{where}.{{}}")
            return (f"unknown config key {key!r}{hint}; keys of {where}: "
                    f"{sorted(str(k) for k in keys)}")
        node, prefix = node[part], prefix + [part]
    return f"unknown config key {key!r}"


def top_level_message(key: str, part: str, config_name: str, keys: list[str]) -> str:
    """An unknown top-level key: the closest one, the groups (with their options), the model
    and the plain keys of ``config_name``'s root."""
    command = COMMANDS.get(config_name, config_name)
    rest = key.split(".")[1:]
    named = keys + (["recipe"] if config_name == "config" else [])  # recipe=X: a shorthand
    hint = did_you_mean(part, named, fmt=".".join(["{}", *rest]))
    if not hint and part in GROUPS["config"]:
        hint = f" ({part!r} is a group of `archer train`; `{command}` has none)"
    groups = list(GROUPS[config_name])
    plain = [k for k in keys if k not in groups and k != "model"]
    return (f"unknown config key {key!r}{hint}; the top level of `{command}` has: "
            + ", ".join(_describe_group(g) for g in groups)
            + f", model=<{'|'.join(_model_names())}|<directory>>"
            + (f", recipe=<{'|'.join(recipe_names())}>" if config_name == "config" else "")
            + f", and the keys {plain}")


def _model_names() -> list[str]:
    from archer.models import MODELS

    return MODELS.names()


def _describe_group(name: str) -> str:
    """``algo=<archer|dapo|...> or algo.<key>=...``."""
    if name == "algo":
        from experiments.presets import preset_names

        options = list(preset_names())
    else:
        options = group_options(name)
    return f"{name}=<{'|'.join(options)}> or {name}.<key>=..."


# --------------------------------------------------------------------------------------
# Validation: composed mapping -> dataclasses
# --------------------------------------------------------------------------------------


def check_keys(section: str, given: dict[str, Any], allowed) -> None:
    """Unknown keys (e.g. added with ``+section.key=``) fail naming them; missing keys too
    (``~section.key`` deletes one)."""
    allowed = list(allowed)
    unknown = [k for k in given if k not in allowed]
    if unknown:
        raise unknown_keys(section, unknown, allowed, fmt=f"{section}.{{}}")
    missing = [k for k in allowed if k not in given]
    if missing:
        raise ConfigError(f"config section {section!r} lacks key(s) {missing}")


def check_root(config: dict[str, Any], config_name: str) -> None:
    """The root holds exactly the dataclass's fields (and ``tracking``/``progress``)."""
    allowed = root_keys(config_name)
    unknown = [k for k in config if k not in allowed]
    command = COMMANDS[config_name]
    if unknown:
        raise unknown_keys(f"the top level of `{command}`", unknown, allowed)
    missing = [k for k in allowed if k not in config]
    if missing:
        raise ConfigError(f"the top level of `{command}` lacks key(s) {missing}")


def _section(config: dict[str, Any], name: str) -> dict[str, Any]:
    value = config.get(name)
    if not isinstance(value, dict):
        raise ConfigError(f"config section {name!r} must be a mapping, got {value!r}")
    return dict(value)


def build_model(value: Any) -> str:
    """``model``: a local HF directory or a prepared model name."""
    from archer.models import MODELS, check_model_dir

    path = str(value)
    if Path(path).expanduser().is_dir():
        try:
            check_model_dir(path)
        except FileNotFoundError as err:
            raise ConfigError(f"model={path!r}: {err}") from None
    elif path not in MODELS:
        hint = (" (model=local model.path=<dir> is now model=<dir>)" if path == "local"
                else did_you_mean(path, MODELS.names()))
        raise ConfigError(f"model={path!r} is neither a directory nor a model name{hint}; "
                          f"choose one of {MODELS.names()} or give a model directory")
    return path


def build_data(config: dict[str, Any]) -> DataConfig:
    """DataConfig from the ``data`` section: its keys, its file or gym task, checked."""
    data = _section(config, "data")
    check_keys("data", data, [f.name for f in dataclasses.fields(DataConfig)])
    cfg = build_config(DataConfig, data, "data")
    if cfg.file:
        from archer.data.datasets import FILES, is_data_path

        if is_data_path(cfg.file):
            if not Path(cfg.file).expanduser().is_file():
                raise ConfigError(f"data.file={cfg.file!r}: no such file (a path is relative "
                                  "to the working directory)")
        elif cfg.file not in FILES:
            raise ConfigError(f"data.file={cfg.file!r} is not a data file"
                              f"{did_you_mean(cfg.file, FILES.names())}; choose one of "
                              f"{FILES.names()} or give the path of a .json/.jsonl file")
    elif cfg.task:
        _check_gym_task(cfg.task, cfg.task_config)
    return cfg


def check_template(name: Any) -> None:
    from archer.data.templates import TEMPLATES

    check_choice("template", name, TEMPLATES.names())


def _check_gym_task(task: str, task_config: dict[str, Any]) -> None:
    from reasoning_gym.factory import DATASETS

    if task not in DATASETS:
        raise ConfigError(f"data.task={task!r} is not a reasoning-gym task"
                          + did_you_mean(task, list(DATASETS), n=3))
    config_cls = DATASETS[task][1]
    try:
        config_cls(**task_config).validate()
    except (TypeError, AssertionError, ValueError) as err:
        raise ConfigError(f"data.task_config for {task!r} is invalid: {err}") from None


def build_algo(config: dict[str, Any]) -> AlgoConfig:
    algo = _section(config, "algo")
    check_keys("algo", algo, [f.name for f in dataclasses.fields(AlgoConfig)])
    for name in ("high", "low"):
        if isinstance(algo[name], dict):
            check_keys(f"algo.{name}", algo[name],
                       [f.name for f in dataclasses.fields(TokenClassConfig)])
    try:
        return AlgoConfig.from_dict(algo)
    except ConfigError as err:
        raise ConfigError(f"algo: {err}") from None


@dataclass(frozen=True)
class TrainSetup:
    train: TrainConfig  # the validated run configuration
    tracking: dict[str, Any]  # the tracking section (backend + options)
    progress: bool | None  # tqdm bar: None = only on a terminal
    composed: Composed  # what was composed (printed / logged as the config artifact)


def default_out_dir(choices: dict[str, str], config: dict[str, Any], root: str) -> str:
    """``<root>/<algo>-<data>-<model>``, the model by its name or its directory's name."""
    model = Path(str(config.get("model", "model"))).name or "model"
    return f"{root}/{choices.get('algo', 'algo')}-{choices.get('data', 'data')}-{model}"


def build_train_setup(composed: Composed) -> TrainSetup:
    config = composed.config
    check_root(config, "config")
    fields = {k: v for k, v in config.items() if k not in NOT_CONFIG["config"]}
    progress = config["progress"]
    if progress is not None and not isinstance(progress, bool):
        raise ConfigError(f"progress={progress!r} must be true, false or null")
    fields["algo"] = build_algo(config)
    fields["model"] = build_model(config["model"])
    fields["data"] = build_data(config)
    check_template(config["template"])
    if fields["out_dir"] is None:
        fields["out_dir"] = config["out_dir"] = default_out_dir(composed.choices, config,
                                                                "runs/train")
    if isinstance(fields["distributed"], dict):
        check_keys("distributed", fields["distributed"],
                   [f.name for f in dataclasses.fields(TrainConfig().distributed)])
    train = TrainConfig.from_dict(fields)
    _check_reward(train.reward)
    tracking = _section(config, "tracking")
    backend = tracking.get("backend")
    if backend not in TRACKING_KEYS:
        raise ConfigError(f"tracking.backend={backend!r} is invalid"
                          f"{did_you_mean(str(backend), TRACKING_KEYS)}; choose one of "
                          f"{list(TRACKING_KEYS)}")
    check_keys("tracking", tracking, TRACKING_KEYS[backend])
    from experiments.tracking import check_tracking_config

    try:
        check_tracking_config(tracking)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    return TrainSetup(train=train, tracking=tracking, progress=progress, composed=composed)


def _check_reward(name: str) -> None:
    from archer.rewards import BUILTIN_REWARD_MODULES, REWARDS, RewardSpecError
    from archer.trainer import resolve_reward

    try:
        resolve_reward(name)
    except RewardSpecError as err:
        raise ConfigError(f"reward: {err}") from None
    except (KeyError, ValueError):
        known = sorted(set(REWARDS.names()) | set(BUILTIN_REWARD_MODULES))
        raise ConfigError(f"reward={name!r} is unknown{did_you_mean(name, known)}; choose one "
                          f"of {known}, or name your own function as 'package.module:function' "
                          "or 'path/to/file.py:function'") from None


# --------------------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------------------


def config_yaml(config: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(config, sort_keys=False, default_flow_style=False)


def logger_factory(setup: TrainSetup, config_path: Path):
    """``f(run_id | None) -> MetricLogger`` for ``fit``: writes the config YAML to
    ``config_path``, opens the tracking backend on the checkpoint's run id, tags the run with
    the composition and logs the YAML (fit calls it on rank 0 only)."""
    from experiments.tracking import make_logger

    options = {k: v for k, v in setup.tracking.items() if k != "backend"}
    backend = setup.tracking["backend"]
    choices = setup.composed.choices
    tags = {f"archer.{g}": choices[g] for g in ("algo", "data", "recipe") if g in choices}
    tags["archer.model"] = setup.train.model
    tags["archer.overrides"] = " ".join(setup.composed.overrides)
    if backend == "mlflow":
        options["tracking_uri"] = options.pop("uri")
        if options.get("run_name") is None:
            options["run_name"] = Path(setup.train.out_dir).name

    def factory(run_id: str | None):
        # written here, once the model, the data and any checkpoint have been accepted: a run
        # that fails to start leaves the directory's config.yaml as it was
        config_path.write_text(config_yaml(setup.composed.config))
        kwargs = dict(options)
        if backend == "mlflow":
            kwargs["tags"] = tags if run_id is None else None
        logger = make_logger(backend, setup.train.out_dir, run_id, **kwargs)
        if run_id is not None:
            logger.set_tags({"archer.resumed_overrides": tags["archer.overrides"]})
        logger.log_artifact(config_path)
        return logger

    return factory


def run_train(overrides: list[str], print_config: bool = False) -> int:
    """``archer train [--print-config] key=value ...``; 0 on success."""
    from archer.checkpoint import latest_checkpoint
    from archer.trainer import StoppedAtOnce, TrainingInterrupted, fit

    setup = build_train_setup(compose_config(overrides, "config"))
    if print_config:
        print(config_yaml(setup.composed.config), end="")
        return 0
    out = Path(setup.train.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    main_rank = os.environ.get("RANK", "0") == "0"  # torchrun: rank 0 reports
    if main_rank:  # settings under which a mechanism cannot act (experiments.mechanism_lint)
        from experiments.mechanism_lint import lint_trials, print_warnings

        print_warnings(lint_trials([setup.train.to_dict()]), "archer train")
    try:
        result = fit(setup.train, logger=logger_factory(setup, out / "config.yaml"),
                     progress=setup.progress)
    except TrainingInterrupted as stopped:
        if main_rank:
            print(f"archer train: {stopped}; run the same command again to resume from it",
                  file=sys.stderr)
        return 128 + int(stopped.signum)  # the shell's convention for a signalled process
    except StoppedAtOnce as stopped:
        if main_rank:
            kept = latest_checkpoint(out)
            print(f"archer train: {stopped}; "
                  + (f"the run resumes from {kept}" if kept else "no checkpoint was written")
                  + " when the same command runs again", file=sys.stderr)
        return 128 + int(stopped.signum)
    if not main_rank:
        return 0
    last = result.metrics[-1] if result.metrics else {}
    summary = {k: round(float(last[k]), 4) for k in ("reward/mean", "actor/entropy",
                                                      "val/reward_mean") if k in last}
    print(f"archer train: {result.state.step} steps in {out} (run {result.state.run_id}); "
          f"last step {summary}" + (f"; policy: {result.export_dir}" if result.export_dir
                                    else ""))
    return 0


def run_sft(overrides: list[str], print_config: bool = False) -> int:
    """``archer sft [--print-config] key=value ...``; 0 on success."""
    from archer.sft import SFTConfig, supervised_finetune

    composed = compose_config(overrides, "sft")
    config = composed.config
    check_root(config, "sft")
    fields = dict(config)
    fields["model"] = build_model(config["model"])
    fields["data"] = build_data(config)
    check_template(config["template"])
    cfg = build_config(SFTConfig, fields, "sft")
    _check_reward(cfg.reward)
    if print_config:
        print(config_yaml(config), end="")
        return 0
    from archer.trainer import StoppedAtOnce

    try:
        result = supervised_finetune(cfg, log=lambda line: print(line, file=sys.stderr))
    except StoppedAtOnce as stopped:
        print(f"archer sft: {stopped}; nothing was saved", file=sys.stderr)
        return 128 + int(stopped.signum)
    if result.stopped in ("SIGINT", "SIGTERM"):
        print(f"archer sft: {result.stopped} received: stopped after step {result.steps}; the "
              f"model so far is in {result.model_dir}; run the same command again to resume "
              "(resume=false starts over)", file=sys.stderr)
        return 128 + int(signal.Signals[result.stopped])
    print(f"archer sft: {result.steps} steps, loss {result.first_loss:.3f} -> "
          f"{result.last_loss:.3f}, held-out accuracy {result.accuracy:.3f}; model: "
          f"{result.model_dir} (archer train model={result.model_dir})")
    return 0

