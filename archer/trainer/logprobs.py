"""The trainer's log-probs and entropies of sampled responses: teacher-forced forward passes.

No-grad passes (the reference's and the old policy's log-probs, the entropy pre-pass) run
each distinct prompt once and reuse its KV cache for the group's G responses, which run in
chunks of similar length cut to their longest response (``trainer.prompt_cache``, on by
default; :func:`forward_tokens_prompt_cached`). The update's own forward (with gradients)
runs the full padded sequences (or, single-process, the prompt-cached pass in one chunk).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F

from archer.algos import token_entropy, token_logprobs
from archer.models import cache_kwarg, keeps_logits, prefill
from archer.types import RolloutBatch, position_ids_from_mask


def forward_tokens(model: torch.nn.Module, batch: RolloutBatch, temperature: float,
                   chunk_size: int = 256, *, entropy: bool = True
                   ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Teacher-forced pass -> (log-probs (n, R) differentiable if grad is on, entropy (n, R)
    or None when ``entropy=False``), both from the same logits (position ids from the mask:
    left padding). Logits are computed only where a response token is predicted (the
    model's ``logits_to_keep``): the (n, P, V) logits over the prompt are never made."""
    r = batch.response_ids.shape[1]
    if keeps_logits(type(model)):
        # the last R + 1 positions are P-1 .. T-1; column P-1+j predicts response token j
        logits = model(**batch.model_inputs(), use_cache=False, logits_to_keep=r + 1).logits
    else:  # an architecture without logits_to_keep: all T positions, then cut
        logits = model(**batch.model_inputs(), use_cache=False).logits[:, -(r + 1):]
    resp = logits[:, :-1]  # (n, R, V)
    logprobs = token_logprobs(resp, batch.response_ids, temperature)
    if not entropy:
        return logprobs, None
    return logprobs, token_entropy(resp.detach(), temperature, chunk_size)


def forward_tokens_prompt_cached(model: torch.nn.Module, batch: RolloutBatch,
                                 temperature: float, chunk_size: int = 256, *,
                                 entropy: bool = True
                                 ) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """:func:`forward_tokens` running each distinct prompt once (with or without gradients).

    The G responses of a group share their (left-padded) prompt. The prompt pass runs over
    the distinct prompts only, keeping their KV cache and the last prompt position's logits
    (they score response token 0); the responses then attend to their prompt's cache rows,
    their positions continuing from the prompt's, and score tokens 1..w-1. The log-probs
    are the full pass's up to float rounding; the prompt costs 1/G of its usual compute.

    Without gradients (reference / old log-probs, the entropy pre-pass) the responses run in
    chunks of similar length (:func:`length_chunks`), each cut to its longest response, so
    padding costs nothing. With gradients (the update) they run as one pass cut to the
    longest response, and the backward flows through the gathered cache into the prompt
    pass: each prompt's gradient is the sum over its responses, as in the full pass. Where a
    response is padding the result is 0 (callers mask it). Returns None where the cache
    cannot help or cannot be used (no repeated prompt, R < 2, a model without a cache
    argument, gradient checkpointing, which turns the cache off): the caller runs the full
    pass."""
    kwarg = cache_kwarg(type(model))
    r, p, n = batch.response_ids.shape[1], batch.prompt_length, batch.num_samples
    grad = torch.is_grad_enabled()
    if kwarg is None or r < 2 or (grad and _checkpoints_activations(model)):
        return None  # (checkpointing: prefill would drop the cache; skip the wasted pass)
    device = batch.prompt_ids.device
    # the distinct prompts, found on the CPU: on a GPU, unique over rows is a slow sort kernel
    # (0.9 ms on an H100 for 64 rows, half the tiny reference pass) and its size syncs anyway
    key = torch.cat([batch.prompt_ids, batch.prompt_mask], dim=1).cpu()
    unique, inverse = torch.unique(key, dim=0, return_inverse=True)
    if unique.shape[0] == n:
        return None
    u_ids, u_mask = unique[:, :p], unique[:, p:]
    lead = p - max(int(u_mask.sum(-1).max()), 1)  # left-pad columns every distinct prompt has
    u_ids, u_mask = u_ids[:, lead:].to(device), u_mask[:, lead:].to(device)
    prefilled = prefill(model, u_ids, u_mask, position_ids_from_mask(u_mask))
    if prefilled is None:
        return None
    first, cache = prefilled  # first: (U, V), the logits that score response token 0
    inverse = inverse.to(device)
    mask, lengths = batch.attention_mask(), batch.response_mask.sum(-1).cpu()
    positions = position_ids_from_mask(mask)
    logprobs = torch.zeros(n, r, dtype=torch.float32, device=device)
    ent = torch.zeros_like(logprobs) if entropy else None
    # with gradients: one pass over every row in order (the graph of the prompt pass is
    # shared; a copied cache could not be, deepcopy refuses non-leaf tensors)
    chunks = ([torch.arange(n)] if grad else
              length_chunks(lengths, n, overhead=n * r * chunk_overhead(device)))
    for rows in chunks:
        w = max(int(lengths[rows].max()), 2)  # scores tokens 0..w-1 (no device sync)
        rows = rows.to(device)
        part = cache if len(chunks) == 1 else copy.deepcopy(cache)
        part.batch_select_indices(inverse[rows])  # (U, ...) -> this chunk's rows
        rest = model(input_ids=batch.response_ids[rows, :w - 1],
                     attention_mask=mask[rows, lead:p + w - 1],
                     position_ids=positions[rows, p:p + w - 1], use_cache=False,
                     logits_to_keep=w - 1, **{kwarg: part}).logits  # (n_c, w-1, V)
        resp = torch.cat([first.index_select(0, inverse[rows])[:, None], rest], dim=1)
        lp = token_logprobs(resp, batch.response_ids[rows, :w], temperature).float()
        e = token_entropy(resp.detach(), temperature, chunk_size) if entropy else None
        if grad:  # rows are 0..n-1: pad to R instead of writing into a buffer
            logprobs = F.pad(lp, (0, r - w))
            ent = F.pad(e, (0, r - w)) if e is not None else None
        else:
            logprobs[rows, :w] = lp
            if ent is not None:
                ent[rows, :w] = e
    return logprobs, ent


