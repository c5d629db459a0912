"""Rollout/train mismatch: how far the sampler's log-probs are from the trainer's own.

A fast sampler (vLLM: other kernels, maybe another dtype) draws tokens from pi_s while the
loss is computed under the trainer's pi_t. On the sampled tokens, with
``d = logp_t - logp_s`` (trainer minus sampler):

- ``mismatch_kl`` = mean of k3 = exp(d) - d - 1 over valid response tokens: an unbiased,
  non-negative estimate of KL(pi_s || pi_t) (tokens are drawn from pi_s). Same clamps as the
  loss's k3 (d to [-20, 20], result to [-10, 10]).
- ``mismatch_kl_k1`` = mean of -d = logp_s - logp_t: the plain (k1) estimate of the same KL;
  unbiased but noisy and can be negative.

Truncated importance sampling (TIS, Yao et al. 2025, "Your efficient RL framework secretly
brings you off-policy RL training"): each token's policy-gradient loss is multiplied by
``w = min(exp(d), cap)`` = min(pi_t_old / pi_s, cap), detached, which corrects the gradient
for sampling from pi_s instead of pi_t_old; the cap bounds the variance.
"""

from __future__ import annotations

import torch

from archer.algos.kl import kl_k1, kl_k3

LOG_RATIO_CLAMP = 20.0  # |logp_t - logp_s| beyond this is clamped before exp (as the loss does)


def truncated_is_weights(trainer_logprobs: torch.Tensor, sampler_logprobs: torch.Tensor,
                         cap: float) -> torch.Tensor:
    """(N, R), (N, R) -> (N, R) float weights min(exp(logp_t - logp_s), cap), no gradient.

    Masked positions get arbitrary finite values; the loss masks them.
    """
    if not cap > 0:
        raise ValueError(f"TIS cap={cap!r} is invalid; allowed: a number > 0")
    d = (trainer_logprobs.detach() - sampler_logprobs.detach()).float()
    d = d.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return torch.exp(d).clamp(max=cap)


def apply_tis(advantages: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Advantages (N,) or (N, R) times TIS weights (N, R) -> (N, R).

    Scaling A by w > 0 multiplies the clipped (and dual-clipped) PG token loss by w exactly:
    max(-wA r, -wA clip(r)) = w max(-A r, -A clip(r)), and likewise the dual-clip min.
    """
    adv = advantages[:, None] if advantages.dim() == 1 else advantages
    return adv * weights.to(adv.dtype)


@torch.no_grad()
def mismatch_metrics(sampler_logprobs: torch.Tensor, trainer_logprobs: torch.Tensor,
                     mask: torch.Tensor, tis_cap: float | None = None) -> dict[str, float]:
    """Mean mismatch KL (k3 and k1) over ``mask``'s tokens, max |logp_t - logp_s|, and with
    ``tis_cap`` the mean TIS weight and the fraction of tokens whose ratio was capped.
    All tensors (N, R); an empty mask gives zeros."""
    valid = mask.bool()
    # float64: for a float32 sampler d is ~1e-7, and exp(d) - d - 1 in float32 is rounding
    # noise of either sign instead of the ~1e-14 it is.
    lp_s, lp_t = sampler_logprobs.double()[valid], trainer_logprobs.double()[valid]
    if lp_s.numel() == 0:
        out = {"rollout/mismatch_kl": 0.0, "rollout/mismatch_kl_k1": 0.0,
               "rollout/mismatch_abs_max": 0.0}
        if tis_cap is not None:
            out |= {"rollout/tis_weight_mean": 1.0, "rollout/tis_weight_max": 1.0,
                    "rollout/tis_capped_frac": 0.0}
        return out
    # kl_k3(logprobs, ref) estimates KL(policy || ref) on policy samples: policy = sampler.
    out = {"rollout/mismatch_kl": kl_k3(lp_s, lp_t).mean().item(),
           "rollout/mismatch_kl_k1": kl_k1(lp_s, lp_t).mean().item(),
           "rollout/mismatch_abs_max": (lp_t - lp_s).abs().max().item()}
    if tis_cap is not None:
        w = truncated_is_weights(lp_t, lp_s, tis_cap)
        ratio = torch.exp((lp_t - lp_s).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
        out["rollout/tis_weight_mean"] = w.mean().item()
        out["rollout/tis_weight_max"] = w.max().item()
        out["rollout/tis_capped_frac"] = (ratio > tis_cap).float().mean().item()
    return out
