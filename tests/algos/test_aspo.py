"""ASPO policy loss (archer/algos/aspo.py), hand-worked values and gradients.

Conventions in the comments: r = ratio pi / pi_old, A = advantage, c = dual_clip_c, and
"grad" is d loss / d logp of the token (dr/dlogp = r). One token with token-mean aggregation,
so the loss is the token's loss. Config of the tests: low-entropy clip (0.2, 0.2) -> r in
[0.8, 1.2]; high-entropy clip (0.4, 0.4) -> r in [0.6, 1.4]; c = 3.
"""

from __future__ import annotations

import math

import pytest
import torch

from archer.algos.aspo import aspo_loss
from archer.algos.kl import kl_penalty
from archer.algos.policy_loss import compute_policy_loss, dual_token_clip_loss
from archer.algos.types import LossInputs
from archer.config import AlgoConfig, TokenClassConfig

OLD = -1.0  # old log-prob of every hand-worked token


def make_cfg(c=3.0, kl=(0.0, 0.0), mode="token-mean", **kw) -> AlgoConfig:
    return AlgoConfig(high=TokenClassConfig(0.4, 0.4, 1.0, kl[0]),
                      low=TokenClassConfig(0.2, 0.2, 1.0, kl[1]),
                      dual_clip_c=c, loss_agg_mode=mode, loss="aspo", **kw)


def one_token(r: float, adv: float, high: bool = False, dtype=torch.float64):
    logp = torch.tensor([[OLD + math.log(r)]], dtype=dtype, requires_grad=True)
    return LossInputs(logprobs=logp, old_logprobs=torch.full((1, 1), OLD, dtype=dtype),
                      advantages=torch.tensor([adv], dtype=dtype),
                      response_mask=torch.ones(1, 1, dtype=torch.bool),
                      high_entropy_mask=torch.tensor([[high]]))


def value_and_grad(inp, cfg, fused=True):
    out = aspo_loss(inp, cfg, fused=fused)
    (grad,) = torch.autograd.grad(out.loss, inp.logprobs)
    return out, out.loss.item(), grad.item()


def check_both_paths(inp, cfg, want_value, want_grad):
    for fused in (True, False):
        _, value, grad = value_and_grad(inp, cfg, fused)
        assert value == pytest.approx(want_value, abs=1e-9), f"fused={fused}"
        assert grad == pytest.approx(want_grad, abs=1e-9), f"fused={fused}"


# --- A > 0: the flipped weight -------------------------------------------------------------


def test_positive_advantage_unclipped_weights_token_by_one_over_r():
    # A = 2, r = 0.9 (low class, 0.8 <= r <= 1.2; 1/r = 1.11 < c): w = 0.9,
    # value -A / w = -2 / 0.9 = -2.2222; grad -A sg(1/w^2) dw/dlogp = -A r / r^2 = -A / r
    # = -2.2222 (PPO's would be -A r = -1.8).
    check_both_paths(one_token(0.9, 2.0), make_cfg(), -2 / 0.9, -2 / 0.9)


def test_positive_advantage_clipped_above_has_no_gradient():
    # A = 2, r = 1.5 > 1 + 0.2 (low class): w = 1.2, value -A / w = -1.6667, grad 0.
    check_both_paths(one_token(1.5, 2.0), make_cfg(), -2 / 1.2, 0.0)
    out = aspo_loss(one_token(1.5, 2.0), make_cfg())
    assert out.metrics["actor/clipfrac_low_entropy_upper"].item() == 1.0
    assert out.metrics["actor/clipfrac_low_entropy_lower"].item() == 0.0


def test_positive_advantage_soft_dual_clip_keeps_gradient_with_weight_c():
    # A = 2, r = 0.25: w = 0.25, 1 / w = 4 > c = 3 -> loss -A sg(c) log pi:
    # grad -A c = -6 (the unclipped weight would give -A / r = -8); value -A c = -6.
    check_both_paths(one_token(0.25, 2.0), make_cfg(), -6.0, -6.0)
    out = aspo_loss(one_token(0.25, 2.0), make_cfg())
    assert out.metrics["actor/dual_clipfrac_low_entropy"].item() == 1.0
    # Without the dual clip: value -A / w = -8, grad -A / r = -8.
    check_both_paths(one_token(0.25, 2.0), make_cfg(c=None), -8.0, -8.0)


