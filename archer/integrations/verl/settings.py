"""Archer's :class:`~archer.config.AlgoConfig` from a verl actor config plus an ``archer`` section.

Each knob has ONE source. What verl already has a key for is read from verl's actor config
(``actor_rollout_ref.actor.*``); the knobs verl has no key for come from the ``archer``
mapping (in a verl run: the top-level ``+archer.*`` Hydra overrides). Setting a verl-owned
knob in the ``archer`` mapping is an error naming the verl key to set instead.

verl key (``actor_rollout_ref.actor.``)   Archer key
---------------------------------------   -----------------------------------------------
``policy_loss.loss_mode`` archer | aspo    ``loss`` dual_token_clip | aspo
``clip_ratio_low`` / ``clip_ratio_high``   ``low.clip_low`` / ``low.clip_high``
``clip_ratio_c``                           ``dual_clip_c``
``loss_agg_mode`` (no ``token-sum``)       ``loss_agg_mode``
``loss_scale_factor``                      ``loss_norm_length``
``use_kl_loss`` + ``kl_loss_coef``         ``low.kl_weight`` (``kl_loss_coef``, 0 when off)
``kl_loss_type``                           ``kl_estimator`` (k1/kl, k2/mse, k3/low_var_kl)

The ``archer`` mapping may set: ``entropy_quantile``, ``entropy_scope`` (``response`` only:
verl computes the loss per micro-batch, so a group or batch quantile cannot be taken),
``entropy_source`` (``current`` only: verl gives the current policy's entropy),
``kl_normalization``, ``high.{clip_low, clip_high, pg_weight, kl_weight}`` and
``low.pg_weight``. Anything else of Archer's (advantages, group filter, update schedule)
belongs to verl's own ``algorithm.*`` / trainer and is refused with that pointer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from archer.config import AlgoConfig, TokenClassConfig
from archer.validation import ConfigError, check_choice, unknown_keys

# verl's policy_loss.loss_mode -> the Archer loss name in archer.algos.policy_loss.POLICY_LOSSES
LOSS_MODES = {"archer": "dual_token_clip", "aspo": "aspo"}

# verl's kl_loss_type -> Archer's kl_estimator (the straight-through "+" variants, "abs" and
# "full" have no Archer counterpart and are refused)
KL_TYPES = {"k1": "k1", "kl": "k1", "k2": "k2", "mse": "k2", "k3": "k3", "low_var_kl": "k3"}

# Archer keys whose value comes from verl's actor config, with the verl key to set instead
VERL_OWNED = {
    "loss": "actor_rollout_ref.actor.policy_loss.loss_mode",
    "low.clip_low": "actor_rollout_ref.actor.clip_ratio_low",
    "low.clip_high": "actor_rollout_ref.actor.clip_ratio_high",
    "low.kl_weight": "actor_rollout_ref.actor.kl_loss_coef (with use_kl_loss=true)",
    "dual_clip_c": "actor_rollout_ref.actor.clip_ratio_c",
    "kl_estimator": "actor_rollout_ref.actor.kl_loss_type",
    "loss_agg_mode": "actor_rollout_ref.actor.loss_agg_mode",
    "loss_norm_length": "actor_rollout_ref.actor.loss_scale_factor",
    "temperature": "actor_rollout_ref.rollout.temperature (verl applies it to the log-probs)",
    "advantage": "algorithm.adv_estimator",
    "adv_eps": "algorithm (verl's GRPO epsilon)",
    "group_filter": "algorithm.filter_groups",
    "tis_cap": "algorithm.rollout_correction",
}
ARCHER_TOP = ("entropy_quantile", "entropy_scope", "entropy_source", "kl_normalization")
ARCHER_HIGH = ("clip_low", "clip_high", "pg_weight", "kl_weight")
ARCHER_LOW = ("pg_weight",)


def plain(value: Any) -> Any:
    """A Hydra/OmegaConf mapping (or list) as plain dicts and lists, recursively."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def get_key(config: Any, key: str, default: Any = None) -> Any:
    """``config.key`` for verl's ActorConfig (a dataclass) or a DictConfig/dict."""
    if isinstance(config, Mapping):
        return config.get(key, default)
    return getattr(config, key, default)


