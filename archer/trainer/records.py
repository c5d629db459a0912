"""The run's prompt records: loading and splitting them (training / held-out), keeping the
held-out split out of training, the prompt-length limits, the reward columns they supply,
and the epoch-wise shuffled order the training prompts are drawn in."""

from __future__ import annotations

import logging
import random

from archer.train_config import TrainConfig

log = logging.getLogger(__name__)


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


def record_columns(records: list[dict]) -> tuple[str, ...]:
    """Every field any of ``records`` has but ``prompt``, in first-seen order: the reward's
    columns (taken over the whole data set, so a batch whose records all lack a field still
    passes it, as ``None``s, rather than leaving the reward without the argument)."""
    return tuple(dict.fromkeys(k for rec in records for k in rec if k != "prompt"))


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