def test_positive_advantage_gradient_scales_as_one_over_r():
    # Invariant: for A > 0 inside [1/c, 1 + eps_high] ASPO's gradient is -A / r, so grad * r is
    # the constant -A, where PPO's (dual_token_clip) is -A r, so its grad / r is: r = 0.4 .. 1.4
    # in the high class (1/c = 0.333, upper bound 1.4), A = 1.5.
    for r in (0.4, 0.5, 0.75, 1.0, 1.25, 1.39):
        _, _, grad = value_and_grad(one_token(r, 1.5, high=True), make_cfg())
        assert grad * r == pytest.approx(-1.5, abs=1e-9)
        ppo_inp = one_token(r, 1.5, high=True)
        (ppo_grad,) = torch.autograd.grad(dual_token_clip_loss(ppo_inp, make_cfg()).loss,
                                          ppo_inp.logprobs)
        assert ppo_grad.item() / r == pytest.approx(-1.5, abs=1e-9)
    # Halving r doubles ASPO's positive-advantage gradient: -1/0.5 = -2 vs -1/1 = -1.
    g = [value_and_grad(one_token(r, 1.0, high=True), make_cfg())[2] for r in (0.5, 1.0)]
    assert g[0] == pytest.approx(2 * g[1], abs=1e-12)


# --- A < 0: as PPO ---------------------------------------------------------------------------


def test_negative_advantage_unclipped_is_ppo():
    # A = -1, r = 1.1 (>= 0.8, < c): w = max(1.1, 0.8) = 1.1, value -A w = 1.1, grad -A r = 1.1.
    check_both_paths(one_token(1.1, -1.0), make_cfg(), 1.1, 1.1)
    # Same as dual_token_clip with the same bounds.
    ppo = dual_token_clip_loss(one_token(1.1, -1.0), make_cfg())
    assert ppo.loss.item() == pytest.approx(1.1, abs=1e-9)


def test_negative_advantage_clipped_below_has_no_gradient():
    # A = -1, r = 0.7 < 1 - 0.2 (low class): w = 0.8, value 0.8, grad 0.
    check_both_paths(one_token(0.7, -1.0), make_cfg(), 0.8, 0.0)
    out = aspo_loss(one_token(0.7, -1.0), make_cfg())
    assert out.metrics["actor/clipfrac_low_entropy_lower"].item() == 1.0
    assert out.metrics["actor/clipfrac_low_entropy_upper"].item() == 0.0


def test_negative_advantage_soft_dual_clip_keeps_gradient_with_weight_c():
    # A = -2, r = 4 > c = 3: w = 4 > c -> loss -A sg(c) log pi: grad -A c = 6, value -A c = 6
    # (dual_token_clip's hard dual clip has the same value and grad 0).
    check_both_paths(one_token(4.0, -2.0), make_cfg(), 6.0, 6.0)
    hard = dual_token_clip_loss(one_token(4.0, -2.0), make_cfg())
    assert hard.loss.item() == pytest.approx(6.0, abs=1e-9)
    # Also at the log-ratio clamp (r = e^20): the soft clip's gradient does not go through r.
    inp = one_token(1.0, -2.0)
    inp.logprobs.data += 30.0
    check_both_paths(inp, make_cfg(), 6.0, 6.0)


def test_zero_advantage_gives_nothing():
    for r in (0.1, 1.0, 5.0):
        check_both_paths(one_token(r, 0.0), make_cfg(), 0.0, 0.0)


# --- per-class bounds ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("r", "adv", "high", "want_value", "want_grad"),
    [
        # A = 1, r = 1.3: low (1.2) clips -> -1/1.2, grad 0; high (1.4) does not -> -1/1.3 both
        (1.3, 1.0, False, -1 / 1.2, 0.0),
        (1.3, 1.0, True, -1 / 1.3, -1 / 1.3),
        # A = -1, r = 0.7: low (0.8) clips -> 0.8, grad 0; high (0.6) does not -> 0.7, 0.7
        (0.7, -1.0, False, 0.8, 0.0),
        (0.7, -1.0, True, 0.7, 0.7),
        # A = -1, r = 0.5 < 0.6: the high class clips as well -> 0.6, grad 0
        (0.5, -1.0, True, 0.6, 0.0),
    ],
)
def test_per_class_bounds(r, adv, high, want_value, want_grad):
    check_both_paths(one_token(r, adv, high=high), make_cfg(), want_value, want_grad)


