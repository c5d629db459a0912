"""Rollouts with Hugging Face ``model.generate`` (CPU or one GPU; the simple, exact backend).

Simplifications, on purpose: prompts are micro-batched (``batch_size`` prompts, each with
``n`` samples, per ``generate`` call) and the backend shares the policy module with the
trainer, so there is nothing to copy after an update. Sampler log-probs come from
``output_scores``: HF returns, per step, the scores *after* every logits processor
(temperature, top-k, top-p), i.e. exactly the distribution the token was drawn from. HF keeps
one (N, V) score tensor per generated step, so this backend is for short responses / small
vocabularies; long-context rollouts belong to the vLLM backend. ``generate_texts`` samples
the same rows without the scores (evaluation needs only texts, lengths and truncation).

The generation config is built from scratch with every sampling knob explicit (top_k=0,
repetition_penalty=1, ...), so a model's own ``generation_config.json`` cannot silently
change the sampling distribution (true temperature-1 sampling needs top-k unset).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import GenerationConfig

from archer.models import cache_kwarg, prefill
from archer.rollout.base import RolloutBackend, SamplingParams
from archer.types import RolloutBatch, position_ids_from_mask


@dataclass
class GeneratedTexts:
    """What :meth:`HFRollout.generate_texts` returns: the samples without log-probs."""

    texts: list[str]  # N = len(prompts) * n, rows [i*n, (i+1)*n) answer prompt i
    response_lengths: torch.Tensor  # (N,) tokens up to and including the first stop token
    truncated: torch.Tensor  # (N,) bool: hit max_new_tokens without a stop token


class HFRollout(RolloutBackend):
    """``HFRollout(model, tokenizer, batch_size)``; ``generate(prompts, params)``.

    Example::

        backend = HFRollout(policy, tokenizer, batch_size=8)
        batch = backend.generate(["User: 1+1=?\\nAssistant:"], SamplingParams(n=4, seed=0))
        batch.texts  # 4 responses, rows 0..3 answer prompt 0
    """

    def __init__(self, model: torch.nn.Module, tokenizer, batch_size: int = 8,
                 share_prompts: bool = True) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} is invalid; allowed: an int >= 1")
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.share_prompts = share_prompts  # n > 1: prefill each prompt once (_prefill)
        self.stop_ids = _stop_token_ids(model, tokenizer)
        pad = tokenizer.pad_token_id
        self.pad_id = pad if pad is not None else self.stop_ids[0]

    def update_weights(self, weights: torch.nn.Module | Mapping[str, torch.Tensor]) -> None:
        """No-op when given the module this backend already generates with (the usual case:
        trainer and backend share the policy); otherwise loads that module's or mapping's
        state dict into the backend's model."""
        if weights is self.model:
            return
        state = weights.state_dict() if isinstance(weights, torch.nn.Module) else weights
        self.model.load_state_dict(state)

    @torch.no_grad()
    def generate(self, prompts: list[str], params: SamplingParams) -> RolloutBatch:
        """Prompts are final text (no special tokens are added). Rows ``[i*n, (i+1)*n)``
        answer ``prompts[i]``. Micro-batch k is seeded with ``params.seed + k``, so a fixed
        seed and batch_size give the same samples; global RNG state is left untouched."""
        return _concat(self._per_micro_batch(prompts, params, self._generate_chunk),
                       self.pad_id)

    @torch.no_grad()
    def generate_texts(self, prompts: list[str], params: SamplingParams) -> GeneratedTexts:
        """The samples of :meth:`generate` (same generation config, seeding, stop and
        truncation rules, same rows) without sampler log-probs: no per-step (rows, vocab)
        scores are kept, which dominate the time and memory of long responses. For
        evaluation, which needs only the texts, their lengths and truncation flags."""
        parts = self._per_micro_batch(prompts, params, self._texts_chunk)
        return GeneratedTexts(texts=[t for part in parts for t in part.texts],
                              response_lengths=torch.cat([p.response_lengths for p in parts]),
                              truncated=torch.cat([p.truncated for p in parts]))

    def _per_micro_batch(self, prompts: list[str], params: SamplingParams, run_chunk) -> list:
        """``run_chunk(chunk, params, seed, group_offset)`` per micro-batch of ``batch_size``
        prompts (micro-batch k seeded with ``params.seed + k``), the model in eval mode."""
        if not prompts:
            raise ValueError("generate() got no prompts")
        was_training = self.model.training
        self.model.eval()
        try:
            parts = []
            for k, start in enumerate(range(0, len(prompts), self.batch_size)):
                chunk = prompts[start : start + self.batch_size]
                seed = None if params.seed is None else params.seed + k
                parts.append(run_chunk(chunk, params, seed, group_offset=start))
        finally:
            self.model.train(was_training)
        return parts

    def _sample(self, prompts: list[str], params: SamplingParams, seed: int | None,
                with_scores: bool):
        """``generate`` on one micro-batch: (prompt ids (b*n, P), prompt mask, HF output,
        response ids (b*n, R)). The output has ``scores`` only when ``with_scores``."""
        device = next(self.model.parameters()).device
        prompt_ids, prompt_mask = _left_pad(
            [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts],
            self.pad_id,
        )
        n = params.n  # expand rows ourselves (also valid for greedy, unlike HF's option)
        prompt_ids, prompt_mask = prompt_ids.to(device), prompt_mask.to(device)  # (b, P)
        prefilled = self._prefill(prompt_ids, prompt_mask, n)
        prompt_ids = prompt_ids.repeat_interleave(n, dim=0)  # (b*n, P)
        prompt_mask = prompt_mask.repeat_interleave(n, dim=0)  # (b*n, P)
        config = self._generation_config(params)
        config.output_scores = with_scores
        with _seeded(seed, device):
            # synced_gpus=False: transformers turns it on for an FSDP module under torch
            # distributed, and then every generation step is an all-reduce, so ranks making
            # different numbers of calls (a held-out share of 3 prompts beside one of 2)
            # desynchronise. The trainer generates inside distributed.full_params, where
            # every unit is gathered and a forward needs no collective.
            out = self.model.generate(input_ids=prompt_ids, attention_mask=prompt_mask,
                                      generation_config=config, synced_gpus=False,
                                      **prefilled)
        response_ids = out.sequences[:, prompt_ids.shape[1] :]  # (b*n, R)
        return prompt_ids, prompt_mask, out, response_ids

    def _decode(self, response_ids: torch.Tensor, lengths: torch.Tensor) -> list[str]:
        return [self.tokenizer.decode(row[: int(length)].tolist(), skip_special_tokens=True)
                for row, length in zip(response_ids, lengths)]

    def _texts_chunk(self, prompts: list[str], params: SamplingParams, seed: int | None,
                     group_offset: int) -> GeneratedTexts:
        _, _, _, response_ids = self._sample(prompts, params, seed, with_scores=False)
        response_mask, truncated = _response_mask(response_ids, self.stop_ids,
                                                  params.max_new_tokens)
        lengths = response_mask.sum(-1)
        return GeneratedTexts(self._decode(response_ids, lengths), lengths.cpu(),
                              truncated.cpu())

    def _generate_chunk(
        self, prompts: list[str], params: SamplingParams, seed: int | None, group_offset: int
    ) -> RolloutBatch:
        prompt_ids, prompt_mask, out, response_ids = self._sample(prompts, params, seed,
                                                                  with_scores=True)
        device = response_ids.device
        response_mask, truncated = _response_mask(
            response_ids, self.stop_ids, params.max_new_tokens
        )
        if params.greedy:  # a point mass: log-prob 0 on every chosen token
            logprobs = torch.zeros(response_ids.shape, dtype=torch.float32, device=device)
        else:
            logprobs = _gather_logprobs(out.scores, response_ids)
        response_ids = response_ids.masked_fill(response_mask == 0, self.pad_id)
        lengths = response_mask.sum(-1)
        groups = torch.arange(len(prompts), device=device).repeat_interleave(params.n)
        return RolloutBatch(
            prompt_ids=prompt_ids,
            prompt_mask=prompt_mask,
            response_ids=response_ids,
            response_mask=response_mask,
            response_lengths=lengths,
            truncated=truncated,
            sampler_logprobs=logprobs.masked_fill(response_mask == 0, 0.0),
            group_index=groups + group_offset,
            texts=self._decode(response_ids, lengths),
        )

    def _prefill(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, n: int
                 ) -> dict[str, object]:
        """With n samples per prompt, run each prompt's first P-1 tokens once and repeat
        their KV cache n times: ``generate`` then starts at the last prompt token, and the
        prompt costs 1/n of its compute (the samples are those of the full prefill, up to
        float rounding). Returns the cache as ``generate``'s keyword, or {} where it does not
        apply: n = 1, a one-token prompt (nothing before its last token), a model without a
        cache argument or one that drops its cache."""
        head_ids, head_mask = prompt_ids[:, :-1], prompt_mask[:, :-1]
        if (not self.share_prompts or n < 2 or head_ids.shape[1] == 0
                or bool((head_mask.sum(-1) == 0).any())):
            return {}
        prefilled = prefill(self.model, head_ids, head_mask, position_ids_from_mask(head_mask))
        if prefilled is None:
            return {}
        cache = prefilled[1]
        cache.batch_repeat_interleave(n)
        return {cache_kwarg(type(self.model)): cache}

    def _generation_config(self, params: SamplingParams) -> GenerationConfig:
        return GenerationConfig(
            do_sample=not params.greedy,
            temperature=1.0 if params.greedy else float(params.temperature),
            top_p=1.0 if params.greedy else float(params.top_p),
            # greedy: no top-k at all (a value there is a "flag ignored" warning per call)
            top_k=None if params.greedy else 0 if params.top_k is None else int(params.top_k),
            max_new_tokens=params.max_new_tokens,
            min_length=0,
            num_return_sequences=1,
            num_beams=1,
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
            typical_p=1.0,
            epsilon_cutoff=0.0,
            eta_cutoff=0.0,
            eos_token_id=list(self.stop_ids),
            pad_token_id=self.pad_id,
            output_scores=True,
            return_dict_in_generate=True,
            use_cache=True,
        )


