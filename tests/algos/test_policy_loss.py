"""Dual-token clipped policy loss (archer/algos/policy_loss.py),
steps 4-7 of the method (docs/method.md, section 2).

Conventions in the comments: r = ratio, A = advantage, N = number of aggregated tokens.
d/dlogp of -A r is -A r (since dr/dlogp = r) when the unclipped branch is active, 0 when clipped.
"""

from __future__ import annotations

import inspect
import math

import pytest
import torch

from archer.algos.kl import kl_penalty
from archer.algos.policy_loss import (
    POLICY_LOSSES,
    NonFiniteLogprobError,
    compute_policy_loss,
    dual_token_clip_loss,
)
from archer.algos.schedule import build_update_plan, phase_token_mask
from archer.algos.types import LossInputs
from archer.config import AlgoConfig, TokenClassConfig

MODES = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]
T_, F_ = True, False


def make_cfg(high=(0.5, 0.5), low=(0.2, 0.2), kl=(0.0, 0.0), pg=(1.0, 1.0), **kw) -> AlgoConfig:
    """Config with (clip_low, clip_high) per class, (high, low) KL and PG weights."""
    return AlgoConfig(
        high=TokenClassConfig(high[0], high[1], pg[0], kl[0]),
        low=TokenClassConfig(low[0], low[1], pg[1], kl[1]),
        **kw,
    )


def make_inputs(log_ratio, adv, high=None, mask=None, ref_minus_logp=None, old=None,
                token_mask=None, entropy=None):
    """LossInputs with logp = old + log_ratio (a leaf with grad) and ref = logp + d."""
    log_ratio = torch.as_tensor(log_ratio, dtype=torch.float32)
    if old is None:
        old = torch.full_like(log_ratio, -1.0)
    logp = (old + log_ratio).detach().requires_grad_(True)
    if mask is None:
        mask = torch.ones_like(log_ratio, dtype=torch.bool)
    ref = None
    if ref_minus_logp is not None:
        ref = logp.detach() + torch.as_tensor(ref_minus_logp, dtype=torch.float32)
    inp = LossInputs(
        logprobs=logp,
        old_logprobs=old,
        advantages=torch.as_tensor(adv, dtype=torch.float32),
        response_mask=torch.as_tensor(mask).bool(),
        high_entropy_mask=None if high is None else torch.as_tensor(high),
        ref_logprobs=ref,
        entropy=entropy,
        token_mask=token_mask,
    )
    return logp, inp


def loss_and_grad(inp, cfg, which="loss"):
    out = dual_token_clip_loss(inp, cfg)
    (grad,) = torch.autograd.grad(getattr(out, which), inp.logprobs)
    return out, grad


LN14 = math.log(1.4)  # 0.3364722 -> ratio 1.4
LN07 = math.log(0.7)  # -0.3566749 -> ratio 0.7


# --- the examples ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("is_high", "want_loss", "want_grad"),
    [
        # high-entropy: ratio 1.4 < 1 + 0.5 = 1.5 -> unclipped: loss -A r = -1.4, grad -A r = -1.4
        (True, -1.4, -1.4),
        # low-entropy: ratio 1.4 > 1 + 0.2 = 1.2 -> clipped: loss -A 1.2 = -1.2, grad 0
        (False, -1.2, 0.0),
    ],
)
def test_positive_advantage_ratio_14(is_high, want_loss, want_grad):
    _, inp = make_inputs([[LN14]], [1.0], high=[[is_high]])
    out, grad = loss_and_grad(inp, make_cfg())
    assert out.loss.item() == pytest.approx(want_loss, abs=1e-6)
    assert grad.item() == pytest.approx(want_grad, abs=1e-6)


def test_positive_advantage_both_classes_in_one_response():
    # Two tokens, r = 1.4, A = 1, token 0 high (bound 1.5), token 1 low (bound 1.2), token-mean:
    # loss = (-1.4 + -1.2) / 2 = -1.3; grad = [-1.4 / 2, 0] = [-0.7, 0].
    _, inp = make_inputs([[LN14, LN14]], [1.0], high=[[T_, F_]])
    out, grad = loss_and_grad(inp, make_cfg(loss_agg_mode="token-mean"))
    assert out.loss.item() == pytest.approx(-1.3, abs=1e-6)
    torch.testing.assert_close(grad, torch.tensor([[-0.7, 0.0]]))


@pytest.mark.parametrize(
    ("is_high", "want_loss", "want_grad"),
    [
        # high: r = 0.7 >= 1 - 0.5 -> unclipped: loss -A r = 0.7, grad -A r = +0.7
        (True, 0.7, 0.7),
        # low: r = 0.7 < 1 - 0.2 = 0.8 -> clipped: max(0.7, 0.8) = 0.8, grad 0
        (False, 0.8, 0.0),
    ],
)
def test_negative_advantage_ratio_07(is_high, want_loss, want_grad):
    _, inp = make_inputs([[LN07]], [-1.0], high=[[is_high]])
    out, grad = loss_and_grad(inp, make_cfg())
    assert out.loss.item() == pytest.approx(want_loss, abs=1e-6)
    assert grad.item() == pytest.approx(want_grad, abs=1e-6)


