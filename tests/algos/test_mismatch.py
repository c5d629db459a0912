"""Rollout/train mismatch KL and truncated importance sampling (archer/algos/mismatch.py),
with hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from archer.algos import LossInputs, compute_policy_loss
from archer.algos.mismatch import apply_tis, mismatch_metrics, truncated_is_weights
from archer.config import AlgoConfig, ConfigError, TokenClassConfig

LN2, LN4 = math.log(2.0), math.log(4.0)
# Row 0: sampler p = 0.5, 0.25 (+ a masked slot); trainer p = 0.25, 0.25.
# Row 1: sampler p = 0.1, trainer p = 0.4 (+ two masked slots holding junk).
SAMPLER = torch.log(torch.tensor([[0.5, 0.25, 1.0], [0.1, 1.0, 1.0]]))
TRAINER = torch.log(torch.tensor([[0.25, 0.25, 0.9], [0.4, 0.01, 0.3]]))
MASK = torch.tensor([[1, 1, 0], [1, 0, 0]])


def test_mismatch_kl_k3_and_k1_by_hand():
    out = mismatch_metrics(SAMPLER, TRAINER, MASK)
    # d = logp_t - logp_s on the 3 valid tokens: -ln2, 0, ln4.
    # k3 = e^d - d - 1: 0.5 + ln2 - 1 = 0.193147; 0; 4 - ln4 - 1 = 1.613706 -> mean 0.602284
    assert out["rollout/mismatch_kl"] == pytest.approx((0.5 + LN2 - 1 + 4 - LN4 - 1) / 3, abs=1e-6)
    assert out["rollout/mismatch_kl"] == pytest.approx(0.602284, abs=1e-6)
    # k1 = logp_s - logp_t = -d: ln2, 0, -ln4 -> mean (0.693147 - 1.386294) / 3 = -0.231049
    assert out["rollout/mismatch_kl_k1"] == pytest.approx(-0.231049, abs=1e-6)
    assert out["rollout/mismatch_abs_max"] == pytest.approx(LN4, abs=1e-6)  # masked junk ignored
    assert "rollout/tis_weight_mean" not in out


def test_mismatch_is_zero_when_sampler_equals_trainer_and_for_an_empty_mask():
    out = mismatch_metrics(TRAINER, TRAINER, MASK)
    assert out["rollout/mismatch_kl"] == 0.0 and out["rollout/mismatch_abs_max"] == 0.0
    empty = mismatch_metrics(SAMPLER, TRAINER, torch.zeros_like(MASK), tis_cap=2.0)
    assert empty["rollout/mismatch_kl"] == 0.0 and empty["rollout/tis_capped_frac"] == 0.0


def test_truncated_is_weights_by_hand():
    w = truncated_is_weights(TRAINER, SAMPLER, cap=2.0)
    # p_t / p_s = 0.5, 1, (masked) | 4 -> capped at 2
    assert w[0, :2].tolist() == pytest.approx([0.5, 1.0])
    assert w[1, 0].item() == pytest.approx(2.0)
    assert not w.requires_grad
    out = mismatch_metrics(SAMPLER, TRAINER, MASK, tis_cap=2.0)
    assert out["rollout/tis_weight_mean"] == pytest.approx((0.5 + 1.0 + 2.0) / 3)  # 1.166667
    assert out["rollout/tis_capped_frac"] == pytest.approx(1 / 3)  # only the ratio-4 token
    assert out["rollout/tis_weight_max"] == pytest.approx(2.0)  # the capped weight
    with pytest.raises(ValueError, match="cap"):
        truncated_is_weights(TRAINER, SAMPLER, cap=0.0)


def test_tis_multiplies_each_tokens_pg_loss_and_gradient():
    """One response, 2 tokens, A = 1, logp = old (ratio 1), token-mean, no KL.
    Token loss -A r = -1 each; TIS weights 0.5 and 2 -> loss -(0.5 + 2) / 2 = -1.25 and
    d loss / d logp_j = -w_j * r_j / 2 -> [-0.25, -1.0] (without TIS: -0.5 each)."""
    cfg = AlgoConfig(loss_agg_mode="token-mean", low=TokenClassConfig(0.2, 0.2, 1.0, 0.0))
    old = torch.log(torch.tensor([[0.3, 0.6]]))
    sampler = old - torch.log(torch.tensor([[0.5, 2.0]]))  # p_old / p_s = 0.5, 2
    weights = truncated_is_weights(old, sampler, cap=5.0)

    def loss_and_grad(adv):
        lp = old.clone().requires_grad_(True)
        inp = LossInputs(logprobs=lp, old_logprobs=old, advantages=adv,
                         response_mask=torch.ones(1, 2, dtype=torch.bool))
        out = compute_policy_loss("dual_token_clip", inp, cfg)
        out.loss.backward()
        return out.loss.item(), lp.grad[0].tolist()

    adv = torch.tensor([1.0])
    assert loss_and_grad(adv) == (pytest.approx(-1.0), pytest.approx([-0.5, -0.5]))
    tis_adv = apply_tis(adv, weights)
    assert tis_adv.shape == (1, 2)
    assert loss_and_grad(tis_adv) == (pytest.approx(-1.25), pytest.approx([-0.25, -1.0]))
    # A cap of 1 truncates the second weight: loss -(0.5 + 1) / 2 = -0.75
    capped = apply_tis(adv, truncated_is_weights(old, sampler, cap=1.0))
    assert loss_and_grad(capped)[0] == pytest.approx(-0.75)


@pytest.mark.parametrize("value", [0.0, -1.0, float("nan")])
def test_tis_cap_validation_names_the_field(value):
    with pytest.raises(ConfigError, match="tis_cap"):
        AlgoConfig(tis_cap=value)
    assert AlgoConfig(tis_cap=2.0).tis_cap == 2.0 and AlgoConfig().tis_cap is None