def _checkpoints_activations(model: torch.nn.Module) -> bool:
    """Whether the model recomputes activations in backward (then HF turns the cache off)."""
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):  # new, old name
        if hasattr(type(model), name):
            return bool(getattr(model, name))
    return False


def score_tokens(model: torch.nn.Module, batch: RolloutBatch, temperature: float,
                 chunk_size: int = 256, *, entropy: bool = True, prompt_cache: bool = True
                 ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(log-probs, entropy or None) of ``batch``'s responses: the prompt-cached pass where it
    applies (``prompt_cache``), else the full pass (:func:`forward_tokens`)."""
    part = (forward_tokens_prompt_cached(model, batch, temperature, chunk_size, entropy=entropy)
            if prompt_cache else None)
    return part or forward_tokens(model, batch, temperature, chunk_size, entropy=entropy)


def chunk_overhead(device: torch.device) -> float:
    """The fixed cost of one more chunk of a no-grad pass, as a fraction of the padded
    tokens of the whole micro-batch (:func:`length_chunks`' ``overhead / (n * R)``).

    On the CPU a chunk costs little beside its tokens (1/16, measured on the step bench). On
    a GPU a chunk costs its kernel launches and a copy of the prompt cache, which at the
    bench's sizes outweigh the padding they save (H100, 64 rows, reference pass, one chunk
    against the CPU's cost model: tiny model 7.6 against 14.5 ms, hidden 1024 x 8 layers
    77 against 82 ms): there a second chunk must save half the micro-batch's padded tokens,
    as with a long tail of a few long responses among many short ones."""
    return 1 / 16 if device.type == "cpu" else 1 / 2


def length_chunks(lengths: torch.Tensor, max_rows: int, overhead: float
                  ) -> list[torch.Tensor]:
    """Rows sorted by length (longest first, stable) and cut into contiguous chunks of at most
    ``max_rows`` rows that minimise the padded tokens plus ``overhead`` per chunk:
    sum over chunks of (rows x longest length) + overhead (exact, by dynamic programming)."""
    order = torch.sort(lengths, descending=True, stable=True).indices
    sizes = [max(int(x), 1) for x in lengths[order]]
    best, cut = [0.0] + [math.inf] * len(sizes), [0] * (len(sizes) + 1)
    for j in range(1, len(sizes) + 1):
        for i in range(max(0, j - max_rows), j):  # chunk = sorted rows i..j-1, width sizes[i]
            cost = best[i] + (j - i) * sizes[i] + overhead
            if cost < best[j]:
                best[j], cut[j] = cost, i
    bounds, j = [], len(sizes)
    while j > 0:
        bounds.append((cut[j], j))
        j = cut[j]
    return [order[i:j] for i, j in reversed(bounds)]


@torch.no_grad()
def forward_tokens_batched(model, batch: RolloutBatch, temperature: float, micro: int,
                           chunk_size: int = 256, *, entropy: bool = True,
                           prompt_cache: bool = True
                           ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """No-grad :func:`forward_tokens` over micro-batches of ``micro`` rows; with
    ``prompt_cache`` each micro-batch's distinct prompts run once
    (:func:`forward_tokens_prompt_cached`)."""
    if batch.num_samples == 0:  # a data-parallel rank that kept no group this step
        empty = torch.zeros(batch.response_ids.shape, dtype=torch.float32,
                            device=batch.response_ids.device)
        return empty, (empty.clone() if entropy else None)
    parts = []
    for rows in torch.arange(batch.num_samples).split(micro):
        parts.append(score_tokens(model, batch.select(rows), temperature, chunk_size,
                                  entropy=entropy, prompt_cache=prompt_cache))
    ent = torch.cat([e for _, e in parts]) if entropy else None
    return torch.cat([lp for lp, _ in parts]), ent