def test_two_classes_in_one_response_and_their_metrics():
    # Tokens (r, A, class): (1.3, +1, high) unclipped, (1.3, +1, low) clipped above,
    # (0.7, -1, low) clipped below, (4, -1, low) soft dual clip. token-mean over 4 tokens:
    # values -1/1.3, -1/1.2, 0.8, -A c = 3 -> loss = (-0.769231 - 0.833333 + 0.8 + 3) / 4;
    # grads / 4: [-1/1.3, 0, 0, 3] / 4.
    rs = torch.tensor([[1.3, 1.3, 0.7, 4.0]], dtype=torch.float64)
    logp = (OLD + rs.log()).requires_grad_(True)
    inp = LossInputs(logp, torch.full_like(rs, OLD), torch.tensor([[1.0, 1.0, -1.0, -1.0]],
                     dtype=torch.float64), torch.ones(1, 4, dtype=torch.bool),
                     torch.tensor([[True, False, False, False]]))
    out = compute_policy_loss("aspo", inp, make_cfg(), with_metrics=True)
    (grad,) = torch.autograd.grad(out.loss, logp)
    want = (-1 / 1.3 - 1 / 1.2 + 0.8 + 3.0) / 4
    assert out.loss.item() == pytest.approx(want, abs=1e-12)
    torch.testing.assert_close(grad, torch.tensor([[-1 / 1.3, 0.0, 0.0, 3.0]],
                                                  dtype=torch.float64) / 4)
    m = {k: v.item() for k, v in out.metrics.items()}
    assert m["actor/tokens_high_entropy"] == 1 and m["actor/tokens_low_entropy"] == 3
    assert m["actor/clipfrac_high_entropy_upper"] == 0.0
    assert m["actor/clipfrac_low_entropy_upper"] == pytest.approx(1 / 3)
    assert m["actor/clipfrac_low_entropy_lower"] == pytest.approx(1 / 3)
    assert m["actor/dual_clipfrac_low_entropy"] == pytest.approx(1 / 3)
    assert m["actor/clipfrac"] == pytest.approx(2 / 4)
    assert m["actor/pg_contrib_high_entropy"] == pytest.approx(-1 / 1.3 / 4)
    assert m["actor/pg_contrib_high_entropy"] + m["actor/pg_contrib_low_entropy"] == \
        pytest.approx(m["actor/pg_loss"])
    # The trainer reads the same metric names from either loss.
    ppo = compute_policy_loss("dual_token_clip", inp, make_cfg(), with_metrics=True)
    assert set(ppo.metrics) == set(out.metrics)


# --- against a naive reference with autograd -------------------------------------------------


def naive_aspo(logp, old, adv, mask, high, ref, cfg):
    """Token by token, straight from the paper's formulas; KL per class; token-mean or
    seq-mean-token-mean. Returns (loss with the literal -A sg(c) log pi, offset) where
    offset = what aspo_loss adds to it (its soft-clip value is -A c, not -A c log pi)."""
    c = cfg.dual_clip_c
    b, t = logp.shape
    terms, offsets = [], []
    for i in range(b):
        for j in range(t):
            a = float(adv[i, j])
            cls = cfg.high if high[i, j] else cfg.low
            lr = torch.clamp(logp[i, j] - old[i, j], -20.0, 20.0)
            r = torch.exp(lr)
            off = torch.zeros((), dtype=logp.dtype)
            if a < 0:
                w = r if r >= 1 - cls.clip_low else torch.tensor(1 - cls.clip_low, dtype=r.dtype)
                if c is not None and w > c:
                    tok, off = -a * c * logp[i, j], -a * c * (1 - logp[i, j].detach())
                else:
                    tok = -a * w
            else:
                w = r if r <= 1 + cls.clip_high else torch.tensor(1 + cls.clip_high, dtype=r.dtype)
                if c is not None and 1 / w > c:
                    tok, off = -a * c * logp[i, j], -a * c * (1 - logp[i, j].detach())
                else:
                    tok = -a * w / w.detach() ** 2
            terms.append(tok)
            offsets.append(off)
    pg_tok = torch.stack(terms).reshape(b, t)
    off_tok = torch.stack(offsets).reshape(b, t)

    def agg(x, m):
        m = m.to(x.dtype)
        if cfg.loss_agg_mode == "token-mean":
            return (x * m).sum() / m.sum().clamp(min=1)
        rows = m.sum(-1) > 0
        per_row = (x * m).sum(-1) / (m.sum(-1) + 1e-8)
        return per_row[rows].sum() / rows.sum().clamp(min=1)

    loss = agg(pg_tok, mask)
    for cls, m in ((cfg.high, mask & high), (cfg.low, mask & ~high)):
        if cls.kl_weight > 0:
            loss = loss + cls.kl_weight * agg(kl_penalty(logp, ref, cfg.kl_estimator), m)
    return loss, agg(off_tok, mask)


