"""Save and resume everything a run needs to continue exactly where it stopped.

A checkpoint is a directory ``<out_dir>/checkpoints/step_000042`` holding

- ``model.pt``: the policy's state dict (exact tensors, not the HF export),
- ``optimizer.pt``: the AdamW state (moments, step counts),
- ``rng.pt``: python ``random``, numpy and torch (CPU and, when present, CUDA) RNG states,
- ``state.json``: training step, prompt-sampler position, tracking run id, counters.

The learning-rate schedule is a pure function of the step (see ``archer.trainer.lr_factor``),
so it is restored by the step. Writing is atomic: everything goes to a temporary sibling
directory that is renamed into place last, so a crash never leaves a half-written checkpoint
that ``latest_checkpoint`` would pick. Only the last ``keep`` checkpoints are kept.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

PREFIX = "step_"


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
) -> Path:
    """Atomically write checkpoint ``step`` (``state`` must be JSON-serialisable); prune old
    ones so that ``keep`` remain. Returns the checkpoint directory."""
    root = checkpoint_root(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{PREFIX}{step:06d}"
    tmp = root / f".tmp-{PREFIX}{step:06d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    torch.save(model.state_dict(), tmp / "model.pt")
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(rng_state(), tmp / "rng.pt")
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


def prune_checkpoints(out_dir: str | Path, keep: int) -> None:
    for old in list_checkpoints(out_dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(
    path: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    restore_rng: bool = True,
) -> dict[str, Any]:
    """Load model (and optimizer) state in place, restore RNG states; return ``state.json``."""
    path = Path(path)
    device = next(model.parameters()).device
    model.load_state_dict(torch.load(path / "model.pt", map_location=device, weights_only=True))
    if optimizer is not None:
        optimizer.load_state_dict(
            torch.load(path / "optimizer.pt", map_location=device, weights_only=True))
    if restore_rng:
        set_rng_state(torch.load(path / "rng.pt", weights_only=False))
    return json.loads((path / "state.json").read_text())
