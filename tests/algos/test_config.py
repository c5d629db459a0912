"""AlgoConfig / TokenClassConfig validation (archer/config.py) and the name registry."""

from __future__ import annotations

import dataclasses
import math

import pytest

from archer.config import AlgoConfig, ConfigError, TokenClassConfig
from archer.registry import Registry


def test_defaults_are_the_reference_recipe():
    # docs/method.md, section 2: rho 0.8 per response, current-policy entropy, high-entropy clip 0.5
    # both sides and no KL, low-entropy clip 0.2 and KL 0.001, dual clip 10, k3, per-class KL,
    # seq-mean-token-mean, GRPO with eps 1e-6, drop all-equal groups, sync update.
    cfg = AlgoConfig()
    assert cfg.entropy_quantile == 0.8
    assert cfg.entropy_scope == "response"
    assert cfg.entropy_source == "current"
    assert cfg.temperature == 1.0
    assert cfg.high == TokenClassConfig(0.5, 0.5, 1.0, 0.0)
    assert cfg.low == TokenClassConfig(0.2, 0.2, 1.0, 0.001)
    assert cfg.dual_clip_c == 10.0
    assert cfg.kl_estimator == "k3"
    assert cfg.kl_normalization == "per_class"
    assert cfg.loss_agg_mode == "seq-mean-token-mean"
    assert cfg.advantage == "grpo"
    assert cfg.adv_eps == 1e-6
    assert cfg.group_filter == "drop"
    assert cfg.overlong_buffer_len == 0
    assert cfg.update_mode == "sync"
    # AR-Lopti baseline (section 3): split by old-policy probability at 0.5, low-prob first.
    assert (cfg.async_split, cfg.async_first, cfg.async_prob_threshold) == ("prob", "low_prob", 0.5)


@pytest.mark.parametrize(
    ("data", "field", "allowed"),
    [
        ({"entropy_quantile": 0.0}, "entropy_quantile", "(0.0, 1.0]"),
        ({"entropy_quantile": 1.01}, "entropy_quantile", "(0.0, 1.0]"),
        ({"temperature": 0.0}, "temperature", "(0.0, inf]"),
        ({"high": {"clip_high": -0.1}}, "high.clip_high", "[0.0, inf]"),
        ({"low": {"clip_low": -0.1}}, "low.clip_low", "[0.0, 1.0)"),
        ({"low": {"clip_low": 1.0}}, "low.clip_low", "[0.0, 1.0)"),
        ({"high": {"clip_low": 1.5}}, "high.clip_low", "[0.0, 1.0)"),
        ({"low": {"kl_weight": -0.001}}, "low.kl_weight", "[0.0, inf]"),
        ({"high": {"pg_weight": -1.0}}, "high.pg_weight", "[0.0, inf]"),
        ({"dual_clip_c": 1.0}, "dual_clip_c", "(1.0, inf]"),
        ({"dual_clip_c": 0.5}, "dual_clip_c", "(1.0, inf]"),
        ({"loss_norm_length": 0}, "loss_norm_length", "[1, inf]"),
        ({"adv_eps": 0.0}, "adv_eps", "(0.0, inf]"),
        ({"lopti_alpha": 1.5}, "lopti_alpha", "[0.0, 1.0]"),
        ({"overlong_buffer_len": -1}, "overlong_buffer_len", "[0, inf]"),
        ({"overlong_penalty_factor": -1.0}, "overlong_penalty_factor", "[0.0, inf]"),
        ({"async_prob_threshold": 1.0}, "async_prob_threshold", "(0.0, 1.0)"),
        ({"async_prob_threshold": 0.0}, "async_prob_threshold", "(0.0, 1.0)"),
    ],
)
def test_out_of_range_values_name_field_and_range(data, field, allowed):
    with pytest.raises(ConfigError) as err:
        AlgoConfig.from_dict(data)
    msg = str(err.value)
    assert field in msg
    assert allowed in msg
    assert "TokenClassConfig" not in msg  # nested fields are named by their path


@pytest.mark.parametrize(
    ("field", "value", "choices"),
    [
        ("entropy_scope", "token", ["response", "group", "batch"]),
        ("entropy_source", "new", ["current", "old"]),
        ("kl_estimator", "k4", ["k1", "k2", "k3"]),
        ("kl_normalization", "per_token", ["per_class", "all_tokens"]),
        ("loss_agg_mode", "token-sum", ["token-mean", "seq-mean-token-mean"]),
        ("advantage", "gae", ["grpo", "dr_grpo", "rloo"]),
        ("update_mode", "both", ["sync", "async", "mask"]),
        ("async_split", "length", ["prob", "entropy"]),
        ("async_first", "first", ["low_prob", "high_prob", "high_entropy", "low_entropy"]),
        ("group_filter", "keep", ["none", "drop", "refill"]),
    ],
)
def test_unknown_mode_names_list_choices(field, value, choices):
    with pytest.raises(ConfigError) as err:
        AlgoConfig(**{field: value})
    msg = str(err.value)
    assert field in msg and repr(value) in msg
    for c in choices:
        assert repr(c) in msg


