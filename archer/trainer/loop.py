"""The run: :func:`fit` trains for ``total_steps`` steps, validating, logging and
checkpointing on schedule, stopping cleanly on request or on a signal, and exporting the
final policy. Only rank 0 logs, shows progress and writes files."""

from __future__ import annotations

import logging
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from archer.checkpoint import checkpoint_root
from archer.distributed import DistInfo, init_distributed, shutdown
from archer.tracking import JsonlLogger, MetricLogger, NullLogger
from archer.train_config import TrainConfig
from archer.trainer.checkpointing import (
    StepStart,
    checkpoint_failed_step,
    export_policy,
    flatten,
    resume,
    save,
)
from archer.trainer.context import TrainContext, TrainState, build_context, setup_torch
from archer.trainer.step import train_step
from archer.trainer.stopping import StopOnSignal, TrainingInterrupted, TrainingStopped
from archer.trainer.validation import validate_aside

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    state: TrainState  # final counters and run id
    model: torch.nn.Module  # the trained policy
    metrics: list[dict[str, float]]  # per-step metrics of this call (a resume: the new steps)
    export_dir: Path | None  # HF directory of the final policy


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


@dataclass
class Run:
    """A run under way: its context, where its logs go, and what a failure or a signal must
    know (the step under way, whether it was checkpointed, what is being written)."""

    ctx: TrainContext
    resumed: bool  # it continues from a checkpoint
    logger: Any = None  # the MetricLogger, once open
    bar: Any = None  # the progress bar
    history: list[dict[str, float]] = field(default_factory=list)  # metrics of this call
    shown: dict[str, str] = field(default_factory=dict)  # the bar's live numbers
    last_saved: int | None = None  # the step last checkpointed
    begun: StepStart | None = None  # where the step under way started
    done: dict[str, float] | None = None  # its metrics, once its update is complete
    saving: bool = False  # a checkpoint is being written

    def busy(self) -> str | None:
        """What a second signal must not cut, if anything."""
        if self.saving:
            return "a checkpoint"
        state = self.ctx.state
        if self.begun is not None and state.updating and state.step == self.begun.step:
            return "the update"
        return None

    def checkpoint(self, metrics: dict[str, float]) -> Path:
        """Save the step just completed."""
        self.ctx.state.run_id = self.logger.run_id  # an offline-started run may have it now
        self.saving = True
        path = save(self.ctx, metrics)
        self.saving, self.last_saved = False, self.ctx.state.step
        return path

    def record(self, metrics: dict[str, float], step: int) -> None:
        """Log the step's metrics and show them on the bar."""
        self.logger.log_metrics(metrics, step)
        self.history.append(metrics)
        self.shown |= progress_postfix(metrics)  # a skipped step keeps the last entropy
        self.bar.set_postfix(self.shown, refresh=False)
        self.bar.update(1)

    def close(self, status: str | None) -> None:
        """Close the bar and the sampler; finish the tracking run with ``status`` (None:
        leave it open)."""
        self.bar.close()
        self.ctx.rollout.close()
        if self.ctx.pipeline is not None:
            self.ctx.pipeline.close()
        if status is not None:
            self.logger.finish(status)


def _fit(cfg: TrainConfig, dist: DistInfo, logger, progress,
         stop: Callable[[int], bool] | None = None) -> FitResult:
    ctx = build_context(cfg, dist)
    resumed = resume(ctx)
    if not dist.is_main:  # only rank 0 talks to the tracker, shows progress, writes files
        logger, progress = NullLogger(ctx.state.run_id), False
    run = Run(ctx, resumed, last_saved=ctx.state.step if resumed else None)
    run.bar = bar = progress_bar(cfg, ctx.state.step, progress)
    signals = StopOnSignal(say=lambda text: bar.write(f"archer: {text}", file=sys.stderr),
                           busy=run.busy)
    # the handlers go in before the tracking run opens: a stop from here on ends that run
    # (KILLED) instead of leaving it RUNNING
    with signals:
        run.logger = open_logger(cfg, logger, ctx.state.run_id)
        try:
            start_run(run)
            if cfg.max_staleness:  # k = 0 never builds (or imports) the pipeline
                from archer.trainer.pipeline import build_pipeline

                ctx.pipeline = build_pipeline(ctx)
            while ctx.state.step < cfg.total_steps:
                run_step(run, signals, stop)
        except TrainingStopped:  # stopped on request or by a signal, the last step saved
            run.close("KILLED")
            raise
        except (Exception, KeyboardInterrupt) as err:  # a crash (not a death: nothing runs)
            ctx.state.run_id = run.logger.run_id
            checkpoint_failed_step(ctx, run.begun, run.done, run.last_saved, run.history, err)
            run.close("KILLED" if isinstance(err, KeyboardInterrupt) else "FAILED")
            raise
        except BaseException:
            run.close("FAILED")
            raise
    run.close(None)
    export_dir = export_policy(ctx) if cfg.export_final else None
    run.logger.finish("FINISHED")
    return FitResult(state=ctx.state, model=ctx.model, metrics=run.history,
                     export_dir=export_dir)


