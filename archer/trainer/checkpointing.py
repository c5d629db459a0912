"""Checkpointing a run: saving it (with the metrics of the step just completed), resuming
it (refusing a checkpoint saved with other settings, skipping a damaged one), checkpointing
what a failed step leaves intact, and exporting the final policy.

The files themselves (their layout, atomic writes, pruning, RNG states) are
:mod:`archer.checkpoint`'s: this module decides what goes into them and when.
"""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from archer.checkpoint import (
    checkpoint_root,
    list_checkpoints,
    load_checkpoint,
    load_model_state,
    read_state,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from archer.distributed import full_state_dicts, load_full_state_dicts
from archer.train_config import TrainConfig
from archer.trainer.context import TrainContext, TrainState
from archer.trainer.optim import lr_factor
from archer.trainer.rollout import sync_rollout_weights

log = logging.getLogger(__name__)


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
        ctx.state.updating = ctx.state.changed = False
        return cls(ctx.state.step, rng_state(), ctx.sampler.state_dict(),
                   ctx.state.updates_skipped, ctx.state.steps_skipped)


def save(ctx: TrainContext, metrics: dict[str, float] | None = None) -> Path:
    """Checkpoint the run, with the metrics of the step just completed: they are logged after
    the save, and re-logged on resume if the process died in between."""
    state = {"sampler": ctx.sampler.state_dict(), "run_id": ctx.state.run_id,
             "updates_skipped": ctx.state.updates_skipped,
             "steps_skipped": ctx.state.steps_skipped, "metrics": dict(metrics or {}),
             "config": ctx.cfg.to_dict()}
    if ctx.pipeline is not None:  # the in-flight batches' prompts, re-queued on resume
        state["pending_prompts"] = ctx.pipeline.state_dict()
    dist = ctx.dist
    if not dist.enabled:
        return save_checkpoint(ctx.cfg.out_dir, ctx.state.step, ctx.model, ctx.optimizer, state,
                               keep=ctx.cfg.keep_checkpoints)
    # FSDP: gather full state dicts (collective), rank 0 writes them with every rank's RNG.
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
    "vllm_tensor_parallel_size", "vllm_enforce_eager", "max_staleness", "distributed.backend",
    "distributed.timeout_s", "distributed.reshard_after_forward",
    "distributed.mixed_precision",
    "data.answer_format",  # how SFT writes a reference answer; RL never reads it
    "algo.kl_monitor")  # logs the KL to the reference; the loss and its gradient are the same


def config_changes(saved: dict[str, Any], now: dict[str, Any],
                   may_change: tuple[str, ...] = RESUME_MAY_CHANGE) -> list[str]:
    """``key: saved -> now`` for every setting that differs and may not change on resume
    (flattened keys; ``may_change``: those that may)."""
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
    cfg, dist = ctx.cfg, ctx.dist
    root = checkpoint_root(cfg.out_dir)
    if dist.is_main and root.is_dir():  # saves a kill interrupted (never picked, never pruned)
        for tmp in root.glob(".tmp-step_*"):
            shutil.rmtree(tmp, ignore_errors=True)
    found = list_checkpoints(cfg.out_dir)
    if not cfg.resume:
        if found and dist.is_main:
            set_aside_previous_run(cfg, found)
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
            refuse_other_settings(path, state, cfg)
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
        if state.get("pending_prompts") and not cfg.max_staleness:
            raise ValueError(f"{path} holds {len(state['pending_prompts'])} prompt batches "
                             "drawn ahead by asynchronous rollouts; resume it with "
                             "max_staleness >= 1, or they would be skipped")
        ctx.sampler.load_state_dict(state["sampler"])
        ctx.state = TrainState(step=state["step"], run_id=state["run_id"],
                               updates_skipped=state["updates_skipped"],
                               steps_skipped=state["steps_skipped"],
                               last_metrics=state.get("metrics", {}),
                               pending_prompts=state.get("pending_prompts"))
        sync_rollout_weights(ctx)  # a separate engine still holds the initial weights
        return True
    if failed:
        raise ValueError(f"no checkpoint under {checkpoint_root(cfg.out_dir)} can be loaded: "
                         + "; ".join(failed) + ". Remove the damaged ones to resume from "
                         "an older one, or set resume=false to start over")
    return False


