"""The update: advantages and the old / reference log-probs, then PPO epochs x mini-batches
x update phases, each phase a micro-batch gradient accumulation and one optimizer step.

Micro-batch gradient accumulation is exact: every aggregation mode is
``sum(x * W)`` with W proportional to ``mask / D`` where D is the number of tokens
(token-mean) or of non-empty responses (seq-mean-*) in the aggregated set. A micro-batch's
loss is computed with its own D_micro and multiplied by ``D_micro / D_mini`` (the mini-batch's
D for the same mask), so the accumulated gradient equals the gradient of the mini-batch
aggregate. The PG term and each class's KL term (``kl_normalization=per_class``) have their own
masks, hence their own scale; the loss is then evaluated per term (PG without KL, then KL of
each class without PG) and the scaled terms are summed. With one micro-batch every scale is 1.
The policy loss is the one ``algo.loss`` names (:data:`archer.algos.policy_loss.POLICY_LOSSES`).

Entropy split: with ``entropy_source=current`` and ``scope=response`` the split comes from the
same forward pass as the log-probs, per micro-batch (the reference). When the split must be
known for the whole mini-batch before the first micro-batch (scope group/batch with several
micro-batches, mask/async-by-entropy phases whose token counts set the denominators, per-class
KL denominators with several micro-batches, or async phases that must partition one split),
a no-grad forward pass over the mini-batch computes the current entropy first and the split is
taken over the mini-batch. ``scope=batch`` means the mini-batch (the set one optimizer step
sees). With ``entropy_source=old`` the split uses the old policy's entropy, over the mini-batch.

Data parallel: mini-batches are cut from the global group ids, and every denominator (and a
``scope=batch`` quantile) is taken over all ranks, so the SUM-reduced gradient equals the
single-process one.

The diagnostics of each micro-batch stay on the device and are read to the host once per
phase (one optimizer step), in :func:`accumulate_gradients`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from archer.algos import (
    LossInputs,
    Phase,
    compute_advantages,
    compute_policy_loss,
    lopti_reweight,
    phase_token_mask,
    split_by_entropy,
)
from archer.algos.mismatch import apply_tis, mismatch_metrics, truncated_is_weights
from archer.algos.split import (
    NonFiniteEntropyError,
    TokenSplit,
    masked_quantile,
    split_change_fraction,
)
from archer.config import AlgoConfig
from archer.distributed import DistInfo, full_params, full_tensor
from archer.trainer.context import TrainContext
from archer.trainer.logprobs import forward_tokens_batched, score_tokens
from archer.trainer.metrics import (
    mean_metrics,
    reduce_mismatch_metrics,
    reduce_update_metrics,
    sum_metrics,
    to_host,
)
from archer.types import RolloutBatch

# --- what the update works on -------------------------------------------------------------


@dataclass
class UpdateBatch:
    """The rollout batch plus everything the loss needs that does not change during the
    update (row-aligned, N responses)."""

    batch: RolloutBatch
    advantages: torch.Tensor  # (N,) per response, or (N, R) after Lopti reweighting
    old_logprobs: torch.Tensor | None  # (N, R) before this step's update; None: on-policy
    old_entropy: torch.Tensor | None  # (N, R) entropy of the old policy; None: on-policy
    ref_logprobs: torch.Tensor | None  # (N, R) under the frozen reference (KL or kl_monitor)

    @property
    def num_rows(self) -> int:
        return self.batch.num_samples

    def rows(self, idx: torch.Tensor) -> UpdateBatch:
        return UpdateBatch(
            batch=self.batch.select(idx), advantages=self.advantages[idx],
            old_logprobs=None if self.old_logprobs is None else self.old_logprobs[idx],
            old_entropy=None if self.old_entropy is None else self.old_entropy[idx],
            ref_logprobs=None if self.ref_logprobs is None else self.ref_logprobs[idx])


def prepare_update_batch(ctx: TrainContext, batch: RolloutBatch,
                         rewards: torch.Tensor) -> UpdateBatch:
    """Advantages and the old / reference log-probs, recomputed by the trainer (no grad).

    On-policy updates (see :func:`is_on_policy`) skip the old-policy pass: every micro-batch
    is then computed with the parameters that sampled, so the update's own forward, detached,
    is the old log-prob (ratio 1, the same gradient), as TRL and verl do."""
    cfg, algo = ctx.cfg, ctx.algo
    old_lp = old_ent = None
    if not is_on_policy(ctx, global_num_groups(ctx, batch)):
        with full_params(ctx.model):
            old_lp, old_ent = forward_tokens_batched(
                ctx.model, batch, algo.temperature, cfg.micro_batch_size, cfg.entropy_chunk_size,
                prompt_cache=cfg.prompt_cache)
    ref_lp = None  # with kl_monitor only, the loss logs the KL to it and adds no KL term
    if algo.loads_reference:
        with full_params(ctx.ref):
            ref_lp, _ = forward_tokens_batched(ctx.ref, batch, algo.temperature,
                                               cfg.micro_batch_size, cfg.entropy_chunk_size,
                                               entropy=False, prompt_cache=cfg.prompt_cache)
    adv = compute_advantages(algo.advantage, rewards, batch.group_index, algo.adv_eps)
    if algo.lopti_alpha > 0:
        adv = lopti_reweight(adv, old_lp, algo.lopti_alpha)  # (N, R)
    return UpdateBatch(batch, adv, old_lp, old_ent, ref_lp)


def global_num_groups(ctx: TrainContext, batch: RolloutBatch) -> int:
    """Groups in the step's batch over all ranks (kept groups are numbered 0..K-1 globally)."""
    if not ctx.dist.enabled:
        return int(torch.unique(batch.group_index).numel())
    local = int(batch.group_index.max()) + 1 if batch.num_samples else 0
    return int(ctx.dist.max(local))


