"""Outcome advantages for groups of G responses to the same prompt, plus group filtering.

All estimators take ``rewards`` (B,) float and ``group_index`` (B,) int (responses with the
same index answer the same prompt) and return advantages (B,), the same for every token of a
response. Groups of size 1 get advantage = reward (mean 0, std 1), as verl does.
"""

from __future__ import annotations

import torch

from archer.registry import Registry

ADVANTAGES: Registry = Registry("advantage estimator")


def _group_stats(rewards: torch.Tensor, group_index: torch.Tensor):
    """Per-response group mean, unbiased std and group size, each (B,)."""
    _, inverse, counts = torch.unique(group_index, return_inverse=True, return_counts=True)
    r = rewards.double()
    sums = torch.zeros(len(counts), dtype=torch.float64, device=r.device).index_add_(0, inverse, r)
    mean = sums / counts
    sq = torch.zeros(len(counts), dtype=torch.float64, device=r.device).index_add_(
        0, inverse, (r - mean[inverse]) ** 2)
    var = sq / (counts - 1).clamp(min=1)
    std = var.sqrt()
    single = counts == 1
    mean = torch.where(single, torch.zeros_like(mean), mean)
    std = torch.where(single, torch.ones_like(std), std)
    return mean[inverse], std[inverse], counts[inverse]


@ADVANTAGES.register("grpo")
def grpo_advantage(rewards, group_index, eps: float = 1e-6):
    """A_i = (r_i - mean_g) / (std_g + eps), unbiased std (n - 1). (B,), (B,) -> (B,)."""
    mean, std, _ = _group_stats(rewards, group_index)
    return ((rewards.double() - mean) / (std + eps)).to(torch.float32)


@ADVANTAGES.register("dr_grpo")
def dr_grpo_advantage(rewards, group_index, eps: float = 1e-6):
    """A_i = r_i - mean_g (Dr.GRPO: no std normalisation). (B,), (B,) -> (B,)."""
    mean, _, _ = _group_stats(rewards, group_index)
    return (rewards.double() - mean).to(torch.float32)


@ADVANTAGES.register("rloo")
def rloo_advantage(rewards, group_index, eps: float = 1e-6):
    """A_i = r_i - mean of the other G - 1 rewards = G/(G-1) * (r_i - mean_g). (B,) -> (B,)."""
    mean, _, n = _group_stats(rewards, group_index)
    r = rewards.double()
    factor = torch.where(n > 1, n / (n - 1).clamp(min=1), torch.ones_like(n, dtype=r.dtype))
    return (factor * (r - mean)).to(torch.float32)


def compute_advantages(name: str, rewards, group_index, eps: float = 1e-6) -> torch.Tensor:
    """Advantages (B,) with the named estimator."""
    return ADVANTAGES.get(name)(rewards, group_index, eps)


def lopti_reweight(
    advantages: torch.Tensor, old_logprobs: torch.Tensor, alpha: float
) -> torch.Tensor:
    """AR-Lopti advantage reweighting A * (alpha * p_old + 1 - alpha) per token.

    advantages (B,) or (B, T), old_logprobs (B, T) -> (B, T). alpha = 0 returns A unchanged.
    Low-probability tokens get smaller weight, so they move less than high-probability ones.
    """
    adv = advantages[:, None] if advantages.dim() == 1 else advantages
    p = old_logprobs.exp()
    return adv * (alpha * p + 1.0 - alpha)


def nonuniform_group_mask(rewards: torch.Tensor, group_index: torch.Tensor) -> torch.Tensor:
    """(B,) bool: True for responses whose group does NOT have all-equal rewards.

    Groups where every response got the same reward (all solved or all failed) carry no
    learning signal under group-normalised advantages and are dropped before the update.
    """
    _, inverse = torch.unique(group_index, return_inverse=True)
    n = int(inverse.max()) + 1 if len(inverse) else 0
    r = rewards.double()
    gmax = torch.full((n,), -torch.inf, dtype=r.dtype, device=r.device).scatter_reduce(
        0, inverse, r, reduce="amax")
    gmin = torch.full((n,), torch.inf, dtype=r.dtype, device=r.device).scatter_reduce(
        0, inverse, r, reduce="amin")
    return (gmax > gmin)[inverse]


def overlong_penalty(
    lengths: torch.Tensor, max_len: int, buffer_len: int, factor: float = 1.0
) -> torch.Tensor:
    """DAPO soft overlong punishment added to the reward. lengths (B,) -> (B,) <= 0.

    0 while length <= max_len - buffer_len, then falls linearly to -factor at max_len, and is
    -factor beyond it.
    """
    if buffer_len <= 0:
        return torch.zeros_like(lengths, dtype=torch.float32)
    expected = max_len - buffer_len
    over = (lengths.float() - expected).clamp(min=0.0)
    return -(over / buffer_len).clamp(max=1.0) * factor
