"""The mechanism lint: warnings for a study (or run) whose axis cannot act under its settings.

A study that varies something the trainer ignores under its other settings measures noise;
the lint says so at launch (``archer ablate`` / ``archer sweep``, their ``--dry-run`` and
``archer train``), naming why. It never refuses anything: each rule returns a message.

What counts as varied: for several trials, every TrainConfig key (dotted: ``algo.low.clip_low``)
whose value differs between them (the seed, the output directory and the tracking aside); for
one run, the keys set differently from TrainConfig's defaults. A rule fires only when its
condition holds in every trial: where one trial lets the mechanism act, the axis can act.

Rules (:data:`RULES`):

- ``clip_never_binds``: clip bounds (``algo.{high,low}.clip_{low,high}``, ``algo.dual_clip_c``)
  varied while every trial takes a single pass over its rollouts (``ppo_epochs=1`` and
  ``mini_batch_prompts >= prompts_per_step``) in a single-pass update mode (sync, mask): the
  old log-probs are the current ones, the ratio is exactly 1 and no clip binds. ``async`` is
  exempt (its second phase runs after the first one's optimizer step: off-policy).
- ``masked_class``: a low-entropy class setting (``algo.low.kl_weight``, its clips or its
  ``pg_weight``) varied under ``update_mode=mask``: the mask plan updates the high-entropy
  tokens only (archer.algos.schedule), and the loss drops every other token from its PG *and*
  KL terms (archer.algos.policy_loss.per_token_loss), so no low-entropy setting acts.
- ``no_high_tokens``: a high-entropy class setting varied with ``algo.entropy_quantile=1``: a
  token is high-entropy when its entropy exceeds the quantile, and none exceeds the maximum.
- ``split_unused``: the entropy split (``algo.entropy_quantile/scope/source``) varied while the
  two classes have the same settings, no KL term is normalised per class, and the update mode
  does not select by entropy (sync, or async split by probability): the split changes nothing.
- ``async_unused``: ``algo.async_*`` varied while no trial uses ``update_mode=async``.
- ``overlong_unused``: ``algo.overlong_penalty_factor`` varied with ``overlong_buffer_len=0``.
- ``staleness_compounds``: a trial with asynchronous rollouts (``max_staleness >= 1``) and
  ``update_mode=async``: its second pass trains on a policy one pass ahead of an already
  stale batch, so the two compound the staleness (the trainer warns at run time too).
- ``quantile_indistinct``: trials that differ only in ``algo.entropy_quantile`` at
  ``entropy_scope=response`` whose quantiles give the same high-entropy token count at every
  response length up to ``max_new_tokens`` (:func:`high_token_count`): with 5-token responses
  rho 0.8 and 0.9 both mark one token, so their arms are one experiment run twice.
- ``random_model``: a trial trains a randomly initialised model (``model=tiny``) without a warm
  start: its held-out accuracy is 0, every reward 0 and every group's advantage 0.
- ``no_reward_signal`` (:func:`lint_warm_start`, once the warm start exists): its held-out
  accuracy is 0 or 1, so rewards carry no signal.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterable
from typing import Any

CLIP_KEYS = ("algo.high.clip_low", "algo.high.clip_high", "algo.low.clip_low",
             "algo.low.clip_high", "algo.dual_clip_c")
LOW_CLASS_KEYS = ("algo.low.kl_weight", "algo.low.clip_low", "algo.low.clip_high",
                  "algo.low.pg_weight")
HIGH_CLASS_KEYS = ("algo.high.kl_weight", "algo.high.clip_low", "algo.high.clip_high",
                   "algo.high.pg_weight")
SPLIT_KEYS = ("algo.entropy_quantile", "algo.entropy_scope", "algo.entropy_source")
ASYNC_KEYS = ("algo.async_split", "algo.async_prob_threshold", "algo.async_first")
RANDOM_MODELS = ("tiny",)  # prepared models with random weights (archer.models)
NOT_COMPARED = ("seed", "out_dir", "resume", "progress", "tracking", "num_threads")


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"algo": {"low": {"kl_weight": 0.1}}}`` -> ``{"algo.low.kl_weight": 0.1}``."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key != "task_config":
            out |= flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def varied_keys(trains: list[dict[str, Any]]) -> set[str]:
    """The keys whose values differ between the trials; for one run, the keys set
    differently from TrainConfig's defaults (see the module docstring)."""
    flats = [flatten(t) for t in trains]
    if len(flats) == 1:
        from archer.train_config import TrainConfig

        flats.append(flatten(TrainConfig().to_dict()))
    keys = set().union(*flats)
    return {k for k in keys if k.split(".")[0] not in NOT_COMPARED
            and len({repr(f.get(k)) for f in flats}) > 1}


