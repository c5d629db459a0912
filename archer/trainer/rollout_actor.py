"""The rollout worker of asynchronous rollouts (``max_staleness >= 1``): a Ray actor that owns
its own HF sampler, built from the run's config, and generates with the policy version each
request names (loading that version's published weights first when it holds another).

It never touches the data order: the trainer sends the prompt texts and the sampling
parameters (seeded per step), so a batch depends only on (prompts, seed, policy version)."""

from __future__ import annotations

import os
from typing import Any

from archer.rollout import HFRollout, SamplingParams
from archer.train_config import TrainConfig
from archer.types import RolloutBatch


class RolloutWorker:
    """An HF sampler of its own (CPU, ``num_threads`` torch threads). Run as a Ray actor by
    :func:`spawn_worker`; a plain instance behaves the same (used by the tests)."""

    def __init__(self, cfg: TrainConfig, num_threads: int | None = 1) -> None:
        import torch

        from archer.models import load_policy_and_ref

        if num_threads is not None:
            torch.set_num_threads(num_threads)
        model, _, tokenizer = load_policy_and_ref(cfg.model, need_ref=False, dtype=cfg.dtype,
                                                  device="cpu")
        self.rollout = HFRollout(model, tokenizer, batch_size=cfg.rollout_batch_size,
                                 share_prompts=cfg.prompt_cache)
        self.version: int | None = None  # the policy version the sampler holds

    def generate(self, version: int, weights: list[Any], prompts: list[str],
                 params: SamplingParams) -> tuple[int, RolloutBatch]:
        """(version, samples of ``prompts``) with the weights of policy ``version``.
        ``weights``: a one-element list holding the version's state dict or its Ray object
        reference (in a list, so Ray hands it over unresolved and it is fetched only when
        the sampler holds another version)."""
        if version != self.version:
            state = weights[0]
            if not isinstance(state, dict):
                import ray

                state = ray.get(state)
            self.rollout.model.load_state_dict(state)
            self.version = version
        return version, self.rollout.generate(prompts, params)

    def pid(self) -> int:
        return os.getpid()


def spawn_worker(cfg: TrainConfig, num_threads: int | None = 1):
    """A :class:`RolloutWorker` Ray actor. It reserves no CPU in Ray's accounting (its torch
    threads are capped by ``num_threads``), so a trial that itself runs as a Ray task on a
    full cluster can still start its worker."""
    import ray

    actor = ray.remote(num_cpus=0, max_restarts=0)(RolloutWorker)
    return actor.remote(cfg, num_threads)


def ensure_ray(num_cpus: int | None = None) -> None:
    """A local Ray instance (no dashboard) unless this process is connected to one already."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False,
                 log_to_driver=False)
