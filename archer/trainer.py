"""The RL trainer: ``train_step`` (one rollout + update) and ``fit`` (the whole run).

One step reads top to bottom as DESIGN.md's story::

    prompts -> rollout (G samples each) -> rewards -> overlong shaping -> group filter
    (+ DAPO refill) -> advantages (+ Lopti reweighting) -> old / ref log-probs (no grad)
    -> PPO epochs x mini-batches x update phases (micro-batch gradient accumulation,
       entropy split, dual-token loss, one optimizer step per phase) -> metrics

Simplifications, on purpose: the HF rollout backend shares the policy module (nothing to sync
after an update), the learning-rate schedule is a pure function of the step. With
``rollout_backend=vllm`` the sampler is a separate engine: it sleeps during the update (GPU
sleep mode) and gets the new weights pushed in place once per step, after the last optimizer
step and before the next rollout.

Data parallel (``torchrun``, FSDP2, see :mod:`archer.distributed`): every rank draws the same
prompts and rolls out its contiguous share; kept groups are numbered globally (a group never
spans ranks, so advantages stay per group), mini-batches are cut from the global group ids,
and every denominator (and a ``scope=batch`` quantile) is taken over all ranks, so the
SUM-reduced gradient equals the single-process one. Only rank 0 logs, checkpoints, exports.

Rollout/train mismatch: every update step logs ``rollout/mismatch_kl``, a k3 estimate of
KL(sampler || trainer) from the sampler's log-probs and the trainer's own old log-probs of the
same tokens (see :mod:`archer.algos.mismatch`; the k1 mean is ``rollout/mismatch_kl_k1``). The
old log-probs are always the trainer's: recomputed before the update, or on-policy the update's
own first forward, detached. ``algo.tis_cap`` multiplies each token's PG loss by the truncated
importance weight min(p_trainer_old / p_sampler, cap).

No-grad passes (the reference's and the old policy's log-probs, the entropy pre-pass) run
each distinct prompt once and reuse its KV cache for the group's G responses, which run in
chunks of similar length cut to their longest response (``trainer.prompt_cache``, on by
default; :func:`forward_tokens_prompt_cached`). The update's own forward (with gradients)
runs the full padded sequences.

Reward contract: ``fn(completions, **columns) -> list[float | None]``; the columns are the
prompt record's fields (``answer``, ``entry``, ...) repeated for each of the G samples. A
``None`` reward stops the run (``reward_on_none="error"``) or counts as 0 (``"zero"``).

Micro-batch gradient accumulation is exact: every aggregation mode is
``sum(x * W)`` with W proportional to ``mask / D`` where D is the number of tokens
(token-mean) or of non-empty responses (seq-mean-*) in the aggregated set. A micro-batch's
loss is computed with its own D_micro and multiplied by ``D_micro / D_mini`` (the mini-batch's
D for the same mask), so the accumulated gradient equals the gradient of the mini-batch
aggregate. The PG term and each class's KL term (``kl_normalization=per_class``) have their own
masks, hence their own scale; the loss is then evaluated per term (PG without KL, then KL of
each class without PG) and the scaled terms are summed. With one micro-batch every scale is 1.

Entropy split: with ``entropy_source=current`` and ``scope=response`` the split comes from the
same forward pass as the log-probs, per micro-batch (the reference). When the split must be
known for the whole mini-batch before the first micro-batch (scope group/batch with several
micro-batches, mask/async-by-entropy phases whose token counts set the denominators, per-class
KL denominators with several micro-batches, or async phases that must partition one split),
a no-grad forward pass over the mini-batch computes the current entropy first and the split is
taken over the mini-batch. ``scope=batch`` means the mini-batch (the set one optimizer step
sees). With ``entropy_source=old`` the split uses the old policy's entropy, over the mini-batch.
"""

from __future__ import annotations

import importlib
import logging
import math
import numbers
import random
import resource
import signal
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from archer.algos import (
    LossInputs,
    Phase,
    build_update_plan,
    compute_advantages,
    compute_policy_loss,
    lopti_reweight,
    nonuniform_group_mask,
    overlong_penalty,
    phase_token_mask,
    split_by_entropy,
    token_entropy,
    token_logprobs,
)
from archer.algos.mismatch import apply_tis, mismatch_metrics, truncated_is_weights
from archer.algos.split import (
    NonFiniteEntropyError,
    TokenSplit,
    masked_quantile,
    split_change_fraction,
)
from archer.checkpoint import checkpoint_root, load_checkpoint, save_checkpoint
from archer.config import AlgoConfig
from archer.distributed import (
    SINGLE,
    DistInfo,
    full_params,
    full_state_dicts,
    full_tensor,
    init_distributed,
    load_full_state_dicts,
    resolve_device,
    shard_model,
    shard_slice,
    shutdown,
)
from archer.models import cache_kwarg, keeps_logits, prefill
from archer.rollout import HFRollout, RolloutBackend, SamplingParams
from archer.tracking import JsonlLogger, MetricLogger, NullLogger
from archer.train_config import TrainConfig
from archer.types import RolloutBatch, position_ids_from_mask

log = logging.getLogger(__name__)

LOSS_NAME = "dual_token_clip"
REPETITION_N = 4  # n of the n-gram repetition ratio

# Metrics every completed update step logs (the smoke test checks them all).
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
_SUMMED = ("actor/pg_loss", "actor/kl_loss", "actor/loss", "actor/pg_contrib_",
           "actor/tokens_", "actor/optimizer_steps", "actor/updates_skipped")


# --------------------------------------------------------------------------------------
# Run state and context
# --------------------------------------------------------------------------------------


