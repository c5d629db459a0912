"""The rollout worker of asynchronous rollouts (``max_staleness >= 1``): a Ray actor that owns
its own sampler, built from the run's config, and generates with the policy version each
request names. :class:`RolloutWorker` samples with HF on CPU; :class:`VLLMRolloutWorker`
owns a :class:`~archer.rollout.vllm.VLLMRollout` engine (``rollout_backend=vllm``).

Weights arrive in one of two ways (:mod:`archer.trainer.publishers`): with the request
(a Ray object reference, loaded when the worker holds another version), or over a weight
channel, where ``receive_weights`` calls are queued between the generates. The vLLM worker's
channel member lives inside the engine's worker process (the worker extension receives and
calls ``reload_weights``), so the weights never pass through this actor.

It never touches the data order: the trainer sends the prompt texts and the sampling
parameters (seeded per step), so a batch depends only on (prompts, seed, policy version).

GPU placement (vLLM worker, not run here: this machine has no GPU): the trainer uses its
``device`` (``cuda`` = the first visible GPU); the worker reserves
``vllm_tensor_parallel_size`` GPUs in Ray's accounting and is pinned to the first that many
visible GPUs other than the trainer's (:func:`rollout_gpus`), since a trainer that is no Ray
task holds no GPU in Ray's books and Ray could otherwise hand its GPU to the worker. This
assumes the worker runs on the trainer's node (a local Ray instance, or a trial's node).
"""

from __future__ import annotations

import os
from typing import Any

from archer.rollout import HFRollout, RolloutBackend, SamplingParams
from archer.train_config import TrainConfig
from archer.types import RolloutBatch


class RolloutWorker:
    """An HF sampler of its own (CPU, ``num_threads`` torch threads). Run as a Ray actor by
    :func:`spawn_worker`; a plain instance behaves the same (used by the tests)."""

    def __init__(self, cfg: TrainConfig, num_threads: int | None = 1) -> None:
        if num_threads is not None:
            import torch

            torch.set_num_threads(num_threads)
        self.rollout: RolloutBackend = self.build_sampler(cfg)
        self.version: int | None = None  # the policy version the sampler holds
        self.channel = None  # the weight channel's receiving end (collective transport)

    def build_sampler(self, cfg: TrainConfig) -> RolloutBackend:
        from archer.models import load_policy_and_ref

        model, _, tokenizer = load_policy_and_ref(cfg.model, need_ref=False, dtype=cfg.dtype,
                                                  device="cpu")
        return HFRollout(model, tokenizer, batch_size=cfg.rollout_batch_size,
                         share_prompts=cfg.prompt_cache)

    def load_state(self, state: dict) -> None:
        """Put a state dict into the sampler (HF: ``load_state_dict``; vLLM: pushed in place)."""
        self.rollout.model.load_state_dict(state)

    def generate(self, version: int, weights: list[Any], prompts: list[str],
                 params: SamplingParams) -> tuple[int, RolloutBatch]:
        """(version, samples of ``prompts``) with the weights of policy ``version``.
        ``weights``: a one-element list holding the version's state dict or its Ray object
        reference (in a list, so Ray hands it over unresolved and it is fetched only when
        the sampler holds another version), or empty when the version came over the weight
        channel (:meth:`receive_weights`, queued before this call)."""
        if version != self.version:
            if not weights:
                raise RuntimeError(f"policy version {version} was requested but never "
                                   f"received (the worker holds {self.version})")
            state = weights[0]
            if not isinstance(state, dict):
                import ray

                state = ray.get(state)
            self.load_state(state)
            self.version = version
        return version, self.rollout.generate(prompts, params)

    def open_channel(self, host: str, port: int, backend: str, receivers: int,
                     timeout_s: float) -> None:
        """Join the trainer's weight channel as rank 1 (blocks until the trainer joins)."""
        from archer.rollout.weight_transfer import WeightChannel

        self.channel = WeightChannel(host, port, rank=1, backend=backend, timeout_s=timeout_s,
                                     receivers=receivers)

    def receive_weights(self, version: int, layout: list) -> None:
        """Policy ``version``, as the trainer sends it over the channel."""
        self.load_state(self.channel.receive(layout))
        self.version = version

    def pid(self) -> int:
        return os.getpid()


