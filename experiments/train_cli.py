"""``archer train`` / ``archer sft``: Hydra composition of ``experiments/conf`` -> validated
configs -> the trainer (or the supervised warm-up).

Composition uses Hydra's compose API (``initialize_config_dir`` + ``compose``) so that errors
are ours to phrase. Groups:

- ``algo``: the method presets (``experiments/conf/preset/*.yaml``, validated by
  ``experiments.presets``), each registered as a complete AlgoConfig mapping, so
  ``algo.low.kl_weight=0.005`` or ``algo.entropy_scope=batch`` override any knob;
- ``model``: ``tiny`` | ``smollm2-135m`` | ``local`` (``model=<dir>`` is read as
  ``model=local model.path=<dir>``);
- ``data``: ``gym_arith`` | ``math_train`` | ``gsm8k`` (DataConfig fields plus the reward,
  the prompt template and ``answer_format``, how a reference answer is written for SFT);
- ``trainer``: every TrainConfig field not set by another group (``steps`` is
  ``total_steps``), plus ``progress`` (the tqdm bar);
- ``tracking``: ``mlflow`` (default) | ``jsonl`` | ``none``.

The full key sets of ``trainer`` and ``data`` come from the dataclasses (registered as
``_trainer_base``/``_data_base``), so the YAML files only set what differs and cannot drift.
Struct mode makes ``trainer.stpes=3`` a composition error; it is reported naming the key with
the closest valid one. ``+key=value`` (Hydra's escape for new keys) passes composition but not
validation: every section is checked against its dataclass and unknown keys fail by name.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from archer.config import AlgoConfig, ConfigError, build_config
from archer.train_config import DataConfig, TrainConfig

CONF_DIR = Path(__file__).resolve().parent / "conf"
SECTIONS = {"config": ("algo", "model", "data", "trainer", "tracking"),
            "sft": ("model", "data", "sft")}
NOT_TRAINER = ("model", "algo", "reward", "data", "template", "total_steps")
DATA_EXTRA = {"reward": "reasoning_gym", "template": "plain_answer",
              "answer_format": " {answer}"}
MODEL_KEYS = ("path",)
SFT_FROM_GROUPS = ("model", "data", "reward", "template", "answer_format")  # not sft.* keys
TRACKING_KEYS = {
    "mlflow": ("backend", "uri", "experiment", "run_name", "request_timeout", "finish_wait"),
    "jsonl": ("backend",),
    "none": ("backend",),
}


def trainer_defaults() -> dict[str, Any]:
    """The ``trainer`` section's keys and defaults, from TrainConfig."""
    out: dict[str, Any] = {"steps": TrainConfig.total_steps}
    for f in dataclasses.fields(TrainConfig):
        if f.name not in NOT_TRAINER:
            out[f.name] = (dataclasses.asdict(f.default_factory())
                           if f.default is dataclasses.MISSING else f.default)
    out["progress"] = None
    return out


def data_defaults() -> dict[str, Any]:
    """The ``data`` section's keys and defaults, from DataConfig plus reward/template."""
    out = {f.name: (f.default_factory() if f.default is dataclasses.MISSING else f.default)
           for f in dataclasses.fields(DataConfig)}
    return out | DATA_EXTRA


def register_configs() -> None:
    """Put the presets (group ``algo``) and the dataclass bases into Hydra's ConfigStore."""
    from hydra.core.config_store import ConfigStore

    from experiments.presets import load_preset, preset_names

    cs = ConfigStore.instance()
    for name in preset_names():
        cs.store(group="algo", name=name, node=load_preset(name).algo.to_dict())
    cs.store(name="_trainer_base", node=trainer_defaults(), package="trainer")
    cs.store(name="_data_base", node=data_defaults(), package="data")


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


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def rewrite_model_path(overrides: list[str]) -> list[str]:
    """``model=<dir>`` (not a model option) -> ``model=local model.path='<dir>'``."""
    out = []
    for ov in overrides:
        m = re.fullmatch(r"model=(.+)", ov)
        if m and m.group(1) not in group_options("model"):
            out += ["model=local", f"model.path={_quote(m.group(1))}"]
        else:
            out.append(ov)
    return out


