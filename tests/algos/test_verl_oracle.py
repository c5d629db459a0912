"""Cross-check against verl's core_algos (a dev-only oracle, installed with --no-deps).

Archer's reference code is a verl fork, so on the shared special cases (GRPO / Dr.GRPO / RLOO
advantages, PPO-clip with dual clip in all four aggregation modes, k1/k2/k3) our functions must
agree with verl to 1e-6. Skipped when verl is not importable.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

try:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        verl = pytest.importorskip(
            "verl.trainer.ppo.core_algos",
            reason="verl is a dev-only oracle (pip install --no-deps verl)",
        )
except pytest.skip.Exception:
    raise
except Exception as exc:  # installed but broken (missing optional deps, version clash, ...)
    pytest.skip(f"verl.trainer.ppo.core_algos failed to import: {exc!r}", allow_module_level=True)

from archer.algos.advantages import dr_grpo_advantage, grpo_advantage, rloo_advantage  # noqa: E402
from archer.algos.aggregate import aggregate  # noqa: E402
from archer.algos.kl import kl_penalty  # noqa: E402
from archer.algos.policy_loss import dual_token_clip_loss  # noqa: E402
from archer.algos.types import LossInputs  # noqa: E402
from archer.config import AlgoConfig, TokenClassConfig  # noqa: E402

MODES = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]
SEEDS = range(5)


class _ActorCfg:
    """The few ActorConfig attributes compute_policy_loss_vanilla reads."""

    def __init__(self, clip_low, clip_high, clip_c, loss_scale_factor=None):
        self.clip_ratio = clip_low
        self.clip_ratio_low = clip_low
        self.clip_ratio_high = clip_high
        self.clip_ratio_c = clip_c
        self.global_batch_info = (
            {} if loss_scale_factor is None else {"loss_scale_factor": loss_scale_factor}
        )

    def get(self, key, default=None):
        return getattr(self, key, default)


def _outcome_batch(seed):
    """Rewards, group index, response mask (every response has >= 1 valid token)."""
    g = torch.Generator().manual_seed(seed)
    b, t = 24, 7
    groups = torch.randint(0, 7, (b,), generator=g)  # uneven sizes, some size-1 groups likely
    groups[-1] = 99  # one certain singleton
    if seed % 2 == 0:
        rewards = (torch.rand(b, generator=g) < 0.5).float()  # binary, as the recipe
    else:
        rewards = torch.rand(b, generator=g) * 2 - 0.5  # continuous (shaped) rewards
    lengths = torch.randint(1, t + 1, (b,), generator=g)
    mask = (torch.arange(t)[None, :] < lengths[:, None]).float()
    token_rewards = torch.zeros(b, t)
    token_rewards[torch.arange(b), lengths - 1] = rewards  # reward on the last valid token
    return rewards, groups, mask, token_rewards


@pytest.mark.parametrize("seed", SEEDS)
def test_grpo_matches_verl(seed):
    rewards, groups, mask, token_rewards = _outcome_batch(seed)
    want, _ = verl.compute_grpo_outcome_advantage(
        token_rewards, mask, index=groups.numpy(), epsilon=1e-6, norm_adv_by_std_in_grpo=True
    )
    ours = grpo_advantage(rewards, groups, eps=1e-6)[:, None] * mask
    torch.testing.assert_close(ours, want, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("seed", SEEDS)
def test_dr_grpo_matches_verl(seed):
    rewards, groups, mask, token_rewards = _outcome_batch(seed)
    want, _ = verl.compute_grpo_outcome_advantage(
        token_rewards, mask, index=groups.numpy(), epsilon=1e-6, norm_adv_by_std_in_grpo=False
    )
    ours = dr_grpo_advantage(rewards, groups)[:, None] * mask
    torch.testing.assert_close(ours, want, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("seed", SEEDS)
def test_rloo_matches_verl(seed):
    rewards, groups, mask, token_rewards = _outcome_batch(seed)
    want, _ = verl.compute_rloo_outcome_advantage(token_rewards, mask, index=groups.numpy())
    ours = rloo_advantage(rewards, groups)[:, None] * mask
    torch.testing.assert_close(ours, want, atol=1e-6, rtol=1e-6)


def test_grpo_matches_verl_with_string_uids():
    # verl groups by uid strings in practice; same grouping as integer indices.
    rewards, groups, mask, token_rewards = _outcome_batch(0)
    uids = np.array([f"uid-{int(k)}" for k in groups], dtype=object)
    want, _ = verl.compute_grpo_outcome_advantage(token_rewards, mask, index=uids)
    torch.testing.assert_close(grpo_advantage(rewards, groups)[:, None] * mask, want,
                               atol=1e-6, rtol=1e-6)


def _policy_batch(seed):
    g = torch.Generator().manual_seed(100 + seed)
    b, t = 8, 12
    old = -torch.rand(b, t, generator=g) * 4
    log_ratio = torch.randn(b, t, generator=g) * 0.3
    spikes = torch.rand(b, t, generator=g) < 0.08
    log_ratio = torch.where(spikes, log_ratio + 2.5, log_ratio)  # some r > c for dual clip
    logp = old + log_ratio
    adv = torch.randn(b, generator=g)
    lengths = torch.randint(1, t + 1, (b,), generator=g)
    lengths[2] = 0  # a fully masked row (verl excludes it from the seq means as we do)
    mask = torch.arange(t)[None, :] < lengths[:, None]
    high = torch.rand(b, t, generator=g) < 0.25
    return old, logp, adv, mask, high


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("eps_low", "eps_high", "clip_c"), [(0.2, 0.2, 10.0), (0.2, 0.28, 3.0)])
def test_ppo_clip_with_dual_clip_matches_verl(mode, seed, eps_low, eps_high, clip_c):
    old, logp0, adv, mask, high = _policy_batch(seed)
    norm = 16 if mode == "seq-mean-token-sum-norm" and seed % 2 else None
    # verl
    logp_v = logp0.clone().requires_grad_(True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loss_v, metrics_v = verl.compute_policy_loss_vanilla(
            old_log_prob=old,
            log_prob=logp_v,
            advantages=adv[:, None].expand_as(old),
            response_mask=mask.float(),
            loss_agg_mode=mode,
            config=_ActorCfg(eps_low, eps_high, clip_c, loss_scale_factor=norm),
        )
    (grad_v,) = torch.autograd.grad(loss_v, logp_v)
    # ours: both classes with the same bounds, no KL; a random entropy split must not matter
    cls = TokenClassConfig(eps_low, eps_high, 1.0, 0.0)
    cfg = AlgoConfig(high=cls, low=cls, dual_clip_c=clip_c, loss_agg_mode=mode,
                     loss_norm_length=norm)
    logp_o = logp0.clone().requires_grad_(True)
    out = dual_token_clip_loss(
        LossInputs(logprobs=logp_o, old_logprobs=old, advantages=adv, response_mask=mask,
                   high_entropy_mask=high),
        cfg,
    )
    (grad_o,) = torch.autograd.grad(out.loss, logp_o)
    torch.testing.assert_close(out.loss.detach(), loss_v.detach(), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(grad_o, grad_v, atol=1e-6, rtol=1e-6)
    m = out.metrics
    assert m["actor/clipfrac"].item() == pytest.approx(metrics_v["actor/pg_clipfrac"], abs=1e-6)
    assert m["actor/ppo_kl"].item() == pytest.approx(metrics_v["actor/ppo_kl"], abs=1e-6)
    # verl's pg_clipfrac_lower is the dual-clip fraction over all valid tokens.
    n_high = m["actor/tokens_high_entropy"].item()
    n_low = m["actor/tokens_low_entropy"].item()
    dual = (m["actor/dual_clipfrac_high_entropy"].item() * n_high
            + m["actor/dual_clipfrac_low_entropy"].item() * n_low) / (n_high + n_low)
    assert dual == pytest.approx(metrics_v["actor/pg_clipfrac_lower"], abs=1e-6)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("seed", SEEDS)
def test_deprecated_compute_policy_loss_agrees(mode, seed):
    old, logp, adv, mask, _ = _policy_batch(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loss_v, clipfrac_v, _, _ = verl.compute_policy_loss(
            old, logp, adv[:, None].expand_as(old), mask.float(), cliprange=0.2,
            cliprange_low=0.2, cliprange_high=0.28, clip_ratio_c=10.0, loss_agg_mode=mode,
        )
    cls = TokenClassConfig(0.2, 0.28, 1.0, 0.0)
    cfg = AlgoConfig(high=cls, low=cls, dual_clip_c=10.0, loss_agg_mode=mode)
    out = dual_token_clip_loss(LossInputs(logp, old, adv, mask), cfg)
    torch.testing.assert_close(out.loss, loss_v, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(out.metrics["actor/clipfrac"], clipfrac_v, atol=1e-6, rtol=0)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("seed", SEEDS)
def test_aggregation_matches_verl_agg_loss(mode, seed):
    g = torch.Generator().manual_seed(seed)
    mat = torch.randn(6, 10, generator=g)
    mask = (torch.rand(6, 10, generator=g) < 0.6).float()
    mask[0] = 0.0  # a fully masked row
    mask[1, 0] = 1.0  # at least one valid token overall
    for norm in (None, 32):
        want = verl.agg_loss(mat, mask, mode, loss_scale_factor=norm)
        torch.testing.assert_close(aggregate(mat, mask, mode, norm_length=norm), want,
                                   atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(("ours", "theirs"),
                         [("k1", "k1"), ("k2", "k2"), ("k2", "mse"), ("k3", "low_var_kl"),
                          ("k3", "k3")])
@pytest.mark.parametrize("seed", SEEDS)
def test_kl_matches_verl(ours, theirs, seed):
    g = torch.Generator().manual_seed(seed)
    logp = -torch.rand(5, 20, generator=g) * 5
    ref = logp + torch.randn(5, 20, generator=g) * 2
    ref[0, :4] = torch.tensor([40.0, -40.0, 25.0, -25.0])  # exercise the clamps
    want = verl.kl_penalty(logp, ref, theirs)
    torch.testing.assert_close(kl_penalty(logp, ref, ours), want, atol=1e-6, rtol=1e-6)