def _named(keys: Iterable[str], flats: list[dict]) -> str:
    """The keys and how they are set: varied (several trials), or set off the default."""
    return ", ".join(sorted(keys)) + (" varied" if len(flats) > 1 else " set (not the default)")


def clip_never_binds(flats: list[dict], varied: set[str]) -> str | None:
    hit = varied & set(CLIP_KEYS)
    single = all(f["ppo_epochs"] == 1 and f["mini_batch_prompts"] >= f["prompts_per_step"]
                 and f["algo.update_mode"] != "async" for f in flats)
    if not hit or not single:
        return None
    f = flats[0]
    return (f"{_named(hit, flats)}, but every trial takes one pass over its rollouts "
            f"(ppo_epochs=1, mini_batch_prompts={f['mini_batch_prompts']} >= "
            f"prompts_per_step={f['prompts_per_step']}, update_mode={f['algo.update_mode']}): "
            "the policy ratio is exactly 1, so the clip bounds never bind; use ppo_epochs > 1 "
            "or mini_batch_prompts < prompts_per_step (or update_mode=async)")


def masked_class(flats: list[dict], varied: set[str]) -> str | None:
    hit = varied & set(LOW_CLASS_KEYS)
    if not hit or not all(f["algo.update_mode"] == "mask" for f in flats):
        return None
    return (f"{_named(hit, flats)} under update_mode=mask: the mask mode updates the "
            "high-entropy tokens only and drops the low-entropy ones from the PG and the KL "
            "terms, so low-entropy settings have no effect")


def no_high_tokens(flats: list[dict], varied: set[str]) -> str | None:
    hit = varied & set(HIGH_CLASS_KEYS)
    if not hit or not all(f["algo.entropy_quantile"] >= 1.0 for f in flats):
        return None
    return (f"{_named(hit, flats)} with algo.entropy_quantile=1: a token is high-entropy when "
            "its entropy exceeds the quantile and none exceeds the maximum, so no token is in "
            "the high-entropy class")


def _split_used(f: dict) -> bool:
    same = all(f[f"algo.high.{k}"] == f[f"algo.low.{k}"]
               for k in ("clip_low", "clip_high", "pg_weight", "kl_weight"))
    per_class_kl = (f["algo.high.kl_weight"] > 0 or f["algo.low.kl_weight"] > 0) and \
        f["algo.kl_normalization"] == "per_class"
    by_entropy = f["algo.update_mode"] == "mask" or (
        f["algo.update_mode"] == "async" and f["algo.async_split"] == "entropy")
    return not same or per_class_kl or by_entropy


def split_unused(flats: list[dict], varied: set[str]) -> str | None:
    hit = varied & set(SPLIT_KEYS)
    if not hit or any(_split_used(f) for f in flats):
        return None
    return (f"{_named(hit, flats)}, but the entropy split is unused: both token classes have "
            "the same clips, PG and KL weights, no KL term is normalised per class and the "
            f"update mode ({flats[0]['algo.update_mode']}) does not select tokens by entropy")


def async_unused(flats: list[dict], varied: set[str]) -> str | None:
    hit = varied & set(ASYNC_KEYS)
    if not hit or any(f["algo.update_mode"] == "async" for f in flats):
        return None
    return (f"{_named(hit, flats)}, but no trial uses update_mode=async, the only mode "
            "reading them")


def overlong_unused(flats: list[dict], varied: set[str]) -> str | None:
    if "algo.overlong_penalty_factor" not in varied or any(
            f["algo.overlong_buffer_len"] > 0 for f in flats):
        return None
    return (f"{_named(['algo.overlong_penalty_factor'], flats)} with "
            "algo.overlong_buffer_len=0: the overlong penalty is off")


