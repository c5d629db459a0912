"""Recipes: ``experiments/conf/recipe/<name>.yaml``, the one loader for every command.

A recipe is a named starting point for a run (docs/guides/recipes.md)::

    overrides: [model=???, data=math_train, total_steps=520, ...]  # `archer train` overrides
    eval: {benchmarks: [math500], max_new_tokens: 4096, engine: vllm, dtype: bfloat16}
    resources: {num_cpus: 8, num_gpus: 1}  # Ray resources of a study/sweep trial
    study: {register_best: false}          # defaults of a study/sweep file's keys

``archer train recipe=X``, ``archer ablate S recipe=X``, ``archer sweep S recipe=X`` and
``archer eval recipe=X`` read it from here. Overrides apply in this order, a later one
winning: the recipe's ``overrides``, then the study's (``base``, variant, axis values), then
the command line's. An override whose value is ``???`` (``model=???``) is required: a run
that does not give it later is refused (:func:`check_required`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from archer.validation import ConfigError, unknown_keys, unknown_name

RECIPE_DIR = Path(__file__).resolve().parent / "conf" / "recipe"
RECIPE_KEYS = ("overrides", "eval", "resources", "study", "warm_start")
# the study (and sweep) file keys whose default a recipe may set (`study:`); a sweep takes
# those of its own schema (it registers no model, so it ignores register_best)
RECIPE_STUDY_KEYS = ("register_best", "max_concurrent", "max_retries", "system_metrics",
                     "eval_start")
REQUIRED = "???"  # an override `key=???`: the run must give key
REQUIRED_HINTS = {"model": "<hf dir or hub id>"}


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def load_recipe(name: str) -> dict[str, Any]:
    """The recipe's mapping, its keys and the shape of each checked (the values of
    ``overrides`` are checked when composed, those of ``eval``/``resources`` by the study)."""
    from experiments.yaml_files import read_yaml

    path = RECIPE_DIR / f"{name}.yaml"
    if not isinstance(name, str) or not path.is_file():
        raise unknown_name("recipe", name, recipe_names())
    raw = read_yaml(path, "recipe")
    unknown = sorted(set(raw) - set(RECIPE_KEYS))
    if unknown:
        raise unknown_keys(f"recipe {name}", unknown, RECIPE_KEYS)
    overrides = raw.get("overrides") or []
    if not isinstance(overrides, list) or not all(isinstance(o, str) and "=" in o
                                                  for o in overrides):
        raise ConfigError(f"recipe {name}: overrides must be a list of key=value strings, "
                          f"got {overrides!r}")
    for key in ("eval", "resources", "study"):
        if raw.get(key) is not None and not isinstance(raw[key], dict):
            raise ConfigError(f"recipe {name}: {key} must be a mapping, got {raw[key]!r}")
    study = raw.get("study") or {}
    if set(study) - set(RECIPE_STUDY_KEYS):
        raise unknown_keys(f"recipe {name}.study", set(study) - set(RECIPE_STUDY_KEYS),
                           RECIPE_STUDY_KEYS)
    return raw


def recipe_overrides(name: str) -> list[str]:
    return list(load_recipe(name).get("overrides") or [])


def study_defaults(name: str, keys) -> dict[str, Any]:
    """The recipe's ``study:`` defaults for the keys of a schema (``keys``)."""
    return {k: v for k, v in (load_recipe(name).get("study") or {}).items() if k in keys}


def dedupe(overrides: list[str]) -> list[str]:
    """Keep only the last ``key=value`` of each key (the recipe's ``model=???`` gives way to
    a command line's ``model=<dir>``), in the order of the kept ones."""
    last = {ov.split("=", 1)[0]: i for i, ov in enumerate(overrides)}
    return [ov for i, ov in enumerate(overrides) if last[ov.split("=", 1)[0]] == i]


def check_required(name: str, overrides: list[str]) -> None:
    """Refuse ``overrides`` (the recipe's first) when a ``key=???`` of recipe ``name`` is
    given no value after it: ``recipe X needs model=<hf dir or hub id>``."""
    needed: dict[str, None] = {}
    for ov in overrides:
        key, value = ov.split("=", 1)
        key = key.lstrip("+")
        if value.strip() == REQUIRED:
            needed[key] = None
        else:
            needed.pop(key, None)
    if needed:
        wants = " ".join(f"{k}={REQUIRED_HINTS.get(k, '<value>')}" for k in needed)
        raise ConfigError(f"recipe {name} needs {wants}")


def expand_recipe(overrides: list[str]) -> tuple[str | None, list[str]]:
    """``archer train``'s command line -> ``(recipe or None, overrides to compose)``: the
    recipe's overrides first, then the others in their order (a later one of a key wins)."""
    named = [ov.split("=", 1)[1] for ov in overrides if ov.startswith("recipe=")]
    rest = [ov for ov in overrides if not ov.startswith("recipe=")]
    if not named:
        return None, rest
    if len(set(named)) > 1:
        raise ConfigError(f"recipe= given {len(named)} times ({named}); give one recipe")
    name = named[0]
    combined = recipe_overrides(name) + rest
    check_required(name, combined)
    return name, dedupe(combined)


def eval_settings(name: str) -> dict[str, Any]:
    """Recipe ``name``'s evaluation settings, checked as a study's ``eval`` spec is
    (``benchmarks``, ``limit``, ``k``, ``max_new_tokens``, ``temperature``, ``top_p``,
    ``seed``, ``batch_size``, ``engine``, ``dtype``, ``gpu_memory_utilization``; see
    :data:`experiments.eval_spec.EVAL_KEYS`): ``{}`` when the recipe has none. ``archer eval
    recipe=X`` takes them as its defaults, the command line's keys winning."""
    from experiments.eval_spec import check_eval

    spec = load_recipe(name).get("eval")
    return dict(check_eval(f"recipe {name}", spec) or {})
