"""Calling the reward: finding it by name, checking the data has its columns, calling it
on a batch's completions and turning its values into the step's reward tensor.

Reward contract: ``fn(completions, **columns) -> list[float | None]``; the columns are the
prompt record's fields (``answer``, ``entry``, ...) repeated for each of the G samples. A
``None`` reward stops the run (``reward_on_none="error"``) or counts as 0 (``"zero"``).
"""

from __future__ import annotations

import importlib
import math
import numbers
from typing import TYPE_CHECKING

import torch

from archer.trainer.records import record_columns
from archer.types import RolloutBatch

if TYPE_CHECKING:
    from archer.trainer.context import TrainContext


def resolve_reward(name: str):
    """The registered reward (``math``/``code``/... modules are imported on first use), or
    the user's ``module:function`` / ``file.py:function`` (``archer.rewards.load_user_reward``).

    Only a missing reward module means "no such reward"; a reward module that exists but
    cannot import one of its own dependencies is an error naming that dependency."""
    import archer.data.datasets  # noqa: F401  (registers "reasoning_gym")
    from archer.rewards import REWARDS, get_reward

    if name not in REWARDS and ":" not in name:
        module = f"archer.rewards.{name}"
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            missing = err.name or ""
            if not missing or not (module == missing or module.startswith(missing + ".")):
                raise ModuleNotFoundError(
                    f"reward {name!r} ({module}) cannot be imported: it needs the module "
                    f"{missing or str(err)!r}, which is not installed", name=err.name
                ) from err
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
            "another reward (reward=...)")


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


def reward_values(fn, name: str, completions: list[str], records: list[dict], n: int,
                  columns: tuple[str, ...] | None, on_none: str) -> list[float | None]:
    """:func:`call_reward`, with a ``None`` value an error naming the records it scored
    (``on_none="error"``) or left for the caller to count as 0 (``"zero"``)."""
    values = call_reward(fn, name, completions, records, n, columns)
    missing = [i for i, v in enumerate(values) if v is None]
    if missing and on_none == "error":
        keys = record_columns(records) if columns is None else columns
        named = list(dict.fromkeys(
            f"{records[i // n].get('data_source')} record {records[i // n].get('index')}"
            for i in missing))
        absent = sorted({k for i in missing for k in keys if records[i // n].get(k) is None})
        raise ValueError(
            f"reward {name!r} returned None for {len(missing)} of {len(values)} "
            f"samples, of {', '.join(named[:5])}{' ...' if len(named) > 5 else ''}"
            + (f" (lacking {', '.join(absent)})" if absent else "")
            + "; fix the data, or set reward_on_none=zero to score them 0")
    return values


def reward_tensor(values: list[float | None], device: torch.device) -> torch.Tensor:
    """(N,) float32 rewards, ``None`` as 0."""
    return torch.tensor([0.0 if v is None else float(v) for v in values], dtype=torch.float32,
                        device=device)


def score(ctx: TrainContext, batch: RolloutBatch, records: list[dict], n: int) -> torch.Tensor:
    """(N,) float rewards; the record's fields are passed as columns, repeated n times."""
    values = reward_values(ctx.reward_fn, ctx.cfg.reward, batch.texts, records, n, ctx.columns,
                           ctx.cfg.reward_on_none)
    # beside the lengths it is shaped by
    return reward_tensor(values, batch.response_lengths.device)
