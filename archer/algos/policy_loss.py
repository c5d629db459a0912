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

Speed: every aggregation is linear in the token losses (``agg(x) = sum(x * W)``), so the loss
is ``sum(L_pg * W_pg + KL * W_kl)`` and its gradient w.r.t. logp is known in closed form:
``dL_pg/dlogp = -A r`` where the ratio is inside its clip range (0 where clipped or
dual-clipped), ``dk3/dlogp = 1 - exp(d)`` (0 where clamped). The default ``fused`` path
computes values and this gradient without building an autograd graph over a dozen
elementwise ops; ``fused=False`` runs the same formulas through autograd and is what the
tests check the fused gradient against.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from archer.algos.aggregate import aggregation_weights
from archer.algos.aggregate import weighted_sum as _wsum
from archer.algos.kl import kl_penalty
from archer.algos.types import LossInputs, LossOutput
from archer.config import AlgoConfig
from archer.registry import Registry

POLICY_LOSSES: Registry = Registry("policy loss")

CLASSES = ("high_entropy", "low_entropy")


class NonFiniteLogprobError(FloatingPointError):
    """Log-probs of some valid token are NaN or infinite (a diverged or corrupted model)."""


def _per_class(high: torch.Tensor, high_value: float, low_value: float, dtype):
    """(B, T) tensor taking high_value on high tokens and low_value elsewhere (or a float)."""
    if high_value == low_value:
        return float(low_value)
    return torch.where(high, torch.tensor(high_value, dtype=dtype, device=high.device),
                       torch.tensor(low_value, dtype=dtype, device=high.device))


@dataclass
class _TokenTerms:
    ratio: torch.Tensor  # (B, T) r
    log_ratio: torch.Tensor  # (B, T) clamp(logp - logp_old, -20, 20)
    pg: torch.Tensor  # (B, T) L_pg per token (before pg_weight)
    clipped: torch.Tensor  # (B, T) bool: the clipped branch is active (pg2 > pg1)
    dual: torch.Tensor | None  # (B, T) bool: the dual clip is active (A < 0, L_clip > -A c)
    kl: torch.Tensor | None  # (B, T) KL estimate per token


def _token_terms(logprobs, old_logprobs, ref_logprobs, adv, eps_low, eps_high, c, estimator):
    """The per-token quantities of the objective. Differentiable if logprobs requires grad."""
    log_ratio = torch.clamp(logprobs - old_logprobs, min=-20.0, max=20.0)
    ratio = torch.exp(log_ratio)
    pg1 = -adv * ratio
    lo, hi = 1.0 - eps_low, 1.0 + eps_high
    if isinstance(lo, torch.Tensor) != isinstance(hi, torch.Tensor):  # clamp wants one kind
        lo = torch.as_tensor(lo, dtype=ratio.dtype, device=ratio.device)
        hi = torch.as_tensor(hi, dtype=ratio.dtype, device=ratio.device)
    pg2 = -adv * torch.clamp(ratio, min=lo, max=hi)
    clipped_loss = torch.maximum(pg1, pg2)
    clipped = pg2 > pg1
    dual = None
    pg = clipped_loss
    if c is not None:
        pg3 = -adv * c
        dual = (clipped_loss > pg3) & (adv < 0)
        pg = torch.where(adv < 0, torch.minimum(pg3, clipped_loss), clipped_loss)
    kl = kl_penalty(logprobs, ref_logprobs, estimator) if ref_logprobs is not None else None
    return _TokenTerms(ratio, log_ratio, pg, clipped, dual, kl)


def _kl_grad(logprobs, ref_logprobs, estimator):
    """d KL_t / d logp_t in closed form, (B, T); zero where a clamp is active."""
    diff = logprobs - ref_logprobs
    if estimator == "k1":
        return torch.ones_like(diff)
    if estimator == "k2":
        return diff
    d = -diff
    inside = (d >= -20.0) & (d <= 20.0)
    dc = d.clamp(-20.0, 20.0)
    k = torch.exp(dc) - dc - 1.0
    active = inside & (k >= -10.0) & (k <= 10.0)
    return torch.where(active, 1.0 - torch.exp(dc),
                       torch.zeros((), dtype=diff.dtype, device=diff.device))


