"""What a run trains with: the model, the frozen reference, the optimizer, the data, the
reward and the rollout backend (:class:`TrainContext`, built by :func:`build_context`), and
the counters that say where it is (:class:`TrainState`)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import torch

from archer.algos import Phase, build_update_plan
from archer.algos.policy_loss import POLICY_LOSSES
from archer.config import AlgoConfig
from archer.distributed import SINGLE, DistInfo, init_distributed, resolve_device, shard_model
from archer.rollout import HFRollout, RolloutBackend
from archer.train_config import TrainConfig
from archer.trainer.optim import build_optimizer
from archer.trainer.records import (
    PromptSampler,
    limit_prompt_length,
    load_records,
    record_columns,
)
from archer.trainer.rewards import check_reward_columns, resolve_reward
from archer.validation import unknown_name


@dataclass
class TrainState:
    step: int = 0  # completed training steps
    run_id: str | None = None  # tracking run id (a resumed run logs into the same run)
    updates_skipped: int = 0  # optimizer steps skipped on a non-finite grad norm, in total
    steps_skipped: int = 0  # training steps with no informative group, in total
    last_metrics: dict[str, float] = field(default_factory=dict)  # metrics of the saved step
    updating: bool = False  # the step under way is in its update
    changed: bool = False  # ... and has stepped the optimizer (the parameters moved)
    pending_prompts: list | None = None  # max_staleness >= 1: the checkpoint's in-flight
    #   prompts, [[step, indices], ...], submitted again first on resume


@dataclass
class TrainContext:
    cfg: TrainConfig
    model: torch.nn.Module
    ref: torch.nn.Module | None
    tokenizer: Any
    rollout: RolloutBackend  # HFRollout or VLLMRollout; has a pad_id
    optimizer: torch.optim.Optimizer
    reward_fn: Any
    train_records: list[dict]
    val_records: list[dict]
    sampler: PromptSampler
    plan: tuple[Phase, ...]
    state: TrainState = field(default_factory=TrainState)
    dist: DistInfo = SINGLE  # data-parallel rank / world size (FSDP2 when world_size > 1)
    columns: tuple[str, ...] | None = None  # the reward's columns: every field of any record
    pipeline: Any = None  # max_staleness >= 1: the RolloutPipeline (None: synchronous loop)

    def __post_init__(self) -> None:
        if self.columns is None:
            self.columns = record_columns(self.train_records + self.val_records)

    @property
    def algo(self) -> AlgoConfig:
        return self.cfg.algo

    @property
    def device(self) -> torch.device:
        """Where the policy lives (and with it every tensor of the step)."""
        return next(self.model.parameters()).device


def setup_torch(cfg: TrainConfig) -> None:
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)


def build_context(cfg: TrainConfig, dist: DistInfo | None = None) -> TrainContext:
    """Model, reference, optimizer, data. ``dist``: the process group (default: from the
    torchrun environment, :data:`archer.distributed.SINGLE` without one); with several ranks
    the policy and the reference are sharded with FSDP2 before the optimizer is built."""
    from archer.models import load_policy_and_ref

    if dist is None:
        dist = init_distributed(cfg.distributed.backend, cfg.distributed.timeout_s, cfg.device)
    check_world_size(cfg, dist)
    device = dist.device if dist.enabled else resolve_device(cfg.device)
    check_policy_loss(cfg.algo)
    model, ref, tokenizer = load_policy_and_ref(
        cfg.model, need_ref=cfg.algo.loads_reference, dtype=cfg.dtype, device=device,
        ref_dtype=cfg.ref_dtype)
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    for m in (model, ref):
        if m is not None:
            shard_model(m, dist, cfg.distributed.mixed_precision,
                        cfg.distributed.reshard_after_forward)
    train, val = load_records(cfg)
    context = context_length(cfg, model)
    if cfg.max_prompt_tokens is not None or context is not None:
        train = limit_prompt_length(cfg, tokenizer, train, "training", context)
        val = limit_prompt_length(cfg, tokenizer, val, "held-out", context)
    reward_fn = resolve_reward(cfg.reward)
    check_reward_columns(reward_fn, cfg.reward, train + val,
                         cfg.data.file or f"reasoning_gym/{cfg.data.task}")
    optimizer = build_optimizer(cfg, model)
    return TrainContext(
        cfg=cfg, model=model, ref=ref, tokenizer=tokenizer,
        rollout=build_rollout(cfg, model, tokenizer), optimizer=optimizer,
        reward_fn=reward_fn, train_records=train,
        val_records=val, sampler=PromptSampler(len(train), cfg.seed),
        plan=build_update_plan(cfg.algo), dist=dist)


def context_length(cfg: TrainConfig, model: torch.nn.Module) -> int | None:
    """The most tokens (prompt + response) one sequence of this run may hold: the model
    config's context length (``max_position_embeddings`` or its older names), capped by
    ``vllm_max_model_len`` with the vLLM backend; None when the config names none."""
    conf = getattr(model, "config", None)
    own = None
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(conf, name, None)
        if isinstance(value, int) and value > 0:
            own = value
            break
    if cfg.rollout_backend == "vllm" and cfg.vllm_max_model_len is not None:
        return min(own, cfg.vllm_max_model_len) if own else cfg.vllm_max_model_len
    return own


def enable_gradient_checkpointing(model: torch.nn.Module) -> None:
    """Recompute each decoder layer's activations in backward (non-reentrant, FSDP-safe)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5 name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)