def staleness_compounds(flats: list[dict], varied: set[str]) -> str | None:
    hit = sorted({f.get("max_staleness", 0) for f in flats
                  if f.get("max_staleness", 0) >= 1 and f["algo.update_mode"] == "async"})
    if not hit:
        return None
    return (f"max_staleness={', '.join(map(str, hit))} with algo.update_mode=async: the second "
            "pass trains on a policy one pass ahead of an already stale batch, so the two "
            "compound the staleness")


def high_token_count(length: int, rho: float) -> int:
    """High-entropy tokens of a ``length``-token response with distinct entropies, split at
    its own rho-quantile (archer.algos.split): the tokens above sorted position
    ``rho * (length - 1)``, i.e. ``length - 1 - floor(rho * (length - 1))``."""
    return length - 1 - math.floor(rho * (length - 1)) if length > 0 else 0


def quantile_indistinct(flats: list[dict], varied: set[str]) -> str | None:
    if "algo.entropy_quantile" not in varied:
        return None
    same_but_rho: dict[str, dict[float, tuple[int, ...]]] = {}
    for f in flats:
        if f["algo.entropy_scope"] != "response":
            continue
        rest = repr(sorted((k, repr(v)) for k, v in f.items()
                           if k != "algo.entropy_quantile" and k.split(".")[0] not in NOT_COMPARED))
        rho = float(f["algo.entropy_quantile"])
        counts = tuple(high_token_count(n, rho) for n in range(1, int(f["max_new_tokens"]) + 1))
        same_but_rho.setdefault(rest, {})[rho] = counts
    for by_rho in same_but_rho.values():
        seen: dict[tuple[int, ...], float] = {}
        for rho in sorted(by_rho):
            if by_rho[rho] in seen:
                return (f"algo.entropy_quantile={seen[by_rho[rho]]:g} and {rho:g} at "
                        "algo.entropy_scope=response mark the same number of high-entropy "
                        "tokens in every response of up to max_new_tokens="
                        f"{len(by_rho[rho])} tokens, so their trials are the same experiment; "
                        "use entropy_scope=batch (or group), longer responses, or quantiles "
                        "that differ at these lengths")
            seen[by_rho[rho]] = rho
    return None


def random_model(flats: list[dict], varied: set[str]) -> str | None:
    random = sorted({str(f["model"]) for f in flats if str(f["model"]) in RANDOM_MODELS})
    if not random:
        return None
    return (f"model={random[0]} is a randomly initialised model and no warm start is used: its "
            "held-out accuracy is 0, so every reward is 0 and every group's advantage 0 "
            "(nothing learns); use a warm start (the cpu recipe's warm_start) or "
            "model=<a warm-started directory>")


RULES: dict[str, Callable[[list[dict], set[str]], str | None]] = {
    "clip_never_binds": clip_never_binds, "masked_class": masked_class,
    "no_high_tokens": no_high_tokens, "split_unused": split_unused,
    "async_unused": async_unused, "overlong_unused": overlong_unused,
    "staleness_compounds": staleness_compounds, "quantile_indistinct": quantile_indistinct,
    "random_model": random_model,
}


def lint_trials(trains: list[dict[str, Any]], varied: set[str] | None = None
                ) -> list[str]:
    """The warnings of every rule for these trials' TrainConfig dicts (``varied``: the
    varied keys, default :func:`varied_keys`)."""
    if not trains:
        return []
    flats = [flatten(t) for t in trains]
    varied = varied_keys(trains) if varied is None else set(varied)
    found = []
    for name, rule in RULES.items():
        message = rule(flats, varied)
        if message:
            found.append(f"[{name}] {message}")
    return found


def lint_warm_start(heldout_accuracy: float | None) -> list[str]:
    """A warm start that solves none or all of its held-out problems gives no reward signal."""
    if heldout_accuracy is None or 0.0 < heldout_accuracy < 1.0:
        return []
    return [f"[no_reward_signal] the warm start's held-out accuracy is {heldout_accuracy:g}: "
            "every group is all wrong or all right, so rewards carry no signal; change the "
            "warm start's budget (warm_start.steps / target)"]


def print_warnings(warnings: list[str], where: str, file=None) -> None:
    for message in warnings:
        print(f"WARNING: {where}: {message}", file=file or sys.stderr)