def is_on_policy(ctx: TrainContext, num_groups: int) -> bool:
    """True when the whole update is one optimizer step at the sampling parameters: one PPO
    epoch, one mini-batch, one phase, and nothing that needs the old log-probs before the
    update (Lopti's reweighting, probability-split phases)."""
    cfg, algo = ctx.cfg, ctx.algo
    return (cfg.ppo_epochs == 1 and len(ctx.plan) == 1 and cfg.mini_batch_prompts >= num_groups
            and algo.lopti_alpha == 0 and ctx.plan[0].selector in ("all", "high_entropy",
                                                                     "low_entropy"))


# --- epochs, mini-batches, phases ---------------------------------------------------------


def update_policy(ctx: TrainContext, ub: UpdateBatch) -> dict[str, float]:
    """PPO epochs over mini-batches of whole groups; each plan phase = all micro-batches
    then one optimizer step. Also measures how the token split moves between epochs."""
    records, changes, previous, high_counts = [], [], None, []
    valid = ub.batch.response_mask.bool()
    dist = ctx.dist
    # The trainer's old log-probs of the sampled tokens; on-policy they are the first
    # forward's, filled in by accumulate_gradients (each row is seen once: one epoch/phase).
    trainer_old = ub.old_logprobs
    if trainer_old is None:
        trainer_old = torch.zeros_like(ub.batch.sampler_logprobs)
    for epoch in range(ctx.cfg.ppo_epochs):
        high_this_epoch = torch.zeros_like(valid)
        for rows in minibatch_rows(ctx, ub, epoch):
            mb = ub.rows(rows)
            split = minibatch_split(ctx, mb)  # None: split per micro-batch from its forward
            for i, phase in enumerate(ctx.plan):
                ctx.optimizer.zero_grad(set_to_none=True)
                sink = torch.zeros_like(mb.batch.sampler_logprobs) if (
                    mb.old_logprobs is None and epoch == 0 and i == 0) else None
                metrics, high = accumulate_gradients(ctx, mb, phase, split, old_sink=sink)
                metrics = reduce_update_metrics(dist, metrics) | optimizer_step(ctx)
                records.append(metrics)
                if sink is not None:
                    trainer_old[rows] = sink
                if i == 0:
                    high_this_epoch[rows] = high
        high_counts.append(float((high_this_epoch & valid).sum()))
        if previous is not None and dist.enabled:
            moved, n = dist.all_reduce([float(((previous != high_this_epoch) & valid).sum()),
                                        float(valid.sum())])
            changes.append(moved / n if n else 0.0)
        elif previous is not None:
            changes.append(split_change_fraction(previous, high_this_epoch, valid))
        previous = high_this_epoch
    out = mean_metrics(records)
    out["actor/split_change_frac"] = sum(changes) / len(changes) if changes else 0.0
    out["actor/optimizer_steps"] = sum(m["actor/optimizer_steps"] for m in records)
    out["actor/updates_skipped"] = sum(m["actor/updates_skipped"] for m in records)
    # the split's share of every response token (not of the trained ones: mask mode trains
    # the high-entropy tokens only), over the epochs and all ranks
    high_n, valid_n = sum(high_counts), float(valid.sum()) * len(high_counts)
    if dist.enabled:
        high_n, valid_n = dist.all_reduce([high_n, valid_n])
    out["actor/frac_high_entropy"] = high_n / max(valid_n, 1.0)
    out |= reduce_mismatch_metrics(dist, mismatch_metrics(
        ub.batch.sampler_logprobs, trainer_old, valid, ctx.algo.tis_cap), float(valid.sum()))
    return out