def _stop_token_ids(model: torch.nn.Module, tokenizer) -> list[int]:
    """EOS ids of the tokenizer and the model's generation config (either may be a list)."""
    ids: list[int] = []
    cfg = getattr(model, "generation_config", None)
    for source in (tokenizer.eos_token_id, getattr(cfg, "eos_token_id", None)):
        for i in source if isinstance(source, list | tuple) else [source]:
            if i is not None and int(i) not in ids:
                ids.append(int(i))
    if not ids:
        raise ValueError("the tokenizer and model define no eos token; cannot stop generation")
    return ids


def _left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    if width == 0:
        raise ValueError("a prompt tokenised to zero tokens")
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)  # (b, P)
    mask = torch.zeros((len(rows), width), dtype=torch.long)  # (b, P)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r) :] = 1
    return ids, mask


def _response_mask(
    response_ids: torch.Tensor, stop_ids: list[int], max_new_tokens: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, R) mask valid up to and including the first stop token; (N,) truncated flags."""
    is_stop = torch.isin(response_ids, torch.tensor(stop_ids, device=response_ids.device))
    stops_before = is_stop.long().cumsum(-1) - is_stop.long()  # stops strictly before j
    mask = (stops_before == 0).long()  # (N, R)
    truncated = (~is_stop.any(-1)) & (mask.sum(-1) >= max_new_tokens)  # (N,)
    return mask, truncated


def _gather_logprobs(scores: tuple[torch.Tensor, ...], tokens: torch.Tensor) -> torch.Tensor:
    """(N, R) float32 log-softmax of each step's processed scores at the sampled token."""
    cols = [
        F.log_softmax(step.float(), dim=-1).gather(-1, tokens[:, j : j + 1])
        for j, step in enumerate(scores)
    ]
    return torch.cat(cols, dim=1)


class _seeded:
    """Seed torch's RNG for one block and restore the previous state afterwards."""

    def __init__(self, seed: int | None, device: torch.device) -> None:
        self.seed, self.device = seed, device
        self._fork = None

    def __enter__(self) -> None:
        if self.seed is None:
            return
        devices = [self.device] if self.device.type == "cuda" else []
        self._fork = torch.random.fork_rng(devices=devices)
        self._fork.__enter__()
        torch.manual_seed(self.seed)

    def __exit__(self, *exc) -> None:
        if self._fork is not None:
            self._fork.__exit__(*exc)


def _concat(parts: list[RolloutBatch], pad_id: int) -> RolloutBatch:
    """Join micro-batches: prompts re-left-padded to the widest P, responses right-padded."""
    return RolloutBatch.concat(parts, pad_id)
