"""Held-out evaluation: the one implementation of held-out reward, accuracy and pass@k.

A sample is correct when its reward is >= 1 (no partial credit; a ``None`` reward counts as
wrong, or stops the run with ``reward_on_none="error"``). :func:`heldout_scores` scores a
generated batch; :func:`validate` samples the run's held-out split with it (data parallel: a
share per rank), and ``archer.sft.heldout_accuracy`` and the demo's held-out report call
these rather than counting on their own.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from archer.checkpoint import rng_state, set_rng_state
from archer.distributed import full_params
from archer.rollout import SamplingParams
from archer.trainer.context import TrainContext
from archer.trainer.rewards import reward_tensor, reward_values
from archer.trainer.rollout import sample
from archer.types import RolloutBatch


@dataclass
class HeldOutScores:
    """The scores of ``samples`` responses to each of a batch's prompts."""

    rewards: torch.Tensor  # (N,) float32 rewards, None as 0
    correct: torch.Tensor  # (N,) 1.0 where the reward is >= 1
    hits: torch.Tensor  # (prompts,) correct samples per prompt, on the CPU
    lengths: torch.Tensor  # (N,) response lengths
    samples: int  # k, samples per prompt

    @property
    def accuracy(self) -> float:
        """The fraction of samples that are correct (avg@k without partial credit)."""
        return float(self.correct.sum()) / len(self.correct)

    def per_prompt(self) -> list[float]:
        """Each prompt's accuracy over its k samples, in prompt order."""
        return (self.hits / self.samples).tolist()

    def sums(self) -> list[float]:
        """(reward, correct samples, response tokens, solved prompts, samples), summed: what
        adds up over ranks."""
        return [self.rewards.sum().item(), self.correct.sum().item(),
                self.lengths.float().sum().item(), (self.hits > 0).sum().item(),
                float(len(self.rewards))]


def heldout_scores(batch: RolloutBatch, records: list[dict], samples: int, reward_fn,
                   reward_name: str, columns: tuple[str, ...] | None = None,
                   on_none: str = "zero") -> HeldOutScores:
    """Score ``batch`` (``samples`` responses per record, in record order) with the reward."""
    values = reward_values(reward_fn, reward_name, batch.texts, records, samples, columns,
                           on_none)
    rewards = reward_tensor(values, batch.response_lengths.device)
    correct = (rewards >= 1).float()  # no partial credit
    hits = torch.zeros(len(records)).index_add_(0, batch.group_index.cpu(), correct.cpu())
    return HeldOutScores(rewards, correct, hits, batch.response_lengths, samples)


@torch.no_grad()
def validate(ctx: TrainContext, per_prompt: list[float] | None = None, *,
             samples: int | None = None, temperature: float | None = None
             ) -> dict[str, float]:
    """Held-out prompts, greedy or ``val_samples`` (k) samples each at ``val_temperature``
    (``samples`` / ``temperature`` override them): mean reward, accuracy (the fraction of
    samples scoring >= 1, i.e. avg@k without partial credit) and, for k > 1, pass@k (the
    fraction of prompts with a sample scoring >= 1). ``per_prompt`` (a list, single process
    only) receives each held-out prompt's accuracy over its k samples, in the split's order,
    for paired comparisons."""
    cfg, dist = ctx.cfg, ctx.dist
    k = cfg.val_samples if samples is None else samples
    if per_prompt is not None and dist.enabled:
        raise ValueError("per-prompt validation results are for single-process runs")
    records = ctx.val_records[dist.rank::dist.world_size]  # data parallel: a share per rank
    params = SamplingParams(temperature=cfg.val_temperature if temperature is None
                            else temperature, top_p=cfg.top_p,
                            max_new_tokens=cfg.max_new_tokens, n=k,
                            seed=cfg.seed + 17 + 7919 * dist.rank)
    sums = [0.0, 0.0, 0.0, 0.0, 0.0]  # reward, accuracy, length, solved prompts, samples
    if records:
        with full_params(ctx.model):
            batch = sample(ctx, records, params)
        scores = heldout_scores(batch, records, k, ctx.reward_fn, cfg.reward, ctx.columns,
                                cfg.reward_on_none)
        if per_prompt is not None:
            per_prompt.extend(scores.per_prompt())
        sums = scores.sums()
    elif dist.enabled:
        with full_params(ctx.model):  # the gather is collective: take part in it
            pass
    reward, accuracy, length, solved_n, n = dist.all_reduce(sums)
    out = {"val/reward_mean": reward / n, "val/accuracy": accuracy / n,
           "val/response_length_mean": length / n}
    if k > 1:
        out[f"val/pass@{k}"] = solved_n / len(ctx.val_records)
    return out


def validate_aside(ctx: TrainContext) -> dict[str, float]:
    """:func:`validate` with the RNG states put back afterwards: validation never moves the
    training's random streams, so a run's trajectory does not depend on its validation
    settings, and a step whose validation failed can be checkpointed as if it had not run."""
    kept = rng_state()
    try:
        return validate(ctx)
    finally:
        set_rng_state(kept)