class _AttachGrad(torch.autograd.Function):
    """Returns ``value`` in the forward pass; backward is ``grad_out * grad_coef`` w.r.t. x."""

    @staticmethod
    def forward(ctx, x, value, grad_coef):
        ctx.save_for_backward(grad_coef)
        return value.clone()

    @staticmethod
    def backward(ctx, grad_out):
        (grad_coef,) = ctx.saved_tensors
        return grad_out * grad_coef, None, None


def _loss_weights(cfg: AlgoConfig, valid, high, low, dtype, has_ref: bool, scales=None):
    """Aggregation weights W_pg and W_kl (B, T) (W_kl None when there is no KL term).

    ``scales`` ({"pg", "high", "low"} -> float) multiplies each aggregated term, so a
    micro-batch can contribute its exact share of a mini-batch aggregate."""
    mode, length = cfg.loss_agg_mode, cfg.loss_norm_length
    sc = scales or {}
    w_valid = aggregation_weights(valid, mode, length, dtype) * sc.get("pg", 1.0)
    pg_w = _per_class(high, cfg.high.pg_weight, cfg.low.pg_weight, dtype)
    w_pg = w_valid * pg_w if not (isinstance(pg_w, float) and pg_w == 1.0) else w_valid
    if not has_ref or not cfg.needs_reference:
        return w_pg, None
    if cfg.kl_normalization == "all_tokens":
        return w_pg, w_valid * _per_class(high, cfg.high.kl_weight, cfg.low.kl_weight, dtype)
    w_kl = torch.zeros_like(w_valid)
    for name, mask, weight in (("high", high, cfg.high.kl_weight),
                               ("low", low, cfg.low.kl_weight)):
        if weight > 0:  # an empty class has all-zero weights, so it contributes 0
            w_kl = w_kl + weight * sc.get(name, 1.0) * aggregation_weights(
                mask, mode, length, dtype)
    return w_pg, w_kl


def _dual_clip_pg_grad(t: _TokenTerms, adv, c) -> torch.Tensor:
    """d L_pg / d logp per token of the dual-token clip loss: -A r where the ratio is inside
    its clip range and not dual-clipped (and not at the log-ratio clamp), else 0."""
    live = ~t.clipped & (t.log_ratio.abs() < 20.0)
    if t.dual is not None:
        live &= ~t.dual
    return torch.where(live, -adv * t.ratio, torch.zeros((), dtype=t.ratio.dtype,
                                                         device=t.ratio.device))


@POLICY_LOSSES.register("dual_token_clip")
def dual_token_clip_loss(
    inp: LossInputs, cfg: AlgoConfig, with_metrics: bool = True, fused: bool = True,
    scales: dict[str, float] | None = None,
) -> LossOutput:
    """Archer loss. All tensors (B, T) except advantages (B,) or (B, T). Returns LossOutput.

    Raises NonFiniteLogprobError when the loss is not finite because of NaN/inf log-probs,
    instead of averaging them in silently. ``with_metrics=False`` skips the diagnostics.
    ``fused=False`` differentiates through autograd instead of the closed-form gradient.
    ``scales`` multiplies the PG term ("pg") and each class's KL term ("high", "low");
    losses and PG contributions in the output are scaled alike.
    """
    return per_token_loss(inp, cfg, _token_terms, _dual_clip_pg_grad, with_metrics, fused,
                          scales)


