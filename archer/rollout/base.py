"""The interface every generation backend implements (HF ``generate``, vLLM).

A backend takes already-templated prompt strings and returns a ``RolloutBatch``; the trainer
never sees backend details. ``update_weights`` pushes the freshly trained policy weights into
the backend before the next rollout; ``sleep``/``wake_up`` bracket the update so a colocated
engine can give its memory to training (no-ops unless the backend has a sleep mode).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from archer.types import RolloutBatch


@dataclass(frozen=True)
class SamplingParams:
    """How to sample; validated at construction (a bad value fails naming the field)."""

    temperature: float = 1.0  # logits are divided by this; 0.0 means greedy decoding
    top_p: float = 1.0  # nucleus filter in (0, 1]; 1.0 disables it
    top_k: int | None = None  # keep the k most likely tokens; None disables it (not 0)
    max_new_tokens: int = 256  # response budget; a response that uses it all without EOS
    #   is marked truncated
    n: int = 1  # samples per prompt (the GRPO group size G)
    seed: int | None = None  # same seed + same prompts + same weights -> same samples;
    #   None draws from torch's global RNG

    def __post_init__(self) -> None:
        def bad(field: str, allowed: str) -> ValueError:
            return ValueError(
                f"SamplingParams.{field}={getattr(self, field)!r} is invalid; allowed: {allowed}"
            )

        if not (isinstance(self.temperature, int | float) and self.temperature >= 0):
            raise bad("temperature", "a number >= 0 (0 = greedy)")
        if not (isinstance(self.top_p, int | float) and 0 < self.top_p <= 1):
            raise bad("top_p", "a number in (0, 1]")
        if self.top_k is not None and not (_is_int(self.top_k) and self.top_k >= 1):
            raise bad("top_k", "None (disabled) or an int >= 1")
        if not (_is_int(self.max_new_tokens) and self.max_new_tokens >= 1):
            raise bad("max_new_tokens", "an int >= 1")
        if not (_is_int(self.n) and self.n >= 1):
            raise bad("n", "an int >= 1")
        if self.seed is not None and not _is_int(self.seed):
            raise bad("seed", "None or an int")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


class RolloutBackend(ABC):
    """Generates ``params.n`` responses for each prompt."""

    @abstractmethod
    def generate(self, prompts: list[str], params: SamplingParams) -> RolloutBatch:
        """``prompts`` are final text (chat template already applied); rows come out grouped
        by prompt: rows ``[i * n, (i + 1) * n)`` answer ``prompts[i]``."""

    @abstractmethod
    def update_weights(self, weights: torch.nn.Module | Mapping[str, torch.Tensor]) -> None:
        """Make the next ``generate`` use these policy weights (a module or a state dict)."""

    def sleep(self) -> None:  # noqa: B027  (optional hook, no-op by default)
        """Release accelerator memory while the trainer updates (vLLM sleep mode)."""

    def wake_up(self) -> None:  # noqa: B027
        """Undo :meth:`sleep` before the next ``update_weights``/``generate``."""

    def close(self) -> None:  # noqa: B027
        """Release the backend's processes/memory at the end of a run (no-op by default)."""
