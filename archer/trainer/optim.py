"""The optimizer and its learning rate: AdamW over the trainable parameters, and the
schedule, a pure function of the step (so a resumed run restores it by the step)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from archer.train_config import TrainConfig

if TYPE_CHECKING:
    from archer.trainer.context import TrainContext


def build_optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """AdamW over the policy's trainable parameters (the lr is set before every step)."""
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                             weight_decay=cfg.weight_decay)


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
