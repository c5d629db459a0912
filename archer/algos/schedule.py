"""Update schedules as data: a plan is a tuple of phases, each selecting a subset of tokens.

The trainer executes, for every mini-batch, each phase in order: it computes the loss over
the phase's tokens (all micro-batches, gradient accumulation) and takes one optimizer step.

- ``sync`` (Archer, GRPO, DAPO): one phase over all valid tokens -> one loss, one step.
- ``mask`` (80/20 gradient masking): one phase over high-entropy tokens only, so low-entropy
  tokens get no gradient at all and the aggregation counts only high-entropy tokens.
- ``async`` (AR-Lopti style): two phases that partition the valid tokens, chosen by
  old-policy probability (``p_old < threshold`` is ``low_prob``) or by entropy class, updated
  one after the other, each with its own optimizer step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from archer.config import AlgoConfig

SELECTORS = ("all", "high_entropy", "low_entropy", "low_prob", "high_prob")
_OTHER = {"low_prob": "high_prob", "high_prob": "low_prob",
          "high_entropy": "low_entropy", "low_entropy": "high_entropy"}


@dataclass(frozen=True)
class Phase:
    selector: str  # which tokens this phase updates: one of SELECTORS

    def __post_init__(self) -> None:
        if self.selector not in SELECTORS:
            raise ValueError(f"unknown phase selector {self.selector!r}; choose from {SELECTORS}")

    @property
    def needs_entropy_split(self) -> bool:
        return self.selector in ("high_entropy", "low_entropy")


def build_update_plan(cfg: AlgoConfig) -> tuple[Phase, ...]:
    """The phases executed for every mini-batch under ``cfg.update_mode``."""
    if cfg.update_mode == "sync":
        return (Phase("all"),)
    if cfg.update_mode == "mask":
        return (Phase("high_entropy"),)
    first = cfg.async_first
    return (Phase(first), Phase(_OTHER[first]))


def phase_token_mask(
    phase: Phase,
    response_mask: torch.Tensor,
    high_entropy_mask: torch.Tensor | None = None,
    old_logprobs: torch.Tensor | None = None,
    prob_threshold: float = 0.5,
) -> torch.Tensor:
    """(B, T) bool mask of the valid tokens that ``phase`` updates."""
    valid = response_mask.bool()
    sel = phase.selector
    if sel == "all":
        return valid
    if sel in ("high_entropy", "low_entropy"):
        if high_entropy_mask is None:
            raise ValueError(f"phase {sel!r} needs high_entropy_mask")
        high = high_entropy_mask.bool() & valid
        return high if sel == "high_entropy" else valid & ~high
    if old_logprobs is None:
        raise ValueError(f"phase {sel!r} needs old_logprobs")
    low_prob = valid & (old_logprobs < math.log(prob_threshold))
    return low_prob if sel == "low_prob" else valid & ~low_prob