def _archer_overrides(archer: Mapping | None) -> dict[str, Any]:
    """The allowed AlgoConfig overrides of the ``archer`` mapping, as AlgoConfig kwargs."""
    data = plain(archer or {})
    if not isinstance(data, dict):
        raise ConfigError(f"the archer section must be a mapping, got {type(data).__name__}")
    flat = {}
    for key, value in data.items():
        if key in ("high", "low") and isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    owned = sorted(k for k in flat if k in VERL_OWNED)
    if owned:
        raise ConfigError("; ".join(f"archer.{k} is set through verl: use {VERL_OWNED[k]}"
                                    for k in owned))
    allowed = set(ARCHER_TOP) | {f"high.{k}" for k in ARCHER_HIGH} | {
        f"low.{k}" for k in ARCHER_LOW}
    unknown = set(flat) - allowed
    if unknown:
        raise unknown_keys("the archer section (Archer keys verl has no key for)", unknown,
                           allowed, fmt="archer.{}")
    if flat.get("entropy_scope", "response") != "response":
        raise ConfigError(f"archer.entropy_scope={flat['entropy_scope']!r} is not possible in "
                          "verl (the loss sees one micro-batch); allowed: 'response'")
    if flat.get("entropy_source", "current") != "current":
        raise ConfigError(f"archer.entropy_source={flat['entropy_source']!r} is not possible "
                          "in verl (it gives the current policy's entropy); allowed: 'current'")
    return flat


def algo_config_from_verl(actor: Any, archer: Mapping | None = None) -> AlgoConfig:
    """Archer's AlgoConfig for verl's actor config ``actor`` (ActorConfig or its DictConfig)
    and the ``archer`` overrides (module docstring). Raises ConfigError on anything Archer
    cannot honour, naming the key."""
    flat = _archer_overrides(archer)
    mode = get_key(get_key(actor, "policy_loss", {}) or {}, "loss_mode", "vanilla")
    check_choice("actor_rollout_ref.actor.policy_loss.loss_mode", mode, LOSS_MODES)
    agg = get_key(actor, "loss_agg_mode", "token-mean")
    if agg == "token-sum":
        raise ConfigError("actor_rollout_ref.actor.loss_agg_mode='token-sum' has no Archer "
                          "counterpart; allowed: token-mean, seq-mean-token-mean, "
                          "seq-mean-token-sum, seq-mean-token-sum-norm")
    kl_type = get_key(actor, "kl_loss_type", "low_var_kl")
    check_choice("actor_rollout_ref.actor.kl_loss_type", kl_type, KL_TYPES)
    if float(get_key(actor, "entropy_coeff", 0.0) or 0.0) != 0.0:
        raise ConfigError("actor_rollout_ref.actor.entropy_coeff must be 0 with loss_mode="
                          f"{mode}: Archer's loss has no entropy bonus")
    clip = get_key(actor, "clip_ratio", 0.2)
    low_clip = get_key(actor, "clip_ratio_low", None)
    high_clip = get_key(actor, "clip_ratio_high", None)
    use_kl = bool(get_key(actor, "use_kl_loss", False))
    default = AlgoConfig()
    high = {k: flat.get(f"high.{k}", getattr(default.high, k)) for k in ARCHER_HIGH}
    if high["kl_weight"] > 0 and not use_kl:
        raise ConfigError("archer.high.kl_weight > 0 needs the reference log-probs: set "
                          "actor_rollout_ref.actor.use_kl_loss=true (Archer's per-class KL "
                          "then replaces verl's KL term)")
    low = TokenClassConfig(
        clip_low=clip if low_clip is None else low_clip,
        clip_high=clip if high_clip is None else high_clip,
        pg_weight=flat.get("low.pg_weight", default.low.pg_weight),
        kl_weight=float(get_key(actor, "kl_loss_coef", 0.0)) if use_kl else 0.0,
    )
    return AlgoConfig(
        entropy_quantile=flat.get("entropy_quantile", default.entropy_quantile),
        kl_normalization=flat.get("kl_normalization", default.kl_normalization),
        high=TokenClassConfig(**high), low=low,
        dual_clip_c=float(get_key(actor, "clip_ratio_c", 3.0)),
        kl_estimator=KL_TYPES[kl_type], loss_agg_mode=agg,
        loss_norm_length=get_key(actor, "loss_scale_factor", None), loss=LOSS_MODES[mode],
    )