def start_run(run: Run) -> None:
    """Tag the tracking run, and log the params (a new run) or rewind the steps logged after
    the checkpoint (a resumed one)."""
    ctx, logger, cfg = run.ctx, run.logger, run.ctx.cfg
    ctx.state.run_id = logger.run_id
    # what the run trains on (the leaderboard's device-hours = seconds x devices)
    logger.set_tags({"archer.num_devices": ctx.dist.world_size,
                     "archer.device_kind": "gpu" if ctx.device.type == "cuda" else "cpu"})
    if run.resumed and ctx.state.step >= cfg.total_steps:
        log.warning("%s: the run is at step %d already, total_steps=%d: no step to train%s",
                    cfg.out_dir, ctx.state.step, cfg.total_steps,
                    "; exporting its policy again" if cfg.export_final else "")
    if not run.resumed:
        logger.log_params(flatten(cfg.to_dict()))
    elif hasattr(logger, "rewind"):  # drop steps logged after the checkpoint
        logger.rewind(ctx.state.step, ctx.state.last_metrics)


def run_step(run: Run, signals: StopOnSignal, stop: Callable[[int], bool] | None) -> None:
    """One step of the loop: train, validate and checkpoint when due, log; then stop if a
    signal or ``stop`` asks to."""
    ctx, cfg = run.ctx, run.ctx.cfg
    if signals.received is not None and not ctx.dist.enabled:  # before a step begins
        at = checkpoint_root(cfg.out_dir) / f"step_{ctx.state.step:06d}"
        raise TrainingInterrupted(ctx.state.step, signals.received,
                                  at if run.resumed or run.history else None, before_step=True)
    run.begun, run.done = StepStart.take(ctx), None
    metrics = train_step(ctx)
    run.done = metrics
    step = ctx.state.step
    last = step == cfg.total_steps
    if cfg.val_every and ctx.val_records and (step % cfg.val_every == 0 or last):
        metrics = metrics | validate_aside(ctx)
    path = None
    if last or (cfg.ckpt_every and step % cfg.ckpt_every == 0):
        path = run.checkpoint(metrics)  # before logging: a logged step is always resumable
    run.record(metrics, step)
    stop_if_asked(run, signals, stop, metrics, path)


def stop_if_asked(run: Run, signals: StopOnSignal, stop: Callable[[int], bool] | None,
                  metrics: dict[str, float], path: Path | None) -> None:
    """After a logged step: raise :class:`TrainingInterrupted` (checkpointing the step if it
    was not) when a signal came on any rank, :class:`TrainingStopped` when ``stop`` asked on
    any rank. One collective per step: 2 = a signal on some rank, 1 = stop asked."""
    ctx = run.ctx
    step = ctx.state.step
    asked = 2.0 if signals.received is not None else \
        1.0 if stop is not None and stop(step) else 0.0
    asked = ctx.dist.max(asked) if (stop is not None or ctx.dist.enabled) else asked
    if asked >= 2:
        if step == ctx.cfg.total_steps:  # the run is complete: finish and export as usual
            return
        if path is None:
            path = run.checkpoint(metrics)
        raise TrainingInterrupted(step, signals.received or signal.SIGTERM, path)
    if asked >= 1:
        raise TrainingStopped(step)
