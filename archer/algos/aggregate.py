"""Aggregation of a (B, T) token-loss matrix into one scalar, selectable by name.

Every mode is linear in the token losses, so each is defined by a (B, T) weight matrix W and
``aggregate(x, mask, mode) == (x * W).sum()``. The fused loss uses W directly.

Modes (verl's names and semantics, single process):
- ``token-mean``: sum over all valid tokens / number of valid tokens (DAPO).
- ``seq-mean-token-mean``: per-response token mean, then mean over non-empty responses
  (Archer's reference behaviour: its micro-batch is one response).
- ``seq-mean-token-sum``: per-response token sum, then mean over non-empty responses.
- ``seq-mean-token-sum-norm``: as above divided by a constant length (Dr.GRPO); the constant
  is ``norm_length`` or, when None, the padded length T.

An all-masked input aggregates to 0 (W = 0) instead of 0/0 = NaN.
"""

from __future__ import annotations

import torch

from archer.registry import Registry

AGGREGATIONS: Registry = Registry("loss aggregation mode")


def _nonempty_rows(mask: torch.Tensor) -> torch.Tensor:
    return (mask.sum(dim=-1) > 0).sum().clamp(min=1)


@AGGREGATIONS.register("token-mean")
def token_mean_weights(mask: torch.Tensor, norm_length=None) -> torch.Tensor:
    """mask (B, T) float -> W (B, T) = mask / number of valid tokens."""
    return mask / mask.sum().clamp(min=1)


@AGGREGATIONS.register("seq-mean-token-mean")
def seq_mean_token_mean_weights(mask: torch.Tensor, norm_length=None) -> torch.Tensor:
    """W (B, T) = mask / (tokens in the row + 1e-8, as verl) / non-empty rows."""
    counts = mask.sum(dim=-1, keepdim=True)  # (B, 1)
    return mask / (counts + 1e-8) / _nonempty_rows(mask)


@AGGREGATIONS.register("seq-mean-token-sum")
def seq_mean_token_sum_weights(mask: torch.Tensor, norm_length=None) -> torch.Tensor:
    """W (B, T) = mask / non-empty rows."""
    return mask / _nonempty_rows(mask)


@AGGREGATIONS.register("seq-mean-token-sum-norm")
def seq_mean_token_sum_norm_weights(mask: torch.Tensor, norm_length=None) -> torch.Tensor:
    """W (B, T) = mask / non-empty rows / norm_length (default: the padded length T)."""
    length = mask.shape[-1] if norm_length is None else norm_length
    return mask / _nonempty_rows(mask) / length


def aggregation_weights(
    mask: torch.Tensor, mode: str, norm_length: int | None = None, dtype=torch.float32
) -> torch.Tensor:
    """(B, T) weights W of the named mode, so that the aggregate is ``(x * W).sum()``."""
    return AGGREGATIONS.get(mode)(mask.to(dtype), norm_length)


def aggregate(
    loss_mat: torch.Tensor, mask: torch.Tensor, mode: str, norm_length: int | None = None
) -> torch.Tensor:
    """Aggregate a (B, T) loss matrix over ``mask`` (B, T) with the named mode -> scalar."""
    return weighted_sum(loss_mat, aggregation_weights(mask, mode, norm_length, loss_mat.dtype))


def weighted_sum(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """sum(x * w) over positions with non-zero weight: where() rather than a plain product so
    a NaN in a padded (zero-weight) position cannot leak in."""
    return torch.where(w != 0, x * w, torch.zeros((), dtype=x.dtype, device=x.device)).sum()
