"""Split response tokens into high-entropy ("reasoning") and low-entropy ("knowledge") masks.

The method's token split (docs/method.md, section 2): the threshold is the rho-quantile
(linear interpolation, as ``torch.nanquantile``) of the entropies of the valid tokens in the
chosen scope, and a token is high-entropy iff its entropy is STRICTLY greater than the
threshold. The reference code names
its masks backwards; here each mask is named for what is True.

Edge cases are well defined:
- a fully padded response has threshold NaN and no tokens in either mask;
- a one-token response (scope ``response``): the threshold equals its entropy, so the token is
  low-entropy (strict rule);
- constant entropy: the threshold equals the constant, so every token is low-entropy;
- ``rho = 1``: the threshold is the maximum, so no token is high-entropy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from archer.config import ENTROPY_SCOPES


class NonFiniteEntropyError(FloatingPointError):
    """Entropy (so the logits) of some valid token is NaN or infinite."""


@dataclass
class TokenSplit:
    high_entropy_mask: torch.Tensor  # (B, T) bool, True on valid tokens with e > tau
    low_entropy_mask: torch.Tensor  # (B, T) bool, True on the other valid tokens
    threshold: torch.Tensor  # (B,) float, tau used for each response (NaN if no valid token)


def masked_quantile(values: torch.Tensor, mask: torch.Tensor, q: float) -> torch.Tensor:
    """Quantile with linear interpolation over the masked entries of each row.

    values (N, L), mask (N, L) bool -> (N,). Rows without a valid entry give NaN. Matches
    ``torch.nanquantile`` but works on any size (torch.quantile is limited to 16M elements).
    Computed in the input's dtype (float64 stays float64, so a float64 split compares values
    with a float64 threshold); float16/bfloat16/integers in float32, an exact upcast.
    """
    filled = values.detach().to(quantile_dtype(values.dtype)).masked_fill(~mask, float("inf"))
    ordered = _sort_rows(filled)  # valid values first, ascending
    count = mask.sum(dim=-1)  # (N,)
    pos = q * (count - 1).clamp(min=0).to(torch.float64)  # fractional index into sorted values
    lo = pos.floor().long()
    hi = pos.ceil().long()
    frac = (pos - lo.to(torch.float64)).to(ordered.dtype)
    v_lo = ordered.gather(-1, lo[:, None]).squeeze(-1)
    v_hi = ordered.gather(-1, hi[:, None]).squeeze(-1)
    # Lerp written so equal neighbours give exactly that value (no inf*0 on the valid part).
    out = torch.where(v_hi == v_lo, v_lo, v_lo + frac * (v_hi - v_lo))
    return out.masked_fill(count == 0, float("nan"))


def quantile_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype :func:`masked_quantile` computes and returns in for inputs of ``dtype``."""
    return torch.promote_types(dtype, torch.float32)


def _sort_rows(x: torch.Tensor) -> torch.Tensor:
    """Ascending sort along the last dim. On CPU numpy's sort is ~5x faster than torch's."""
    if x.device.type == "cpu":
        return torch.from_numpy(np.sort(x.numpy(), axis=-1))
    return torch.sort(x, dim=-1).values


def split_by_entropy(
    entropy: torch.Tensor,
    response_mask: torch.Tensor,
    rho: float = 0.8,
    scope: str = "response",
    group_index: torch.Tensor | None = None,
) -> TokenSplit:
    """Token split by the rho-quantile of entropy within each response, group or the batch.

    entropy (B, T) float, response_mask (B, T) bool/0-1, group_index (B,) int (scope=group).
    Raises NonFiniteEntropyError if a valid token's entropy is not finite: a NaN would
    otherwise be silently ignored by the quantile.
    """
    if not 0.0 < rho <= 1.0:
        raise ValueError(f"rho must be in (0, 1], got {rho}")
    if scope not in ENTROPY_SCOPES:
        raise ValueError(f"unknown entropy scope {scope!r}; choose one of {list(ENTROPY_SCOPES)}")
    valid = response_mask.bool()
    # One cheap reduction in the common case; the exact check only when something is off.
    bad = None if torch.isfinite(entropy.sum()) else valid & ~torch.isfinite(entropy)
    if bad is not None and bad.any():
        rows = sorted({int(r) for r in bad.nonzero()[:, 0].tolist()})
        raise NonFiniteEntropyError(
            f"{int(bad.sum())} valid token(s) have non-finite entropy (NaN/inf logits) in "
            f"responses {rows[:10]}{'...' if len(rows) > 10 else ''}"
        )
    if scope == "response":
        tau = masked_quantile(entropy, valid, rho)  # (B,)
    elif scope == "batch":
        tau = masked_quantile(entropy.reshape(1, -1), valid.reshape(1, -1), rho)
        tau = tau.expand(entropy.shape[0])
    else:
        if group_index is None:
            raise ValueError("scope='group' needs group_index (B,)")
        tau = torch.full((entropy.shape[0],), float("nan"),
                         dtype=quantile_dtype(entropy.dtype), device=entropy.device)
        for g in torch.unique(group_index):
            rows = group_index == g
            t = masked_quantile(entropy[rows].reshape(1, -1), valid[rows].reshape(1, -1), rho)
            tau[rows] = t
    high = valid & (entropy > tau[:, None])  # NaN threshold compares False
    return TokenSplit(high_entropy_mask=high, low_entropy_mask=valid & ~high, threshold=tau)


def split_change_fraction(previous: torch.Tensor, current: torch.Tensor,
                          response_mask: torch.Tensor) -> float:
    """Fraction of valid tokens whose class changed between two splits (e.g. PPO epochs)."""
    valid = response_mask.bool()
    n = int(valid.sum())
    if n == 0:
        return 0.0
    return float(((previous != current) & valid).sum()) / n