def per_token_loss(inp: LossInputs, cfg: AlgoConfig, token_terms, pg_grad,
                   with_metrics: bool = True, fused: bool = True,
                   scales: dict[str, float] | None = None) -> LossOutput:
    """A per-token PG loss with Archer's token classes, KL terms, aggregation and checks.

    ``token_terms(logp, old, ref, adv, eps_low, eps_high, c, estimator) -> _TokenTerms`` gives
    the per-token quantities (differentiable in ``logp`` when it requires grad);
    ``pg_grad(terms, adv, c)`` their closed-form ``d L_pg / d logp`` (B, T) for the fused
    path. See :func:`dual_token_clip_loss` for the arguments and errors.

    ``ref_logprobs`` given while every KL weight is 0 (``algo.kl_monitor``): the per-class KL
    is computed for the metrics (``actor/kl_{high,low}_entropy``) only; the loss, its value
    and its gradient have no KL term.
    """
    valid = inp.response_mask.bool()
    if inp.token_mask is not None:
        valid = valid & inp.token_mask.bool()
    high_mask = inp.high_entropy_mask
    high = (high_mask.bool() & valid) if high_mask is not None else torch.zeros_like(valid)
    low = valid & ~high
    if cfg.needs_reference and inp.ref_logprobs is None:
        raise ValueError("a KL weight is > 0 but ref_logprobs were not given")
    dtype = inp.logprobs.dtype
    # A NaN or -inf log-prob on a valid token is an error, never clamped or averaged away.
    if not torch.isfinite(torch.where(valid, inp.logprobs.detach(), 0.0).sum()):
        _raise_nonfinite(inp, valid)
    adv = inp.advantages[:, None] if inp.advantages.dim() == 1 else inp.advantages
    eps_low = _per_class(high, cfg.high.clip_low, cfg.low.clip_low, dtype)
    eps_high = _per_class(high, cfg.high.clip_high, cfg.low.clip_high, dtype)
    w_pg, w_kl = _loss_weights(cfg, valid, high, low, dtype, inp.ref_logprobs is not None,
                               scales)
    ref = inp.ref_logprobs
    args = (inp.old_logprobs, ref, adv, eps_low, eps_high, cfg.dual_clip_c, cfg.kl_estimator)
    if fused:
        lp = inp.logprobs.detach()
        with torch.no_grad():
            t = token_terms(lp, *args)
            pg_loss = _wsum(t.pg, w_pg)
            zero = torch.zeros((), dtype=dtype, device=lp.device)
            # where() on the weights, so NaN in padded positions never reaches the gradient
            grad = torch.where(w_pg != 0, pg_grad(t, adv, cfg.dual_clip_c) * w_pg, zero)
            kl_loss = zero
            if w_kl is not None:
                kl_loss = _wsum(t.kl, w_kl)
                grad = grad + torch.where(w_kl != 0, _kl_grad(lp, ref, cfg.kl_estimator) * w_kl,
                                          zero)
            value = pg_loss + kl_loss
        loss = _AttachGrad.apply(inp.logprobs, value, grad) if inp.logprobs.requires_grad \
            else value
    else:
        t = token_terms(inp.logprobs, *args)
        pg_loss = _wsum(t.pg, w_pg)
        kl_loss = _wsum(t.kl, w_kl) if w_kl is not None else (inp.logprobs * 0.0).sum()
        loss = pg_loss + kl_loss
    if not torch.isfinite(loss.detach()):
        _raise_nonfinite(inp, valid)
    metrics = _diagnostics(inp, cfg, t, adv, w_pg, high, low, valid) if with_metrics else {}
    if with_metrics:
        metrics["actor/pg_loss"] = pg_loss.detach()
        metrics["actor/kl_loss"] = kl_loss.detach()
        metrics["actor/loss"] = loss.detach()
    return LossOutput(loss=loss, pg_loss=pg_loss, kl_loss=kl_loss, metrics=metrics)


def _raise_nonfinite(inp: LossInputs, valid: torch.Tensor) -> None:
    parts = []
    for name in ("logprobs", "old_logprobs", "ref_logprobs", "advantages"):
        t = getattr(inp, name)
        if t is None:
            continue
        bad = ~torch.isfinite(t.detach())
        if t.dim() == 2:
            n_valid, n_pad = int((bad & valid).sum()), int((bad & ~valid).sum())
            if n_valid or n_pad:
                parts.append(f"{name}: {n_valid} valid and {n_pad} padded token(s)")
        elif bad.any():
            parts.append(f"{name}: {int(bad.sum())} response(s)")
    raise NonFiniteLogprobError(
        "policy loss is not finite; non-finite inputs: " + ("; ".join(parts) or "none found")
    )


