"""Outcome advantages, group filtering and reward shaping (archer/algos/advantages.py)."""

from __future__ import annotations

import math

import pytest
import torch

from archer.algos.advantages import (
    ADVANTAGES,
    compute_advantages,
    dr_grpo_advantage,
    grpo_advantage,
    lopti_reweight,
    nonuniform_group_mask,
    overlong_penalty,
    rloo_advantage,
)


def test_grpo_hand_example():
    # r = [1, 0, 0, 1]: mean 0.5; unbiased std = sqrt((4 * 0.25) / 3) = sqrt(1/3) = 0.5773503
    # A = +-0.5 / (0.5773503 + 1e-6) = +-0.8660239.
    adv = grpo_advantage(torch.tensor([1.0, 0.0, 0.0, 1.0]), torch.tensor([0, 0, 0, 0]))
    a = 0.5 / (math.sqrt(1 / 3) + 1e-6)
    assert a == pytest.approx(0.8660239, abs=1e-7)
    torch.testing.assert_close(adv, torch.tensor([a, -a, -a, a]), atol=1e-6, rtol=0)
    assert adv.dtype == torch.float32


def test_grpo_groups_by_index_not_position():
    # Interleaved groups: index [7, 3, 7, 3, 7, 3]; group 7 has rewards [1, 1, 0] and group 3
    # has [0, 0, 0].
    # Group 7: mean 2/3, var = ((1/3)^2 * 2 + (2/3)^2) / 2 = (2/9 + 4/9) / 2 = 1/3, std 0.57735
    #   -> A = (1/3) / 0.57735 = 0.5773503 for the 1s and -(2/3) / 0.57735 = -1.1547005.
    # Group 3: all equal -> std 0 -> A = 0 / (0 + 1e-6) = 0.
    rewards = torch.tensor([1.0, 0.0, 1.0, 0.0, 0.0, 0.0])
    index = torch.tensor([7, 3, 7, 3, 7, 3])
    adv = grpo_advantage(rewards, index)
    s = math.sqrt(1 / 3) + 1e-6
    want = torch.tensor([(1 / 3) / s, 0.0, (1 / 3) / s, 0.0, -(2 / 3) / s, 0.0])
    torch.testing.assert_close(adv, want, atol=1e-6, rtol=0)


def test_grpo_sums_to_zero_per_group_random():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        index = torch.randint(0, 5, (40,), generator=g)
        rewards = torch.rand(40, generator=g)
        adv = grpo_advantage(rewards, index)
        for k in index.unique():
            rows = index == k
            if rows.sum() > 1:
                assert abs(adv[rows].sum().item()) < 1e-4
                # unit (unbiased) std after normalisation, up to eps
                assert adv[rows].std().item() == pytest.approx(1.0, abs=1e-3)


def test_size_one_group_gets_reward_as_advantage():
    # As verl: a lone response has mean 0 and std 1 -> A = r / (1 + 1e-6) ~= r.
    rewards = torch.tensor([1.0, 0.0, 0.3])
    index = torch.tensor([0, 1, 2])
    torch.testing.assert_close(grpo_advantage(rewards, index), rewards, atol=1e-5, rtol=0)
    torch.testing.assert_close(dr_grpo_advantage(rewards, index), rewards)
    torch.testing.assert_close(rloo_advantage(rewards, index), rewards)


def test_dr_grpo_hand_example():
    # No std normalisation: A = r - mean = [0.5, -0.5, -0.5, 0.5].
    adv = dr_grpo_advantage(torch.tensor([1.0, 0.0, 0.0, 1.0]), torch.zeros(4, dtype=torch.long))
    torch.testing.assert_close(adv, torch.tensor([0.5, -0.5, -0.5, 0.5]))


def test_rloo_hand_example():
    # r = [1, 0, 0, 1]: A_0 = 1 - mean(0, 0, 1) = 1 - 1/3 = 2/3; A_1 = 0 - mean(1, 0, 1) = -2/3.
    adv = rloo_advantage(torch.tensor([1.0, 0.0, 0.0, 1.0]), torch.zeros(4, dtype=torch.long))
    torch.testing.assert_close(adv, torch.tensor([2 / 3, -2 / 3, -2 / 3, 2 / 3]))
    # r = [1, 0, 0, 0]: A_0 = 1 - 0 = 1; A_j = 0 - 1/3 = -1/3  (= 4/3 * (r - 1/4)).
    adv = rloo_advantage(torch.tensor([1.0, 0.0, 0.0, 0.0]), torch.zeros(4, dtype=torch.long))
    torch.testing.assert_close(adv, torch.tensor([1.0, -1 / 3, -1 / 3, -1 / 3]))


