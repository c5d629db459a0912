"""Typed containers passed between the stages of a training step (shapes in comments).

Shape letters: B prompts, n samples per prompt, N = B * n sampled responses,
P prompt length (left-padded), R response length (right-padded), T = P + R.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import torch

# --------------------------------------------------------------------------------------
# RolloutBatch: what a rollout backend returns
# --------------------------------------------------------------------------------------


@dataclass
class RolloutBatch:
    """N = B * n sampled responses, row-aligned; samples of one prompt are contiguous.

    The full sequence of row i is ``cat(prompt_ids[i], response_ids[i])``: prompt left-padded,
    response right-padded, so every response starts at column P. A teacher-forced forward
    pass should use ``model_inputs()``: position ids from the attention mask, the same ones
    ``generate`` used (RoPE is shift-invariant only in exact arithmetic; learned absolute
    positions are not shift-invariant at all).
    """

    prompt_ids: torch.Tensor  # (N, P) long, left-padded with the pad token
    prompt_mask: torch.Tensor  # (N, P) long, 1 on real prompt tokens
    response_ids: torch.Tensor  # (N, R) long, right-padded with the pad token
    response_mask: torch.Tensor  # (N, R) long, 1 up to and including the first EOS
    response_lengths: torch.Tensor  # (N,) long, = response_mask.sum(-1)
    truncated: torch.Tensor  # (N,) bool, hit max_new_tokens without emitting EOS
    sampler_logprobs: torch.Tensor  # (N, R) float32, log-prob under the distribution sampled
    #   from (temperature-scaled, top-k/top-p filtered and renormalised); 0 where masked
    group_index: torch.Tensor  # (N,) long, which prompt (0..B-1) the sample answers
    texts: list[str]  # (N,) decoded responses, special tokens removed

    def __post_init__(self) -> None:
        n, p = self.prompt_ids.shape
        r = self.response_ids.shape[1]
        expected = {
            "prompt_mask": (n, p),
            "response_mask": (n, r),
            "sampler_logprobs": (n, r),
            "response_lengths": (n,),
            "truncated": (n,),
            "group_index": (n,),
        }
        for name, shape in expected.items():
            got = tuple(getattr(self, name).shape)
            if got != shape:
                raise ValueError(f"RolloutBatch.{name} has shape {got}, expected {shape}")
        if len(self.texts) != n:
            raise ValueError(f"RolloutBatch.texts has {len(self.texts)} entries, expected {n}")

    @property
    def num_samples(self) -> int:
        return self.prompt_ids.shape[0]

    @property
    def prompt_length(self) -> int:
        return self.prompt_ids.shape[1]

    def input_ids(self) -> torch.Tensor:  # (N, T)
        return torch.cat([self.prompt_ids, self.response_ids], dim=1)

    def attention_mask(self) -> torch.Tensor:  # (N, T)
        return torch.cat([self.prompt_mask, self.response_mask], dim=1)

    def position_ids(self) -> torch.Tensor:  # (N, T)
        return position_ids_from_mask(self.attention_mask())

    def model_inputs(self) -> dict[str, torch.Tensor]:
        """Keyword arguments for a teacher-forced forward pass over prompt + response.

        The logits that score response token j sit at column ``P - 1 + j``:
        ``logits[:, P - 1 : -1]`` is (N, R), aligned with ``response_ids``.
        """
        return {
            "input_ids": self.input_ids(),
            "attention_mask": self.attention_mask(),
            "position_ids": self.position_ids(),
        }

    def select(self, rows: torch.Tensor | list[int]) -> RolloutBatch:
        """The sub-batch of the given rows (e.g. the groups kept after filtering)."""
        idx = torch.as_tensor(rows, dtype=torch.long)
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                out[f.name] = value.index_select(0, idx.to(value.device))
            else:
                out[f.name] = [value[i] for i in idx.tolist()]
        return RolloutBatch(**out)

    @staticmethod
    def concat(parts: list[RolloutBatch], pad_id: int, renumber_groups: bool = False
               ) -> RolloutBatch:
        """Join batches: prompts re-left-padded to the widest P, responses right-padded.

        ``renumber_groups``: group ids become 0..B-1 in order of first appearance across the
        parts (for batches sampled separately, e.g. DAPO refill rounds)."""
        if len(parts) == 1 and not renumber_groups:
            return parts[0]
        p = max(b.prompt_ids.shape[1] for b in parts)
        r = max(b.response_ids.shape[1] for b in parts)

        def cat(name: str, width: int, value, left: bool) -> torch.Tensor:
            ts = [getattr(b, name) for b in parts]
            return torch.cat([
                torch.nn.functional.pad(
                    t, (width - t.shape[1], 0) if left else (0, width - t.shape[1]), value=value)
                for t in ts])

        groups = [b.group_index for b in parts]
        if renumber_groups:
            groups, offset = [], 0
            for b in parts:
                _, inverse = torch.unique_consecutive(b.group_index, return_inverse=True)
                groups.append(inverse + offset)
                offset += int(inverse.max()) + 1 if len(inverse) else 0
        return RolloutBatch(
            prompt_ids=cat("prompt_ids", p, pad_id, True),
            prompt_mask=cat("prompt_mask", p, 0, True),
            response_ids=cat("response_ids", r, pad_id, False),
            response_mask=cat("response_mask", r, 0, False),
            response_lengths=torch.cat([b.response_lengths for b in parts]),
            truncated=torch.cat([b.truncated for b in parts]),
            sampler_logprobs=cat("sampler_logprobs", r, 0.0, False),
            group_index=torch.cat(groups),
            texts=[t for b in parts for t in b.texts],
        )

    def to(self, device: torch.device | str) -> RolloutBatch:
        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return replace(self, **moved)


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """(N, T) positions counting real tokens only, as HF ``generate`` computes them.

    Padded slots get 0; their value is irrelevant because they are masked out.
    """
    pos = attention_mask.long().cumsum(-1) - 1
    return pos.masked_fill(attention_mask == 0, 0)
