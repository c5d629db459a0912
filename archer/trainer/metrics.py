"""Step metrics: the names every update step logs, how micro-batch, phase and rank values
combine, the peak memory and the per-phase wall clock.

The update's diagnostics stay device tensors while micro-batches accumulate; they are read
to the host once per optimizer step (:func:`to_host`), not one ``.item()`` per value and
micro-batch.
"""

from __future__ import annotations

import resource
import time
from collections import defaultdict
from contextlib import contextmanager

import torch

from archer.distributed import DistInfo

# Metrics every completed update step logs (the smoke test checks them all), except a class's
# clip fractions where the update trains none of its tokens (update_mode=mask: the low class).
STEP_METRICS = (
    "reward/mean", "reward/shaped_mean", "groups/solved_none_frac", "groups/solved_all_frac",
    "groups/kept", "groups/sampled", "rollout/rounds", "response/length_mean",
    "response/length_max", "response/truncated_frac", "response/repetition_ratio",
    "train/step_skipped", "actor/entropy", "actor/entropy_high_entropy",
    "actor/entropy_low_entropy", "actor/tokens_high_entropy", "actor/tokens_low_entropy",
    "actor/frac_high_entropy", "actor/clipfrac_high_entropy_upper",
    "actor/clipfrac_high_entropy_lower", "actor/clipfrac_low_entropy_upper",
    "actor/clipfrac_low_entropy_lower", "actor/pg_contrib_high_entropy",
    "actor/pg_contrib_low_entropy", "actor/pg_loss", "actor/kl_loss", "actor/loss",
    "actor/grad_norm", "actor/lr", "actor/optimizer_steps", "actor/updates_skipped",
    "actor/split_change_frac", "rollout/mismatch_kl", "rollout/mismatch_kl_k1",
    "rollout/mismatch_abs_max", "time/rollout", "time/reward", "time/old_logprob",
    "time/update", "time/weight_sync", "time/step", "perf/tokens_per_s", "perf/peak_memory_mb",
)
# Metrics that add up over micro-batches and ranks (loss terms are each part's share of the
# whole, token counts are counts); every other one is averaged.
SUMMED = ("actor/pg_loss", "actor/kl_loss", "actor/loss", "actor/pg_contrib_",
          "actor/tokens_", "actor/optimizer_steps", "actor/updates_skipped")


def sum_metrics(records: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Micro-batches -> one phase, on the device: loss terms and token counts add up, the
    rest average over the micro-batches that report them (in float64, as Python floats
    would)."""
    keys = {k for r in records for k in r}
    out = {}
    for k in keys:
        values = torch.stack([r[k].detach().double() for r in records if k in r])
        out[k] = values.sum() if k.startswith(SUMMED) else values.mean()
    return out


def to_host(metrics: dict[str, torch.Tensor | float]) -> dict[str, float]:
    """Device metrics as Python floats, read in one transfer (one sync per call)."""
    keys = sorted(k for k, v in metrics.items() if isinstance(v, torch.Tensor))
    out = {k: float(v) for k, v in metrics.items() if not isinstance(v, torch.Tensor)}
    if keys:
        values = torch.stack([metrics[k].detach().double().reshape(()) for k in keys])
        out |= dict(zip(keys, values.tolist()))
    return out


def mean_metrics(records: list[dict[str, float]]) -> dict[str, float]:
    """Phases -> one step: each metric averaged over the records that have it."""
    keys = {k for r in records for k in r}
    return {k: sum(r[k] for r in records if k in r) / sum(k in r for r in records)
            for k in keys}


def reduce_update_metrics(dist: DistInfo, metrics: dict[str, float]) -> dict[str, float]:
    """One phase's metrics over ranks: loss terms and token counts (already each rank's share
    of the global value) add up; the diagnostics average over the ranks that report them."""
    if not dist.enabled:
        return metrics
    out: dict[str, list[float]] = defaultdict(list)
    for part in dist.all_gather_object(metrics):
        for k, v in part.items():
            out[k].append(v)
    return {k: sum(v) if k.startswith(SUMMED) else sum(v) / len(v) for k, v in out.items()}


def reduce_rollout_metrics(dist: DistInfo, metrics: dict[str, float]) -> dict[str, float]:
    """Rollout metrics over all ranks: every rank samples the same number of prompts and
    responses per round, so the global mean is the mean of the ranks' means."""
    if not dist.enabled:
        return metrics
    keys = sorted(metrics)
    sums = dict(zip(keys, dist.all_reduce([metrics[k] for k in keys])))
    out = {k: v / dist.world_size for k, v in sums.items()}
    out["groups/sampled"] = sums["groups/sampled"]
    out["rollout/rounds"] = metrics["rollout/rounds"]
    out["response/length_max"] = dist.max(metrics["response/length_max"])
    return out


def reduce_mismatch_metrics(dist: DistInfo, metrics: dict[str, float],
                            n_tokens: float) -> dict[str, float]:
    """The rollout/train mismatch over all ranks: token-weighted means, the global max."""
    if not dist.enabled:
        return metrics
    maxima = [k for k in ("rollout/mismatch_abs_max", "rollout/tis_weight_max") if k in metrics]
    keys = sorted(k for k in metrics if k not in maxima)
    sums = dist.all_reduce([metrics[k] * n_tokens for k in keys] + [n_tokens])
    total = sums[-1]
    out = {k: (v / total if total else metrics[k]) for k, v in zip(keys, sums[:-1])}
    for k in maxima:
        out[k] = dist.max(metrics[k])
    return out


def peak_memory_mb(gpu: bool) -> float:
    """The process's peak so far: GPU memory allocated by torch when the run is on a GPU
    (``gpu``), else the resident set size (also for a CPU run on a machine with GPUs)."""
    if gpu:
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class PhaseTimer:
    """Accumulates wall-clock seconds per named phase: ``with timer("rollout"): ...``.

    ``cuda``: wait for the GPU's queued work at each phase boundary, so that a phase is
    charged for its own kernels rather than for whichever later phase first blocks on them
    (a handful of synchronisations per step; the step's total is the same either way)."""

    def __init__(self, cuda: bool = False) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.cuda = cuda

    @contextmanager
    def __call__(self, name: str):
        if self.cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        try:
            yield
        finally:
            if self.cuda:
                torch.cuda.synchronize()
            self.seconds[name] += time.perf_counter() - start
