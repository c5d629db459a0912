"""Update plans (archer/algos/schedule.py): sync, mask (80/20) and async (AR-Lopti) phases."""

from __future__ import annotations

import math

import pytest
import torch

from archer.algos.schedule import SELECTORS, Phase, build_update_plan, phase_token_mask
from archer.config import AlgoConfig


def test_sync_plan_is_one_phase_over_all_tokens():
    assert build_update_plan(AlgoConfig()) == (Phase("all"),)


def test_mask_plan_is_high_entropy_only():
    plan = build_update_plan(AlgoConfig(update_mode="mask"))
    assert plan == (Phase("high_entropy"),)
    assert plan[0].needs_entropy_split


@pytest.mark.parametrize(
    ("split", "first", "second"),
    [
        ("prob", "low_prob", "high_prob"),
        ("prob", "high_prob", "low_prob"),
        ("entropy", "high_entropy", "low_entropy"),
        ("entropy", "low_entropy", "high_entropy"),
    ],
)
def test_async_plan_order(split, first, second):
    cfg = AlgoConfig(update_mode="async", async_split=split, async_first=first)
    assert build_update_plan(cfg) == (Phase(first), Phase(second))


def test_phase_needs_entropy_split():
    assert Phase("high_entropy").needs_entropy_split
    assert Phase("low_entropy").needs_entropy_split
    assert not Phase("all").needs_entropy_split
    assert not Phase("low_prob").needs_entropy_split


def test_unknown_selector_raises():
    with pytest.raises(ValueError, match="low_prob"):
        Phase("everything")


def test_prob_phases_hand_example():
    # p_old = [0.3, 0.5, 0.7, 0.2(padding)], threshold 0.5: 0.3 < 0.5 -> low_prob;
    # 0.5 is not < 0.5 -> high_prob; 0.7 -> high_prob; padding in neither.
    old = torch.log(torch.tensor([[0.3, 0.5, 0.7, 0.2]]))
    mask = torch.tensor([[1, 1, 1, 0]])
    low = phase_token_mask(Phase("low_prob"), mask, old_logprobs=old)
    high = phase_token_mask(Phase("high_prob"), mask, old_logprobs=old)
    assert low.tolist() == [[True, False, False, False]]
    assert high.tolist() == [[False, True, True, False]]
    # With threshold 0.6, p = 0.5 becomes low_prob.
    low6 = phase_token_mask(Phase("low_prob"), mask, old_logprobs=old, prob_threshold=0.6)
    assert low6.tolist() == [[True, True, False, False]]


def test_entropy_phases_and_all_hand_example():
    mask = torch.tensor([[1, 1, 1, 0]])
    high_ent = torch.tensor([[True, False, False, True]])  # True on padding must be ignored
    assert phase_token_mask(Phase("all"), mask).tolist() == [[True, True, True, False]]
    assert phase_token_mask(Phase("high_entropy"), mask, high_ent).tolist() == [
        [True, False, False, False]]
    assert phase_token_mask(Phase("low_entropy"), mask, high_ent).tolist() == [
        [False, True, True, False]]


def test_missing_inputs_raise():
    mask = torch.ones(1, 3)
    with pytest.raises(ValueError, match="high_entropy_mask"):
        phase_token_mask(Phase("high_entropy"), mask)
    with pytest.raises(ValueError, match="old_logprobs"):
        phase_token_mask(Phase("low_prob"), mask)


@pytest.mark.parametrize(
    ("split", "first"),
    [("prob", "low_prob"), ("prob", "high_prob"),
     ("entropy", "high_entropy"), ("entropy", "low_entropy")],
)
def test_async_phases_partition_valid_tokens_random(split, first):
    cfg = AlgoConfig(update_mode="async", async_split=split, async_first=first)
    plan = build_update_plan(cfg)
    assert len(plan) == 2 and plan[0].selector == first
    for seed in range(30):
        g = torch.Generator().manual_seed(seed)
        b, t = 4, 9
        mask = torch.rand(b, t, generator=g) < 0.7
        mask[0] = False  # one fully padded response
        high = torch.rand(b, t, generator=g) < 0.3
        old = torch.log(torch.rand(b, t, generator=g))
        masks = [
            phase_token_mask(p, mask, high, old, cfg.async_prob_threshold) for p in plan
        ]
        assert not (masks[0] & masks[1]).any()  # disjoint
        # every valid token exactly once, no padding ever
        assert torch.equal(masks[0].int() + masks[1].int(), mask.int())


def test_selectors_constant():
    assert set(SELECTORS) == {"all", "high_entropy", "low_entropy", "low_prob", "high_prob"}
    assert math.isclose(AlgoConfig().async_prob_threshold, 0.5)