def minibatch_rows(ctx: TrainContext, ub: UpdateBatch, epoch: int) -> list[torch.Tensor]:
    """Row indices of each mini-batch: ``mini_batch_prompts`` whole groups, optionally in a
    shuffled order seeded by (seed, step, epoch)."""
    groups = (torch.arange(global_num_groups(ctx, ub.batch)) if ctx.dist.enabled
              else torch.unique(ub.batch.group_index))  # every rank cuts the same groups
    if ctx.cfg.shuffle_minibatches:
        gen = torch.Generator().manual_seed(
            ctx.cfg.seed * 1_000_003 + ctx.state.step * 997 + epoch)
        groups = groups[torch.randperm(len(groups), generator=gen)]
    out = []
    for chunk in groups.split(ctx.cfg.mini_batch_prompts):
        out.append(torch.isin(ub.batch.group_index, chunk.to(ub.batch.group_index.device))
                   .nonzero().squeeze(-1).cpu())
    return out


def needs_minibatch_split(ctx: TrainContext, num_rows: int) -> bool:
    """Whether the current-entropy split must be known for the whole mini-batch up front."""
    algo = ctx.algo
    # Data parallel: the mini-batch spans ranks, so it always has "several" micro-batches.
    several = ctx.dist.enabled or math.ceil(num_rows / ctx.cfg.micro_batch_size) > 1
    by_entropy = any(p.needs_entropy_split for p in ctx.plan)
    class_kl = algo.needs_reference and algo.kl_normalization == "per_class"
    if len(ctx.plan) > 1 and by_entropy:
        return True
    return several and (algo.entropy_scope != "response" or by_entropy or class_kl)


def minibatch_split(ctx: TrainContext, mb: UpdateBatch) -> TokenSplit | None:
    algo = ctx.algo
    if algo.entropy_source == "old" and mb.old_entropy is not None:
        entropy = mb.old_entropy  # (on-policy the old entropy is the current one: below)
    elif needs_minibatch_split(ctx, mb.num_rows):
        with full_params(ctx.model):
            _, entropy = forward_tokens_batched(ctx.model, mb.batch, algo.temperature,
                                                ctx.cfg.micro_batch_size,
                                                ctx.cfg.entropy_chunk_size,
                                                prompt_cache=ctx.cfg.prompt_cache)
    else:
        return None
    if ctx.dist.enabled and algo.entropy_scope == "batch":
        return global_batch_split(ctx.dist, entropy, mb.batch.response_mask,
                                  algo.entropy_quantile)
    return split_by_entropy(entropy, mb.batch.response_mask, algo.entropy_quantile,
                            algo.entropy_scope, mb.batch.group_index)


