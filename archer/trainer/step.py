"""One training step: rollout -> rewards -> filter -> advantages -> old/ref -> update."""

from __future__ import annotations

import time

import torch

from archer.trainer.context import TrainContext
from archer.trainer.metrics import PhaseTimer, peak_memory_mb
from archer.trainer.optim import set_learning_rate
from archer.trainer.rollout import collect_rollouts, num_tokens, sync_rollout_weights
from archer.trainer.update import prepare_update_batch, update_policy
from archer.types import RolloutBatch

PHASES = ("rollout", "reward", "old_logprob", "update", "weight_sync")  # timed as time/<phase>


def train_step(ctx: TrainContext) -> dict[str, float]:
    """One RL step: rollout -> rewards -> filter -> advantages -> old/ref -> update."""
    timer, start = PhaseTimer(cuda=ctx.device.type == "cuda"), time.perf_counter()
    lr = set_learning_rate(ctx)
    batch, rewards, metrics = collect_rollouts(ctx, timer)  # rewards, shaping, filter, refill
    metrics["actor/lr"] = lr
    metrics["train/step_skipped"] = 1.0 if batch is None else 0.0
    if batch is None:  # every group was all-equal: nothing to learn from
        ctx.state.steps_skipped += 1
    else:
        metrics |= learn(ctx, batch, rewards, timer)
    ctx.state.step += 1
    if ctx.pipeline is not None:  # asynchronous rollouts: publish, request k steps ahead
        with timer("weight_sync"):
            ctx.pipeline.after_step()
        metrics["rollout/worker_restarts"] = float(ctx.pipeline.restarts)
    return metrics | step_costs(ctx, timer, start)


def learn(ctx: TrainContext, batch: RolloutBatch, rewards: torch.Tensor,
          timer: PhaseTimer) -> dict[str, float]:
    """The update on the step's kept groups: advantages and the old / reference passes, the
    policy update, and the new weights pushed into the sampler."""
    ctx.rollout.sleep()  # a colocated engine gives its memory to the update
    with timer("old_logprob"):
        update_batch = prepare_update_batch(ctx, batch, rewards)  # advantages, old, ref
    with timer("update"):
        ctx.state.updating = True  # a second signal waits for it to finish
        metrics = update_policy(ctx, update_batch)
    with timer("weight_sync"):
        ctx.rollout.wake_up()
        sync_rollout_weights(ctx)
    metrics["perf/tokens_per_s"] = ctx.dist.sum(num_tokens(batch)) / max(
        timer.seconds["update"], 1e-9)
    return metrics


def step_costs(ctx: TrainContext, timer: PhaseTimer, start: float) -> dict[str, float]:
    """Seconds per phase and in all, the peak memory, and the skipped updates so far."""
    out = {f"time/{k}": timer.seconds.get(k, 0.0) for k in PHASES}
    if timer.cuda:
        torch.cuda.synchronize()
    out["time/step"] = time.perf_counter() - start
    out["perf/peak_memory_mb"] = peak_memory_mb(timer.cuda)
    out["train/updates_skipped_total"] = float(ctx.state.updates_skipped)
    return out
