"""KL(policy || reference) estimators on sampled tokens (Schulman, "Approximating KL").

With ``d = logp_ref - logp`` at the sampled token:
- k1 = logp - logp_ref = -d                      (unbiased, high variance, can be negative)
- k2 = 0.5 * (logp - logp_ref) ** 2              (biased, always >= 0)
- k3 = exp(d) - d - 1, with d clamped to [-20, 20] and the result to [-10, 10]
  ("low_var_kl"; unbiased and >= 0), exactly the clamps of the method (docs/method.md, section 2).
"""

from __future__ import annotations

import torch

from archer.registry import Registry

KL_ESTIMATORS: Registry = Registry("KL estimator")


@KL_ESTIMATORS.register("k1")
def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """(B, T), (B, T) -> (B, T)."""
    return logprobs - ref_logprobs


@KL_ESTIMATORS.register("k2")
def kl_k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """(B, T), (B, T) -> (B, T)."""
    return 0.5 * (logprobs - ref_logprobs).square()


@KL_ESTIMATORS.register("k3")
def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """(B, T), (B, T) -> (B, T)."""
    d = torch.clamp(ref_logprobs - logprobs, min=-20.0, max=20.0)
    return torch.clamp(torch.exp(d) - d - 1.0, min=-10.0, max=10.0)


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k3"):
    """Per-token KL estimate with the named estimator. (B, T), (B, T) -> (B, T)."""
    return KL_ESTIMATORS.get(estimator)(logprobs, ref_logprobs)
