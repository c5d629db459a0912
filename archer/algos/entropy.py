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


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for bf16/fp16/fp32 logits, float64 for float64 (so gradcheck can run)."""
    return torch.promote_types(dtype, torch.float32)


def _as_rows(logits: torch.Tensor) -> torch.Tensor:
    """logits (..., T, V) -> a (B, T', V) tensor over the same positions, as a view if the
    layout allows: (1, N, V) when all positions flatten (contiguous input), else (B, T, V)
    with the leading dims merged (``logits[:, :-1]`` of a contiguous (n, T+1, V) tensor is
    such a view). Only a layout whose leading dims cannot merge is copied."""
    v = logits.shape[-1]
    try:
        return logits.view(1, -1, v)
    except RuntimeError:
        t = logits.shape[-2] if logits.dim() >= 2 else 1
        return logits.reshape(-1, t, v)


def _chunk_index(rows: int, length: int, chunk_size: int):
    """Index tuples into a (rows, length, ...) tensor, each covering about ``chunk_size``
    positions: whole rows grouped when a row is shorter than a chunk, else row pieces."""
    if length >= chunk_size:
        for b in range(rows):
            for t in range(0, length, chunk_size):
                yield b, slice(t, t + chunk_size)
    else:
        per = max(1, chunk_size // max(length, 1))
        for b in range(0, rows, per):
            yield (slice(b, b + per),)


def _logprob_chunks(x: torch.Tensor, labels: torch.Tensor, temperature: float,
                    chunk_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x (B, T, V), labels (B, T) -> (log-probs, logsumexp(z)), both (B, T) in the compute
    dtype, z = x / temperature. One (c, V) float buffer at a time; nothing recorded."""
    dtype = _compute_dtype(x.dtype)
    out = torch.empty(x.shape[:-1], dtype=dtype, device=x.device)
    lse = torch.empty_like(out)
    with torch.no_grad():
        for idx in _chunk_index(x.shape[0], x.shape[1], chunk_size):
            z = x[idx].to(dtype, copy=True).div_(temperature)  # (.., c, V) new buffer
            lse[idx] = torch.logsumexp(z, dim=-1)
            out[idx] = z.gather(-1, labels[idx].unsqueeze(-1)).squeeze(-1) - lse[idx]
            del z
    return out, lse


class ChunkedTokenLogprob(torch.autograd.Function):
    """``log_softmax(logits / temperature)[label]`` with a chunked, recomputing backward.

    Autograd on the plain chunked formula keeps each chunk's float32 ``z`` for the backward
    of ``logsumexp``, which adds up to a float32 copy of all (T, V) logits. This Function
    saves only the input logits (which autograd keeps anyway for the lm_head matmul), the
    labels and the per-position logsumexp, and recomputes the softmax chunk by chunk in the
    backward: ``d logp / d logits = (onehot(label) - softmax(z)) / temperature``.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor, temperature: float,
                chunk_size: int) -> torch.Tensor:
        x = _as_rows(logits)
        lab = labels.reshape(x.shape[:-1])
        out, lse = _logprob_chunks(x, lab, temperature, chunk_size)
        ctx.save_for_backward(logits, lab, lse)
        ctx.temperature, ctx.chunk_size = temperature, chunk_size
        return out.reshape(labels.shape)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        logits, lab, lse = ctx.saved_tensors
        temperature = ctx.temperature
        x = _as_rows(logits)
        g_all = grad_out.reshape(lab.shape).to(lse.dtype)
        grad = torch.empty(x.shape, dtype=logits.dtype, device=logits.device)  # contiguous
        for idx in _chunk_index(x.shape[0], x.shape[1], ctx.chunk_size):
            g = g_all[idx].unsqueeze(-1)  # (.., c, 1)
            p = x[idx].to(lse.dtype, copy=True).div_(temperature)
            p.sub_(lse[idx].unsqueeze(-1)).exp_()  # softmax(z), in place
            p.mul_(g.neg())  # -softmax * g
            p.scatter_add_(-1, lab[idx].unsqueeze(-1), g)  # + onehot(label) * g
            if temperature != 1.0:
                p.div_(temperature)
            grad[idx] = p  # cast to the logits' dtype
            del p
        return grad.reshape(logits.shape), None, None, None


def token_logprobs(
    logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0, chunk_size: int = 1024
) -> torch.Tensor:
    """Log-prob of ``labels`` under softmax(logits / temperature), differentiable.

    logits (..., T, V) (bf16/fp16/fp32, any strides), labels (..., T) int on the same device
    -> (..., T) float32 (float64 for float64 logits). Computed as ``z[label] - logsumexp(z)``
    per chunk of positions, which never builds a full log-softmax tensor. With grad required
    this runs :class:`ChunkedTokenLogprob`, whose saved state is the logits themselves plus
    O(T) floats; the gradient is recomputed chunk by chunk in the backward.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    if labels.device != logits.device:
        raise ValueError(f"labels on {labels.device}, logits on {logits.device}")
    if labels.numel() * logits.shape[-1] != logits.numel():
        raise ValueError(f"labels {tuple(labels.shape)} do not match logits "
                         f"{tuple(logits.shape)}")
    if torch.is_grad_enabled() and logits.requires_grad:
        return ChunkedTokenLogprob.apply(logits, labels, float(temperature), int(chunk_size))
    x = _as_rows(logits)
    out, _ = _logprob_chunks(x, labels.reshape(x.shape[:-1]), temperature, chunk_size)
    return out.reshape(labels.shape)