def global_batch_split(dist: DistInfo, entropy: torch.Tensor, response_mask: torch.Tensor,
                       rho: float) -> TokenSplit:
    """``scope=batch`` over the mini-batch on all ranks: the exact rho-quantile of every
    rank's valid-token entropies (all-gathered), then the strict split on this rank's rows."""
    valid = response_mask.bool()
    if (valid & ~torch.isfinite(entropy)).any():
        raise NonFiniteEntropyError("valid token(s) have non-finite entropy (NaN/inf logits)")
    values = entropy[valid]
    if values.dtype not in (torch.float32, torch.float64):  # bf16/fp16: gather exactly in fp32
        values = values.float()  # (float64 stays float64: masked_quantile keeps the dtype)
    values = dist.all_gather_cat(values)
    tau = masked_quantile(values[None], torch.ones_like(values, dtype=torch.bool)[None], rho)
    tau = tau.to(entropy.device).expand(entropy.shape[0])
    high = valid & (entropy > tau[:, None])
    return TokenSplit(high_entropy_mask=high, low_entropy_mask=valid & ~high, threshold=tau)


# --- one phase: micro-batches, then one optimizer step ------------------------------------


def accumulate_gradients(ctx: TrainContext, mb: UpdateBatch, phase: Phase,
                         split: TokenSplit | None, old_sink: torch.Tensor | None = None
                         ) -> tuple[dict[str, float], torch.Tensor]:
    """Backward of the phase's mini-batch loss, micro-batch by micro-batch (exact scaling,
    see the module docstring). Returns (metrics, high-entropy mask (n, R) used); the
    micro-batches' metrics are accumulated on the device and read to the host once.

    Data parallel: the denominators are summed over ranks, so each rank's gradient is its
    share of the global mini-batch loss and the SUM-reduced gradient is the single-process
    one. Every rank runs the same number of forward/backward passes (FSDP's collectives):
    a rank with fewer micro-batches runs zero-weight dummy passes.
    ``old_sink`` (n, R), if given, receives the old log-probs the loss used."""
    cfg, algo, dist = ctx.cfg, ctx.algo, ctx.dist
    chunks = micro_batch_rows(mb, cfg.micro_batch_size, cfg.length_bucketing)
    n_micro = int(dist.max(len(chunks))) if dist.enabled else len(chunks)
    denominators = None
    if len(chunks) > 1 or dist.enabled:
        denominators = minibatch_denominators(ctx, mb, phase, split)
    if algo.loss_agg_mode == "seq-mean-token-sum-norm" and algo.loss_norm_length is None:
        # the padded length, even when trimmed
        algo = replace(algo, loss_norm_length=mb.batch.response_ids.shape[1])
    records = []
    high_out = torch.zeros_like(mb.batch.response_mask, dtype=torch.bool)
    for i in range(n_micro):
        if i >= len(chunks):
            dummy_backward(ctx)
            continue
        metrics, high, cols = micro_backward(ctx, algo, mb, chunks[i], phase, split,
                                             denominators, old_sink)
        records.append(metrics)
        high_out[chunks[i].to(high_out.device), :cols] = high
    return to_host(sum_metrics(records)), high_out


def minibatch_denominators(ctx: TrainContext, mb: UpdateBatch, phase: Phase,
                           split: TokenSplit | None) -> dict[str, float]:
    """The mini-batch's loss denominators (over all ranks), which scale each micro-batch."""
    high = split.high_entropy_mask if split is not None else None
    token_mask = phase_token_mask(phase, mb.batch.response_mask, high, mb.old_logprobs,
                                  ctx.algo.async_prob_threshold)
    local = denominators(token_mask, high, ctx.algo.loss_agg_mode)
    return dict(zip(local, ctx.dist.all_reduce(list(local.values()))))