def check_world_size(cfg: TrainConfig, dist: DistInfo) -> None:
    """Each rank rolls out an equal, contiguous share of every step's prompts."""
    if cfg.prompts_per_step % dist.world_size:
        raise ValueError(f"prompts_per_step={cfg.prompts_per_step} must be divisible by the "
                         f"world size {dist.world_size} (each rank samples an equal share)")


def build_rollout(cfg: TrainConfig, model: torch.nn.Module, tokenizer) -> RolloutBackend:
    """``hf``: generates with the policy module itself. ``vllm``: an engine loaded from the
    policy's model directory, at the training dtype (weights pushed after every update).
    With ``max_staleness >= 1`` the vLLM engine lives in the rollout worker
    (:mod:`archer.trainer.rollout_actor`) and this process only samples refill rounds, with
    HF on the policy module."""
    if cfg.rollout_backend == "vllm" and not cfg.max_staleness:
        return build_vllm_rollout(cfg, tokenizer)
    if cfg.rollout_backend == "vllm":
        from archer.rollout.vllm import require_vllm

        require_vllm()  # the worker's engine needs it: say so before anything starts
    return HFRollout(model, tokenizer, batch_size=cfg.rollout_batch_size,
                     share_prompts=cfg.prompt_cache)


def build_vllm_rollout(cfg: TrainConfig, tokenizer=None) -> RolloutBackend:
    """The run's vLLM engine (``vllm_*`` settings, the training dtype and seed), loaded from
    the policy's model directory; ``tokenizer``: None loads the model's own."""
    from archer.models import resolve_model_path
    from archer.rollout.vllm import VLLMRollout, require_vllm

    require_vllm()  # a missing extra first, before resolving (and maybe preparing) the model
    return VLLMRollout(
        resolve_model_path(cfg.model), dtype=cfg.dtype, tokenizer=tokenizer, seed=cfg.seed,
        gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
        enable_sleep_mode=cfg.vllm_enable_sleep_mode, max_model_len=cfg.vllm_max_model_len,
        tensor_parallel_size=cfg.vllm_tensor_parallel_size,
        enforce_eager=cfg.vllm_enforce_eager)


def check_policy_loss(algo: AlgoConfig) -> None:
    """``algo.loss`` names a registered policy loss (before any model is loaded)."""
    if algo.loss not in POLICY_LOSSES:
        raise unknown_name("policy loss algo.loss", algo.loss, POLICY_LOSSES.names())