class PromptSampler:
    """Epoch-wise shuffled prompt order, resumable from ``state_dict()``."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed, self.epoch, self.pos = size, seed, 0, 0
        self._perm = self._permutation()

    def _permutation(self) -> list[int]:
        return random.Random(self.seed * 1_000_003 + self.epoch).sample(range(self.size),
                                                                         self.size)

    def next(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            if self.pos >= self.size:
                self.epoch, self.pos = self.epoch + 1, 0
                self._perm = self._permutation()
            take = min(k - len(out), self.size - self.pos)
            out += self._perm[self.pos : self.pos + take]
            self.pos += take
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "pos": self.pos, "size": self.size, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state["size"] != self.size or state["seed"] != self.seed:
            raise ValueError(f"sampler state {state} does not match this dataset/seed")
        self.epoch, self.pos = state["epoch"], state["pos"]
        self._perm = self._permutation()


@dataclass
class TrainState:
    step: int = 0  # completed training steps
    run_id: str | None = None  # tracking run id (a resumed run logs into the same run)
    updates_skipped: int = 0  # optimizer steps skipped on a non-finite grad norm, in total
    steps_skipped: int = 0  # training steps with no informative group, in total
    last_metrics: dict[str, float] = field(default_factory=dict)  # metrics of the saved step
    updating: bool = False  # the step under way is in its update
    changed: bool = False  # ... and has stepped the optimizer (the parameters moved)


@dataclass
class StepStart:
    """What a step starts from besides the parameters: the RNG states, the data position and
    the counters. Taken before every step, so a step that fails before its update can be
    checkpointed as if it had never begun (:func:`checkpoint_failed_step`)."""

    step: int
    rng: dict[str, Any]
    sampler: dict[str, Any]
    updates_skipped: int
    steps_skipped: int

    @classmethod
    def take(cls, ctx: TrainContext) -> StepStart:
        from archer.checkpoint import rng_state

        ctx.state.updating = ctx.state.changed = False
        return cls(ctx.state.step, rng_state(), ctx.sampler.state_dict(),
                   ctx.state.updates_skipped, ctx.state.steps_skipped)


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


class TrainingStopped(Exception):
    """Raised by :func:`fit` (on every rank) when its ``stop`` callback asked to stop."""

    def __init__(self, step: int) -> None:
        super().__init__(f"training stopped on request after step {step}")
        self.step = step


class TrainingInterrupted(TrainingStopped):
    """Raised by :func:`fit` after SIGINT / SIGTERM: the step under way was finished and
    checkpointed (``checkpoint``; None when no step had been done), so running again with
    ``resume`` continues from it."""

    def __init__(self, step: int, signum: int, checkpoint: Path | None,
                 before_step: bool = False) -> None:
        name = signal.Signals(signum).name
        if checkpoint is None:
            text = f"{name} received before the first step: nothing to checkpoint"
        elif before_step:
            text = f"{name} received before step {step + 1} began: the run stays at {checkpoint}"
        else:
            text = f"{name} received: stopped after step {step}, checkpointed in {checkpoint}"
        Exception.__init__(self, text)
        self.step, self.signum, self.checkpoint = step, signum, checkpoint


class StoppedAtOnce(KeyboardInterrupt):
    """A second SIGINT / SIGTERM: the run stops where it is (``signum`` says which)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"{signal.Signals(signum).name} received again: stopped at once")
        self.signum = signum


class StopOnSignal:
    """While active (``with``), SIGINT and SIGTERM ask the run to stop after the step under
    way instead of killing it mid-step (``received`` holds the signal; the loop acts on it).
    A second signal stops at once (:class:`StoppedAtOnce`), except while ``busy()`` names
    work that cannot be cut without losing more than the step (an update, a checkpoint
    being written): that is finished first, and only a third signal forces the stop. Only
    the main thread may handle signals: elsewhere (a run inside a worker thread) this does
    nothing and the signals keep their handlers."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, say: Callable[[str], None] | None = None,
                 action: str = "checkpointing it", busy: Callable[[], str | None] | None = None
                 ) -> None:
        self.received: int | None = None
        self._say = say or (lambda text: log.warning("%s", text))
        self._action, self._busy = action, busy
        self._count = 0
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        self._count += 1
        name = signal.Signals(signum).name
        if self._count == 1:
            self.received = signum
            self._say(f"{name} received: finishing the step under way, {self._action}, then "
                      "stopping (send it again to stop at once)")
            return
        busy = self._busy() if self._busy is not None and self._count == 2 else None
        if busy:
            self._say(f"{name} received again: {busy} is under way, and cutting it would lose "
                      "everything since the last checkpoint; finishing it first (a third "
                      "signal forces the stop)")
            return
        self._restore()
        raise StoppedAtOnce(signum)

    def __enter__(self) -> StopOnSignal:
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def __exit__(self, *exc) -> None:
        self._restore()


@dataclass
class FitResult:
    state: TrainState  # final counters and run id
    model: torch.nn.Module  # the trained policy
    metrics: list[dict[str, float]]  # per-step metrics of this call (a resume: the new steps)
    export_dir: Path | None  # HF directory of the final policy


def setup_torch(cfg: TrainConfig) -> None:
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)


def load_records(cfg: TrainConfig) -> tuple[list[dict], list[dict]]:
    """(train, validation) prompt records; validation is ``val_size`` held-out records."""
    from archer.data.datasets import load_data_file, load_reasoning_gym, split_train_val

    d = cfg.data
    if d.file:
        records = list(load_data_file(d.file, skip_bad_records=d.skip_bad_records))
    else:
        records = list(load_reasoning_gym(d.task, d.size, d.seed, **d.task_config))
    if cfg.val_size == 0:
        return records, []
    train, val = split_train_val(records, cfg.val_size, seed=d.seed)
    return drop_heldout_duplicates(train, val), val


def drop_heldout_duplicates(train: list[dict], val: list[dict]) -> list[dict]:
    """``train`` without the records whose prompt is also a validation prompt. Generated
    tasks repeat themselves (reasoning-gym chain_sum with three 1-digit terms: 2,514 distinct
    problems in 4,000, and 138 of a 200-problem held-out split also in the rest), so
    without this the "held-out" accuracy is mostly measured on trained problems."""
    import json

    def key(r: dict) -> str:
        p = r["prompt"]
        return p if isinstance(p, str) else json.dumps(p, sort_keys=True)

    seen = {key(r) for r in val}
    kept = [r for r in train if key(r) not in seen]
    if not kept:
        raise ValueError(f"every one of the {len(train)} training records repeats a validation "
                         "prompt: the data has too few distinct problems for this val_size")
    if len(kept) < len(train):
        log.info("dropped %d training records whose prompt is also held out (%d left)",
                 len(train) - len(kept), len(kept))
    return kept


def resolve_reward(name: str):
    """The registered reward (``math``/``code``/... modules are imported on first use), or
    the user's ``module:function`` / ``file.py:function`` (``archer.rewards.load_user_reward``)."""
    import archer.data.datasets  # noqa: F401  (registers "reasoning_gym")
    from archer.rewards import REWARDS, get_reward

    if name not in REWARDS and ":" not in name:
        try:
            importlib.import_module(f"archer.rewards.{name}")
        except ModuleNotFoundError:
            pass
    return get_reward(name)


