"""Token entropy and token log-probs from logits, computed in chunks over positions.

Entropy of the next-token distribution at each position, with logits divided by the rollout
temperature: ``H = logsumexp(z) - sum(softmax(z) * z)``. Done chunk by chunk over positions so
the extra memory is about ``chunk_size x V`` floats instead of ``T x V`` (a 32k-token response
with a 150k vocabulary would otherwise need ~20 GB for one float32 softmax).
"""

from __future__ import annotations

import torch


def entropy_naive(logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Reference formula. logits (..., V) -> entropy (...). Materialises the full softmax."""
    z = logits.float() / temperature
    p = torch.softmax(z, dim=-1)
    return torch.logsumexp(z, dim=-1) - (p * z).sum(dim=-1)


def token_entropy(
    logits: torch.Tensor, temperature: float = 1.0, chunk_size: int = 256
) -> torch.Tensor:
    """Chunked entropy. logits (..., T, V) -> entropy (..., T), float32, no autograd graph.

    Non-finite logits give a non-finite entropy at that position (never silently dropped);
    :func:`archer.algos.split.split_by_entropy` refuses such entropies on valid tokens.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    flat = logits.reshape(-1, logits.shape[-1])  # (N, V) view, no copy
    out = torch.empty(flat.shape[0], dtype=torch.float32, device=logits.device)
    with torch.no_grad():
        for start in range(0, flat.shape[0], chunk_size):
            # Two (c, V) buffers at most: z (shifted logits) and e (exp, then e * z).
            z = torch.div(flat[start : start + chunk_size].float(), temperature)  # (c, V) new
            z.sub_(z.amax(dim=-1, keepdim=True))  # shift: entropy is shift-invariant
            z.clamp_(min=-1e30)  # a -inf logit is a probability-0 token: 0 * -1e30 = 0; NaN stays
            e = torch.exp(z)  # (c, V)
            s = e.sum(dim=-1)  # (c,)
            ez = e.mul_(z).sum(dim=-1)  # (c,) sum_v exp(z_v) z_v
            # H = logsumexp(z) - sum softmax(z) z = log s - ez / s (with the shifted z)
            out[start : start + chunk_size] = torch.log(s) - ez / s
            del z, e
    return out.reshape(logits.shape[:-1])


def token_logprobs(
    logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0, chunk_size: int = 1024
) -> torch.Tensor:
    """Log-prob of ``labels`` under softmax(logits / temperature), differentiable.

    logits (..., T, V), labels (..., T) int -> (..., T) float32. Computed as
    ``z[label] - logsumexp(z)`` per chunk, which never builds a full log-softmax tensor.
    """
    flat = logits.reshape(-1, logits.shape[-1])
    flat_labels = labels.reshape(-1)
    pieces = []
    for start in range(0, flat.shape[0], chunk_size):
        z = flat[start : start + chunk_size].float() / temperature
        picked = z.gather(-1, flat_labels[start : start + chunk_size, None]).squeeze(-1)
        pieces.append(picked - torch.logsumexp(z, dim=-1))
    if not pieces:
        return torch.zeros(labels.shape, dtype=torch.float32, device=logits.device)
    return torch.cat(pieces).reshape(labels.shape)
