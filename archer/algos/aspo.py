"""ASPO (Asymmetric Importance Sampling Policy Optimization, Archer 2.0, arXiv 2510.06062).

Same token classes, KL terms, aggregation, checks and metrics as the dual-token clip loss
(:func:`archer.algos.policy_loss.per_token_loss`); only the per-token PG term differs. With
``r = exp(clamp(logp - logp_old, -20, 20))``, ``sg`` = stop-gradient and eps per token class:

- A < 0 (as PPO): ``w = max(r, 1 - eps_low)``, ``L = -A w``; gradient ``-A r`` and 0 once
  ``r < 1 - eps_low``.
- A > 0, importance weight flipped: ``w = min(r, 1 + eps_high)``, ``L = -A sg(1 / w^2) w``,
  whose value is ``-A / w`` and gradient ``-A / r`` (each token weighted by 1 / r instead of
  r), 0 once ``r > 1 + eps_high``.
- Soft dual clip (``dual_clip_c`` = c, None disables it), where A < 0 and ``w > c`` or A > 0
  and ``1 / w > c``: ``L = -A c (1 + logp - sg(logp))``. Its gradient is that of
  ``-A sg(c) log pi``, ``-A c`` (it keeps flowing, with weight c, also at the log-ratio
  clamp); its value is ``-A c``, the hard dual clip's, so the loss is continuous at the
  boundary (it differs from ``-A c log pi`` by a constant per token).
- A = 0: loss and gradient 0.

Metrics as the dual-token clip loss: ``clipfrac_*_upper`` counts A > 0 tokens with
``r > 1 + eps_high``, ``clipfrac_*_lower`` A < 0 tokens with ``r < 1 - eps_low`` (both have no
gradient), ``dual_clipfrac_*`` the soft dual clip on either side.
"""

from __future__ import annotations

import torch

from archer.algos.kl import kl_penalty
from archer.algos.policy_loss import POLICY_LOSSES, _TokenTerms, per_token_loss
from archer.algos.types import LossInputs, LossOutput
from archer.config import AlgoConfig


def _bounds(eps_low, eps_high, like: torch.Tensor):
    """1 - eps_low and 1 + eps_high as tensors (a float or (B, T) per class)."""
    lo = torch.as_tensor(1.0 - eps_low, dtype=like.dtype, device=like.device)
    hi = torch.as_tensor(1.0 + eps_high, dtype=like.dtype, device=like.device)
    return lo, hi


def _aspo_terms(logprobs, old_logprobs, ref_logprobs, adv, eps_low, eps_high, c, estimator):
    """The per-token ASPO quantities (module docstring). Differentiable in ``logprobs``."""
    log_ratio = torch.clamp(logprobs - old_logprobs, min=-20.0, max=20.0)
    ratio = torch.exp(log_ratio)
    lo, hi = _bounds(eps_low, eps_high, ratio)
    pos, neg = adv > 0, adv < 0
    # where() rather than max/min: at a tie the ratio keeps its whole gradient (as the fused
    # path, which clips strictly beyond the bound)
    w_neg = torch.where(ratio < lo, lo, ratio)  # A < 0: the PPO weight, floored
    w_pos = torch.where(ratio > hi, hi, ratio)  # A > 0: capped, then flipped
    pg_neg = -adv * w_neg
    pg_pos = -adv * w_pos / w_pos.detach().square()
    pg = torch.where(neg, pg_neg, pg_pos)
    clipped = (neg & (ratio < lo)) | (pos & (ratio > hi))
    dual = None
    if c is not None:
        dual = (neg & (w_neg.detach() > c)) | (pos & (1.0 / w_pos.detach() > c))
        # value -A c, gradient -A c dlogp: the gradient of -A sg(c) log pi
        soft = -adv * c * (1.0 + logprobs - logprobs.detach())
        pg = torch.where(dual, soft, pg)
    kl = kl_penalty(logprobs, ref_logprobs, estimator) if ref_logprobs is not None else None
    return _TokenTerms(ratio, log_ratio, pg, clipped, dual, kl)


def _aspo_pg_grad(t: _TokenTerms, adv, c) -> torch.Tensor:
    """d L_pg / d logp per token in closed form: -A r (A < 0) or -A / r (A > 0) inside the
    clip range (0 at the log-ratio clamp), 0 where clipped, -A c where soft dual-clipped."""
    zero = torch.zeros((), dtype=t.ratio.dtype, device=t.ratio.device)
    live = ~t.clipped & (t.log_ratio.abs() < 20.0)
    grad = torch.where(adv < 0, -adv * t.ratio, -adv / t.ratio)
    grad = torch.where(live, grad, zero)
    if t.dual is not None:
        grad = torch.where(t.dual, -adv * c, grad)
    return grad


@POLICY_LOSSES.register("aspo")
def aspo_loss(
    inp: LossInputs, cfg: AlgoConfig, with_metrics: bool = True, fused: bool = True,
    scales: dict[str, float] | None = None,
) -> LossOutput:
    """ASPO loss (module docstring); arguments, outputs and errors as
    :func:`archer.algos.policy_loss.dual_token_clip_loss`."""
    return per_token_loss(inp, cfg, _aspo_terms, _aspo_pg_grad, with_metrics, fused, scales)