def check_reward_columns(fn, name: str, records: list[dict], source: str) -> None:
    """The reward's required arguments (besides the completions) must be columns of the data
    (:func:`record_columns`): one that no record has is an error naming the reward, the
    argument and the data, at start-up rather than a TypeError at the first step."""
    import inspect

    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # a builtin or C callable: nothing to check
        return
    named = [p for p in params[1:] if p.default is inspect.Parameter.empty
             and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    columns = set(record_columns(records))
    missing = [p.name for p in named if p.name not in columns]
    if missing:
        raise ValueError(
            f"reward {name!r} needs the column(s) {missing}, which no record of {source} has "
            f"(its records have: {sorted(columns)}); add the field to the data or choose "
            "another reward (data.reward=...)")


def build_context(cfg: TrainConfig, dist: DistInfo | None = None) -> TrainContext:
    """Model, reference, optimizer, data. ``dist``: the process group (default: from the
    torchrun environment, :data:`archer.distributed.SINGLE` without one); with several ranks
    the policy and the reference are sharded with FSDP2 before the optimizer is built."""
    from archer.models import load_policy_and_ref

    if dist is None:
        dist = init_distributed(cfg.distributed.backend, cfg.distributed.timeout_s, cfg.device)
    check_world_size(cfg, dist)
    device = dist.device if dist.enabled else resolve_device(cfg.device)
    model, ref, tokenizer = load_policy_and_ref(
        cfg.model, need_ref=cfg.algo.needs_reference, dtype=cfg.dtype, device=device,
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
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
        weight_decay=cfg.weight_decay)
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


def limit_prompt_length(cfg: TrainConfig, tokenizer, records: list[dict], split: str,
                        context: int | None = None) -> list[dict]:
    """``records`` whose prompt, as the rollout sees it (template, chat template, tokens),
    has at most ``cfg.max_prompt_tokens`` tokens. A longer one is an error naming it and the
    count (``overlong_prompts="error"``) or is dropped, with the count logged (``"drop"``).

    With the model's ``context`` length, a kept prompt must also leave room for
    ``max_new_tokens``: a longer one is an error at start-up naming the record, its length
    and the context (rather than a position-embedding crash, or silent positions past what
    the model was trained on, at the step that first samples it)."""
    from archer.data.templates import format_prompt

    if not records:
        return records
    limit = cfg.max_prompt_tokens
    texts = [format_prompt(r, cfg.template, tokenizer) for r in records]
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    over = [] if limit is None else [i for i, n in enumerate(lengths) if n > limit]
    if over:
        first = records[over[0]]
        what = (f"{len(over)} of {len(records)} {split} prompts are longer than "
                f"max_prompt_tokens={limit} (the first: {first.get('data_source')} record "
                f"{first.get('index')}, {lengths[over[0]]} tokens)")
        if cfg.overlong_prompts == "error":
            raise ValueError(f"{what}; raise max_prompt_tokens or set overlong_prompts=drop")
        if len(over) == len(records):
            raise ValueError(f"{what}: none is left")
        log.warning("%s: dropped", what)
        dropped = set(over)
        records = [r for i, r in enumerate(records) if i not in dropped]
        lengths = [n for i, n in enumerate(lengths) if i not in dropped]
    if context is not None:
        longest = max(range(len(lengths)), key=lengths.__getitem__)
        if lengths[longest] + cfg.max_new_tokens > context:
            worst = records[longest]
            room = context - cfg.max_new_tokens
            fits = sum(n <= room for n in lengths)
            raise ValueError(
                f"the longest {split} prompt ({worst.get('data_source')} record "
                f"{worst.get('index')}, {lengths[longest]} tokens) + max_new_tokens="
                f"{cfg.max_new_tokens} exceeds the model's context length of {context} tokens "
                f"({fits} of {len(lengths)} {split} prompts fit): lower max_new_tokens, set "
                f"max_prompt_tokens={max(room, 1)} with overlong_prompts=drop, or use a model "
                "with a longer context")
    return records


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
    policy's model directory, at the training dtype (weights pushed after every update)."""
    if cfg.rollout_backend == "hf":
        return HFRollout(model, tokenizer, batch_size=cfg.rollout_batch_size,
                         share_prompts=cfg.prompt_cache)
    from archer.models import resolve_model_path
    from archer.rollout.vllm import VLLMRollout, require_vllm

    require_vllm()  # a missing extra first, before resolving (and maybe preparing) the model
    return VLLMRollout(
        resolve_model_path(cfg.model), dtype=cfg.dtype, tokenizer=tokenizer, seed=cfg.seed,
        gpu_memory_utilization=cfg.vllm_gpu_memory_utilization,
        enable_sleep_mode=cfg.vllm_enable_sleep_mode, max_model_len=cfg.vllm_max_model_len,
        tensor_parallel_size=cfg.vllm_tensor_parallel_size,
        enforce_eager=cfg.vllm_enforce_eager)


# --------------------------------------------------------------------------------------
# One training step
# --------------------------------------------------------------------------------------


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


def train_step(ctx: TrainContext) -> dict[str, float]:
    """One RL step: rollout -> rewards -> filter -> advantages -> old/ref -> update."""
    on_gpu = ctx.device.type == "cuda"
    timer, start = PhaseTimer(cuda=on_gpu), time.perf_counter()
    lr = set_learning_rate(ctx)
    batch, rewards, metrics = collect_rollouts(ctx, timer)  # rewards, shaping, filter, refill
    metrics["actor/lr"] = lr
    if batch is None:  # every group was all-equal: nothing to learn from
        ctx.state.steps_skipped += 1
        metrics["train/step_skipped"] = 1.0
    else:
        metrics["train/step_skipped"] = 0.0
        ctx.rollout.sleep()  # a colocated engine gives its memory to the update
        with timer("old_logprob"):
            update_batch = prepare_update_batch(ctx, batch, rewards)  # advantages, old, ref
        with timer("update"):
            ctx.state.updating = True  # a second signal waits for it to finish
            metrics |= update_policy(ctx, update_batch)
        with timer("weight_sync"):
            ctx.rollout.wake_up()
            sync_rollout_weights(ctx)
        metrics["perf/tokens_per_s"] = ctx.dist.sum(_num_tokens(batch)) / max(
            timer.seconds["update"], 1e-9)
    ctx.state.step += 1
    metrics |= {f"time/{k}": timer.seconds.get(k, 0.0)
                for k in ("rollout", "reward", "old_logprob", "update", "weight_sync")}
    if on_gpu:
        torch.cuda.synchronize()
    metrics["time/step"] = time.perf_counter() - start
    metrics["perf/peak_memory_mb"] = peak_memory_mb(on_gpu)
    metrics["train/updates_skipped_total"] = float(ctx.state.updates_skipped)
    return metrics


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


def lr_factor(step: int, warmup_steps: int, schedule: str = "constant",
              total_steps: int = 1, min_ratio: float = 0.0) -> float:
    """The learning rate of training step ``step`` (0-based) as a fraction of the peak:
    linear warm-up to 1 over ``warmup_steps`` (the first step already gets 1/warmup), then
    ``constant``, or a ``cosine`` / ``linear`` decay from 1 towards ``min_ratio`` over the
    remaining ``total_steps - warmup_steps`` steps (progress p = (step - warmup) /
    (total - warmup): cosine min + (1 - min)(1 + cos(pi p)) / 2, linear min + (1 - min)(1 - p),
    as the schedulers of HF and verl)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    decay = 0.5 * (1.0 + math.cos(math.pi * progress)) if schedule == "cosine" else \
        1.0 - progress
    return min_ratio + (1.0 - min_ratio) * decay


def set_learning_rate(ctx: TrainContext) -> float:
    cfg = ctx.cfg
    lr = cfg.lr * lr_factor(ctx.state.step, cfg.warmup_steps, cfg.lr_schedule,
                            cfg.total_steps, cfg.min_lr_ratio)
    for group in ctx.optimizer.param_groups:
        group["lr"] = lr
    return lr


# --- rollout, rewards, group filter ----------------------------------------------------


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
    for r in range(rounds):
        records = [ctx.train_records[i] for i in ctx.sampler.next(cfg.prompts_per_step)][share]
        # HFRollout seeds its k-th generate() call with seed + k: offsetting by the calls of
        # the lower ranks gives the single-process samples when rollout_batch_size divides
        # the per-rank prompt count.
        offset = dist.rank * math.ceil(len(records) / cfg.rollout_batch_size)
        with timer("rollout"), full_params(ctx.model):
            batch = generate(ctx, records, seed=_rollout_seed(cfg, ctx.state.step, r) + offset)
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
        if n_kept >= cfg.prompts_per_step:
            break
    metrics = reduce_rollout_metrics(dist, rollout_metrics(seen, len(seen)))
    metrics["groups/kept"] = float(min(n_kept, limit))
    if n_kept == 0:
        return None, None, metrics
    batch = pad_responses(RolloutBatch.concat(kept, ctx.rollout.pad_id), width,
                          ctx.rollout.pad_id)
    return batch, torch.cat(kept_rewards), metrics


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


def _rollout_seed(cfg: TrainConfig, step: int, round_: int) -> int:
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


def record_columns(records: list[dict]) -> tuple[str, ...]:
    """Every field any of ``records`` has but ``prompt``, in first-seen order: the reward's
    columns (taken over the whole data set, so a batch whose records all lack a field still
    passes it, as ``None``s, rather than leaving the reward without the argument)."""
    return tuple(dict.fromkeys(k for rec in records for k in rec if k != "prompt"))


def call_reward(fn, name: str, completions: list[str], records: list[dict], n: int,
                columns: tuple[str, ...] | None = None) -> list[float | None]:
    """``fn(completions, **columns)`` for ``n`` completions per record, in record order: every
    field in ``columns`` (default: any field of these records but ``prompt``) is a column,
    ``None`` where a record lacks it. The result must be one real, finite number (a bool
    counts as 0/1) or ``None`` per completion; anything else is an error naming the reward
    and the sample."""
    keys = record_columns(records) if columns is None else columns
    columns = {k: [rec.get(k) for rec in records for _ in range(n)] for k in keys}
    values = fn(completions, **columns)
    if not isinstance(values, (list, tuple)) or len(values) != len(completions):
        got = f"{len(values)} values" if isinstance(values, (list, tuple)) else \
            f"a {type(values).__name__}"
        raise ValueError(f"reward {name!r} returned {got} for {len(completions)} completions; "
                         "expected a list with one float or None per completion")
    for i, v in enumerate(values):
        if v is not None and (not isinstance(v, numbers.Real) or not math.isfinite(v)):
            raise ValueError(f"reward {name!r} returned {v!r} for sample {i} "
                             f"(completion {completions[i][:60]!r}); expected a finite number "
                             "or None")
    return list(values)


def score(ctx: TrainContext, batch: RolloutBatch, records: list[dict], n: int) -> torch.Tensor:
    """(N,) float rewards; the record's fields are passed as columns, repeated n times."""
    values = call_reward(ctx.reward_fn, ctx.cfg.reward, batch.texts, records, n, ctx.columns)
    missing = [i for i, v in enumerate(values) if v is None]
    if missing and ctx.cfg.reward_on_none == "error":
        named = list(dict.fromkeys(
            f"{records[i // n].get('data_source')} record {records[i // n].get('index')}"
            for i in missing))
        absent = sorted({k for i in missing for k in ctx.columns if records[i // n].get(k) is None})
        raise ValueError(
            f"reward {ctx.cfg.reward!r} returned None for {len(missing)} of {len(values)} "
            f"samples, of {', '.join(named[:5])}{' ...' if len(named) > 5 else ''}"
            + (f" (lacking {', '.join(absent)})" if absent else "")
            + "; fix the data, or set trainer.reward_on_none=zero to score them 0")
    return torch.tensor([0.0 if v is None else float(v) for v in values], dtype=torch.float32,
                        device=batch.response_lengths.device)  # beside the lengths it is shaped by


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


def repetition_ratio(tokens: list[int], n: int = REPETITION_N) -> float:
    """1 - distinct n-grams / n-grams of one response (0 when it has fewer than n tokens)."""
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return 1.0 - len(set(grams)) / len(grams) if grams else 0.0


def concat_batches(parts: list[RolloutBatch], pad_id: int) -> RolloutBatch:
    """Join rollout batches (re-padding prompts left, responses right); groups renumbered
    0..B-1 in order of first appearance."""
    return RolloutBatch.concat(parts, pad_id, renumber_groups=True)


def _num_groups(batch: RolloutBatch) -> int:
    return int(torch.unique(batch.group_index).numel())


def _num_tokens(batch: RolloutBatch) -> int:
    return int(batch.prompt_mask.sum() + batch.response_mask.sum())


# --- advantages, old and reference log-probs -------------------------------------------


@dataclass
class UpdateBatch:
    """The rollout batch plus everything the loss needs that does not change during the
    update (row-aligned, N responses)."""

    batch: RolloutBatch
    advantages: torch.Tensor  # (N,) per response, or (N, R) after Lopti reweighting
    old_logprobs: torch.Tensor | None  # (N, R) before this step's update; None: on-policy
    old_entropy: torch.Tensor | None  # (N, R) entropy of the old policy; None: on-policy
    ref_logprobs: torch.Tensor | None  # (N, R) under the frozen reference, if KL is used

    @property
    def num_rows(self) -> int:
        return self.batch.num_samples

    def rows(self, idx: torch.Tensor) -> UpdateBatch:
        return UpdateBatch(
            batch=self.batch.select(idx), advantages=self.advantages[idx],
            old_logprobs=None if self.old_logprobs is None else self.old_logprobs[idx],
            old_entropy=None if self.old_entropy is None else self.old_entropy[idx],
            ref_logprobs=None if self.ref_logprobs is None else self.ref_logprobs[idx])


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
    import copy

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
    ref_lp = None
    if algo.needs_reference:
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
        return _num_groups(batch)
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


# --- the update ------------------------------------------------------------------------


def update_policy(ctx: TrainContext, ub: UpdateBatch) -> dict[str, float]:
    """PPO epochs over mini-batches of whole groups; each plan phase = all micro-batches
    then one optimizer step. Also measures how the token split moves between epochs."""
    records, changes, previous = [], [], None
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
        if previous is not None and dist.enabled:
            moved, n = dist.all_reduce([float(((previous != high_this_epoch) & valid).sum()),
                                        float(valid.sum())])
            changes.append(moved / n if n else 0.0)
        elif previous is not None:
            changes.append(split_change_fraction(previous, high_this_epoch, valid))
        previous = high_this_epoch
    out = _mean_metrics(records)
    out["actor/split_change_frac"] = sum(changes) / len(changes) if changes else 0.0
    out["actor/optimizer_steps"] = sum(m["actor/optimizer_steps"] for m in records)
    out["actor/updates_skipped"] = sum(m["actor/updates_skipped"] for m in records)
    high_n, low_n = out.get("actor/tokens_high_entropy", 0.0), out.get(
        "actor/tokens_low_entropy", 0.0)
    out["actor/frac_high_entropy"] = high_n / max(high_n + low_n, 1.0)
    out |= reduce_mismatch_metrics(dist, mismatch_metrics(
        ub.batch.sampler_logprobs, trainer_old, valid, ctx.algo.tis_cap), float(valid.sum()))
    return out


def reduce_mismatch_metrics(dist: DistInfo, metrics: dict[str, float],
                            n_tokens: float) -> dict[str, float]:
    """The rollout/train mismatch over all ranks: token-weighted means, the global max."""
    if not dist.enabled:
        return metrics
    keys = sorted(k for k in metrics if k != "rollout/mismatch_abs_max")
    sums = dist.all_reduce([metrics[k] * n_tokens for k in keys] + [n_tokens])
    total = sums[-1]
    out = {k: (v / total if total else metrics[k]) for k, v in zip(keys, sums[:-1])}
    out["rollout/mismatch_abs_max"] = dist.max(metrics["rollout/mismatch_abs_max"])
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
    values = dist.all_gather_cat(entropy[valid].float())
    tau = masked_quantile(values[None], torch.ones_like(values, dtype=torch.bool)[None], rho)
    tau = tau.to(entropy.device).expand(entropy.shape[0])
    high = valid & (entropy > tau[:, None])
    return TokenSplit(high_entropy_mask=high, low_entropy_mask=valid & ~high, threshold=tau)


def accumulate_gradients(ctx: TrainContext, mb: UpdateBatch, phase: Phase,
                         split: TokenSplit | None, old_sink: torch.Tensor | None = None
                         ) -> tuple[dict[str, float], torch.Tensor]:
    """Backward of the phase's mini-batch loss, micro-batch by micro-batch (exact scaling,
    see the module docstring). Returns (metrics, high-entropy mask (n, R) used).

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
        high_full = split.high_entropy_mask if split is not None else None
        token_mask = phase_token_mask(phase, mb.batch.response_mask, high_full, mb.old_logprobs,
                                      algo.async_prob_threshold)
        local = _denominators(token_mask, high_full, algo.loss_agg_mode)
        denominators = dict(zip(local, dist.all_reduce(list(local.values()))))
    width = mb.batch.response_ids.shape[1]
    if algo.loss_agg_mode == "seq-mean-token-sum-norm" and algo.loss_norm_length is None:
        algo = replace(algo, loss_norm_length=width)  # the padded length, even when trimmed
    records = []
    high_out = torch.zeros_like(mb.batch.response_mask, dtype=torch.bool)
    for i in range(n_micro):
        if i >= len(chunks):
            _dummy_backward(ctx)
            continue
        rows = chunks[i]
        micro = mb.rows(rows)
        cols = width
        if cfg.length_bucketing:
            micro, cols = trim_padding(micro)
        # data parallel: the full pass (FSDP gathers per forward call, and the prompt cache
        # makes a micro-batch's number of calls depend on its rows)
        logprobs, entropy = score_tokens(ctx.model, micro.batch, algo.temperature,
                                         cfg.entropy_chunk_size,
                                         prompt_cache=cfg.prompt_cache and not dist.enabled)
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
        inputs = LossInputs(logprobs=logprobs, old_logprobs=old,
                            advantages=advantages, response_mask=mask,
                            high_entropy_mask=high, ref_logprobs=micro.ref_logprobs,
                            entropy=entropy, token_mask=token_mask)
        scales = None if denominators is None else _scales(
            denominators, _denominators(token_mask, high, algo.loss_agg_mode))
        loss, metrics = micro_loss(algo, inputs, scales)
        loss.backward()
        metrics["actor/entropy"] = entropy[mask].mean().item() if mask.any() else 0.0
        records.append(metrics)
        high_out[rows.to(high_out.device), :cols] = high
    return _sum_metrics(records), high_out


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


def _dummy_backward(ctx: TrainContext) -> None:
    """A zero-gradient forward/backward on one token: keeps this rank in step with the
    ranks that have another micro-batch (FSDP gathers and reduces per pass)."""
    ids = torch.full((1, 1), ctx.rollout.pad_id, dtype=torch.long, device=ctx.device)
    logits = ctx.model(input_ids=ids, use_cache=False).logits
    (logits.float().sum() * 0.0).backward()


def reduce_update_metrics(dist: DistInfo, metrics: dict[str, float]) -> dict[str, float]:
    """One phase's metrics over ranks: loss terms and token counts (already each rank's share
    of the global value) add up; the diagnostics average over the ranks that report them."""
    if not dist.enabled:
        return metrics
    out: dict[str, list[float]] = defaultdict(list)
    for part in dist.all_gather_object(metrics):
        for k, v in part.items():
            out[k].append(v)
    return {k: sum(v) if k.startswith(_SUMMED) else sum(v) / len(v) for k, v in out.items()}


def _denominators(token_mask: torch.Tensor, high: torch.Tensor | None,
                  mode: str) -> dict[str, float]:
    """D per aggregated set: tokens (token-mean) or non-empty responses (seq-mean-*)."""
    def d(mask: torch.Tensor) -> float:
        return float(mask.sum() if mode == "token-mean" else (mask.sum(-1) > 0).sum())

    out = {"pg": d(token_mask)}
    if high is not None:
        out["high"], out["low"] = d(token_mask & high), d(token_mask & ~high)
    return out


def _scales(mini: dict[str, float], micro: dict[str, float]) -> dict[str, float]:
    return {k: (micro[k] / mini[k] if mini[k] > 0 else 0.0) for k in micro if k in mini}


def micro_loss(algo: AlgoConfig, inputs: LossInputs,
               scales: dict[str, float] | None) -> tuple[torch.Tensor, dict[str, float]]:
    """This micro-batch's share of the mini-batch loss, and its diagnostics.

    One loss call: ``scales`` weights the PG term and each class's KL term by this
    micro-batch's share of the mini-batch denominators; losses and PG contributions come
    back already scaled, so their sums over micro-batches are the mini-batch values."""
    if scales is not None and not (algo.needs_reference and algo.kl_normalization == "per_class"):
        scales = {"pg": scales["pg"]}  # all-token KL shares the PG denominator
    out = compute_policy_loss(LOSS_NAME, inputs, algo, with_metrics=True, scales=scales)
    return out.loss, {k: float(v) for k, v in out.metrics.items()}


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


def _sum_metrics(records: list[dict[str, float]]) -> dict[str, float]:
    """Micro-batches -> one phase: loss terms and token counts add up, the rest average."""
    keys = {k for r in records for k in r}
    out = {}
    for k in keys:
        values = [r[k] for r in records if k in r]
        out[k] = sum(values) if k.startswith(_SUMMED) else sum(values) / len(values)
    return out


def _mean_metrics(records: list[dict[str, float]]) -> dict[str, float]:
    keys = {k for r in records for k in r}
    return {k: sum(r[k] for r in records if k in r) / sum(k in r for r in records)
            for k in keys}


def peak_memory_mb(gpu: bool) -> float:
    """The process's peak so far: GPU memory allocated by torch when the run is on a GPU
    (``gpu``), else the resident set size (also for a CPU run on a machine with GPUs)."""
    if gpu:
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# --------------------------------------------------------------------------------------
# Validation, checkpoints, the run
# --------------------------------------------------------------------------------------


@torch.no_grad()
def validate(ctx: TrainContext, per_prompt: list[float] | None = None) -> dict[str, float]:
    """Held-out prompts, greedy or ``val_samples`` (k) samples each at ``val_temperature``:
    mean reward, accuracy (the fraction of samples scoring >= 1, i.e. avg@k without partial
    credit) and, for k > 1, pass@k (the fraction of prompts with a sample scoring >= 1).
    ``per_prompt`` (a list, single process only) receives each held-out prompt's accuracy
    over its k samples, in the split's order, for paired comparisons."""
    cfg, dist = ctx.cfg, ctx.dist
    k = cfg.val_samples
    if per_prompt is not None and dist.enabled:
        raise ValueError("per-prompt validation results are for single-process runs")
    records = ctx.val_records[dist.rank::dist.world_size]  # data parallel: a share per rank
    params = SamplingParams(temperature=cfg.val_temperature, top_p=cfg.top_p,
                            max_new_tokens=cfg.max_new_tokens, n=k,
                            seed=cfg.seed + 17 + 7919 * dist.rank)
    sums = [0.0, 0.0, 0.0, 0.0, 0.0]  # reward, accuracy, length, solved prompts, samples
    if records:
        with full_params(ctx.model):
            batch = sample(ctx, records, params)
        rewards = score(ctx, batch, records, k)
        correct = (rewards >= 1).float()  # no partial credit
        hits = torch.zeros(len(records)).index_add_(0, batch.group_index.cpu(), correct.cpu())
        if per_prompt is not None:
            per_prompt.extend((hits / k).tolist())
        sums = [rewards.sum().item(), correct.sum().item(),
                batch.response_lengths.float().sum().item(), (hits > 0).sum().item(),
                float(len(rewards))]
    elif dist.enabled:
        with full_params(ctx.model):  # the gather is collective: take part in it
            pass
    reward, accuracy, length, solved_n, n = dist.all_reduce(sums)
    out = {"val/reward_mean": reward / n, "val/accuracy": accuracy / n,
           "val/response_length_mean": length / n}
    if k > 1:
        out[f"val/pass@{k}"] = solved_n / len(ctx.val_records)
    return out


def save(ctx: TrainContext, metrics: dict[str, float] | None = None) -> Path:
    """Checkpoint the run, with the metrics of the step just completed: they are logged after
    the save, and re-logged on resume if the process died in between."""
    state = {"sampler": ctx.sampler.state_dict(), "run_id": ctx.state.run_id,
             "updates_skipped": ctx.state.updates_skipped,
             "steps_skipped": ctx.state.steps_skipped, "metrics": dict(metrics or {}),
             "config": ctx.cfg.to_dict()}
    dist = ctx.dist
    if not dist.enabled:
        return save_checkpoint(ctx.cfg.out_dir, ctx.state.step, ctx.model, ctx.optimizer, state,
                               keep=ctx.cfg.keep_checkpoints)
    # FSDP: gather full state dicts (collective), rank 0 writes them with every rank's RNG.
    from archer.checkpoint import rng_state

    model_sd, optim_sd = full_state_dicts(ctx.model, ctx.optimizer)
    rngs = dist.all_gather_object(rng_state())
    path = checkpoint_root(ctx.cfg.out_dir) / f"step_{ctx.state.step:06d}"
    if dist.is_main:
        path = save_checkpoint(ctx.cfg.out_dir, ctx.state.step, ctx.model, ctx.optimizer,
                               state | {"world_size": dist.world_size},
                               keep=ctx.cfg.keep_checkpoints, model_state=model_sd,
                               optimizer_state=optim_sd, rank_rng_states=rngs)
    dist.barrier()  # the checkpoint exists before any rank goes on
    return path


# Settings a resumed run may change: how long it runs, how it is computed, validated, logged
# and saved, not what is trained (the algorithm, model, data, batch sizes, lr, seed, ...).
# The reward may change too: a crash in it, or a None it returned, is the usual reason to
# resume (its code can change under the same name anyway).
RESUME_MAY_CHANGE = (
    "reward", "reward_on_none", "total_steps", "val_every", "val_temperature", "val_samples", "ckpt_every",
    "keep_checkpoints", "resume", "out_dir", "export_final", "num_threads", "device",
    "deterministic", "micro_batch_size", "entropy_chunk_size", "prompt_cache", "ref_dtype",
    "gradient_checkpointing", "length_bucketing", "rollout_batch_size", "rollout_backend",
    "vllm_gpu_memory_utilization", "vllm_enable_sleep_mode", "vllm_max_model_len",
    "vllm_tensor_parallel_size", "vllm_enforce_eager", "distributed.backend",
    "distributed.timeout_s", "distributed.reshard_after_forward",
    "distributed.mixed_precision")


def config_changes(saved: dict[str, Any], now: dict[str, Any],
                   may_change: tuple[str, ...] = RESUME_MAY_CHANGE) -> list[str]:
    """``key: saved -> now`` for every setting that differs and may not change on resume
    (flattened keys; ``may_change``: those that may)."""
    import json

    def plain(d: dict) -> dict:  # as state.json holds it (tuples -> lists, ...)
        return flatten(json.loads(json.dumps(d, default=str)))

    before, after = plain(saved), plain(now)

    def shown(values: dict, k: str) -> str:
        return repr(values[k]) if k in values else "(unset)"

    return [f"{k}: {shown(before, k)} -> {shown(after, k)}"
            for k in sorted(set(before) | set(after))
            if k not in may_change and (k in before, before.get(k)) !=
            (k in after, after.get(k))]


def warn_stretched_schedule(saved: dict[str, Any], cfg: TrainConfig, step: int) -> None:
    """A decaying lr schedule resumed with another ``total_steps`` is stretched (or squeezed)
    from here on: said, with the next step's lr under the old and the new length."""
    old = saved.get("total_steps")
    if old is None or old == cfg.total_steps or cfg.lr_schedule == "constant":
        return
    was, now = (cfg.lr * lr_factor(step, cfg.warmup_steps, cfg.lr_schedule, total,
                                   cfg.min_lr_ratio) for total in (old, cfg.total_steps))
    log.warning("total_steps %d -> %d with lr_schedule=%s: the remaining decay is rescaled "
                "to the new length; the lr of step %d is %.3g (it would have been %.3g)", old,
                cfg.total_steps, cfg.lr_schedule, step + 1, now, was)


def resume(ctx: TrainContext) -> bool:
    """Load the latest loadable checkpoint of ``out_dir`` into the context; False when
    there is none, or when ``resume`` is off: then an earlier run's checkpoints are moved to
    ``out_dir/previous/`` (never revived by a later resume, never deleted).

    A checkpoint that cannot be read (a damaged file) is skipped with a warning for the one
    before it; one whose run had other settings (:data:`RESUME_MAY_CHANGE` may change) is an
    error naming them: continuing it with another algorithm, model, data or lr would make a
    run that no config describes."""
    import shutil

    from archer.checkpoint import list_checkpoints, read_state
    from archer.tracking import archive_previous, read_run_info

    cfg, dist = ctx.cfg, ctx.dist
    root = checkpoint_root(cfg.out_dir)
    if dist.is_main and root.is_dir():  # saves a kill interrupted (never picked, never pruned)
        for tmp in root.glob(".tmp-step_*"):
            shutil.rmtree(tmp, ignore_errors=True)
    found = list_checkpoints(cfg.out_dir)
    if not cfg.resume:
        if found and dist.is_main:
            old = (read_state(found[-1], strict=False).get("run_id")
                   or (read_run_info(cfg.out_dir) or {}).get("run_id"))
            # the run's policy export and config go with it: a final/ left behind would pass
            # for the new run's
            dest = archive_previous(cfg.out_dir, ("checkpoints", "final", "config.yaml"), old)
            log.warning("resume=false: the run in %s (checkpoints of steps %s, its final/ and "
                        "config.yaml) was moved to %s", cfg.out_dir,
                        [int(p.name[5:]) for p in found], dest)
        dist.barrier()
        return False
    failed = []
    for path in reversed(found):
        try:
            state = read_state(path)
        except ValueError as err:
            failed.append(f"{path.name}: {err}")
            continue
        if "config" in state:  # (checkpoints before this check have no config)
            changes = config_changes(state["config"], cfg.to_dict())
            warn_stretched_schedule(state["config"], cfg, state["step"])
            if changes:
                raise ValueError(
                    f"{path} was saved by a run with other settings: {'; '.join(changes)}. "
                    "Resuming would continue it as a run no config describes: use another "
                    f"trainer.out_dir (with model={Path(cfg.out_dir) / 'final'} to start from "
                    "this run's exported policy, once it has one), or trainer.resume=false to "
                    "start over here (its checkpoints are moved to previous/)")
        try:
            state = load_checkpoint(path, ctx.model, ctx.optimizer, rank=dist.rank,
                                    load_state_dicts=load_full_state_dicts if dist.enabled
                                    else None)
        except (ValueError, RuntimeError, KeyError) as err:  # damaged file, mismatched tensors
            failed.append(f"{path.name}: {err}")
            log.warning("checkpoint %s cannot be loaded (%s); trying the one before it", path,
                        err)
            continue
        if failed:
            log.warning("resumed from %s; unreadable newer checkpoint(s): %s", path.name,
                        "; ".join(failed))
        ctx.sampler.load_state_dict(state["sampler"])
        ctx.state = TrainState(step=state["step"], run_id=state["run_id"],
                               updates_skipped=state["updates_skipped"],
                               steps_skipped=state["steps_skipped"],
                               last_metrics=state.get("metrics", {}))
        sync_rollout_weights(ctx)  # a separate engine still holds the initial weights
        return True
    if failed:
        raise ValueError(f"no checkpoint under {checkpoint_root(cfg.out_dir)} can be loaded: "
                         + "; ".join(failed) + ". Remove the damaged ones to resume from "
                         "an older one, or set trainer.resume=false to start over")
    return False


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in data.items():
        if isinstance(v, dict) and v:
            out |= flatten(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


LoggerFactory = Callable[[str | None], MetricLogger]


def open_logger(cfg: TrainConfig, logger: MetricLogger | LoggerFactory | None,
                run_id: str | None) -> MetricLogger:
    """The run's logger: ``logger`` itself, ``logger(run_id)`` for a factory (``run_id`` is
    the checkpoint's tracking run id, None for a new run), or a JsonlLogger in ``out_dir``."""
    if logger is None:
        return JsonlLogger(cfg.out_dir, run_id=run_id)
    if isinstance(logger, MetricLogger):
        return logger
    if callable(logger):
        made = logger(run_id)
        if not isinstance(made, MetricLogger):
            raise TypeError(f"logger factory returned {type(made).__name__}, not a MetricLogger")
        return made
    raise TypeError(f"logger must be a MetricLogger or a factory, got {type(logger).__name__}")


def progress_bar(cfg: TrainConfig, start: int, progress: bool | None):
    """tqdm bar over the run's steps; ``progress=None`` shows it only when stderr is a TTY."""
    from tqdm.auto import tqdm

    return tqdm(total=cfg.total_steps, initial=start, desc="train", unit="step",
                disable=None if progress is None else not progress, dynamic_ncols=True)


def progress_postfix(metrics: dict[str, float]) -> dict[str, str]:
    """The live numbers on the bar: reward, entropy, kept groups, held-out reward."""
    shown = {"reward": "reward/mean", "entropy": "actor/entropy", "kept": "groups/kept",
             "val": "val/reward_mean"}
    return {name: f"{metrics[key]:.3g}" for name, key in shown.items() if key in metrics}


def fit(cfg: TrainConfig, logger: MetricLogger | LoggerFactory | None = None, *,
        progress: bool | None = None,
        stop: Callable[[int], bool] | None = None) -> FitResult:
    """Train for ``cfg.total_steps`` steps (continuing from the latest checkpoint in
    ``out_dir``), validating and checkpointing on schedule; export the final policy.

    ``logger``: a MetricLogger, or a factory ``f(run_id | None) -> MetricLogger`` that
    gets the checkpoint's tracking run id so a resumed run logs into the same tracking run
    (default: ``JsonlLogger(out_dir)``). Params are logged once, when the run starts.
    ``progress``: a tqdm bar with the live reward and entropy (None: only on a TTY).
    ``stop``: asked on every rank after each step is logged (so after its checkpoint, when
    one is due) with the step number; when it is true on any rank, every rank raises
    :class:`TrainingStopped` at that same step (one all-reduce per step in a distributed
    run, so no rank is left waiting in a collective).

    SIGINT / SIGTERM (Ctrl-C, a scheduler's stop) finish the step under way, checkpoint it
    and raise :class:`TrainingInterrupted` (:class:`StopOnSignal`); a second one stops at
    once. Starting without ``resume`` moves an earlier run's checkpoints to
    ``out_dir/previous/`` (see :func:`resume`, which also skips a damaged checkpoint and
    refuses one saved with other settings).
    """
    setup_torch(cfg)
    dist = init_distributed(cfg.distributed.backend, cfg.distributed.timeout_s, cfg.device)
    together = False  # every rank leaves at the same point: finished, or stopped on request
    try:
        result = _fit(cfg, dist, logger, progress, stop)
        together = True
        return result
    except TrainingStopped:
        together = True
        raise
    finally:
        shutdown(dist, barrier=together)


def _fit(cfg: TrainConfig, dist: DistInfo, logger, progress,
         stop: Callable[[int], bool] | None = None) -> FitResult:
    ctx = build_context(cfg, dist)
    resumed = resume(ctx)
    if not dist.is_main:  # only rank 0 talks to the tracker, shows progress, writes files
        logger, progress = NullLogger(ctx.state.run_id), False
    history: list[dict[str, float]] = []
    shown: dict[str, str] = {}
    last_saved = ctx.state.step if resumed else None
    begun: StepStart | None = None  # where the step under way started
    done: dict[str, float] | None = None  # its metrics, once its update is complete
    saving = False

    def busy() -> str | None:  # what a second signal must not cut
        if saving:
            return "a checkpoint"
        if begun is not None and ctx.state.updating and ctx.state.step == begun.step:
            return "the update"
        return None

    def checkpoint(metrics: dict[str, float]) -> Path:  # the step just completed
        nonlocal saving, last_saved
        ctx.state.run_id = logger.run_id  # an offline-started run may have its id by now
        saving = True
        path = save(ctx, metrics)
        saving, last_saved = False, ctx.state.step
        return path

    bar = progress_bar(cfg, ctx.state.step, progress)
    signals = StopOnSignal(say=lambda text: bar.write(f"archer: {text}", file=sys.stderr),
                           busy=busy)
    # the handlers go in before the tracking run opens: a stop from here on ends that run
    # (KILLED) instead of leaving it RUNNING
    with signals:
        logger = open_logger(cfg, logger, ctx.state.run_id)
        try:
            ctx.state.run_id = logger.run_id
            # what the run trains on (the leaderboard's device-hours = seconds x devices)
            logger.set_tags({"archer.num_devices": dist.world_size,
                             "archer.device_kind": "gpu" if ctx.device.type == "cuda"
                             else "cpu"})
            if resumed and ctx.state.step >= cfg.total_steps:
                log.warning("%s: the run is at step %d already, total_steps=%d: no step to "
                            "train%s", cfg.out_dir, ctx.state.step, cfg.total_steps,
                            "; exporting its policy again" if cfg.export_final else "")
            if not resumed:
                logger.log_params(flatten(cfg.to_dict()))
            elif hasattr(logger, "rewind"):  # drop steps logged after the checkpoint
                logger.rewind(ctx.state.step, ctx.state.last_metrics)
            while ctx.state.step < cfg.total_steps:
                if signals.received is not None and not dist.enabled:  # before a step begins
                    at = checkpoint_root(cfg.out_dir) / f"step_{ctx.state.step:06d}"
                    raise TrainingInterrupted(ctx.state.step, signals.received,
                                              at if resumed or history else None,
                                              before_step=True)
                begun, done = StepStart.take(ctx), None
                metrics = train_step(ctx)
                done = metrics
                step = ctx.state.step
                last = step == cfg.total_steps
                if cfg.val_every and ctx.val_records and (step % cfg.val_every == 0 or last):
                    metrics = metrics | validate_aside(ctx)
                saved = last or bool(cfg.ckpt_every and step % cfg.ckpt_every == 0)
                if saved:  # before logging: a logged step is always resumable
                    path = checkpoint(metrics)
                logger.log_metrics(metrics, step)
                history.append(metrics)
                shown |= progress_postfix(metrics)  # a skipped step keeps the last entropy
                bar.set_postfix(shown, refresh=False)
                bar.update(1)
                # one collective per step: 2 = a signal on some rank, 1 = stop asked
                asked = 2.0 if signals.received is not None else \
                    1.0 if stop is not None and stop(step) else 0.0
                asked = dist.max(asked) if (stop is not None or dist.enabled) else asked
                if asked >= 2:
                    if last:  # the run is complete: finish and export as usual
                        continue
                    if not saved:
                        path = checkpoint(metrics)
                    raise TrainingInterrupted(step, signals.received or signal.SIGTERM, path)
                if asked >= 1:
                    raise TrainingStopped(step)
        except TrainingStopped:  # stopped on request or by a signal, the last step saved
            bar.close()
            ctx.rollout.close()
            logger.finish("KILLED")
            raise
        except (Exception, KeyboardInterrupt) as err:  # a crash (not a death: nothing runs)
            ctx.state.run_id = logger.run_id
            checkpoint_failed_step(ctx, begun, done, last_saved, history, err)
            bar.close()
            ctx.rollout.close()
            logger.finish("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
            raise
        except BaseException:
            bar.close()
            ctx.rollout.close()
            logger.finish("FAILED")
            raise
    bar.close()
    ctx.rollout.close()
    export_dir = export_policy(ctx) if cfg.export_final else None
    logger.finish("FINISHED")
    return FitResult(state=ctx.state, model=ctx.model, metrics=history, export_dir=export_dir)


def validate_aside(ctx: TrainContext) -> dict[str, float]:
    """:func:`validate` with the RNG states put back afterwards: validation never moves the
    training's random streams, so a run's trajectory does not depend on its validation
    settings, and a step whose validation failed can be checkpointed as if it had not run."""
    from archer.checkpoint import rng_state, set_rng_state

    kept = rng_state()
    try:
        return validate(ctx)
    finally:
        set_rng_state(kept)


def checkpoint_failed_step(ctx: TrainContext, begun: StepStart | None,
                           done: dict[str, float] | None, last_saved: int | None,
                           history: list[dict[str, float]], err: BaseException) -> Path | None:
    """Checkpoint what a failure (an exception, or a second Ctrl-C) leaves intact, so that
    resuming continues exactly as a run that never failed:

    - a step that failed before its first optimizer step (in the rollout, the reward, the
      old/reference passes, or in the update's forward/backward before the parameters moved:
      a verifier bug, a bad record, an out-of-memory generation or backward) has not changed
      the parameters or the optimizer state: the run is saved as it was when that step
      began (its RNG states, data position and counters from ``begun``; the gradients are
      not state), and the resume redoes the step;
    - a step whose update was complete (``done``, its metrics) and which failed after it
      (in validation, which puts the RNG back, in logging or in its checkpoint): the step
      is saved with those metrics.

    Nothing is written for a failure after an optimizer step of an unfinished update (the
    step is half done; that is said), when the step is checkpointed already, before any
    step, or in a data-parallel run (the other ranks may be inside a collective). Returns
    the checkpoint, if one was written."""
    from archer.checkpoint import set_rng_state

    if begun is None or ctx.dist.enabled:
        return None
    before = ctx.state.step == begun.step and not ctx.state.changed
    after = ctx.state.step == begun.step + 1 and done is not None
    target = begun.step if before else begun.step + 1 if after else None
    if target is None and ctx.state.step == begun.step:  # changed, not done: half a step
        log.warning("step %d failed in its update after an optimizer step (%s: %s): a half "
                    "done step cannot be checkpointed; resuming starts from %s",
                    begun.step + 1, type(err).__name__, err,
                    f"step {last_saved}" if last_saved else "the start")
    if target is None or target == 0 or target == last_saved:
        return None
    try:
        if before:
            ctx.sampler.load_state_dict(begun.sampler)
            set_rng_state(begun.rng)
            ctx.state.updates_skipped, ctx.state.steps_skipped = (begun.updates_skipped,
                                                                   begun.steps_skipped)
        path = save(ctx, (history[-1] if history else ctx.state.last_metrics) if before
                    else done)
    except Exception:  # noqa: BLE001  (the original error is what the user must see)
        log.exception("could not checkpoint the run after step %d failed", begun.step + 1)
        return None
    if before:
        log.warning("step %d failed before its update changed the parameters (%s: %s); the "
                    "run is checkpointed at step %d with step %d's data position and RNG, so "
                    "resuming redoes it exactly", begun.step + 1, type(err).__name__, err,
                    begun.step, begun.step + 1)
    else:
        log.warning("step %d failed after its update (%s: %s); the step is checkpointed, "
                    "so resuming goes on from it", target, type(err).__name__, err)
    return path


def export_policy(ctx: TrainContext) -> Path:
    """The final policy as an HF directory (FSDP: gathered, written by rank 0)."""
    out = Path(ctx.cfg.out_dir) / "final"
    if not ctx.dist.enabled:
        ctx.model.save_pretrained(out)
    else:
        model_sd, _ = full_state_dicts(ctx.model, None)
        if ctx.dist.is_main:
            ctx.model.save_pretrained(out, state_dict=model_sd)
        ctx.dist.barrier()
    if ctx.dist.is_main:
        ctx.tokenizer.save_pretrained(out)
    return out