@pytest.mark.parametrize(
    ("split", "first", "allowed"),
    [
        ("entropy", "low_prob", ["high_entropy", "low_entropy"]),
        ("prob", "high_entropy", ["low_prob", "high_prob"]),
    ],
)
def test_async_first_must_match_async_split(split, first, allowed):
    with pytest.raises(ConfigError) as err:
        AlgoConfig(update_mode="async", async_split=split, async_first=first)
    msg = str(err.value)
    assert "async_first" in msg and "async_split" in msg
    for a in allowed:
        assert repr(a) in msg


def test_async_first_not_checked_outside_async_mode():
    cfg = AlgoConfig(update_mode="sync", async_split="entropy", async_first="low_prob")
    assert cfg.async_first == "low_prob"


@pytest.mark.parametrize("value", ["0.8", None, True, math.nan])
def test_non_numbers_rejected(value):
    with pytest.raises(ConfigError, match="entropy_quantile"):
        AlgoConfig(entropy_quantile=value)


def test_token_class_config_validates_itself():
    with pytest.raises(ConfigError, match=r"clip_low.*\[0\.0, 1\.0\)"):
        TokenClassConfig(clip_low=1.0)
    with pytest.raises(ConfigError, match="kl_weight"):
        TokenClassConfig(kl_weight=-1.0)


def test_boundary_values_accepted():
    cfg = AlgoConfig(
        entropy_quantile=1.0,
        high=TokenClassConfig(0.0, 0.0, 0.0, 0.0),
        low={"clip_low": 0.99, "clip_high": 5.0, "pg_weight": 2.0, "kl_weight": 0.0},
        dual_clip_c=None,
        lopti_alpha=1.0,
        loss_norm_length=1,
    )
    assert isinstance(cfg.low, TokenClassConfig) and cfg.low.clip_low == 0.99
    assert cfg.dual_clip_c is None
    assert AlgoConfig(dual_clip_c=1.0001).dual_clip_c == 1.0001


def test_unknown_key_suggests_close_match():
    with pytest.raises(ConfigError) as err:
        AlgoConfig.from_dict({"entropy_quantil": 0.7})
    msg = str(err.value)
    assert "'entropy_quantil'" in msg and "did you mean 'entropy_quantile'" in msg


def test_unknown_nested_key_suggests_close_match():
    with pytest.raises(ConfigError) as err:
        AlgoConfig.from_dict({"low": {"kl_weigth": 0.01}})
    msg = str(err.value)
    assert "low" in msg and "did you mean 'kl_weight'" in msg


def test_unknown_key_without_close_match_lists_keys():
    with pytest.raises(ConfigError) as err:
        AlgoConfig.from_dict({"zzzz": 1})
    assert "allowed keys" in str(err.value) and "entropy_quantile" in str(err.value)


def test_from_dict_needs_a_mapping():
    with pytest.raises(ConfigError, match="mapping"):
        AlgoConfig.from_dict([("entropy_quantile", 0.8)])
    with pytest.raises(ConfigError, match="low"):
        AlgoConfig(low=0.2)


def test_round_trip_and_frozen():
    cfg = AlgoConfig.from_dict({"entropy_quantile": 0.7, "high": {"clip_high": 0.4},
                                "loss_agg_mode": "token-mean"})
    assert cfg.high == TokenClassConfig(clip_high=0.4)  # other fields take the class defaults
    assert AlgoConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.entropy_quantile = 0.5  # type: ignore[misc]


def test_config_error_is_value_error():
    assert issubclass(ConfigError, ValueError)


def test_needs_reference():
    assert AlgoConfig().needs_reference  # low-entropy KL 0.001
    none = AlgoConfig(low=TokenClassConfig(0.2, 0.2, 1.0, 0.0))
    assert not none.needs_reference
    high_only = AlgoConfig(high=TokenClassConfig(0.5, 0.5, 1.0, 0.01),
                           low=TokenClassConfig(0.2, 0.2, 1.0, 0.0))
    assert high_only.needs_reference


# --- registry ----------------------------------------------------------------------------


def test_registry_register_get_and_duplicate():
    reg: Registry = Registry("widget")

    @reg.register("b")
    def fb():
        return "b"

    @reg.register("a")
    def fa():
        return "a"

    assert reg.get("a") is fa and reg.get("b") is fb
    assert reg.names() == ["a", "b"]
    assert "a" in reg and "c" not in reg
    with pytest.raises(ValueError, match="widget 'a' is already registered"):
        reg.register("a")(lambda: None)
    assert reg.get("a") is fa  # the failed registration did not replace it


def test_registry_unknown_name_lists_options():
    reg: Registry = Registry("widget")
    reg.register("x")(1)
    reg.register("y")(2)
    with pytest.raises(KeyError) as err:
        reg.get("z")
    msg = str(err.value)
    assert "unknown widget 'z'" in msg and "['x', 'y']" in msg
