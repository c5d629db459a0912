"""The step's samples: G responses per prompt from the rollout backend, scored, shaped,
filtered to the informative groups (refilled, for DAPO), with their metrics; and the
weights pushed back into a separate sampling engine after the update.

Data parallel: every rank draws the same prompts and rolls out its contiguous share; kept
groups are numbered globally (a group never spans ranks, so advantages stay per group).
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from archer.algos import nonuniform_group_mask, overlong_penalty
from archer.distributed import full_params, full_tensor, shard_slice
from archer.rollout import HFRollout, SamplingParams
from archer.train_config import TrainConfig
from archer.trainer.context import TrainContext
from archer.trainer.metrics import PhaseTimer, reduce_rollout_metrics
from archer.trainer.rewards import score
from archer.types import RolloutBatch

REPETITION_N = 4  # n of the n-gram repetition ratio


def collect_rollouts(ctx: TrainContext, timer: PhaseTimer):
    """Sample groups until ``prompts_per_step`` informative ones (refill) or one round
    (drop/none). Returns (kept batch or None, shaped rewards (N,), rollout metrics).

    Data parallel: every rank draws the same prompts and rolls out its contiguous share; the
    kept groups are numbered globally (round by round, prompt by prompt, as one process
    numbers them), so the refill cut, the mini-batches and the padded response width are
    those of a single process. The batch is None only when no rank kept a group; a rank
    may hold zero rows."""
    cfg, algo, dist = ctx.cfg, ctx.algo, ctx.dist
    rounds = cfg.refill_max_rounds if algo.group_filter == "refill" else 1
    kept, kept_rewards, seen = [], [], []
    share = shard_slice(cfg.prompts_per_step, dist)
    n_kept, width = 0, 0  # kept groups over all ranks so far; response width of their rounds
    staleness = []  # asynchronous rollouts: (kept rows, steps behind) per round
    for r in range(rounds):
        if r == 0 and ctx.pipeline is not None:  # generated ahead by the rollout worker
            with timer("rollout"):
                records, batch, behind = take_ahead(ctx)
        else:
            indices = ctx.sampler.next(cfg.prompts_per_step)
            records = [ctx.train_records[i] for i in indices][share]
            # HFRollout seeds its k-th generate() call with seed + k: offsetting by the calls
            # of the lower ranks gives the single-process samples when rollout_batch_size
            # divides the per-rank prompt count.
            offset = dist.rank * math.ceil(len(records) / cfg.rollout_batch_size)
            with timer("rollout"), full_params(ctx.model):
                batch = generate(ctx, records, seed=rollout_seed(cfg, ctx.state.step, r) + offset)
            if ctx.pipeline is not None:  # a refill round: the current policy, in process
                ctx.pipeline.record(indices, ctx.state.step)
                behind = 0
        with timer("reward"):
            raw = score(ctx, batch, records, cfg.group_size)
        shaped = raw + overlong_penalty(batch.response_lengths, cfg.max_new_tokens,
                                        algo.overlong_buffer_len, algo.overlong_penalty_factor)
        # Filter on the verifier's reward (DAPO filters on accuracy): length shaping alone
        # must not make an all-wrong group look informative.
        keep = (torch.ones_like(raw, dtype=torch.bool) if algo.group_filter == "none"
                else nonuniform_group_mask(raw, batch.group_index))
        seen.append((batch, raw, shaped))
        flags = [bool(keep[batch.group_index == g].any()) for g in range(len(records))]
        gathered = dist.all_gather_object((flags, batch.response_ids.shape[1]))
        flags_all = [f for fl, _ in gathered for f in fl]  # this round's prompts, in order
        ids = torch.full((len(records),), -1, dtype=torch.long)  # local prompt -> global group
        ids[torch.tensor(flags, dtype=torch.bool)] = torch.arange(
            sum(flags), dtype=torch.long) + n_kept + sum(flags_all[: share.start])
        if any(flags_all):
            width = max([width] + [w for _, w in gathered])
        n_kept += sum(flags_all)
        limit = cfg.prompts_per_step if algo.group_filter == "refill" else n_kept
        gid = ids[batch.group_index.cpu()]
        rows = (keep.cpu() & (gid >= 0) & (gid < limit)).nonzero().squeeze(-1)
        part = batch.select(rows)
        part.group_index = gid[rows].to(part.group_index.device)
        kept.append(part)
        kept_rewards.append(shaped[rows])
        if ctx.pipeline is not None:
            staleness.append((len(rows), behind))
        if n_kept >= cfg.prompts_per_step:
            break
    metrics = reduce_rollout_metrics(dist, rollout_metrics(seen, len(seen)))
    if ctx.pipeline is not None:
        metrics |= staleness_metrics(staleness)
    metrics["groups/kept"] = float(min(n_kept, limit))
    if n_kept == 0:
        return None, None, metrics
    batch = pad_responses(RolloutBatch.concat(kept, ctx.rollout.pad_id), width,
                          ctx.rollout.pad_id)
    return batch, torch.cat(kept_rewards), metrics


def take_ahead(ctx: TrainContext) -> tuple[list[dict], RolloutBatch, int]:
    """The step's first round from the pipeline: (records, batch on the policy's device,
    steps the generating policy is behind), recorded in the prompt log."""
    indices, batch, version = ctx.pipeline.take(ctx.state.step)
    ctx.pipeline.record(indices, version)
    if batch.response_ids.device != ctx.device:
        batch = batch.to(ctx.device)
    return [ctx.train_records[i] for i in indices], batch, ctx.state.step - version


def staleness_metrics(rounds: list[tuple[int, int]]) -> dict[str, float]:
    """``rollout/staleness_mean`` / ``_max``: steps between the policy that generated each
    trained response and the one it trains (0 when nothing was kept)."""
    rows = sum(n for n, _ in rounds)
    return {"rollout/staleness_mean": sum(n * b for n, b in rounds) / rows if rows else 0.0,
            "rollout/staleness_max": float(max((b for n, b in rounds if n), default=0))}


def pad_responses(batch: RolloutBatch, width: int, pad_id: int) -> RolloutBatch:
    """Right-pad the responses to ``width`` columns (the padded width a single process
    would see; only ``seq-mean-token-sum-norm`` without a norm length depends on it)."""
    extra = width - batch.response_ids.shape[1]
    if extra <= 0:
        return batch
    pad = torch.nn.functional.pad
    return replace(batch, response_ids=pad(batch.response_ids, (0, extra), value=pad_id),
                   response_mask=pad(batch.response_mask, (0, extra), value=0),
                   sampler_logprobs=pad(batch.sampler_logprobs, (0, extra), value=0.0))


def rollout_seed(cfg: TrainConfig, step: int, round_: int) -> int:
    return cfg.seed * 1_000_003 + step * 1_009 + round_ * 101


def prompt_texts(ctx: TrainContext, records: list[dict]) -> list[str]:
    from archer.data.templates import format_prompt

    return [format_prompt(r, ctx.cfg.template, ctx.tokenizer) for r in records]


def generate(ctx: TrainContext, records: list[dict], seed: int) -> RolloutBatch:
    cfg = ctx.cfg
    params = SamplingParams(temperature=cfg.sampling_temperature, top_p=cfg.top_p,
                            max_new_tokens=cfg.max_new_tokens, n=cfg.group_size, seed=seed)
    return sample(ctx, records, params)


def sample(ctx: TrainContext, records: list[dict], params: SamplingParams) -> RolloutBatch:
    """The backend's samples for ``records``, on the policy's device (a vLLM engine hands
    back CPU tensors; the HF backend's are already there)."""
    batch = ctx.rollout.generate(prompt_texts(ctx, records), params)
    return batch if batch.response_ids.device == ctx.device else batch.to(ctx.device)


def rollout_metrics(seen: list[tuple[RolloutBatch, torch.Tensor, torch.Tensor]],
                    rounds: int) -> dict[str, float]:
    """Reward, group and response statistics over every sampled response of the step."""
    raw = torch.cat([r for _, r, _ in seen])
    shaped = torch.cat([s for _, _, s in seen])
    lengths = torch.cat([b.response_lengths for b, _, _ in seen]).float()
    truncated = torch.cat([b.truncated for b, _, _ in seen]).float()
    none, full, groups = 0, 0, 0
    for b, r, _ in seen:
        for g in torch.unique(b.group_index):
            rg = r[b.group_index == g]
            none, full, groups = none + int(rg.max() <= 0), full + int(rg.min() >= 1), groups + 1
    reps = [repetition_ratio(row[: int(n)].tolist())
            for b, _, _ in seen for row, n in zip(b.response_ids, b.response_lengths)]
    return {
        "reward/mean": raw.mean().item(), "reward/shaped_mean": shaped.mean().item(),
        "groups/solved_none_frac": none / groups, "groups/solved_all_frac": full / groups,
        "groups/sampled": float(groups), "rollout/rounds": float(rounds),
        "response/length_mean": lengths.mean().item(),
        "response/length_max": lengths.max().item(),
        "response/truncated_frac": truncated.mean().item(),
        "response/repetition_ratio": sum(reps) / len(reps),
    }


def repetition_ratio(tokens: list[int], n: int = REPETITION_N) -> float:
    """1 - distinct n-grams / n-grams of one response (0 when it has fewer than n tokens)."""
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def sync_rollout_weights(ctx: TrainContext) -> None:
    """Push the updated policy into the rollout backend, in place: a no-op for the HF backend
    (it generates with the policy module itself); a separate engine (vLLM) gets the full
    weights, gathered from the FSDP shards on every rank when training is data-parallel
    (each rank's engine samples its own share of the prompts)."""
    if isinstance(ctx.rollout, HFRollout) and ctx.rollout.model is ctx.model:
        return
    if ctx.dist.enabled:
        ctx.rollout.update_weights({k: full_tensor(v)
                                    for k, v in ctx.model.state_dict().items()})
    else:
        ctx.rollout.update_weights(ctx.model)


def num_tokens(batch: RolloutBatch) -> int:
    """Prompt and response tokens of ``batch`` (padding excluded)."""
    return int(batch.prompt_mask.sum() + batch.response_mask.sum())