def micro_backward(ctx: TrainContext, algo: AlgoConfig, mb: UpdateBatch, rows: torch.Tensor,
                   phase: Phase, split: TokenSplit | None,
                   mini_denominators: dict[str, float] | None,
                   old_sink: torch.Tensor | None
                   ) -> tuple[dict[str, torch.Tensor], torch.Tensor, int]:
    """Forward and backward of one micro-batch (``rows`` of ``mb``): its share of the phase's
    loss. Returns (its metrics as device tensors, its high-entropy mask, its columns)."""
    cfg = ctx.cfg
    micro, cols = mb.rows(rows), mb.batch.response_ids.shape[1]
    if cfg.length_bucketing:
        micro, cols = trim_padding(micro)
    # data parallel: the full pass (FSDP gathers per forward call, and the prompt cache
    # makes a micro-batch's number of calls depend on its rows)
    logprobs, entropy = score_tokens(ctx.model, micro.batch, algo.temperature,
                                     cfg.entropy_chunk_size,
                                     prompt_cache=cfg.prompt_cache and not ctx.dist.enabled)
    mask = micro.batch.response_mask.bool()
    high = (split.high_entropy_mask[rows][:, :cols] if split is not None else
            split_by_entropy(entropy, mask, algo.entropy_quantile, algo.entropy_scope,
                             micro.batch.group_index).high_entropy_mask)
    old = micro.old_logprobs if micro.old_logprobs is not None else logprobs.detach()
    if old_sink is not None:
        old_sink[rows.to(old_sink.device), :cols] = old
    token_mask = phase_token_mask(phase, mask, high, old, algo.async_prob_threshold)
    advantages = micro.advantages
    if algo.tis_cap is not None:  # truncated IS: sampler -> trainer's old policy
        advantages = apply_tis(advantages, truncated_is_weights(
            old, micro.batch.sampler_logprobs, algo.tis_cap))
    inputs = LossInputs(logprobs=logprobs, old_logprobs=old, advantages=advantages,
                        response_mask=mask, high_entropy_mask=high,
                        ref_logprobs=micro.ref_logprobs, entropy=entropy, token_mask=token_mask)
    scales = None if mini_denominators is None else micro_scales(
        mini_denominators, denominators(token_mask, high, algo.loss_agg_mode))
    loss, metrics = micro_loss(algo, inputs, scales)
    loss.backward()
    metrics["actor/entropy"] = masked_mean(entropy, mask)
    return metrics, high, cols


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean of ``values`` where ``mask`` holds, 0 where it holds nowhere (on the device,
    no sync)."""
    total = torch.where(mask, values.float(), 0.0).sum()
    return total / mask.sum().clamp(min=1)


def micro_batch_rows(mb: UpdateBatch, size: int, by_length: bool) -> list[torch.Tensor]:
    """Row indices of each micro-batch: in order, or (``by_length``) sorted by response
    length, longest first, so each micro-batch holds similar lengths and little padding."""
    if mb.num_rows == 0:  # (split() of an empty range gives one empty chunk)
        return []
    if not by_length:
        return list(torch.arange(mb.num_rows).split(size))
    lengths = mb.batch.response_mask.sum(-1).cpu()
    order = torch.sort(lengths, descending=True, stable=True).indices
    return list(order.split(size))


def trim_padding(ub: UpdateBatch) -> tuple[UpdateBatch, int]:
    """Drop the all-padding prompt columns (left) and response columns (right) of a
    micro-batch; returns (trimmed batch, kept response columns). Causal attention with
    position ids from the mask gives the same log-probs up to float summation order."""
    b = ub.batch
    p = max(int(b.prompt_mask.sum(-1).max()), 1) if b.num_samples else b.prompt_length
    r = max(int(b.response_mask.sum(-1).max()), 1) if b.num_samples else b.response_ids.shape[1]
    P = b.prompt_length

    def cut(t: torch.Tensor | None) -> torch.Tensor | None:
        return None if t is None or t.dim() < 2 else t[:, :r]

    batch = replace(b, prompt_ids=b.prompt_ids[:, P - p:], prompt_mask=b.prompt_mask[:, P - p:],
                    response_ids=b.response_ids[:, :r], response_mask=b.response_mask[:, :r],
                    sampler_logprobs=b.sampler_logprobs[:, :r])
    adv = ub.advantages if ub.advantages.dim() == 1 else ub.advantages[:, :r]
    return UpdateBatch(batch, adv, cut(ub.old_logprobs), cut(ub.old_entropy),
                       cut(ub.ref_logprobs)), r


def dummy_backward(ctx: TrainContext) -> None:
    """A zero-gradient forward/backward on one token: keeps this rank in step with the
    ranks that have another micro-batch (FSDP gathers and reduces per pass)."""
    ids = torch.full((1, 1), ctx.rollout.pad_id, dtype=torch.long, device=ctx.device)
    logits = ctx.model(input_ids=ids, use_cache=False).logits
    (logits.float().sum() * 0.0).backward()


def denominators(token_mask: torch.Tensor, high: torch.Tensor | None,
                 mode: str) -> dict[str, float]:
    """D per aggregated set: tokens (token-mean) or non-empty responses (seq-mean-*), read to
    the host together."""
    def d(mask: torch.Tensor) -> torch.Tensor:
        return mask.sum() if mode == "token-mean" else (mask.sum(-1) > 0).sum()

    sets = {"pg": token_mask}
    if high is not None:
        sets["high"], sets["low"] = token_mask & high, token_mask & ~high
    values = torch.stack([d(m) for m in sets.values()]).double().tolist()
    return dict(zip(sets, values))


def micro_scales(mini: dict[str, float], micro: dict[str, float]) -> dict[str, float]:
    """Each term's ``D_micro / D_mini`` (0 where the mini-batch has none of its tokens)."""
    return {k: (micro[k] / mini[k] if mini[k] > 0 else 0.0) for k in micro if k in mini}