def test_dual_clip_caps_negative_advantage_loss():
    # A = -1, r = 12: max(-A r, -A clip(r)) = max(12, 1.2) = 12 > -A c = 10 -> loss = 10, grad 0.
    _, inp = make_inputs([[math.log(12.0)]], [-1.0], high=[[F_]])
    out, grad = loss_and_grad(inp, make_cfg())
    assert out.loss.item() == pytest.approx(10.0, abs=1e-5)
    assert grad.item() == 0.0
    assert out.metrics["actor/dual_clipfrac_low_entropy"].item() == 1.0
    # A = -2: loss = -A c = 20 (still constant).
    _, inp = make_inputs([[math.log(12.0)]], [-2.0], high=[[F_]])
    assert dual_token_clip_loss(inp, make_cfg()).loss.item() == pytest.approx(20.0, abs=1e-5)
    # Without dual clip: loss = -A r = 12, grad = -A r = 12.
    _, inp = make_inputs([[math.log(12.0)]], [-1.0], high=[[F_]])
    out, grad = loss_and_grad(inp, make_cfg(dual_clip_c=None))
    assert out.loss.item() == pytest.approx(12.0, abs=1e-4)
    assert grad.item() == pytest.approx(12.0, abs=1e-4)
    assert "actor/dual_clipfrac_low_entropy" not in out.metrics


def test_negative_advantage_large_ratio_below_c_is_not_clipped():
    # A = -1, r = 5 (1 + eps_high < r < c): PPO never clips above for A < 0:
    # max(5, 1.2) = 5 < 10 -> loss 5, grad -A r = 5.
    _, inp = make_inputs([[math.log(5.0)]], [-1.0], high=[[F_]])
    out, grad = loss_and_grad(inp, make_cfg())
    assert out.loss.item() == pytest.approx(5.0, abs=1e-5)
    assert grad.item() == pytest.approx(5.0, abs=1e-5)


def test_dual_clip_does_not_apply_to_positive_advantage():
    # A = +1, r = 12: max(-12, -1.2) = -1.2 (ordinary upper clip), grad 0.
    _, inp = make_inputs([[math.log(12.0)]], [1.0], high=[[F_]])
    out, grad = loss_and_grad(inp, make_cfg())
    assert out.loss.item() == pytest.approx(-1.2, abs=1e-6)
    assert grad.item() == 0.0


def test_log_ratio_is_clamped_at_20():
    # logp - old = 50 -> clamped to 20 -> r = e^20 (finite); A = -1 -> dual clip -> 10.
    _, inp = make_inputs([[50.0]], [-1.0], high=[[F_]])
    out = dual_token_clip_loss(inp, make_cfg())
    assert out.loss.item() == pytest.approx(10.0)
    assert out.metrics["actor/ratio_max"].item() == pytest.approx(math.exp(20.0), rel=1e-5)


@pytest.mark.parametrize(
    ("high_bounds", "low_bounds", "want_loss"),
    [
        # Only the upper bounds differ: high (0.2, 0.5), low (0.2, 0.2); tokens r = 1.4, A = +1:
        # high unclipped -1.4, low clipped -1.2 -> token-mean -1.3.
        ((0.2, 0.5), (0.2, 0.2), -1.3),
        # Only the lower bounds differ: high (0.5, 0.2), low (0.2, 0.2); r = 1.4, A = +1:
        # both clipped at 1.2 -> -1.2.
        ((0.5, 0.2), (0.2, 0.2), -1.2),
    ],
)
def test_classes_differing_in_one_bound_only(high_bounds, low_bounds, want_loss):
    # A plausible ablation (e.g. the paper's "high-entropy clip 0.2 / 0.4 / 0.5, low fixed 0.2"
    # applied to the upper side only). Must not crash.
    _, inp = make_inputs([[LN14, LN14]], [1.0], high=[[T_, F_]])
    cfg = make_cfg(high=high_bounds, low=low_bounds, loss_agg_mode="token-mean")
    out = dual_token_clip_loss(inp, cfg)
    assert out.loss.item() == pytest.approx(want_loss, abs=1e-6)


# --- PG weights ---------------------------------------------------------------------------


def _near_one_batch(seed, b=4, t=8):
    """Random batch with ratios within [0.99, 1.01] (never clipped) and non-zero advantages."""
    g = torch.Generator().manual_seed(seed)
    log_ratio = (torch.rand(b, t, generator=g) - 0.5) * 0.02
    adv = torch.randn(b, generator=g).sign() * (0.5 + torch.rand(b, generator=g))
    high = torch.rand(b, t, generator=g) < 0.4
    high[:, 0] = True
    high[:, 1] = False
    return log_ratio, adv, high


@pytest.mark.parametrize("zero_class", ["high", "low"])
def test_pg_weight_zero_gives_zero_gradient_for_that_class(zero_class):
    log_ratio, adv, high = _near_one_batch(0)
    pg = (0.0, 1.0) if zero_class == "high" else (1.0, 0.0)
    _, inp = make_inputs(log_ratio, adv, high=high)
    _, grad = loss_and_grad(inp, make_cfg(pg=pg))
    zeroed = high if zero_class == "high" else ~high
    assert torch.all(grad[zeroed] == 0.0)
    assert torch.all(grad[~zeroed] != 0.0)


def test_pg_weight_scales_class_gradient():
    # pg_weight 2 on the high class doubles exactly those tokens' gradients.
    log_ratio, adv, high = _near_one_batch(1)
    _, inp = make_inputs(log_ratio, adv, high=high)
    _, g1 = loss_and_grad(inp, make_cfg())
    _, g2 = loss_and_grad(inp, make_cfg(pg=(2.0, 1.0)))
    torch.testing.assert_close(g2[high], 2 * g1[high])
    torch.testing.assert_close(g2[~high], g1[~high])


# --- KL weights and per-class normalisation -------------------------------------------------

# One response, 5 tokens, the first 2 high-entropy. logp = old (r = 1) and A = 0, so the PG
# term is 0 and the loss is the KL term alone. d = logp_ref - logp per token:
KL_D = [[0.5, -0.5, 1.0, -1.0, 0.0]]
KL_HIGH = [[T_, T_, F_, F_, F_]]
# k3 = e^d - d - 1 = [0.1487213, 0.1065307, 0.7182818, 0.3678794, 0.0]
K3 = [math.exp(d) - d - 1 for d in KL_D[0]]