def compose_config(overrides: list[str], config_name: str = "config") -> Composed:
    """Compose ``experiments/conf/<config_name>.yaml`` with ``overrides``; resolve it."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf, open_dict
    from omegaconf.errors import OmegaConfBaseException

    given = tuple(overrides)
    overrides = rewrite_model_path(list(overrides))
    register_configs()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="archer"):
        try:
            cfg = compose(config_name, overrides=overrides, return_hydra_config=True)
        except (HydraException, OmegaConfBaseException) as err:
            raise ConfigError(_explain(err, config_name, overrides, compose)) from None
    choices = {k: str(v) for k, v in cfg.hydra.runtime.choices.items()
               if not k.startswith("hydra") and v is not None}
    with open_dict(cfg):
        del cfg["hydra"]
    try:
        data = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None)
        raise ConfigError(f"config key {key!r} has no value: {_first_line(err)}"
                          + (" (give a model directory: model=<dir>)" if key == "model.path"
                             else "")) from None
    order = SECTIONS.get(config_name, ())
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
        # the group choices, less the failing one (`modle=tiny` is itself an unknown key)
        choices_only = [o for o in overrides if re.fullmatch(r"[\w/-]+=.*", o)
                        and o.split("=", 1)[0] != key]
        tree = None
        for attempt in (choices_only, []):
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
    return f"bad override: {text.strip()}"


def unknown_key_message(key: str, tree, config_name: str = "config") -> str:
    """``unknown config key 'trainer.stpes' (did you mean 'trainer.steps'?)``; at the top
    level (``modle=tiny``) the groups of ``config_name`` with their options."""
    parts = key.split(".")
    node, prefix = tree, []
    for part in parts:
        keys = list(node.keys()) if node is not None and hasattr(node, "keys") else None
        if not prefix and not keys:  # no composed tree: the top level is still known
            keys = list(SECTIONS.get(config_name, ()))
        if keys is None or part not in keys:
            if not prefix:
                return top_level_message(key, part, config_name, [str(k) for k in keys])
            where = ".".join(prefix)
            if not keys:
                return f"unknown config key {key!r}: {where} has no keys to override"
            close = difflib.get_close_matches(part, [str(k) for k in keys], n=1)
            hint = f" (did you mean {'.'.join(prefix + close)!r}?)" if close else ""
            return (f"unknown config key {key!r}{hint}; keys of {where}: "
                    f"{sorted(str(k) for k in keys)}")
        node, prefix = node[part], prefix + [part]
    return f"unknown config key {key!r}"


COMMANDS = {"config": "archer train", "sft": "archer sft"}


def top_level_message(key: str, part: str, config_name: str, keys: list[str]) -> str:
    """An unknown top-level key: the closest one, and every top-level group (with its
    options) or section of ``config_name``."""
    order = list(SECTIONS.get(config_name, ()))
    keys = [k for k in order if k in keys] + sorted(k for k in keys if k not in order)
    close = difflib.get_close_matches(part, keys, n=1)
    command = COMMANDS.get(config_name, config_name)
    if close:
        hint = f" (did you mean {'.'.join([close[0], *key.split('.')[1:]])!r}?)"
    elif part in SECTIONS["config"]:
        hint = f" ({part!r} is a group of `archer train`; `{command}` has none)"
    else:
        hint = ""
    return (f"unknown config key {key!r}{hint}; the top level of `{command}` has: "
            + ", ".join(_describe_top(k) for k in keys))


def _describe_top(name: str) -> str:
    """``algo=<archer|dapo|...>`` for a group with options, ``sft.<key>=...`` for a section."""
    if name == "algo":
        from experiments.presets import preset_names

        options = list(preset_names())
    else:
        options = group_options(name)
        if name == "model":
            options.append("<directory>")
    if name == "trainer":  # one option (default): its keys are what is overridden
        options = []
    return f"{name}=<{'|'.join(options)}> or {name}.<key>=..." if options \
        else f"{name}.<key>=..."


# --------------------------------------------------------------------------------------
# Validation: composed mapping -> dataclasses
# --------------------------------------------------------------------------------------


def check_keys(section: str, given: dict[str, Any], allowed) -> None:
    """Unknown keys (e.g. added with ``+section.key=``) fail naming them; missing keys too."""
    allowed = list(allowed)
    unknown = [k for k in given if k not in allowed]
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hints.append(f"'{section}.{key}'" + (f" (did you mean '{section}.{close[0]}'?)"
                                                 if close else ""))
        raise ConfigError(f"unknown config key(s) {', '.join(hints)}; keys of {section}: "
                          f"{sorted(allowed)}")
    missing = [k for k in allowed if k not in given]
    if missing:
        raise ConfigError(f"config section {section!r} lacks key(s) {missing}")


def _section(config: dict[str, Any], name: str) -> dict[str, Any]:
    value = config.get(name)
    if not isinstance(value, dict):
        raise ConfigError(f"config section {name!r} must be a mapping, got {value!r}")
    return dict(value)


def check_top_level(config: dict[str, Any], config_name: str) -> None:
    allowed = SECTIONS[config_name]
    unknown = [k for k in config if k not in allowed]
    if unknown:
        hints = []
        for key in unknown:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hints.append(f"{str(key)!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ConfigError(f"unknown top-level config key(s) [{', '.join(hints)}]; allowed: "
                          f"{list(allowed)}")


def build_model(config: dict[str, Any]) -> str:
    from archer.models import MODELS, check_model_dir

    model = _section(config, "model")
    check_keys("model", model, MODEL_KEYS)
    path = str(model["path"])
    if Path(path).expanduser().is_dir():
        try:
            check_model_dir(path)
        except FileNotFoundError as err:
            raise ConfigError(f"model.path={path!r}: {err}") from None
    elif path not in MODELS:
        raise ConfigError(f"model.path={path!r} is neither a directory nor a model name "
                          f"{MODELS.names()}")
    return path


def build_data(config: dict[str, Any]) -> tuple[DataConfig, dict[str, Any]]:
    """(DataConfig, {"reward", "template", "answer_format"}) from the ``data`` section."""
    data = _section(config, "data")
    check_keys("data", data, data_defaults())
    extra = {k: data.pop(k) for k in DATA_EXTRA}
    try:
        cfg = build_config(DataConfig, data, "data")
    except ConfigError as err:
        raise ConfigError(str(err).replace("data.data.", "data.")) from None
    if cfg.file:
        from archer.data.datasets import FILES, is_data_path

        if is_data_path(cfg.file):
            if not Path(cfg.file).expanduser().is_file():
                raise ConfigError(f"data.file={cfg.file!r}: no such file (a path is relative "
                                  "to the working directory)")
        elif cfg.file not in FILES:
            raise ConfigError(f"data.file={cfg.file!r} is not a data file; choose one of "
                              f"{FILES.names()} or give the path of a .json/.jsonl file")
    elif cfg.task:
        _check_gym_task(cfg.task, cfg.task_config)
    if not isinstance(extra["answer_format"], str) or "{answer}" not in extra["answer_format"]:
        raise ConfigError(f"data.answer_format={extra['answer_format']!r} must be a string "
                          "containing {answer}")
    from archer.data.templates import TEMPLATES

    if extra["template"] not in TEMPLATES:
        raise ConfigError(f"data.template={extra['template']!r} is unknown; choose one of "
                          f"{TEMPLATES.names()}")
    return cfg, extra


def _check_gym_task(task: str, task_config: dict[str, Any]) -> None:
    from reasoning_gym.factory import DATASETS

    if task not in DATASETS:
        close = difflib.get_close_matches(task, list(DATASETS), n=3)
        raise ConfigError(f"data.task={task!r} is not a reasoning-gym task"
                          + (f" (did you mean {close}?)" if close else ""))
    config_cls = DATASETS[task][1]
    try:
        config_cls(**task_config).validate()
    except (TypeError, AssertionError, ValueError) as err:
        raise ConfigError(f"data.task_config for {task!r} is invalid: {err}") from None


def build_algo(config: dict[str, Any]) -> AlgoConfig:
    from archer.config import TokenClassConfig

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
    model = choices.get("model", "model")
    if model == "local":
        model = Path(str(config["model"]["path"])).name or "local"
    return f"{root}/{choices.get('algo', 'algo')}-{choices.get('data', 'data')}-{model}"


def build_train_setup(composed: Composed) -> TrainSetup:
    config = composed.config
    check_top_level(config, "config")
    algo = build_algo(config)
    model = build_model(config)
    data, extra = build_data(config)
    trainer = _section(config, "trainer")
    check_keys("trainer", trainer, trainer_defaults())
    steps, progress = trainer.pop("steps"), trainer.pop("progress")
    if progress is not None and not isinstance(progress, bool):
        raise ConfigError(f"trainer.progress={progress!r} must be true, false or null")
    if trainer["out_dir"] is None:
        trainer["out_dir"] = default_out_dir(composed.choices, config, "runs/train")
        config["trainer"]["out_dir"] = trainer["out_dir"]
    try:
        train = TrainConfig.from_dict(trainer | {
            "total_steps": steps, "model": model, "algo": algo, "data": data,
            "reward": extra["reward"], "template": extra["template"]})
    except ConfigError as err:
        raise ConfigError("trainer: " + str(err).replace("total_steps", "steps")) from None
    _check_reward(train.reward)
    tracking = _section(config, "tracking")
    backend = tracking.get("backend")
    if backend not in TRACKING_KEYS:
        raise ConfigError(f"tracking.backend={backend!r}; choose one of {list(TRACKING_KEYS)}")
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
        raise ConfigError(f"data.reward: {err}") from None
    except (KeyError, ValueError):
        known = sorted(set(REWARDS.names()) | set(BUILTIN_REWARD_MODULES))
        close = difflib.get_close_matches(name, known, n=1)
        raise ConfigError(f"data.reward={name!r} is unknown"
                          + (f" (did you mean {close[0]!r}?)" if close else "")
                          + f"; choose one of {known}, or name your own function as "
                          "'package.module:function' or 'path/to/file.py:function'") from None


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
    tags = {f"archer.{g}": choices[g] for g in ("algo", "model", "data") if g in choices}
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
    check_top_level(config, "sft")
    model = build_model(config)
    data, extra = build_data(config)
    knobs = _section(config, "sft")
    check_keys("sft", knobs, [f.name for f in dataclasses.fields(SFTConfig)
                              if f.name not in SFT_FROM_GROUPS])
    try:
        cfg = build_config(SFTConfig, knobs | {"model": model, "data": data} | extra, "sft")
    except ConfigError as err:
        raise ConfigError(f"sft: {err}") from None
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
              "(sft.resume=false starts over)", file=sys.stderr)
        return 128 + int(signal.Signals[result.stopped])
    print(f"archer sft: {result.steps} steps, loss {result.first_loss:.3f} -> "
          f"{result.last_loss:.3f}, held-out accuracy {result.accuracy:.3f}; model: "
          f"{result.model_dir} (archer train model={result.model_dir})")
    return 0

