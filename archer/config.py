"""Typed, validated configuration for the algorithm knobs.

Every field has one comment saying what it does. Out-of-range values fail at construction
with a message that names the field and the allowed range, so a typo or a bad sweep value
stops a run before it spends compute. ``from_dict`` rejects unknown keys (no silent
``.get(key, default)``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from archer.validation import (  # noqa: F401 (ConfigError, check_device re-exported)
    ConfigError,
    build_dataclass,
    check_bools,
    check_choice,
    check_device,
    check_int,
    check_range,
)

ENTROPY_SCOPES = ("response", "group", "batch")
ENTROPY_SOURCES = ("current", "old")
KL_ESTIMATORS = ("k1", "k2", "k3")
KL_NORMALIZATIONS = ("per_class", "all_tokens")
LOSS_AGG_MODES = (
    "token-mean",
    "seq-mean-token-mean",
    "seq-mean-token-sum",
    "seq-mean-token-sum-norm",
)
ADVANTAGE_ESTIMATORS = ("grpo", "dr_grpo", "rloo")
UPDATE_MODES = ("sync", "async", "mask")
ASYNC_SPLITS = ("prob", "entropy")
ASYNC_FIRST = ("low_prob", "high_prob", "high_entropy", "low_entropy")
GROUP_FILTERS = ("none", "drop", "refill")


@dataclass(frozen=True)
class TokenClassConfig:
    """Loss settings for one token class (high-entropy "reasoning" or low-entropy "knowledge")."""

    clip_low: float = 0.2  # eps_low: the ratio is clipped below at 1 - clip_low (0 <= x < 1)
    clip_high: float = 0.2  # eps_high: the ratio is clipped above at 1 + clip_high (x >= 0)
    pg_weight: float = 1.0  # weight of this class's policy-gradient term; 0 masks its PG gradient
    kl_weight: float = 0.0  # weight of the KL-to-reference penalty on this class's tokens

    def validate(self, prefix: str) -> None:
        check_range(f"{prefix}.clip_low", self.clip_low, 0.0, 1.0, hi_open=True)
        check_range(f"{prefix}.clip_high", self.clip_high, 0.0, math.inf)
        check_range(f"{prefix}.pg_weight", self.pg_weight, 0.0, math.inf)
        check_range(f"{prefix}.kl_weight", self.kl_weight, 0.0, math.inf)

    def __post_init__(self) -> None:
        self.validate("TokenClassConfig")


@dataclass(frozen=True)
class AlgoConfig:
    """The algorithm: token split, per-class clipped loss, KL, aggregation, advantages, update.

    Defaults are Archer's reference recipe (docs/method.md, section 2).
    """

    # --- token split by entropy -------------------------------------------------------------
    entropy_quantile: float = 0.8  # rho: tokens with entropy > rho-quantile are high-entropy; (0, 1]
    entropy_scope: str = "response"  # where the quantile is taken: response | group | batch
    entropy_source: str = "current"  # entropy of the current policy (each micro-batch) or old
    temperature: float = 1.0  # logits are divided by this before entropy/log-probs (> 0)
    # --- per-class loss settings ------------------------------------------------------------
    high: TokenClassConfig = field(
        default_factory=lambda: TokenClassConfig(0.5, 0.5, 1.0, 0.0)
    )  # high-entropy ("reasoning") tokens: loose clip, no KL
    low: TokenClassConfig = field(
        default_factory=lambda: TokenClassConfig(0.2, 0.2, 1.0, 0.001)
    )  # low-entropy ("knowledge") tokens: tight clip, small KL
    dual_clip_c: float | None = 10.0  # dual-clip constant c (> 1) for A < 0; None disables it
    # --- KL to the reference model -----------------------------------------------------------
    kl_estimator: str = "k3"  # k1 (log-ratio), k2 (squared), k3 (low-variance, "low_var_kl")
    kl_normalization: str = "per_class"  # each class averaged over its own tokens, or all_tokens
    kl_monitor: bool = False  # load the reference and log each class's KL to it (actor/kl_*)
    #   even when every KL weight is 0; the loss and its gradient are unchanged
    # --- aggregation ------------------------------------------------------------------------
    loss_agg_mode: str = "seq-mean-token-mean"  # how token losses become one scalar
    loss_norm_length: int | None = None  # constant divisor for seq-mean-token-sum-norm (None: T)
    # --- advantages -------------------------------------------------------------------------
    advantage: str = "grpo"  # grpo (std-normalised), dr_grpo (no std), rloo (leave-one-out)
    adv_eps: float = 1e-6  # epsilon added to the group std (> 0)
    lopti_alpha: float = 0.0  # AR-Lopti reweighting A * (alpha * p_old + 1 - alpha); 0 disables
    group_filter: str = "drop"  # drop all-equal groups, refill the batch (DAPO), or none
    overlong_buffer_len: int = 0  # DAPO soft overlong penalty over the last L tokens; 0 disables
    overlong_penalty_factor: float = 1.0  # maximum penalty of the soft overlong shaping (>= 0)
    # --- update schedule --------------------------------------------------------------------
    update_mode: str = "sync"  # sync: one loss, one step; async: two token groups; mask: high only
    async_split: str = "prob"  # async groups chosen by old-policy probability or entropy class
    async_prob_threshold: float = 0.5  # p_old below this is "low_prob" (async_split=prob); (0, 1)
    async_first: str = "low_prob"  # which group is updated first in async mode
    # --- the policy loss ------------------------------------------------------------------------
    loss: str = "dual_token_clip"  # policy loss by name (archer.algos.policy_loss.POLICY_LOSSES)
    # --- rollout/train mismatch ---------------------------------------------------------------
    tis_cap: float | None = None  # truncated importance sampling: multiply each token's PG loss
    #   by min(p_trainer_old / p_sampler, tis_cap) (> 0, typically 2); None disables it

    def __post_init__(self) -> None:
        check_bools(self)
        check_range("entropy_quantile", self.entropy_quantile, 0.0, 1.0, lo_open=True)
        check_choice("entropy_scope", self.entropy_scope, ENTROPY_SCOPES)
        check_choice("entropy_source", self.entropy_source, ENTROPY_SOURCES)
        check_range("temperature", self.temperature, 0.0, math.inf, lo_open=True)
        for name in ("high", "low"):
            value = getattr(self, name)
            if isinstance(value, dict):  # allow plain dicts from YAML
                try:
                    value = build_dataclass(TokenClassConfig, value, name)
                except ConfigError as err:
                    raise ConfigError(str(err).replace("TokenClassConfig.", f"{name}.")) from None
                object.__setattr__(self, name, value)
            elif not isinstance(value, TokenClassConfig):
                raise ConfigError(f"{name} must be a TokenClassConfig or a mapping")
            getattr(self, name).validate(name)
        if self.dual_clip_c is not None:
            check_range("dual_clip_c", self.dual_clip_c, 1.0, math.inf, lo_open=True)
        check_choice("kl_estimator", self.kl_estimator, KL_ESTIMATORS)
        check_choice("kl_normalization", self.kl_normalization, KL_NORMALIZATIONS)
        check_choice("loss_agg_mode", self.loss_agg_mode, LOSS_AGG_MODES)
        if self.loss_norm_length is not None:
            check_int("loss_norm_length", self.loss_norm_length, 1)
        check_choice("advantage", self.advantage, ADVANTAGE_ESTIMATORS)
        check_range("adv_eps", self.adv_eps, 0.0, math.inf, lo_open=True)
        check_range("lopti_alpha", self.lopti_alpha, 0.0, 1.0)
        check_choice("group_filter", self.group_filter, GROUP_FILTERS)
        check_int("overlong_buffer_len", self.overlong_buffer_len, 0)
        check_range("overlong_penalty_factor", self.overlong_penalty_factor, 0.0, math.inf)
        check_choice("update_mode", self.update_mode, UPDATE_MODES)
        check_choice("async_split", self.async_split, ASYNC_SPLITS)
        check_range("async_prob_threshold", self.async_prob_threshold, 0.0, 1.0,
                    lo_open=True, hi_open=True)
        check_choice("async_first", self.async_first, ASYNC_FIRST)
        if self.tis_cap is not None:
            check_range("tis_cap", self.tis_cap, 0.0, math.inf, lo_open=True)
        wanted = ("low_prob", "high_prob") if self.async_split == "prob" else (
            "high_entropy", "low_entropy")
        if self.update_mode == "async" and self.async_first not in wanted:
            raise ConfigError(
                f"async_first={self.async_first!r} does not match async_split="
                f"{self.async_split!r}; choose one of {list(wanted)}"
            )

    @property
    def needs_reference(self) -> bool:
        """True when some KL weight is positive, i.e. the reference model must be loaded."""
        return self.high.kl_weight > 0 or self.low.kl_weight > 0

    @property
    def loads_reference(self) -> bool:
        """True when the reference model is loaded: a KL term (needs_reference) or the
        monitor (kl_monitor) uses it."""
        return self.needs_reference or self.kl_monitor

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AlgoConfig:
        return build_dataclass(cls, data, "algo")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def build_config(cls, data: dict[str, Any], where: str = "config"):
    """Construct the dataclass ``cls`` from a mapping, refusing unknown keys by name
    (:func:`archer.validation.build_dataclass`, kept here as the public import path)."""
    return build_dataclass(cls, data, where)