def _kl_inputs(high=KL_HIGH):
    return make_inputs([[0.0] * 5], [0.0], high=high, ref_minus_logp=KL_D)


def test_kl_per_class_low_weight_only():
    # kl = w_low * mean over the 3 low tokens = 0.1 * (0.7182818 + 0.3678794 + 0) / 3
    #    = 0.1 * 0.3620538 = 0.03620538. The high-entropy tokens (weight 0) get no KL.
    _, inp = _kl_inputs()
    out, grad = loss_and_grad(inp, make_cfg(kl=(0.0, 0.1)))
    assert out.kl_loss.item() == pytest.approx(0.03620538, abs=1e-7)
    assert out.pg_loss.item() == 0.0
    assert out.loss.item() == pytest.approx(0.03620538, abs=1e-7)
    # grad = w * (1 - e^d) / 3 on low tokens: d = 1 -> 0.1 * (-1.7182818) / 3 = -0.0572761;
    # d = -1 -> 0.1 * 0.6321206 / 3 = 0.0210707; d = 0 -> 0. High tokens: 0.
    torch.testing.assert_close(
        grad, torch.tensor([[0.0, 0.0, -0.05727606, 0.02107069, 0.0]]), atol=1e-7, rtol=0
    )


def test_kl_per_class_both_weights():
    # 0.2 * mean_high + 0.1 * mean_low = 0.2 * (0.1487213 + 0.1065307) / 2 + 0.1 * 0.3620538
    #   = 0.2 * 0.1276260 + 0.0362054 = 0.0255252 + 0.0362054 = 0.0617306
    _, inp = _kl_inputs()
    out = dual_token_clip_loss(inp, make_cfg(kl=(0.2, 0.1)))
    assert out.kl_loss.item() == pytest.approx(0.0617306, abs=1e-7)


def test_kl_all_tokens_normalisation():
    # all_tokens: mean over all 5 tokens of w_c * k3 = (0.2 * 0.2552520 + 0.1 * 1.0861612) / 5
    #   = (0.0510504 + 0.1086161) / 5 = 0.0319333
    _, inp = _kl_inputs()
    out = dual_token_clip_loss(inp, make_cfg(kl=(0.2, 0.1), kl_normalization="all_tokens"))
    assert out.kl_loss.item() == pytest.approx(0.0319333, abs=1e-7)


def test_kl_empty_class_contributes_zero():
    # No high tokens: the high term (weight 0.5) is 0; low = 0.1 * mean of all 5 k3 values
    #   = 0.1 * 1.3414132 / 5 = 0.0268283.
    _, inp = _kl_inputs(high=[[F_] * 5])
    out = dual_token_clip_loss(inp, make_cfg(kl=(0.5, 0.1)))
    assert out.kl_loss.item() == pytest.approx(0.1 * sum(K3) / 5, abs=1e-7)
    assert math.isfinite(out.loss.item())
    # All tokens high and only the low class weighted: exactly 0, and no NaN.
    _, inp = _kl_inputs(high=[[T_] * 5])
    out, grad = loss_and_grad(inp, make_cfg(kl=(0.0, 0.1)))
    assert out.kl_loss.item() == 0.0
    assert torch.all(grad == 0.0)


def test_kl_weight_needs_reference():
    _, inp = make_inputs([[0.0]], [1.0], high=[[F_]])
    with pytest.raises(ValueError, match="ref_logprobs"):
        dual_token_clip_loss(inp, make_cfg(kl=(0.0, 0.001)))


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_kl_estimator_is_selectable(estimator):
    _, inp = _kl_inputs()
    out = dual_token_clip_loss(inp, make_cfg(kl=(0.0, 1.0), kl_estimator=estimator))
    k = kl_penalty(inp.logprobs.detach(), inp.ref_logprobs, estimator)[0, 2:].mean()
    assert out.kl_loss.item() == pytest.approx(k.item(), abs=1e-6)


# --- invariants against an independent PPO-clip reference ------------------------------------


def ref_ppo_tokens(logp, old, adv, eps_low, eps_high, c):
    """Independent PPO-clip + dual-clip token losses, (B, T)."""
    a = adv[:, None] if adv.dim() == 1 else adv
    r = torch.exp(torch.clamp(logp - old, -20.0, 20.0))
    loss = torch.maximum(-a * r, -a * torch.clamp(r, 1.0 - eps_low, 1.0 + eps_high))
    if c is not None:
        loss = torch.where(a < 0, torch.minimum(loss, -a * c), loss)
    return loss


def ref_agg(mat, mask, mode, norm_length=None):
    """Independent aggregation by row selection (no mask multiplication)."""
    rows = [mat[i][mask[i]] for i in range(mat.shape[0])]
    rows = [r for r in rows if r.numel() > 0]
    if not rows:
        return mat.sum() * 0.0
    if mode == "token-mean":
        return torch.cat(rows).mean()
    if mode == "seq-mean-token-mean":
        return torch.stack([r.mean() for r in rows]).mean()
    seq_sum = torch.stack([r.sum() for r in rows]).mean()
    if mode == "seq-mean-token-sum":
        return seq_sum
    return seq_sum / (mat.shape[-1] if norm_length is None else norm_length)


