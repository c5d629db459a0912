"""Presets carry exactly the knobs of their method (docs/method.md, section 3)."""

import pytest

from archer.algos import build_update_plan
from archer.config import ConfigError
from experiments.presets import load_preset, preset_names


def test_all_seven_presets_exist():
    assert preset_names() == sorted(
        ["archer", "grpo", "dapo", "dr_grpo", "high_entropy_only", "ar_lopti", "aspo"])


def test_archer_is_the_reference_recipe():
    a = load_preset("archer").algo
    assert (a.entropy_quantile, a.entropy_scope) == (0.8, "response")
    assert (a.high.clip_low, a.high.clip_high, a.high.kl_weight) == (0.5, 0.5, 0.0)
    assert (a.low.clip_low, a.low.clip_high, a.low.kl_weight) == (0.2, 0.2, 0.001)
    assert a.dual_clip_c == 10.0 and a.kl_estimator == "k3"
    assert a.loss_agg_mode == "seq-mean-token-mean" and a.group_filter == "drop"
    assert [p.selector for p in build_update_plan(a)] == ["all"]
    assert load_preset("archer").arxiv == "2507.15778"


def test_aspo_preset():
    from archer.algos.policy_loss import POLICY_LOSSES

    p = load_preset("aspo")
    a = p.algo
    assert a.loss == "aspo" and "aspo" in POLICY_LOSSES and p.arxiv == "2510.06062"
    assert (a.entropy_quantile, a.entropy_scope) == (0.8, "response")
    assert (a.high.clip_low, a.high.clip_high, a.high.kl_weight) == (0.4, 0.4, 0.0)
    assert (a.low.clip_low, a.low.clip_high, a.low.kl_weight) == (0.2, 0.2, 0.0)
    assert a.dual_clip_c == 3.0 and not a.needs_reference
    assert a.loss_agg_mode == load_preset("archer").algo.loss_agg_mode
    assert [ph.selector for ph in build_update_plan(a)] == ["all"]


@pytest.mark.parametrize("name", ["grpo", "dapo", "dr_grpo", "ar_lopti"])
def test_baselines_have_one_clip_range_and_no_kl(name):
    a = load_preset(name).algo
    assert a.high == a.low  # no entropy split: both classes behave the same
    assert (a.low.clip_low, a.low.clip_high) == (0.2, 0.28)
    assert not a.needs_reference


def test_baseline_specifics():
    dapo = load_preset("dapo").algo
    assert dapo.group_filter == "refill" and dapo.overlong_buffer_len > 0
    assert dapo.loss_agg_mode == "token-mean"
    dr = load_preset("dr_grpo").algo
    assert dr.advantage == "dr_grpo" and dr.loss_agg_mode == "seq-mean-token-sum-norm"
    heo = load_preset("high_entropy_only").algo
    assert heo.update_mode == "mask" and heo.entropy_scope == "batch"
    assert [p.selector for p in build_update_plan(heo)] == ["high_entropy"]
    lopti = load_preset("ar_lopti").algo
    assert (lopti.update_mode, lopti.async_split, lopti.async_first) == (
        "async", "prob", "low_prob")
    assert lopti.async_prob_threshold == 0.5 and lopti.lopti_alpha == 0.3
    assert [p.selector for p in build_update_plan(lopti)] == ["low_prob", "high_prob"]


def test_overrides_are_validated():
    assert load_preset("archer", {"low.kl_weight": 0.005}).algo.low.kl_weight == 0.005
    with pytest.raises(ConfigError, match="kl_weight"):
        load_preset("archer", {"low.kl_weigt": 0.005})
    with pytest.raises(ConfigError, match="entropy_quantile"):
        load_preset("archer", {"entropy_quantile": 1.5})
    with pytest.raises(ConfigError, match="unknown preset"):
        load_preset("ppo_magic")
