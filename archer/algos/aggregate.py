"""Aggregation of a (B, T) token-loss matrix into one scalar, selectable by name.

Modes (verl's names and semantics, single process):
- ``token-mean``: sum over all valid tokens / number of valid tokens (DAPO).
- ``seq-mean-token-mean``: per-response token mean, then mean over non-empty responses
  (Archer's reference behaviour: its micro-batch is one response).
- ``seq-mean-token-sum``: per-response token sum, then mean over non-empty responses.
- ``seq-mean-token-sum-norm``: as above divided by a constant length (Dr.GRPO); the constant
  is ``norm_length`` or, when None, the padded length T.

An all-masked input aggregates to 0 (still attached to the graph) instead of 0/0 = NaN.
"""

from __future__ import annotations

import torch

from archer.registry import Registry

AGGREGATIONS: Registry = Registry("loss aggregation mode")


def _zero_like(loss_mat: torch.Tensor) -> torch.Tensor:
    return (loss_mat * 0.0).sum()


@AGGREGATIONS.register("token-mean")
def token_mean(loss_mat, mask, norm_length=None):
    """loss_mat (B, T), mask (B, T) -> scalar."""
    n = mask.sum()
    if n == 0:
        return _zero_like(loss_mat)
    return (loss_mat * mask).sum() / n


def _seq_mean(seq_losses: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    nonempty = mask.sum(dim=-1) > 0  # (B,)
    n = nonempty.sum()
    if n == 0:
        return _zero_like(seq_losses)
    return (seq_losses * nonempty).sum() / n


@AGGREGATIONS.register("seq-mean-token-mean")
def seq_mean_token_mean(loss_mat, mask, norm_length=None):
    """loss_mat (B, T), mask (B, T) -> scalar."""
    counts = mask.sum(dim=-1)  # (B,)
    seq = (loss_mat * mask).sum(dim=-1) / (counts + 1e-8)  # (B,) token mean (as verl)
    return _seq_mean(seq, mask)


@AGGREGATIONS.register("seq-mean-token-sum")
def seq_mean_token_sum(loss_mat, mask, norm_length=None):
    """loss_mat (B, T), mask (B, T) -> scalar."""
    return _seq_mean((loss_mat * mask).sum(dim=-1), mask)


@AGGREGATIONS.register("seq-mean-token-sum-norm")
def seq_mean_token_sum_norm(loss_mat, mask, norm_length=None):
    """loss_mat (B, T), mask (B, T) -> scalar; divides by norm_length (default T)."""
    length = loss_mat.shape[-1] if norm_length is None else norm_length
    return seq_mean_token_sum(loss_mat, mask) / length


def aggregate(
    loss_mat: torch.Tensor, mask: torch.Tensor, mode: str, norm_length: int | None = None
) -> torch.Tensor:
    """Aggregate a (B, T) loss matrix over ``mask`` (B, T) with the named mode."""
    return AGGREGATIONS.get(mode)(loss_mat, mask.to(loss_mat.dtype), norm_length)