def set_aside_previous_run(cfg: TrainConfig, found: list[Path]) -> None:
    """``resume=false`` over an earlier run: its checkpoints, policy export and config move
    to ``out_dir/previous/`` (a final/ left behind would pass for the new run's)."""
    from archer.tracking import archive_previous, read_run_info

    old = (read_state(found[-1], strict=False).get("run_id")
           or (read_run_info(cfg.out_dir) or {}).get("run_id"))
    dest = archive_previous(cfg.out_dir, ("checkpoints", "final", "config.yaml"), old)
    log.warning("resume=false: the run in %s (checkpoints of steps %s, its final/ and "
                "config.yaml) was moved to %s", cfg.out_dir, [int(p.name[5:]) for p in found],
                dest)


def refuse_other_settings(path: Path, state: dict[str, Any], cfg: TrainConfig) -> None:
    """A checkpoint saved with settings that may not change on resume is an error naming
    them; a decaying schedule stretched to a new ``total_steps`` is a warning."""
    changes = config_changes(state["config"], cfg.to_dict())
    warn_stretched_schedule(state["config"], cfg, state["step"])
    if changes:
        raise ValueError(
            f"{path} was saved by a run with other settings: {'; '.join(changes)}. "
            "Resuming would continue it as a run no config describes: use another "
            f"out_dir (with model={Path(cfg.out_dir) / 'final'} to start from "
            "this run's exported policy, once it has one), or resume=false to "
            "start over here (its checkpoints are moved to previous/)")


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in data.items():
        if isinstance(v, dict) and v:
            out |= flatten(v, f"{prefix}{k}.")
        else:
            out[f"{prefix}{k}"] = v
    return out


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


def write_policy(model: torch.nn.Module, tokenizer: Any, out: str | Path,
                 state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """The one writer of a policy's Hugging Face directory, for ``final/`` and ``archer
    export``: ``model.safetensors`` (the weights of ``state_dict`` when given, else the
    model's own), ``config.json``, ``generation_config.json`` and the tokenizer's files,
    loadable by ``transformers`` (``AutoModelForCausalLM.from_pretrained(out)``) as is."""
    out = Path(out)
    model.save_pretrained(out, state_dict=state_dict)
    tokenizer.save_pretrained(out)
    return out


def export_policy(ctx: TrainContext) -> Path:
    """The final policy as an HF directory (FSDP: gathered, written by rank 0)."""
    out = Path(ctx.cfg.out_dir) / "final"
    if not ctx.dist.enabled:
        write_policy(ctx.model, ctx.tokenizer, out)
    else:
        model_sd, _ = full_state_dicts(ctx.model, None)
        if ctx.dist.is_main:
            write_policy(ctx.model, ctx.tokenizer, out, state_dict=model_sd)
        ctx.dist.barrier()
    return out


def export_checkpoint(checkpoint: str | Path, out: str | Path) -> Path:
    """Checkpoint directory ``checkpoint`` (``<run>/checkpoints/step_N``) as an HF directory
    ``out``, written by :func:`write_policy` as ``final/`` is: the run's model (its
    architecture, tokenizer and generation config, from the ``model`` its state.json records,
    or the run's ``final/`` when that directory is gone) loaded at the run's dtype, with the
    checkpoint's full state dict (saved gathered, so no resharding) loaded exactly."""
    from archer.models import load_policy_and_ref

    checkpoint = Path(checkpoint)
    config = read_state(checkpoint, required=("step",)).get("config") or {}
    base = checkpoint_base_model(checkpoint, config)
    model, _, tokenizer = load_policy_and_ref(base, need_ref=False,
                                              dtype=config.get("dtype") or "float32")
    state = load_model_state(checkpoint)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"{checkpoint / 'model.pt'} does not fit the model {base}: "
                         f"{str(err).splitlines()[0]}") from None
    return write_policy(model, tokenizer, out)


def checkpoint_base_model(checkpoint: Path, config: dict[str, Any]) -> str:
    """The model a checkpoint's run trained (its ``model`` setting), or the run's exported
    ``final/`` (same architecture and tokenizer) when that one cannot be found here."""
    from archer.models import MODELS

    run_dir = checkpoint.parent.parent
    name = config.get("model")
    if name is not None and (Path(str(name)).expanduser().is_dir() or str(name) in MODELS):
        return str(name)
    final = run_dir / "final"
    if (final / "config.json").is_file():
        return str(final)
    raise ValueError(f"cannot export {checkpoint}: the run's model {name!r} (its architecture "
                     f"and tokenizer) is not a directory here and {final} does not exist; run "
                     "the export where the training model is (a relative model path is "
                     "relative to the training's working directory)")