def micro_loss(algo: AlgoConfig, inputs: LossInputs, scales: dict[str, float] | None
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """This micro-batch's share of the mini-batch loss (the ``algo.loss`` policy loss), and
    its diagnostics as device tensors.

    One loss call: ``scales`` weights the PG term and each class's KL term by this
    micro-batch's share of the mini-batch denominators; losses and PG contributions come
    back already scaled, so their sums over micro-batches are the mini-batch values."""
    if scales is not None and not (algo.needs_reference and algo.kl_normalization == "per_class"):
        scales = {"pg": scales["pg"]}  # all-token KL shares the PG denominator
    out = compute_policy_loss(algo.loss, inputs, algo, with_metrics=True, scales=scales)
    return out.loss, dict(out.metrics)


def optimizer_step(ctx: TrainContext) -> dict[str, float]:
    """Clip the global grad norm and step; skip (and count) when the norm is not finite."""
    params = [p for p in ctx.model.parameters() if p.grad is not None]
    norm = full_tensor(torch.nn.utils.clip_grad_norm_(params, ctx.cfg.grad_clip))
    if not torch.isfinite(norm):
        ctx.optimizer.zero_grad(set_to_none=True)
        ctx.state.updates_skipped += 1
        return {"actor/optimizer_steps": 0.0, "actor/updates_skipped": 1.0}
    ctx.state.changed = True  # from here a failure leaves the step half done
    ctx.optimizer.step()
    return {"actor/grad_norm": float(norm), "actor/optimizer_steps": 1.0,
            "actor/updates_skipped": 0.0}