def random_batch(seed, b=5, t=7):
    g = torch.Generator().manual_seed(seed)
    old = -torch.rand(b, t, generator=g, dtype=torch.float64) * 3
    log_ratio = torch.randn(b, t, generator=g, dtype=torch.float64) * 0.4
    pick = torch.rand(b, t, generator=g, dtype=torch.float64)
    log_ratio = torch.where(pick < 0.1, log_ratio + 1.5, log_ratio)  # r > c for A < 0
    log_ratio = torch.where(pick > 0.9, log_ratio - 1.5, log_ratio)  # 1/r > c for A > 0
    log_ratio = torch.where((pick > 0.45) & (pick < 0.5), torch.full_like(log_ratio, 25.0),
                            log_ratio)  # the clamp at 20
    adv = torch.randn(b, t, generator=g, dtype=torch.float64)
    adv[0, :2] = 0.0
    lengths = torch.randint(1, t + 1, (b,), generator=g)
    lengths[1] = 0
    mask = torch.arange(t)[None, :] < lengths[:, None]
    high = torch.rand(b, t, generator=g) < 0.4
    ref = old + log_ratio + torch.randn(b, t, generator=g, dtype=torch.float64) * 0.3
    return old, log_ratio, adv, mask, high, ref


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(("c", "kl", "mode"), [
    (3.0, (0.0, 0.0), "token-mean"),
    (2.0, (0.05, 0.1), "seq-mean-token-mean"),
    (None, (0.0, 0.2), "token-mean"),
])
def test_matches_naive_reference_both_paths(seed, c, kl, mode):
    old, log_ratio, adv, mask, high, ref = random_batch(seed)
    cfg = make_cfg(c=c, kl=kl, mode=mode)
    logp0 = old + log_ratio
    x = logp0.clone().requires_grad_(True)
    want, offset = naive_aspo(x, old, adv, mask, high, ref, cfg)
    (want_grad,) = torch.autograd.grad(want, x)
    for fused in (True, False):
        lp = logp0.clone().requires_grad_(True)
        out = aspo_loss(LossInputs(lp, old, adv, mask, high, ref), cfg, fused=fused)
        (grad,) = torch.autograd.grad(out.loss, lp)
        torch.testing.assert_close(out.loss.detach(), want.detach() + offset, rtol=1e-12,
                                   atol=1e-12)
        torch.testing.assert_close(grad, want_grad, rtol=1e-12, atol=1e-12)


def test_fused_and_autograd_metrics_agree_and_scales_apply():
    old, log_ratio, adv, mask, high, ref = random_batch(7)
    cfg = make_cfg(kl=(0.0, 0.1))
    lp = (old + log_ratio).requires_grad_(True)
    inp = LossInputs(lp, old, adv, mask, high, ref)
    fused, plain = aspo_loss(inp, cfg, fused=True), aspo_loss(inp, cfg, fused=False)
    for key, value in fused.metrics.items():
        torch.testing.assert_close(value, plain.metrics[key], msg=key)
    # scales multiply the PG term and the class KL terms, as for dual_token_clip.
    half = compute_policy_loss("aspo", inp, cfg, scales={"pg": 0.5, "high": 0.5, "low": 0.5})
    torch.testing.assert_close(half.loss, 0.5 * fused.loss)
    (g_half,) = torch.autograd.grad(half.loss, lp)
    (g_full,) = torch.autograd.grad(fused.loss, lp)
    torch.testing.assert_close(g_half, 0.5 * g_full)


@pytest.mark.parametrize("field", ["logprobs", "old_logprobs", "ref_logprobs", "advantages"])
def test_nan_in_padding_reaches_neither_loss_nor_gradient(field):
    # NaN only in padded positions: loss and gradient equal the clean ones (fused path).
    old, log_ratio, adv, mask, high, ref = random_batch(3)
    cfg = make_cfg(kl=(0.1, 0.1))
    clean = {"logprobs": old + log_ratio, "old_logprobs": old, "ref_logprobs": ref,
             "advantages": adv}
    results = []
    for tensors in (clean, {**clean, field: clean[field].masked_fill(~mask, float("nan"))}):
        lp = tensors["logprobs"].clone().requires_grad_(True)
        out = aspo_loss(LossInputs(lp, tensors["old_logprobs"], tensors["advantages"], mask,
                                   high, tensors["ref_logprobs"]), cfg)
        (grad,) = torch.autograd.grad(out.loss, lp)
        results.append((out.loss.detach(), grad))
    torch.testing.assert_close(results[1][0], results[0][0])
    assert torch.isfinite(results[1][1]).all()
    torch.testing.assert_close(results[1][1], results[0][1])
