"""Dual-token clipped policy loss (Archer) and its special cases, chosen by name.

Per valid token t of response i, with the token's class c in {high_entropy, low_entropy}:

    r      = exp(clamp(logp - logp_old, -20, 20))
    L_clip = max(-A r, -A clip(r, 1 - eps_low[c], 1 + eps_high[c]))
    L_pg   = min(L_clip, -A c_dual)   if A < 0 (dual clip)   else L_clip
    loss   = agg(pg_weight[c] * L_pg) + sum_c kl_weight[c] * agg_c(KL)

where ``agg`` is the configured aggregation over the phase's tokens and ``agg_c`` is the same
aggregation over class c's tokens only (``kl_normalization=per_class``, the reference
behaviour), or ``agg(kl_weight[c] * KL)`` over all tokens (``all_tokens``).

With equal bounds and weights for both classes and no KL this is exactly PPO-clip with dual
clip (verl's ``vanilla``); ``ppo_clip`` puts every token in the low-entropy class.
"""

from __future__ import annotations

import torch

from archer.algos.aggregate import aggregate
from archer.algos.kl import kl_penalty
from archer.algos.types import LossInputs, LossOutput
from archer.config import AlgoConfig
from archer.registry import Registry

POLICY_LOSSES: Registry = Registry("policy loss")

CLASSES = ("high_entropy", "low_entropy")


class NonFiniteLogprobError(FloatingPointError):
    """Log-probs of some valid token are NaN or infinite (a diverged or corrupted model)."""


def _per_class(high: torch.Tensor, high_value: float, low_value: float, like: torch.Tensor):
    """(B, T) tensor taking high_value on high tokens and low_value elsewhere (or a float)."""
    if high_value == low_value:
        return low_value
    return torch.where(high, torch.tensor(high_value, dtype=like.dtype),
                       torch.tensor(low_value, dtype=like.dtype))


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    n = mask.sum()
    return (x * mask).sum() / n if n > 0 else torch.zeros((), dtype=x.dtype)


@POLICY_LOSSES.register("dual_token_clip")
def dual_token_clip_loss(inp: LossInputs, cfg: AlgoConfig) -> LossOutput:
    """Archer loss. All tensors (B, T) except advantages (B,) or (B, T). Returns LossOutput."""
    valid = inp.response_mask.bool()
    if inp.token_mask is not None:
        valid = valid & inp.token_mask.bool()
    high_mask = inp.high_entropy_mask
    high = (high_mask.bool() & valid) if high_mask is not None else torch.zeros_like(valid)
    low = valid & ~high
    if not torch.isfinite(inp.logprobs[valid]).all():
        bad = int((~torch.isfinite(inp.logprobs) & valid).sum())
        raise NonFiniteLogprobError(f"{bad} valid token(s) have non-finite log-probs")
    maskf = valid.to(inp.logprobs.dtype)
    adv = inp.advantages[:, None] if inp.advantages.dim() == 1 else inp.advantages

    log_ratio = torch.clamp(inp.logprobs - inp.old_logprobs, min=-20.0, max=20.0)
    ratio = torch.exp(log_ratio)
    eps_low = _per_class(high, cfg.high.clip_low, cfg.low.clip_low, ratio)
    eps_high = _per_class(high, cfg.high.clip_high, cfg.low.clip_high, ratio)
    pg1 = -adv * ratio
    pg2 = -adv * torch.clamp(ratio, min=1.0 - eps_low, max=1.0 + eps_high)
    clipped = torch.maximum(pg1, pg2)
    if cfg.dual_clip_c is not None:
        pg3 = -adv * cfg.dual_clip_c
        pg = torch.where(adv < 0, torch.minimum(pg3, clipped), clipped)
    else:
        pg = clipped
    pg_w = _per_class(high, cfg.high.pg_weight, cfg.low.pg_weight, ratio)
    pg_weighted = pg * pg_w if not (isinstance(pg_w, float) and pg_w == 1.0) else pg
    pg_loss = aggregate(pg_weighted, maskf, cfg.loss_agg_mode, cfg.loss_norm_length)

    kl_loss, kl_tok = _kl_term(inp, cfg, high, low, maskf)
    loss = pg_loss + kl_loss

    metrics = _diagnostics(inp, cfg, ratio, log_ratio, adv, pg1, pg2, clipped, pg_weighted,
                           kl_tok, high, low, maskf)
    metrics["actor/pg_loss"] = pg_loss.detach()
    metrics["actor/kl_loss"] = kl_loss.detach()
    metrics["actor/loss"] = loss.detach()
    return LossOutput(loss=loss, pg_loss=pg_loss, kl_loss=kl_loss, metrics=metrics)