def random_batch(seed, b=6, t=9):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(b, t, generator=g) * 3
    log_ratio = torch.randn(b, t, generator=g) * 0.3
    spikes = torch.rand(b, t, generator=g) < 0.1  # some ratios far out (dual clip region)
    log_ratio = torch.where(spikes, log_ratio + 3.0, log_ratio)
    adv = torch.randn(b, generator=g)
    lengths = torch.randint(1, t + 1, (b,), generator=g)
    lengths[1] = 0  # one fully padded response
    mask = torch.arange(t)[None, :] < lengths[:, None]
    high = torch.rand(b, t, generator=g) < 0.3
    ref_minus = torch.randn(b, t, generator=g) * 0.5
    return old, log_ratio, adv, mask, high, ref_minus


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("seed", range(4))
def test_equal_bounds_no_kl_equals_ppo_clip(mode, seed):
    old, log_ratio, adv, mask, high, _ = random_batch(seed)
    _, inp = make_inputs(log_ratio, adv, high=high, mask=mask, old=old)
    for eps_low, eps_high, c in [(0.2, 0.2, 10.0), (0.2, 0.28, 3.0), (0.3, 0.5, None)]:
        cfg = make_cfg(high=(eps_low, eps_high), low=(eps_low, eps_high), loss_agg_mode=mode,
                       dual_clip_c=c)
        out, grad = loss_and_grad(inp, cfg)
        logp = inp.logprobs.detach().clone().requires_grad_(True)
        want = ref_agg(ref_ppo_tokens(logp, old, adv, eps_low, eps_high, c), mask, mode)
        (want_grad,) = torch.autograd.grad(want, logp)
        torch.testing.assert_close(out.loss, want.detach(), atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(grad, want_grad, atol=1e-7, rtol=1e-6)
        assert out.kl_loss.item() == 0.0


def test_equal_bounds_sum_norm_with_norm_length():
    old, log_ratio, adv, mask, high, _ = random_batch(7)
    _, inp = make_inputs(log_ratio, adv, high=high, mask=mask, old=old)
    cfg = make_cfg(low=(0.5, 0.5), loss_agg_mode="seq-mean-token-sum-norm", loss_norm_length=64)
    out = dual_token_clip_loss(inp, cfg)
    want = ref_agg(ref_ppo_tokens(inp.logprobs.detach(), old, adv, 0.5, 0.5, 10.0), mask,
                   "seq-mean-token-sum-norm", 64)
    torch.testing.assert_close(out.loss.detach(), want, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("mode", MODES)
def test_equal_kl_weights_differ_only_by_per_class_normalisation(mode):
    old, log_ratio, adv, mask, high, ref_minus = random_batch(11)
    _, inp = make_inputs(log_ratio, adv, high=high, mask=mask, old=old, ref_minus_logp=ref_minus)
    w = 0.05
    logp = inp.logprobs.detach().clone().requires_grad_(True)
    pg = ref_agg(ref_ppo_tokens(logp, old, adv, 0.2, 0.2, 10.0), mask, mode)
    kl = kl_penalty(logp, inp.ref_logprobs, "k3")
    high_v, low_v = mask & high, mask & ~high
    # per_class: pg + w * agg over the high tokens + w * agg over the low tokens
    want = pg + w * ref_agg(kl, high_v, mode) + w * ref_agg(kl, low_v, mode)
    cfg = make_cfg(high=(0.2, 0.2), kl=(w, w), loss_agg_mode=mode)
    out, grad = loss_and_grad(inp, cfg)
    (want_grad,) = torch.autograd.grad(want, logp)
    torch.testing.assert_close(out.loss, want.detach(), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(grad, want_grad, atol=1e-7, rtol=1e-6)
    # all_tokens: PPO-clip + w * agg(KL) over all valid tokens
    logp2 = inp.logprobs.detach().clone().requires_grad_(True)
    pg2 = ref_agg(ref_ppo_tokens(logp2, old, adv, 0.2, 0.2, 10.0), mask, mode)
    want_all = pg2 + w * ref_agg(kl_penalty(logp2, inp.ref_logprobs, "k3"), mask, mode)
    cfg_all = make_cfg(high=(0.2, 0.2), kl=(w, w), loss_agg_mode=mode,
                       kl_normalization="all_tokens")
    out_all, grad_all = loss_and_grad(inp, cfg_all)
    (want_grad_all,) = torch.autograd.grad(want_all, logp2)
    torch.testing.assert_close(out_all.loss, want_all.detach(), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(grad_all, want_grad_all, atol=1e-7, rtol=1e-6)
    # The two normalisations really differ (same PG term).
    torch.testing.assert_close(out.pg_loss, out_all.pg_loss)
    assert abs(out.kl_loss.item() - out_all.kl_loss.item()) > 1e-4


def test_ppo_clip_loss_ignores_entropy_split():
    old, log_ratio, adv, mask, high, _ = random_batch(3)
    _, inp = make_inputs(log_ratio, adv, high=high, mask=mask, old=old)
    cfg = make_cfg()  # high (0.5, 0.5), low (0.2, 0.2): ppo_clip uses the low bounds everywhere
    out = compute_policy_loss("ppo_clip", inp, cfg)
    want = ref_agg(ref_ppo_tokens(inp.logprobs.detach(), old, adv, 0.2, 0.2, 10.0), mask,
                   cfg.loss_agg_mode)
    torch.testing.assert_close(out.loss.detach(), want, atol=1e-6, rtol=1e-6)
    archer = compute_policy_loss("dual_token_clip", inp, cfg)
    assert abs(archer.loss.item() - out.loss.item()) > 1e-4  # the split matters
    assert POLICY_LOSSES.names() == ["aspo", "dual_token_clip", "ppo_clip"]
    with pytest.raises(KeyError, match="dual_token_clip"):
        compute_policy_loss("grpo", inp, cfg)


def test_per_token_advantages_equal_broadcast():
    old, log_ratio, adv, mask, high, _ = random_batch(5)
    _, inp1 = make_inputs(log_ratio, adv, high=high, mask=mask, old=old)
    _, inp2 = make_inputs(log_ratio, adv[:, None].expand(-1, 9), high=high, mask=mask, old=old)
    cfg = make_cfg()
    torch.testing.assert_close(dual_token_clip_loss(inp1, cfg).loss,
                               dual_token_clip_loss(inp2, cfg).loss)


# --- update modes ----------------------------------------------------------------------------


def test_mask_mode_low_entropy_tokens_get_exactly_zero_gradient():
    log_ratio, adv, high = _near_one_batch(2)
    mask = torch.ones_like(high)
    mask[3, 5:] = False
    cfg = make_cfg(update_mode="mask", loss_agg_mode="token-mean")
    (phase,) = build_update_plan(cfg)
    token_mask = phase_token_mask(phase, mask, high)
    _, inp = make_inputs(log_ratio, adv, high=high, mask=mask, token_mask=token_mask)
    out, grad = loss_and_grad(inp, cfg)
    assert torch.all(grad[~(high & mask)] == 0.0)
    assert torch.all(grad[high & mask] != 0.0)
    # Aggregation counts only the high tokens: token-mean over them of -A r.
    old = inp.old_logprobs
    want = ref_agg(ref_ppo_tokens(inp.logprobs.detach(), old, adv, 0.5, 0.5, 10.0),
                   high & mask, "token-mean")
    torch.testing.assert_close(out.loss.detach(), want)
    assert out.metrics["actor/tokens_low_entropy"].item() == 0
    assert out.metrics["actor/tokens_high_entropy"].item() == int((high & mask).sum())


@pytest.mark.parametrize(
    ("split", "first"),
    [("prob", "low_prob"), ("prob", "high_prob"),
     ("entropy", "high_entropy"), ("entropy", "low_entropy")],
)
def test_async_phases_update_disjoint_token_sets(split, first):
    log_ratio, adv, high = _near_one_batch(4)
    mask = torch.ones_like(high)
    mask[0, 6:] = False
    old = torch.log(torch.rand(high.shape, generator=torch.Generator().manual_seed(9)))
    cfg = make_cfg(update_mode="async", async_split=split, async_first=first)
    plan = build_update_plan(cfg)
    touched = torch.zeros(high.shape, dtype=torch.int64)
    for phase in plan:
        tm = phase_token_mask(phase, mask, high, old, cfg.async_prob_threshold)
        _, inp = make_inputs(log_ratio, adv, high=high, mask=mask, old=old, token_mask=tm)
        _, grad = loss_and_grad(inp, cfg)
        assert torch.all(grad[~tm] == 0.0)
        assert torch.all(grad[tm] != 0.0)
        touched += (grad != 0).long()
    assert torch.equal(touched, mask.long())  # every valid token exactly once


# --- diagnostics ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_pg_contributions_add_up_and_counts(mode):
    old, log_ratio, adv, mask, high, ref_minus = random_batch(21)
    ent = torch.rand(high.shape)
    _, inp = make_inputs(log_ratio, adv, high=high, mask=mask, old=old, ref_minus_logp=ref_minus,
                         entropy=ent)
    out = dual_token_clip_loss(inp, make_cfg(loss_agg_mode=mode))
    m = out.metrics
    total = m["actor/pg_contrib_high_entropy"] + m["actor/pg_contrib_low_entropy"]
    torch.testing.assert_close(total, out.pg_loss.detach(), atol=1e-6, rtol=1e-6)
    assert m["actor/tokens_high_entropy"].item() == int((high & mask).sum())
    assert m["actor/tokens_low_entropy"].item() == int((~high & mask).sum())
    assert m["actor/entropy_high_entropy"].item() == pytest.approx(ent[high & mask].mean().item(),
                                                                   abs=1e-6)
    kl = kl_penalty(inp.logprobs.detach(), inp.ref_logprobs, "k3")
    assert m["actor/kl_low_entropy"].item() == pytest.approx(kl[~high & mask].mean().item(),
                                                             abs=1e-6)
    torch.testing.assert_close(m["actor/loss"], out.loss.detach())
    assert not any(v.requires_grad for v in m.values())


def test_clip_fractions_per_class_and_side_hand_example():
    # Per-token advantages. High class (eps 0.5/0.5), 3 tokens:
    #   r 1.6, A +1 -> 1.6 > 1.5: upper clip;  r 1.4, A +1 -> inside;  r 0.4, A -1 -> < 0.5: lower.
    # Low class (eps 0.2/0.2), 4 tokens:
    #   r 1.4, A +1 -> upper;  r 0.7, A -1 -> lower;  r 1.0, A +1 -> inside;  r 1.3, A +1 -> upper.
    # Padding token (r 3, A +1) must not count.
    r = [1.6, 1.4, 0.4, 1.4, 0.7, 1.0, 1.3, 3.0]
    a = [[1.0, 1.0, -1.0, 1.0, -1.0, 1.0, 1.0, 1.0]]
    high = [[T_, T_, T_, F_, F_, F_, F_, F_]]
    mask = [[1, 1, 1, 1, 1, 1, 1, 0]]
    _, inp = make_inputs([[math.log(x) for x in r]], a, high=high, mask=mask)
    m = dual_token_clip_loss(inp, make_cfg()).metrics
    assert m["actor/tokens_high_entropy"].item() == 3
    assert m["actor/tokens_low_entropy"].item() == 4
    assert m["actor/clipfrac_high_entropy_upper"].item() == pytest.approx(1 / 3)
    assert m["actor/clipfrac_high_entropy_lower"].item() == pytest.approx(1 / 3)
    assert m["actor/clipfrac_low_entropy_upper"].item() == pytest.approx(2 / 4)
    assert m["actor/clipfrac_low_entropy_lower"].item() == pytest.approx(1 / 4)
    assert m["actor/clipfrac"].item() == pytest.approx(5 / 7)  # 1 + 1 + 2 + 1 of 7 valid
    assert m["actor/dual_clipfrac_low_entropy"].item() == 0.0
    # ratio statistics over valid tokens only (the padding r = 3 is excluded)
    assert m["actor/ratio_max"].item() == pytest.approx(1.6, abs=1e-6)
    assert m["actor/ratio_min"].item() == pytest.approx(0.4, abs=1e-6)


def test_a_class_the_loss_does_not_train_has_no_clip_fraction_but_its_kl_and_entropy():
    """Mask mode trains the high-entropy tokens only: the low class has no clip fraction (not
    a 0 that would pull averages down), while its KL to the reference and its entropy are
    measured over all its tokens, since they drift with the shared weights."""
    # one response, 4 tokens: high, high, low, low (the last one padded)
    r = [1.6, 1.0, 1.4, 1.0]
    high = [[T_, T_, F_, F_]]
    mask = [[1, 1, 1, 0]]
    ref_minus = [[0.0, 0.5, 0.25, 9.0]]
    ent = torch.tensor([[2.0, 1.0, 0.5, 7.0]])
    cfg = make_cfg(update_mode="mask", kl_monitor=True)
    (phase,) = build_update_plan(cfg)
    tm = phase_token_mask(phase, torch.tensor(mask).bool(), torch.tensor(high))
    _, inp = make_inputs([[math.log(x) for x in r]], [1.0], high=high, mask=mask,
                         ref_minus_logp=ref_minus, token_mask=tm, entropy=ent)
    m = dual_token_clip_loss(inp, cfg).metrics
    assert "actor/clipfrac_low_entropy_upper" not in m
    assert "actor/clipfrac_low_entropy_lower" not in m
    assert m["actor/tokens_low_entropy"].item() == 0  # trained tokens
    assert m["actor/clipfrac_high_entropy_upper"].item() == pytest.approx(1 / 2)  # r 1.6 > 1.5
    # k3 on the one valid low token, d = ref - logp = 0.25: e^d - d - 1
    assert m["actor/kl_low_entropy"].item() == pytest.approx(math.exp(0.25) - 1.25, rel=1e-5)
    assert m["actor/kl_high_entropy"].item() == pytest.approx(
        (0.0 + math.exp(0.5) - 1.5) / 2, rel=1e-5)
    assert m["actor/entropy_low_entropy"].item() == pytest.approx(0.5)  # padding excluded
    assert m["actor/entropy_high_entropy"].item() == pytest.approx(1.5)
    # a micro-batch without a high-entropy token reports no high-class means at all
    _, none_high = make_inputs([[0.1, 0.2]], [1.0], high=[[F_, F_]], entropy=torch.ones(1, 2),
                               ref_minus_logp=[[0.1, 0.1]])
    m = dual_token_clip_loss(none_high, make_cfg(kl_monitor=True)).metrics
    assert not any(k.startswith(("actor/clipfrac_high", "actor/kl_high", "actor/entropy_high"))
                   for k in m)
    assert m["actor/tokens_high_entropy"].item() == 0 and "actor/kl_low_entropy" in m


def test_with_metrics_false_skips_diagnostics():
    old, log_ratio, adv, mask, high, _ = random_batch(2)
    _, inp = make_inputs(log_ratio, adv, high=high, mask=mask, old=old)
    a = dual_token_clip_loss(inp, make_cfg())
    b = dual_token_clip_loss(inp, make_cfg(), with_metrics=False)
    assert b.metrics == {}
    torch.testing.assert_close(a.loss, b.loss)


# --- gradients versus the analytic gradient of the clipped objective --------------------------

# (ratio, A, is_high) -> analytic d token_loss / d logp. High bounds [0.5, 1.5], low [0.8, 1.2],
# dual clip c = 10.
GRAD_CASES = [
    (1.4, 1.0, True, -1.4),  # A > 0, r < 1.5: unclipped -> -A r
    (1.6, 1.0, True, 0.0),  # A > 0, r > 1.5: clipped
    (0.3, 1.0, True, -0.3),  # A > 0, r below 1 - eps: max(-0.3, -0.5) = -0.3 -> unclipped
    (0.7, -2.0, True, 1.4),  # A < 0, r in range: -A r = 1.4
    (0.4, -2.0, True, 0.0),  # A < 0, r < 0.5: clipped at 0.5
    (3.0, -2.0, True, 6.0),  # A < 0, 1.5 < r < c: unclipped -> -A r = 6
    (11.0, -2.0, True, 0.0),  # A < 0, r > c = 10: dual clip -> constant -A c
    (1.1, 0.5, False, -0.55),  # low, A > 0, r < 1.2: -A r = -0.55
    (1.3, 0.5, False, 0.0),  # low, r > 1.2: clipped
    (0.75, -1.0, False, 0.0),  # low, A < 0, r < 0.8: clipped
    (0.9, -1.0, False, 0.9),  # low, A < 0, r in range: -A r = 0.9
]


def test_autograd_matches_analytic_gradient_token_mean():
    # token-mean over N = 11 tokens: each token's gradient is divided by 11.
    r = [[math.log(c[0]) for c in GRAD_CASES]]
    a = [[c[1] for c in GRAD_CASES]]
    high = [[c[2] for c in GRAD_CASES]]
    _, inp = make_inputs(r, a, high=high)
    _, grad = loss_and_grad(inp, make_cfg(loss_agg_mode="token-mean"))
    want = torch.tensor([[c[3] / len(GRAD_CASES) for c in GRAD_CASES]])
    torch.testing.assert_close(grad, want, atol=1e-6, rtol=1e-5)


def test_autograd_matches_analytic_gradient_seq_mean_token_mean():
    # Response 0: cases 0..6 (n = 7), response 1: cases 7..10 (n = 4, 3 padded slots).
    # seq-mean-token-mean over 2 responses: gradient = analytic / (n_i * 2).
    rows = [GRAD_CASES[:7], GRAD_CASES[7:] + [(1.0, 1.0, False, 0.0)] * 3]
    r = [[math.log(c[0]) for c in row] for row in rows]
    a = [[c[1] for c in row] for row in rows]
    high = [[c[2] for c in row] for row in rows]
    mask = [[1] * 7, [1] * 4 + [0] * 3]
    _, inp = make_inputs(r, a, high=high, mask=mask)
    _, grad = loss_and_grad(inp, make_cfg())
    want = torch.tensor([[c[3] / (7 * 2) for c in rows[0]],
                         [c[3] / (4 * 2) for c in rows[1][:4]] + [0.0] * 3])
    torch.testing.assert_close(grad, want, atol=1e-6, rtol=1e-5)


def test_autograd_matches_analytic_gradient_random():
    # Analytic: unclipped iff (A > 0 and r <= 1 + eps_high) or (A < 0 and 1 - eps_low <= r <= c);
    # then d/dlogp = -A r / N, else 0. Ratios avoid the exact kinks.
    g = torch.Generator().manual_seed(5)
    b, t = 5, 40
    log_ratio = torch.randn(b, t, generator=g) * 0.6
    adv = torch.randn(b, t, generator=g)
    high = torch.rand(b, t, generator=g) < 0.3
    _, inp = make_inputs(log_ratio, adv, high=high)
    _, grad = loss_and_grad(inp, make_cfg(loss_agg_mode="token-mean"))
    r = log_ratio.exp()
    eps = torch.where(high, 0.5, 0.2)
    pos_ok = (adv > 0) & (r <= 1 + eps)
    neg_ok = (adv < 0) & (r >= 1 - eps) & (r <= 10.0)
    want = torch.where(pos_ok | neg_ok, -adv * r, torch.zeros_like(r)) / (b * t)
    torch.testing.assert_close(grad, want, atol=1e-7, rtol=1e-5)


# --- non-finite inputs ---------------------------------------------------------------------


def test_nan_logprob_on_valid_token_raises():
    _, inp = make_inputs([[0.0, 0.1, -0.1]], [1.0], high=[[F_, T_, F_]])
    bad = inp.logprobs.detach().clone()
    bad[0, 1] = float("nan")
    inp.logprobs = bad.requires_grad_(True)
    with pytest.raises(NonFiniteLogprobError):
        dual_token_clip_loss(inp, make_cfg())
    assert issubclass(NonFiniteLogprobError, FloatingPointError)


# --- the gradient over the whole configuration space, extremes included ------------------------


def _ref_kl(logp, ref, estimator):
    """Independent k1 / k2 / k3 (the step-6 clamps of docs/method.md, section 2)."""
    if estimator == "k1":
        return logp - ref
    if estimator == "k2":
        return 0.5 * (logp - ref) ** 2
    d = torch.clamp(ref - logp, -20.0, 20.0)
    return torch.clamp(torch.exp(d) - d - 1.0, -10.0, 10.0)


def ref_archer_loss(logp, old, adv, mask, high, ref, cfg, token_mask=None):
    """Independent few-line Archer objective (autograd), any config."""
    valid = mask if token_mask is None else mask & token_mask
    hv, lv = valid & high, valid & ~high

    def per_class(h, lo):
        return torch.where(high, torch.full_like(logp, h), torch.full_like(logp, lo))

    a = adv[:, None] if adv.dim() == 1 else adv
    r = torch.exp(torch.clamp(logp - old, -20.0, 20.0))
    lo_b = 1.0 - per_class(cfg.high.clip_low, cfg.low.clip_low)
    hi_b = 1.0 + per_class(cfg.high.clip_high, cfg.low.clip_high)
    tok = torch.maximum(-a * r, -a * torch.clamp(r, lo_b, hi_b))
    if cfg.dual_clip_c is not None:
        tok = torch.where(a < 0, torch.minimum(tok, -a * cfg.dual_clip_c), tok)
    tok = tok * per_class(cfg.high.pg_weight, cfg.low.pg_weight)
    mode, n = cfg.loss_agg_mode, cfg.loss_norm_length
    loss = ref_agg(tok, valid, mode, n)
    if ref is not None and cfg.needs_reference:
        kl = _ref_kl(logp, ref, cfg.kl_estimator)
        if cfg.kl_normalization == "all_tokens":
            loss = loss + ref_agg(kl * per_class(cfg.high.kl_weight, cfg.low.kl_weight), valid,
                                  mode, n)
        else:
            loss = loss + cfg.high.kl_weight * ref_agg(kl, hv, mode, n)
            loss = loss + cfg.low.kl_weight * ref_agg(kl, lv, mode, n)
    return loss


CONFIG_GRID = [
    {},  # Archer defaults: high (0.5, 0.5) no KL, low (0.2, 0.2) KL 0.001, k3, per class
    {"high": (0.3, 0.6), "low": (0.1, 0.25), "kl": (0.02, 0.05), "pg": (1.0, 0.5),
     "kl_estimator": "k2", "loss_agg_mode": "token-mean"},
    {"high": (0.4, 0.4), "kl": (0.0, 0.3), "kl_estimator": "k1",
     "kl_normalization": "all_tokens", "loss_agg_mode": "seq-mean-token-sum"},
    {"kl": (0.1, 0.2), "dual_clip_c": None, "kl_normalization": "all_tokens",
     "loss_agg_mode": "seq-mean-token-sum-norm", "loss_norm_length": 20},
    {"kl": (0.0, 0.5), "pg": (2.0, 0.0), "dual_clip_c": 3.0,
     "loss_agg_mode": "seq-mean-token-sum-norm"},
    {"kl": (0.3, 0.0), "kl_estimator": "k3", "loss_agg_mode": "token-mean"},
]


def extreme_batch(seed, b=6, t=10):
    """Random batch whose log-ratios and reference gaps hit every clamp and clip."""
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(b, t, generator=g) * 3
    log_ratio = torch.randn(b, t, generator=g) * 0.5
    pick = torch.rand(b, t, generator=g)
    log_ratio = torch.where(pick < 0.05, torch.full_like(log_ratio, 25.0), log_ratio)
    log_ratio = torch.where((pick > 0.95), torch.full_like(log_ratio, -25.0), log_ratio)
    log_ratio = torch.where((pick > 0.5) & (pick < 0.6), log_ratio + 2.5, log_ratio)  # > c
    d = torch.randn(b, t, generator=g)
    pick = torch.rand(b, t, generator=g)
    d = torch.where(pick < 0.1, torch.full_like(d, 25.0), d)  # d clamp at 20, k3 clamp at 10
    d = torch.where(pick > 0.9, torch.full_like(d, -25.0), d)  # d clamp at -20
    d = torch.where((pick > 0.4) & (pick < 0.5), torch.full_like(d, 3.0), d)  # k3 = 16 -> 10
    adv = torch.randn(b, t, generator=g) * torch.randint(0, 2, (b, 1), generator=g)  # some A = 0
    lengths = torch.randint(1, t + 1, (b,), generator=g)
    lengths[0] = 0
    mask = torch.arange(t)[None, :] < lengths[:, None]
    high = torch.rand(b, t, generator=g) < 0.3
    return old, log_ratio, adv, mask, high, d


@pytest.mark.parametrize("grid", range(len(CONFIG_GRID)))
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("with_token_mask", [False, True])
def test_value_and_gradient_equal_independent_reference(grid, seed, with_token_mask):
    old, log_ratio, adv, mask, high, d = extreme_batch(seed)
    cfg = make_cfg(**CONFIG_GRID[grid])
    token_mask = (torch.rand(mask.shape, generator=torch.Generator().manual_seed(seed)) < 0.6
                  if with_token_mask else None)
    _, inp = make_inputs(log_ratio, adv, high=high, mask=mask, old=old, ref_minus_logp=d,
                         token_mask=token_mask)
    out, grad = loss_and_grad(inp, cfg)
    logp = inp.logprobs.detach().clone().requires_grad_(True)
    want = ref_archer_loss(logp, old, adv, mask, high, inp.ref_logprobs, cfg, token_mask)
    (want_grad,) = torch.autograd.grad(want, logp)
    torch.testing.assert_close(out.loss.detach(), want.detach(), atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(grad, want_grad, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out.pg_loss + out.kl_loss, out.loss)


@pytest.mark.parametrize("grid", range(len(CONFIG_GRID)))
def test_fused_path_equals_autograd_path(grid):
    if "fused" not in inspect.signature(dual_token_clip_loss).parameters:
        pytest.skip("dual_token_clip_loss has no fused switch")
    old, log_ratio, adv, mask, high, d = extreme_batch(10 + grid)
    cfg = make_cfg(**CONFIG_GRID[grid])
    _, inp = make_inputs(log_ratio, adv, high=high, mask=mask, old=old, ref_minus_logp=d)
    fused = dual_token_clip_loss(inp, cfg, fused=True)
    plain = dual_token_clip_loss(inp, cfg, fused=False)
    (g1,) = torch.autograd.grad(fused.loss, inp.logprobs)
    (g2,) = torch.autograd.grad(plain.loss, inp.logprobs)
    torch.testing.assert_close(fused.loss.detach(), plain.loss.detach(), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(g1, g2, atol=1e-7, rtol=1e-5)
    for key, value in fused.metrics.items():
        torch.testing.assert_close(value, plain.metrics[key], msg=key)


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
@pytest.mark.parametrize("field", ["logprobs", "old_logprobs", "ref_logprobs", "advantages"])
def test_nan_in_padding_leaks_into_neither_loss_nor_gradient(estimator, field):
    # NaN only in padded positions (e.g. garbage logits past the end of a response, or per-token
    # advantages built from such log-probs): the loss AND the gradient must equal the clean ones.
    g = torch.Generator().manual_seed(0)
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]], dtype=torch.bool)
    high = torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0]], dtype=torch.bool)
    lp = -torch.rand(2, 4, generator=g)
    clean = {"logprobs": lp, "old_logprobs": lp + 0.1 * torch.randn(2, 4, generator=g),
             "ref_logprobs": lp + 0.3 * torch.randn(2, 4, generator=g),
             "advantages": torch.randn(2, 4, generator=g)}
    cfg = make_cfg(kl=(0.0, 0.1), kl_estimator=estimator)

    def run(tensors):
        x = tensors["logprobs"].clone().requires_grad_(True)
        inp = LossInputs(x, tensors["old_logprobs"], tensors["advantages"], mask, high,
                         tensors["ref_logprobs"])
        out = dual_token_clip_loss(inp, cfg)
        (grad,) = torch.autograd.grad(out.loss, x)
        return out.loss.detach(), grad

    dirty = dict(clean)
    dirty[field] = clean[field].masked_fill(~mask, float("nan"))
    loss0, grad0 = run(clean)
    loss1, grad1 = run(dirty)
    torch.testing.assert_close(loss1, loss0)
    assert torch.isfinite(grad1).all(), f"NaN gradient at padding: {grad1}"
    torch.testing.assert_close(grad1, grad0)
