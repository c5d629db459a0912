"""The RL trainer: ``train_step`` (one rollout + update) and ``fit`` (the whole run).

One step reads top to bottom as the method's story (docs/method.md)::

    prompts -> rollout (G samples each) -> rewards -> overlong shaping -> group filter
    (+ DAPO refill) -> advantages (+ Lopti reweighting) -> old / ref log-probs (no grad)
    -> PPO epochs x mini-batches x update phases (micro-batch gradient accumulation,
       entropy split, the policy loss ``algo.loss``, one optimizer step per phase) -> metrics

The package, one concern per module:

- :mod:`.context`: the run's model, reference, optimizer, data, reward and rollout backend
  (:func:`build_context`) and its counters;
- :mod:`.records`: the prompt records, their held-out split and length limits, the sampler;
- :mod:`.rewards`: finding and calling the reward;
- :mod:`.rollout`: sampling, scoring and filtering the step's groups, and their metrics;
- :mod:`.logprobs`: the teacher-forced passes (prompt-cached, chunked);
- :mod:`.update`: advantages, old / reference log-probs, epochs, mini-batches, phases,
  micro-batch accumulation, the optimizer step;
- :mod:`.optim`: the optimizer and the learning-rate schedule;
- :mod:`.metrics`: the step's metric names and how they combine;
- :mod:`.validation`: held-out reward, accuracy and pass@k;
- :mod:`.checkpointing`: save, resume, a failed step's checkpoint, the policy export;
- :mod:`.stopping`: stopping on request or by a signal;
- :mod:`.pipeline`: asynchronous rollouts (``max_staleness >= 1``): batches requested k steps
  ahead within the staleness bound, weights published per step, prompts kept across a
  checkpoint; :mod:`.rollout_actor`: the Ray rollout worker that generates them (HF or
  vLLM); :mod:`.publishers`: how the weights reach it (Ray's object store or a collective
  weight channel) (none imported when ``max_staleness=0``);
- :mod:`.step`: :func:`train_step`; :mod:`.loop`: :func:`fit`.

Monkeypatch a function in the module that calls it (e.g. ``archer.trainer.update.is_on_policy``,
called by ``prepare_update_batch``): the names here are re-exports.

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
"""

from archer.trainer.checkpointing import (
    RESUME_MAY_CHANGE,
    StepStart,
    checkpoint_failed_step,
    config_changes,
    export_policy,
    flatten,
    resume,
    save,
    warn_stretched_schedule,
)
from archer.trainer.context import (
    TrainContext,
    TrainState,
    build_context,
    build_rollout,
    check_policy_loss,
    check_world_size,
    context_length,
    enable_gradient_checkpointing,
    setup_torch,
)
from archer.trainer.logprobs import (
    chunk_overhead,
    forward_tokens,
    forward_tokens_batched,
    forward_tokens_prompt_cached,
    length_chunks,
    score_tokens,
)
from archer.trainer.loop import FitResult, LoggerFactory, fit, open_logger, progress_bar
from archer.trainer.metrics import (
    STEP_METRICS,
    PhaseTimer,
    peak_memory_mb,
    reduce_mismatch_metrics,
    reduce_rollout_metrics,
    reduce_update_metrics,
)
from archer.trainer.optim import build_optimizer, lr_factor, set_learning_rate
from archer.trainer.records import (
    PromptSampler,
    drop_heldout_duplicates,
    limit_prompt_length,
    load_records,
    record_columns,
)
from archer.trainer.rewards import call_reward, check_reward_columns, resolve_reward, score
from archer.trainer.rollout import (
    REPETITION_N,
    collect_rollouts,
    generate,
    pad_responses,
    prompt_texts,
    repetition_ratio,
    rollout_metrics,
    sample,
    sync_rollout_weights,
)
from archer.trainer.step import train_step
from archer.trainer.stopping import (
    StopOnSignal,
    StoppedAtOnce,
    TrainingInterrupted,
    TrainingStopped,
)
from archer.trainer.update import (
    UpdateBatch,
    accumulate_gradients,
    global_batch_split,
    global_num_groups,
    is_on_policy,
    micro_batch_rows,
    micro_loss,
    minibatch_rows,
    minibatch_split,
    needs_minibatch_split,
    optimizer_step,
    prepare_update_batch,
    trim_padding,
    update_policy,
)
from archer.trainer.validation import HeldOutScores, heldout_scores, validate, validate_aside

__all__ = [
    "RESUME_MAY_CHANGE", "REPETITION_N", "STEP_METRICS", "FitResult", "HeldOutScores",
    "LoggerFactory", "PhaseTimer", "PromptSampler", "StepStart", "StopOnSignal",
    "StoppedAtOnce", "TrainContext", "TrainState", "TrainingInterrupted", "TrainingStopped",
    "UpdateBatch", "accumulate_gradients", "build_context", "build_optimizer", "build_rollout",
    "call_reward", "check_policy_loss", "check_reward_columns", "check_world_size",
    "checkpoint_failed_step", "chunk_overhead", "collect_rollouts", "config_changes",
    "context_length", "drop_heldout_duplicates", "enable_gradient_checkpointing",
    "export_policy", "fit", "flatten", "forward_tokens", "forward_tokens_batched",
    "forward_tokens_prompt_cached", "generate", "global_batch_split", "global_num_groups",
    "heldout_scores", "is_on_policy", "length_chunks", "limit_prompt_length", "load_records",
    "lr_factor", "micro_batch_rows", "micro_loss", "minibatch_rows", "minibatch_split",
    "needs_minibatch_split", "open_logger", "optimizer_step", "pad_responses",
    "peak_memory_mb", "prepare_update_batch", "progress_bar", "prompt_texts", "record_columns",
    "reduce_mismatch_metrics", "reduce_rollout_metrics", "reduce_update_metrics",
    "repetition_ratio", "resolve_reward", "resume", "rollout_metrics", "sample", "save",
    "score", "score_tokens", "set_learning_rate", "setup_torch", "sync_rollout_weights",
    "train_step", "trim_padding", "update_policy", "validate", "validate_aside",
    "warn_stretched_schedule",
]