class VLLMRolloutWorker(RolloutWorker):
    """A vLLM engine of its own (:func:`archer.trainer.context.build_vllm_rollout`, the run's
    ``vllm_*`` settings). Over a weight channel, each tensor-parallel engine worker is a
    channel member and loads what it receives itself (``WeightSyncExtension``); weights in
    the object store are pushed with ``update_weights``."""

    def build_sampler(self, cfg: TrainConfig) -> RolloutBackend:
        from archer.trainer.context import build_vllm_rollout

        return build_vllm_rollout(cfg)

    def load_state(self, state: dict) -> None:
        self.rollout.update_weights(state)

    def open_channel(self, host: str, port: int, backend: str, receivers: int,
                     timeout_s: float) -> None:
        self.rollout.open_weight_channel(host, port, backend, timeout_s)

    def receive_weights(self, version: int, layout: list) -> None:
        self.rollout.receive_weights(layout)
        self.version = version


def rollout_gpus(visible: list[str], trainer_index: int, count: int) -> list[str]:
    """The rollout worker's GPUs: the first ``count`` of the ``visible`` ones (ids as
    ``CUDA_VISIBLE_DEVICES`` names them) other than the trainer's (``trainer_index`` into
    ``visible``)."""
    if not 0 <= trainer_index < len(visible):
        raise ValueError(f"the trainer's GPU cuda:{trainer_index} is not among the "
                         f"{len(visible)} visible GPU(s)")
    others = [g for i, g in enumerate(visible) if i != trainer_index]
    if len(others) < count:
        raise ValueError(f"max_staleness >= 1 with rollout_backend=vllm needs "
                         f"vllm_tensor_parallel_size={count} GPU(s) besides the trainer's: "
                         f"{len(visible)} visible ({', '.join(visible) or 'none'})")
    return others[:count]


def visible_gpus() -> list[str]:
    """This process's visible GPUs, as ``CUDA_VISIBLE_DEVICES`` ids."""
    import torch

    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip()]
    return [str(i) for i in range(torch.cuda.device_count())]


def worker_options(cfg: TrainConfig, trainer_device) -> dict[str, Any]:
    """Ray actor options: no CPU reserved (its torch threads are capped by ``num_threads``,
    so a trial that itself runs as a Ray task on a full cluster can still start its worker);
    the vLLM worker on CUDA reserves its GPUs and is pinned to :func:`rollout_gpus`."""
    options: dict[str, Any] = {"num_cpus": 0, "max_restarts": 0}
    if cfg.rollout_backend == "vllm" and trainer_device is not None and \
            trainer_device.type == "cuda":
        tp = cfg.vllm_tensor_parallel_size
        gpus = rollout_gpus(visible_gpus(), trainer_device.index or 0, tp)
        options["num_gpus"] = tp
        options["runtime_env"] = {"env_vars": {  # Ray would set its own pick otherwise
            "RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES": "1",
            "CUDA_VISIBLE_DEVICES": ",".join(gpus)}}
    return options


def spawn_worker(cfg: TrainConfig, num_threads: int | None = 1, trainer_device=None):
    """The run's rollout worker as a Ray actor: :class:`VLLMRolloutWorker` with
    ``rollout_backend=vllm`` (vLLM must be importable here: the missing extra is named before
    any actor starts), :class:`RolloutWorker` otherwise. ``trainer_device``: where the
    trainer's policy lives (a CUDA one decides the worker's GPUs)."""
    import ray

    worker_cls = RolloutWorker
    if cfg.rollout_backend == "vllm":
        from archer.rollout.vllm import require_vllm

        require_vllm()
        worker_cls = VLLMRolloutWorker
    actor = ray.remote(**worker_options(cfg, trainer_device))(worker_cls)
    return actor.remote(cfg, num_threads)


def ensure_ray(num_cpus: int | None = None) -> None:
    """A local Ray instance (no dashboard) unless this process is connected to one already."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=num_cpus or os.cpu_count() or 1, include_dashboard=False,
                 log_to_driver=False)
