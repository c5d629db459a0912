"""Save and resume everything a run needs to continue exactly where it stopped.

A checkpoint is a directory ``<out_dir>/checkpoints/step_000042`` holding

- ``model.pt``: the policy's state dict (exact tensors, not the HF export),
- ``optimizer.pt``: the AdamW state (moments, step counts),
- ``rng.pt``: python ``random``, numpy and torch (CPU and, when present, CUDA) RNG states,
- ``rng_ranks.pt`` (data-parallel runs only): the RNG states of every rank, in rank order,
- ``state.json``: training step, prompt-sampler position, tracking run id, counters.

The learning-rate schedule is a pure function of the step (see
``archer.trainer.optim.lr_factor``), so it is restored by the step. Writing is atomic:
everything goes to a temporary sibling directory that is renamed into place last, so a crash
never leaves a half-written checkpoint that ``latest_checkpoint`` would pick. The last
``keep`` checkpoints are kept, and the best validation step's (:func:`best_checkpoint`:
the highest ``val/reward_mean`` in its ``state.json``, ties to the latest), wherever it is.

This module is the on-disk format; what a run saves, when, and how it resumes is
:mod:`archer.trainer.checkpointing`.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

PREFIX = "step_"
# the validation metric that ranks checkpoints (`archer export --best`, pruning): its value at
# the step, as state.json's "metrics" holds it (the metrics the step logged)
BEST_METRIC = "val/reward_mean"


def checkpoint_root(out_dir: str | Path) -> Path:
    return Path(out_dir) / "checkpoints"


def rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    out_dir: str | Path,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    keep: int = 2,
    *,
    model_state: dict[str, Any] | None = None,
    optimizer_state: dict[str, Any] | None = None,
    rank_rng_states: list[dict[str, Any]] | None = None,
) -> Path:
    """Atomically write checkpoint ``step`` (``state`` must be JSON-serialisable); prune old
    ones so that ``keep`` remain. Returns the checkpoint directory.

    ``model_state``/``optimizer_state``: full state dicts to write instead of the modules'
    own (a sharded FSDP model gathers them first); ``rank_rng_states``: every rank's RNG."""
    root = checkpoint_root(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:06d}"
    tmp = root / f".tmp-{PREFIX}{step:06d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    torch.save(model.state_dict() if model_state is None else model_state, tmp / "model.pt")
    torch.save(optimizer.state_dict() if optimizer_state is None else optimizer_state,
               tmp / "optimizer.pt")
    torch.save(rng_state() if not rank_rng_states else rank_rng_states[0], tmp / "rng.pt")
    if rank_rng_states:
        torch.save(rank_rng_states, tmp / "rng_ranks.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step, **state}, indent=1) + "\n")
    if final.exists():  # re-saving the same step (e.g. a resumed run): replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
    prune_checkpoints(out_dir, keep)
    return final


def list_checkpoints(out_dir: str | Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary directories are ignored)."""
    root = checkpoint_root(out_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir()
             if p.is_dir() and p.name.startswith(PREFIX) and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    found = list_checkpoints(out_dir)
    return found[-1] if found else None


def checkpoint_step(path: str | Path) -> int:
    """The step of checkpoint directory ``path`` (``step_000042`` -> 42)."""
    return int(Path(path).name[len(PREFIX):])


def validation_metric(path: str | Path, metric: str = BEST_METRIC) -> float | None:
    """``metric`` as checkpoint ``path``'s step logged it (state.json), or None when the step
    was not validated (or its state cannot be read)."""
    value = read_state(path, strict=False, required=("step",)).get("metrics", {}).get(metric)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        return None  # (NaN never ranks)
    return float(value)


def best_checkpoint(out_dir: str | Path, metric: str = BEST_METRIC) -> Path | None:
    """The checkpoint whose step has the highest ``metric``, the latest of equal ones; None
    when no checkpoint's step was validated."""
    scored = [(value, checkpoint_step(p), p) for p in list_checkpoints(out_dir)
              if (value := validation_metric(p, metric)) is not None]
    return max(scored, key=lambda t: (t[0], t[1]))[2] if scored else None


def prune_checkpoints(out_dir: str | Path, keep: int) -> None:
    """Remove all but the last ``keep`` checkpoints and the best one (:func:`best_checkpoint`);
    ``keep`` 0 keeps them all."""
    if keep <= 0:
        return
    found = list_checkpoints(out_dir)
    kept = set(found[-keep:]) | {best_checkpoint(out_dir)}
    for old in found:
        if old not in kept:
            shutil.rmtree(old, ignore_errors=True)


REQUIRED_STATE = ("step", "sampler", "run_id")  # what a resume reads from state.json


def _load(file: Path, **kwargs) -> Any:
    """``torch.load`` of a checkpoint file; a missing or damaged one is a ValueError naming
    it (torch's own message for a cut file is a page about ``weights_only``)."""
    try:
        return torch.load(file, **kwargs)
    except FileNotFoundError:
        raise ValueError(f"{file} is missing") from None
    except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as err:
        first = (str(err).strip().splitlines() or [""])[0][:120]
        kind = "not a torch file" if isinstance(err, pickle.UnpicklingError) else "damaged"
        raise ValueError(f"{file} is {kind} ({type(err).__name__}: {first})") from None


def read_state(path: str | Path, strict: bool = True,
               required: tuple[str, ...] = REQUIRED_STATE) -> dict[str, Any]:
    """``state.json`` of checkpoint ``path``. Damaged (cut short, empty, not an object): a
    ValueError naming the file (``strict``) or ``{}``."""
    file = Path(path) / "state.json"
    try:
        state = json.loads(file.read_text())
        lacking = [k for k in required if not isinstance(state, dict) or k not in state]
        if lacking:
            raise ValueError(f"not a checkpoint state: no {', '.join(map(repr, lacking))}")
    except (OSError, ValueError) as err:
        if not strict:
            return {}
        raise ValueError(f"{file} is damaged: {err}") from None
    return state


def load_model_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The policy's full state dict of checkpoint ``path`` (``model.pt``), on the CPU."""
    return _load(Path(path) / "model.pt", map_location="cpu", weights_only=True)


def load_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    restore_rng: bool = True,
    *,
    rank: int = 0,
    load_state_dicts: Callable[..., None] | None = None,
) -> dict[str, Any]:
    """Load model (and optimizer) state in place, restore RNG states; return ``state.json``.

    ``load_state_dicts(model, optimizer, model_sd, optim_sd)`` loads the full state dicts
    instead of ``load_state_dict`` (a sharded FSDP model); ``rank`` picks this rank's RNG
    states when the checkpoint has them (``rng_ranks.pt``), else rank 0's are used."""
    path = Path(path)
    if load_state_dicts is not None:
        model_sd = _load(path / "model.pt", map_location="cpu", weights_only=True)
        optim_sd = None if optimizer is None else _load(
            path / "optimizer.pt", map_location="cpu", weights_only=True)
        load_state_dicts(model, optimizer, model_sd, optim_sd)
    else:
        device = next(model.parameters()).device
        model.load_state_dict(_load(path / "model.pt", map_location=device, weights_only=True))
        if optimizer is not None:
            optimizer.load_state_dict(
                _load(path / "optimizer.pt", map_location=device, weights_only=True))
    if restore_rng:
        ranks = path / "rng_ranks.pt"
        states = _load(ranks, weights_only=False) if ranks.is_file() else None
        set_rng_state(states[rank] if states and rank < len(states)
                      else _load(path / "rng.pt", weights_only=False))
    return read_state(path, required=("step",))