def test_rloo_equals_leave_one_out_definition_random():
    g = torch.Generator().manual_seed(1)
    rewards = torch.rand(12, generator=g)
    index = torch.tensor([0] * 5 + [1] * 4 + [2] * 3)
    adv = rloo_advantage(rewards, index)
    for i in range(12):
        others = (index == index[i]) & (torch.arange(12) != i)
        assert adv[i].item() == pytest.approx((rewards[i] - rewards[others].mean()).item(),
                                              abs=1e-6)


def test_compute_advantages_by_name_and_unknown():
    r = torch.tensor([1.0, 0.0])
    i = torch.tensor([0, 0])
    torch.testing.assert_close(compute_advantages("dr_grpo", r, i), torch.tensor([0.5, -0.5]))
    assert ADVANTAGES.names() == ["dr_grpo", "grpo", "rloo"]
    with pytest.raises(KeyError, match="dr_grpo.*grpo.*rloo"):
        compute_advantages("gae", r, i)


def test_lopti_reweight_hand_values():
    # factor = alpha * p + 1 - alpha with alpha 0.3:
    #   p = 0.5 -> 0.15 + 0.7 = 0.85;  p = 1 -> 1.0;  p = 0 (logp = -inf) -> 0.7;
    #   p = 0.2 -> 0.06 + 0.7 = 0.76.
    adv = torch.tensor([2.0, -1.0])
    old = torch.log(torch.tensor([[0.5, 1.0, 0.0], [0.2, 0.5, 1.0]]))
    out = lopti_reweight(adv, old, alpha=0.3)
    want = torch.tensor([[2 * 0.85, 2 * 1.0, 2 * 0.7], [-0.76, -0.85, -1.0]])
    torch.testing.assert_close(out, want)
    # Per-token advantages (B, T) are accepted too.
    out2 = lopti_reweight(adv[:, None].expand(2, 3), old, alpha=0.3)
    torch.testing.assert_close(out2, want)


def test_lopti_alpha_zero_is_identity():
    adv = torch.tensor([1.5, -0.5])
    old = torch.log(torch.rand(2, 4, generator=torch.Generator().manual_seed(0)))
    torch.testing.assert_close(lopti_reweight(adv, old, 0.0), adv[:, None].expand(2, 4))


def test_nonuniform_group_mask_drops_all_equal_groups():
    # groups: 0 -> [0, 0] (all fail), 1 -> [1, 1] (all solved), 2 -> [0, 1], 3 -> [1, 0, 1],
    # 4 -> [1] (a single response is trivially all-equal).
    rewards = torch.tensor([0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0])
    index = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 3, 4])
    keep = nonuniform_group_mask(rewards, index)
    assert keep.tolist() == [False, False, False, False, True, True, True, True, True, False]
    assert keep.dtype == torch.bool


def test_nonuniform_group_mask_empty_batch():
    out = nonuniform_group_mask(torch.zeros(0), torch.zeros(0, dtype=torch.long))
    assert out.shape == (0,)


def test_overlong_penalty_hand_values():
    # max_len 100, buffer 20 -> expected 80: penalty = -min((L - 80) / 20, 1) * factor for L > 80.
    #   L = 50 -> 0; 80 -> 0; 90 -> -10/20 = -0.5; 95 -> -0.75; 100 -> -1; 120 -> -1 (capped).
    lengths = torch.tensor([50, 80, 90, 95, 100, 120])
    torch.testing.assert_close(overlong_penalty(lengths, 100, 20),
                               torch.tensor([0.0, 0.0, -0.5, -0.75, -1.0, -1.0]))
    torch.testing.assert_close(overlong_penalty(lengths, 100, 20, factor=2.0),
                               torch.tensor([0.0, 0.0, -1.0, -1.5, -2.0, -2.0]))


def test_overlong_penalty_disabled():
    out = overlong_penalty(torch.tensor([10, 1000]), 100, 0)
    assert out.dtype == torch.float32
    assert torch.equal(out, torch.zeros(2))