def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    n = mask.sum()
    return (x * mask).sum() / n if n > 0 else torch.zeros((), dtype=torch.float32,
                                                            device=x.device)


def _where_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over ``mask`` (non-empty), ignoring whatever ``x`` holds elsewhere."""
    return torch.where(mask, x, 0.0).sum() / mask.sum()


@torch.no_grad()
def _diagnostics(inp, cfg, t: _TokenTerms, adv, w_pg, high, low, valid):
    """Per-class clip fractions (each side), KL, PG contribution, counts; ratio statistics.

    Clip fractions describe the tokens this loss trains (``token_mask`` applied); KL to the
    reference and entropy describe every response token of the class, trained here or not
    (the mask mode's low-entropy tokens drift with the shared weights, and the monitor is
    there to see it). A mean over a class without a token in this micro-batch is left out
    (never a 0), so averages over micro-batches and phases count only those that have it."""
    out: dict[str, torch.Tensor] = {}
    pos, neg = adv > 0, adv < 0
    upper = t.clipped & pos  # ratio above 1 + eps_high with A > 0
    lower = t.clipped & neg  # ratio below 1 - eps_low with A < 0
    pg_weighted = t.pg.detach() * w_pg  # contributions add up to pg_loss
    responses = inp.response_mask.bool()
    high_all = responses & inp.high_entropy_mask.bool() if inp.high_entropy_mask is not None \
        else torch.zeros_like(responses)
    for name, mask, every in zip(CLASSES, (high, low), (high_all, responses & ~high_all)):
        out[f"actor/tokens_{name}"] = mask.float().sum()
        out[f"actor/pg_contrib_{name}"] = torch.where(mask, pg_weighted, 0.0).sum()
        if mask.any():
            out[f"actor/clipfrac_{name}_upper"] = _where_mean(upper.float(), mask)
            out[f"actor/clipfrac_{name}_lower"] = _where_mean(lower.float(), mask)
            if t.dual is not None:
                out[f"actor/dual_clipfrac_{name}"] = _where_mean(t.dual.float(), mask)
        if every.any():
            if t.kl is not None:
                out[f"actor/kl_{name}"] = _where_mean(t.kl.detach(), every)
            if inp.entropy is not None:
                out[f"actor/entropy_{name}"] = _where_mean(inp.entropy.float(), every)
    vf = valid.float()
    out["actor/clipfrac"] = _masked_mean(t.clipped.float(), vf)
    out["actor/ppo_kl"] = _masked_mean(-t.log_ratio.detach(), vf)
    if valid.any():
        r = t.ratio.detach()[valid]
        out["actor/ratio_mean"] = r.mean()
        out["actor/ratio_max"] = r.max()
        out["actor/ratio_min"] = r.min()
    return out


@POLICY_LOSSES.register("ppo_clip")
def ppo_clip_loss(
    inp: LossInputs, cfg: AlgoConfig, with_metrics: bool = True, fused: bool = True,
    scales: dict[str, float] | None = None,
) -> LossOutput:
    """Classic PPO-clip (+ dual clip): every token uses the low-entropy class's settings."""
    plain = LossInputs(
        logprobs=inp.logprobs, old_logprobs=inp.old_logprobs, advantages=inp.advantages,
        response_mask=inp.response_mask, high_entropy_mask=None, ref_logprobs=inp.ref_logprobs,
        entropy=inp.entropy, token_mask=inp.token_mask,
    )
    return dual_token_clip_loss(plain, cfg, with_metrics, fused, scales)


def compute_policy_loss(
    name: str, inp: LossInputs, cfg: AlgoConfig, with_metrics: bool = True,
    scales: dict[str, float] | None = None,
) -> LossOutput:
    """Run the named policy loss (``scales``: see :func:`dual_token_clip_loss`)."""
    return POLICY_LOSSES.get(name)(inp, cfg, with_metrics, scales=scales)
