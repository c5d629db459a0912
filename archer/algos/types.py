"""Typed inputs and outputs of the policy loss (shapes in comments)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class LossInputs:
    logprobs: torch.Tensor  # (B, T) log-prob of each sampled token under the current policy
    old_logprobs: torch.Tensor  # (B, T) same under the policy that generated the batch
    advantages: torch.Tensor  # (B,) per response, or (B, T) per token
    response_mask: torch.Tensor  # (B, T) bool: valid response tokens
    high_entropy_mask: torch.Tensor | None = None  # (B, T) bool: high-entropy tokens
    ref_logprobs: torch.Tensor | None = None  # (B, T) under the frozen reference model
    entropy: torch.Tensor | None = None  # (B, T) token entropy, for diagnostics only
    token_mask: torch.Tensor | None = None  # (B, T) bool: the update phase's tokens (None: all)


@dataclass
class LossOutput:
    loss: torch.Tensor  # scalar to backpropagate: pg_loss + kl_loss
    pg_loss: torch.Tensor  # scalar clipped-surrogate term (no gradient on the fused path)
    kl_loss: torch.Tensor  # scalar weighted KL term (no gradient on the fused path)
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)  # detached scalars