def _kl_term(inp, cfg, high, low, maskf):
    """Weighted KL term (scalar) and the per-token estimate (B, T) or None."""
    zero = (inp.logprobs * 0.0).sum()
    if inp.ref_logprobs is None:
        if cfg.needs_reference:
            raise ValueError("a KL weight is > 0 but ref_logprobs were not given")
        return zero, None
    kl_tok = kl_penalty(inp.logprobs, inp.ref_logprobs, cfg.kl_estimator)
    if cfg.kl_normalization == "all_tokens":
        w = _per_class(high, cfg.high.kl_weight, cfg.low.kl_weight, kl_tok)
        if isinstance(w, float) and w == 0.0:
            return zero, kl_tok
        return aggregate(kl_tok * w, maskf, cfg.loss_agg_mode, cfg.loss_norm_length), kl_tok
    total = zero
    for mask, weight in ((high, cfg.high.kl_weight), (low, cfg.low.kl_weight)):
        if weight > 0:  # an empty class aggregates to 0
            m = mask.to(kl_tok.dtype)
            total = total + weight * aggregate(kl_tok, m, cfg.loss_agg_mode, cfg.loss_norm_length)
    return total, kl_tok


@torch.no_grad()
def _diagnostics(inp, cfg, ratio, log_ratio, adv, pg1, pg2, clipped, pg_weighted, kl_tok,
                 high, low, maskf) -> dict[str, torch.Tensor]:
    """Per-class clip fractions (each side), KL, PG contribution, counts; ratio statistics."""
    out: dict[str, torch.Tensor] = {}
    valid = maskf.bool()
    was_clipped = pg2 > pg1  # the clipped branch is active (no gradient through the ratio)
    pos = adv > 0
    neg = adv < 0
    dual = (clipped > -adv * cfg.dual_clip_c) & neg if cfg.dual_clip_c is not None else None
    for name, mask in zip(CLASSES, (high, low)):
        m = mask.to(ratio.dtype)
        out[f"actor/tokens_{name}"] = m.sum()
        out[f"actor/clipfrac_{name}_upper"] = _masked_mean((was_clipped & pos).float(), m)
        out[f"actor/clipfrac_{name}_lower"] = _masked_mean((was_clipped & neg).float(), m)
        if dual is not None:
            out[f"actor/dual_clipfrac_{name}"] = _masked_mean(dual.float(), m)
        # Contribution to pg_loss: same denominators, numerator restricted to the class, so the
        # two classes' contributions add up to pg_loss exactly.
        out[f"actor/pg_contrib_{name}"] = aggregate(pg_weighted * m, maskf, cfg.loss_agg_mode,
                                                    cfg.loss_norm_length)
        if kl_tok is not None:
            out[f"actor/kl_{name}"] = _masked_mean(kl_tok, m)
        if inp.entropy is not None:
            out[f"actor/entropy_{name}"] = _masked_mean(inp.entropy.float(), m)
    out["actor/clipfrac"] = _masked_mean(was_clipped.float(), maskf)
    out["actor/ppo_kl"] = _masked_mean(-log_ratio, maskf)
    if valid.any():
        r = ratio[valid]
        out["actor/ratio_mean"] = r.mean()
        out["actor/ratio_max"] = r.max()
        out["actor/ratio_min"] = r.min()
    return out


@POLICY_LOSSES.register("ppo_clip")
def ppo_clip_loss(inp: LossInputs, cfg: AlgoConfig) -> LossOutput:
    """Classic PPO-clip (+ dual clip): every token uses the low-entropy class's settings."""
    plain = LossInputs(
        logprobs=inp.logprobs, old_logprobs=inp.old_logprobs, advantages=inp.advantages,
        response_mask=inp.response_mask, high_entropy_mask=None, ref_logprobs=inp.ref_logprobs,
        entropy=inp.entropy, token_mask=inp.token_mask,
    )
    return dual_token_clip_loss(plain, cfg)


def compute_policy_loss(name: str, inp: LossInputs, cfg: AlgoConfig) -> LossOutput:
    """Run the named policy loss."""
    return POLICY_LOSSES.get(name)(inp, cfg)
